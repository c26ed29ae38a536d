"""The text assets the word models train from, read from the store as NumPy arrays.

- ``Vocabulary``: tokens and counts by id (id 0 the most frequent), pruned by ``min_count`` with a remap;
- ``TokenShards``: token-shard Parquet files, read one at a time as (ids, sentence offsets) and cut into
  chunks of about ``batch_words`` tokens at sentence boundaries; small corpora stay in memory across epochs;
- ``CooccurrenceShards``: co-occurrence Parquet files, read one at a time as (i, j, x).

The asset kinds and table names here are what build-text-assets writes (storage.schemas documents the
columns); models/registry.py names them as each model's needs.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage import Dataset

# manifest kinds and tables of the assets, as build-text-assets writes them
VOCABULARY_KIND = "vocabulary"
TOKENS_KIND = "token-shards"
COOCCURRENCE_KIND = "cooccurrence"
VOCABULARY_TABLE = "vocabulary"
TOKENS_TABLE = "tokens"
COOCCURRENCE_TABLE = "cooccurrence"
CORPUS_KIND = "text-corpus"
CORPUS_TABLE = "sentences"
TOKENIZER_KIND = "subword-tokenizer"


@dataclass
class Vocabulary:
    """Tokens by id, most frequent first, with their corpus counts."""

    tokens: list[str]
    counts: np.ndarray  # int64, counts[i] is the count of tokens[i]

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def from_table(cls, table: pa.Table) -> Vocabulary:
        ids = table.column("id").to_numpy()
        order = np.argsort(ids, kind="stable")
        if len(ids) and not np.array_equal(ids[order], np.arange(len(ids))):
            raise ValueError("vocabulary ids must be 0..n-1 without gaps; rebuild the vocabulary asset")
        tokens = table.column("token").to_pylist()
        return cls(
            tokens=[tokens[i] for i in order], counts=table.column("count").to_numpy()[order].astype(np.int64)
        )

    @classmethod
    def from_dataset(cls, dataset: Dataset, table: str = VOCABULARY_TABLE) -> Vocabulary:
        return cls.from_table(dataset.read_table(table))

    def prune(self, min_count: int) -> tuple[Vocabulary, np.ndarray]:
        """Keep tokens seen at least ``min_count`` times, most frequent first; returns the remap old id -> new id (-1: dropped)."""
        keep = np.flatnonzero(self.counts >= min_count)
        keep = keep[np.argsort(-self.counts[keep], kind="stable")]
        remap = np.full(len(self.tokens), -1, dtype=np.int64)
        remap[keep] = np.arange(len(keep))
        return Vocabulary([self.tokens[i] for i in keep], self.counts[keep]), remap

    def index(self) -> dict[str, int]:
        return {token: i for i, token in enumerate(self.tokens)}


def _list_column(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A list<int32> column as (values, offsets with a leading 0), without copying per row."""
    column = table.column(name)
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if len(array) == 0:
        return np.zeros(0, np.int32), np.zeros(1, np.int64)
    if array.null_count:
        raise ValueError(f"column {name!r} has null lists; token shards must hold a list for every sentence")
    offsets = array.offsets.to_numpy().astype(np.int64)
    values = array.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return values, offsets - offsets[0]


class TokenShards:
    """The token-shard files of a dataset, read one at a time as (ids, sentence offsets)."""

    def __init__(
        self, dataset: Dataset, table: str = TOKENS_TABLE, *, cache_tokens: int = 100_000_000
    ) -> None:
        self.dataset = dataset
        self.files = dataset.table_files(table)
        # decoded shards stay in memory while they fit: small corpora are read once for all epochs
        self.cache_tokens = cache_tokens
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._sizes: list[int] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Shard ``index`` as (ids int32, offsets int64 with len = sentences + 1)."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        table = pq.read_table(self.files[index], columns=["tokens"], filesystem=self.dataset.fs)
        ids, offsets = _list_column(table, "tokens")
        self._cache[index] = (ids, offsets)
        while len(self._cache) > 1 and sum(len(v[0]) for v in self._cache.values()) > self.cache_tokens:
            self._cache.popitem(last=False)
        return ids, offsets

    def sizes(self) -> list[int]:
        """Tokens per shard (one pass over the files the first time)."""
        if self._sizes is None:
            self._sizes = [len(self.read(i)[0]) for i in range(len(self.files))]
        return self._sizes

    @property
    def total_tokens(self) -> int:
        return sum(self.sizes())


def chunk_bounds(offsets: np.ndarray, batch_words: int) -> np.ndarray:
    """Sentence indices where chunks of about ``batch_words`` tokens start, plus the sentence count at the end.

    A sentence longer than ``batch_words`` makes a chunk of its own; the cut depends only on the
    offsets and ``batch_words``, so every run (and every process) cuts a shard the same way.
    """
    sentences = len(offsets) - 1
    if sentences <= 0:
        return np.zeros(1, dtype=np.int64)
    bucket = offsets[:-1] // batch_words
    starts = np.flatnonzero(np.diff(bucket)) + 1
    return np.concatenate([[0], starts, [sentences]]).astype(np.int64)


class CooccurrenceShards:
    """The co-occurrence files of a dataset, read one at a time as (i int64, j int64, x float32)."""

    def __init__(
        self, dataset: Dataset, table: str = COOCCURRENCE_TABLE, *, cache_rows: int = 200_000_000
    ) -> None:
        self.dataset = dataset
        self.files = dataset.table_files(table)
        self.cache_rows = cache_rows
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        table = pq.read_table(self.files[index], columns=["i", "j", "x"], filesystem=self.dataset.fs)
        value = (
            table.column("i").to_numpy().astype(np.int64),
            table.column("j").to_numpy().astype(np.int64),
            table.column("x").to_numpy().astype(np.float32),
        )
        self._cache[index] = value
        while len(self._cache) > 1 and sum(len(v[0]) for v in self._cache.values()) > self.cache_rows:
            self._cache.popitem(last=False)
        return value
