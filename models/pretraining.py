"""Pretraining examples for BERT, GPT and T5, built while the corpus sentences stream by.

    text/NAME/corpus sentences/part-*.parquet --one file at a time--> tokenized documents
        --BertExamples | GptExamples | T5Examples--> examples --shuffled within the file--> batches

    stream = ExampleStream(corpus, BertExamples(tokenizer, max_length=128), seed=1, batch_size=32)
    for item in stream.items():          # endless: epoch after epoch; item.position is where it ends
        loss = objective(item.batch)

Documents are consecutive sentences of one ``doc`` in a sentences file. The token ids and examples
of one file (100,000 sentences: a few tens of MB) are in memory at a time, two while the next one is
built ahead (``prefetch``).

- BERT: sentence pairs filled up to ``max_length`` from consecutive sentences, as BERT's
  create_pretraining_data does (10% of documents aim at a shorter random length; segment B is the real
  continuation or, half the time, sentences of another document of the file; unlike the script, a
  pair takes at least two sentences where the document has them), and masked language modelling on
  15% of the non-special tokens: 80% [MASK], 10% a random token, 10% kept.
- GPT: documents joined by <|endoftext|>, cut into blocks of exactly ``block_size`` tokens.
- T5: documents joined by </s>, cut into chunks that span corruption (noise density 0.15, mean span
  length 3) turns into inputs of ``max_length`` tokens; spans become sentinels <extra_id_0>,
  <extra_id_1>, ... and the targets are each sentinel followed by its span, closed by </s>.

The held-out split is by article: a sentence is held out when ``is_heldout(article_id)``
(models/contextual.py). The key is the row's article id alone (page id, or first line for plain text):
every model reads it from its own rows (corpus sentences and token shards both carry it), so all of
them hold out the same articles whatever the corpus build's document numbering.

Every random draw of a file comes from a generator seeded by (seed, epoch, file), and the file order
of an epoch from one seeded by (seed, epoch): replaying a file from its start draws exactly what the
uninterrupted run drew, so a resumed run takes the same batches. Several processes: process r takes
every world_size-th file of the epoch's order, or, when the corpus has fewer files than processes,
every world_size-th batch of each file.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow.parquet as pq
import torch
from tokenizers import Tokenizer

from models.base import derive_seed
from models.contextual import is_heldout
from models.data import CORPUS_TABLE
from storage import Dataset

HELDOUT_SEED = 0  # held-out examples are the same for every run, whatever its seed
IGNORE = -100  # label of positions without a loss (transformers' convention)
READ_ROWS = 4_096  # sentences per Parquet batch read and tokenized at once
JOIN_TIMEOUT_S = 120.0  # longest wait for the example thread to finish its file once stopped
# purposes of the derived seeds, so the file order and the examples never share a stream
_EXAMPLES, _FILE_ORDER = 0, 1


# --- tokenized documents -------------------------------------------------------------------------


@dataclass
class Documents:
    """The tokenized documents of one sentences file, flat: ids of every sentence, then boundaries."""

    ids: np.ndarray  # (tokens,) int32
    sentence_offsets: np.ndarray  # (sentences + 1,) int64 into ids
    document_offsets: np.ndarray  # (documents + 1,) int64 into sentences
    article_ids: np.ndarray  # (documents,) int64, the article each document comes from
    counts: Counter[str] = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.document_offsets) - 1

    def sentence(self, index: int) -> np.ndarray:
        return self.ids[self.sentence_offsets[index] : self.sentence_offsets[index + 1]]

    def sentences_of(self, document: int) -> range:
        return range(int(self.document_offsets[document]), int(self.document_offsets[document + 1]))

    def sentence_lengths(self) -> np.ndarray:
        return np.diff(self.sentence_offsets)

    def joined(self, separator: int) -> np.ndarray:
        """Every document's tokens followed by ``separator``, as one array."""
        ends = self.sentence_offsets[self.document_offsets[1:]]
        return np.insert(self.ids, ends, separator).astype(np.int32)


class _Heldout:
    """is_heldout by article id, remembered: the sentences of an article share it."""

    def __init__(self) -> None:
        self.known: dict[int, bool] = {}

    def __call__(self, article_id: int) -> bool:
        found = self.known.get(article_id)
        if found is None:
            found = self.known[article_id] = is_heldout(article_id)
        return found


def plain_tokenizer(tokenizer: Any) -> Tokenizer:
    """A copy of a transformers fast tokenizer's backend, without padding or truncation.

    transformers leaves the padding and truncation of its last call on the backend it shares (a
    padded encode_words call would pad every sentence read after it), so the examples use their own.
    """
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    plain = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    plain.no_padding()
    plain.no_truncation()
    return plain


def read_documents(
    corpus: Dataset,
    path: str,
    tokenizer: Any,
    split: str = "train",
    *,
    leading_space: bool = False,
) -> Documents:
    """Tokenize the sentences of one file of the corpus that belong to ``split`` (train or heldout).

    ``tokenizer``: a transformers fast tokenizer, or its ``plain_tokenizer``. ``leading_space``:
    every sentence but the first of its document gets a space in front, so that byte-level BPE
    (GPT-2) sees the text as it runs, not each sentence as a text of its own.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be train or heldout, got {split!r}")
    want_heldout = split == "heldout"
    backend = plain_tokenizer(tokenizer)
    heldout = _Heldout()
    counts: Counter[str] = Counter()
    id_parts: list[np.ndarray] = []  # the token ids of each Parquet batch, int32
    length_parts: list[np.ndarray] = []  # tokens per sentence of each batch
    sentences = 0
    starts: list[int] = []  # sentence index where each document starts
    articles: list[int] = []
    previous_doc = None
    # FIXME: a document cut by the corpus's file roll (every shard_sentences rows) is read as two
    # documents, one per file: one extra separator, and NSP pairs never span the cut
    parquet = pq.ParquetFile(path, filesystem=corpus.fs)
    for batch in parquet.iter_batches(
        batch_size=READ_ROWS, columns=["doc", "article_id", "sentence", "text"]
    ):
        docs = batch.column("doc").to_numpy()
        articles_of = batch.column("article_id").to_numpy()
        numbers = batch.column("sentence").to_numpy()
        texts = batch.column("text").to_pylist()
        keep = [heldout(int(a)) == want_heldout for a in articles_of]
        counts["sentences_other_split"] += len(keep) - sum(keep)
        rows = [k for k, kept in enumerate(keep) if kept]
        if not rows:
            continue
        chosen = [(" " + texts[k]) if leading_space and numbers[k] > 0 else texts[k] for k in rows]
        pieces = [encoding.ids for encoding in backend.encode_batch_fast(chosen, add_special_tokens=False)]
        for offset, k in enumerate(rows):
            if docs[k] != previous_doc:
                starts.append(sentences + offset)
                articles.append(int(articles_of[k]))
                previous_doc = docs[k]
        lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
        id_parts.append(
            np.fromiter(itertools.chain.from_iterable(pieces), dtype=np.int32, count=int(lengths.sum()))
        )
        length_parts.append(lengths)
        sentences += len(pieces)
    lengths = np.concatenate(length_parts) if length_parts else np.zeros(0, np.int64)
    ids = np.concatenate(id_parts) if id_parts else np.zeros(0, np.int32)
    counts["documents"] += len(starts)
    counts["sentences"] += sentences
    counts["sentences_without_tokens"] += int((lengths == 0).sum())
    counts["tokens"] += len(ids)
    return Documents(
        ids=ids,
        sentence_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        document_offsets=np.asarray([*starts, sentences], dtype=np.int64),
        article_ids=np.asarray(articles, dtype=np.int64),
        counts=counts,
    )


# --- BERT: sentence pairs, next sentence prediction, masking ------------------------------------


def _truncation(length_a: int, length_b: int, limit: int) -> tuple[int, int]:
    """Tokens to cut from A and B: from the longer one until both are as long, then in turn (B first)."""
    excess = length_a + length_b - limit
    if excess <= 0:
        return 0, 0
    even = min(abs(length_a - length_b), excess)
    rest = excess - even
    cut_a = (even if length_a > length_b else 0) + rest // 2
    return cut_a, excess - cut_a


def sentence_pairs(
    docs: Documents,
    rng: np.random.Generator,
    *,
    max_tokens: int,
    short_seq_prob: float = 0.1,
    random_next_prob: float = 0.5,
) -> tuple[list[tuple[np.ndarray, np.ndarray, bool]], Counter[str]]:
    """(A, B, B is random) pairs of at most ``max_tokens`` tokens together, document after document.

    A document's sentences are gathered until they reach its target length (and are at least two);
    A is the first 1..n-1 of them, B the rest (the real continuation) or, with ``random_next_prob`` or
    when only one sentence was left, sentences of another document from a random start, the unused
    ones put back.
    """
    counts: Counter[str] = Counter()
    pairs = []
    lengths = docs.sentence_lengths()
    for document in range(len(docs)):
        sentences = docs.sentences_of(document)
        target = max_tokens
        if rng.random() < short_seq_prob:
            target = int(rng.integers(2, max_tokens + 1))
            counts["pairs_short_target"] += 1
        chunk: list[int] = []
        chunk_length = 0
        i = sentences.start
        while i < sentences.stop:
            chunk.append(i)
            chunk_length += int(lengths[i])
            # at least two sentences where the document has them: BERT's script closes a chunk on one
            # long sentence and must pair it with a random B (on Don Quijote at 64 tokens, 78% of the
            # labels came out random); truncation then cuts the pair to length
            if i == sentences.stop - 1 or (chunk_length >= target and len(chunk) >= 2):
                a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
                a = [docs.sentence(s) for s in chunk[:a_end]]
                forced = len(chunk) == 1
                is_random = forced or rng.random() < random_next_prob
                if is_random:
                    counts["nsp_forced_random"] += forced
                    b_target = max(1, target - sum(len(s) for s in a))
                    other = document
                    if len(docs) > 1:
                        other = int(rng.integers(0, len(docs) - 1))
                        other += other >= document
                    else:
                        counts["nsp_random_from_same_document"] += 1
                    candidates = docs.sentences_of(other)
                    b, b_length = [], 0
                    for s in range(int(rng.integers(candidates.start, candidates.stop)), candidates.stop):
                        b.append(docs.sentence(s))
                        b_length += len(b[-1])
                        if b_length >= b_target:
                            break
                    i -= len(chunk) - a_end  # the sentences B did not use start the next pair
                else:
                    b = [docs.sentence(s) for s in chunk[a_end:]]
                tokens_a = np.concatenate(a) if a else np.zeros(0, np.int32)
                tokens_b = np.concatenate(b) if b else np.zeros(0, np.int32)
                cut_a, cut_b = _truncation(len(tokens_a), len(tokens_b), max_tokens)
                if cut_a or cut_b:
                    # each cut token comes off the front or the back with even odds, as in BERT
                    front_a, front_b = int(rng.binomial(cut_a, 0.5)), int(rng.binomial(cut_b, 0.5))
                    tokens_a = tokens_a[front_a : len(tokens_a) - (cut_a - front_a)]
                    tokens_b = tokens_b[front_b : len(tokens_b) - (cut_b - front_b)]
                    counts["pairs_truncated"] += 1
                    counts["tokens_truncated"] += cut_a + cut_b
                if len(tokens_a) and len(tokens_b):
                    pairs.append((tokens_a, tokens_b, is_random))
                    counts["nsp_random"] += is_random
                else:
                    counts["pairs_dropped_empty"] += 1
                chunk, chunk_length = [], 0
            i += 1
    counts["pairs"] += len(pairs)
    return pairs, counts


def mask_tokens(
    input_ids: np.ndarray,
    candidates: np.ndarray,
    rng: np.random.Generator,
    *,
    probability: float,
    mask_id: int,
    random_ids: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT's masking: round(probability x candidates) positions of each row (at least one) are chosen;
    of those, 80% become ``mask_id``, 10% a token drawn from ``random_ids``, 10% stay as they are.

    Returns the masked ids and the labels (the original id where chosen, IGNORE elsewhere).
    """
    rows, width = input_ids.shape
    available = candidates.sum(axis=1)
    chosen_count = np.where(available > 0, np.maximum(1, np.rint(available * probability)), 0)
    keys = rng.random((rows, width))
    keys[~candidates] = 2.0  # never chosen: they sort after every candidate
    rank = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1, kind="stable")
    chosen = rank < chosen_count[:, None]
    labels = np.where(chosen, input_ids, IGNORE).astype(np.int32)
    action = rng.random((rows, width))
    masked = input_ids.copy()
    to_mask = chosen & (action < 0.8)
    to_random = chosen & (action >= 0.8) & (action < 0.9)
    masked[to_mask] = mask_id
    masked[to_random] = random_ids[rng.integers(0, len(random_ids), int(to_random.sum()))]
    return masked, labels


class Builder(Protocol):
    """What ExampleStream asks of a family's examples."""

    leading_space: bool

    def build(self, docs: Documents, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], Counter[str]]:
        """Arrays with one row per example, and counts of what was made, cut and dropped."""

    def collate(self, arrays: dict[str, np.ndarray], rows: np.ndarray) -> tuple[dict[str, torch.Tensor], int]:
        """The tensors of a batch of those rows, and the tokens the model reads in it."""


def special_ids(tokenizer: Any) -> np.ndarray:
    return np.asarray(sorted(set(tokenizer.all_special_ids)), dtype=np.int32)


class BertExamples:
    """[CLS] A [SEP] B [SEP] pairs with token types, next-sentence labels and masked tokens."""

    leading_space = False

    def __init__(
        self,
        tokenizer: Any,
        max_length: int,
        *,
        mlm_probability: float = 0.15,
        short_seq_prob: float = 0.1,
        random_next_prob: float = 0.5,
    ) -> None:
        self.max_length = max_length
        self.mlm_probability = mlm_probability
        self.short_seq_prob = short_seq_prob
        self.random_next_prob = random_next_prob
        self.cls, self.sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.pad, self.mask = tokenizer.pad_token_id, tokenizer.mask_token_id
        if None in (self.cls, self.sep, self.pad, self.mask):
            raise ValueError(
                "BERT needs a tokenizer with [CLS] [SEP] [PAD] [MASK]: use the wordpiece tokenizer"
            )
        self.specials = special_ids(tokenizer)
        vocabulary = np.arange(len(tokenizer), dtype=np.int32)
        self.random_ids = vocabulary[~np.isin(vocabulary, self.specials)]

    def build(self, docs: Documents, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], Counter[str]]:
        pairs, counts = sentence_pairs(
            docs,
            rng,
            max_tokens=self.max_length - 3,
            short_seq_prob=self.short_seq_prob,
            random_next_prob=self.random_next_prob,
        )
        n = len(pairs)
        input_ids = np.full((n, self.max_length), self.pad, dtype=np.int32)
        token_types = np.zeros((n, self.max_length), dtype=np.int8)
        structure = np.zeros((n, self.max_length), dtype=bool)  # True on the tokens of A and B
        lengths = np.zeros(n, dtype=np.int32)
        for row, (a, b, _) in enumerate(pairs):
            la, lb = len(a), len(b)
            input_ids[row, 0] = self.cls
            input_ids[row, 1 : 1 + la] = a
            input_ids[row, 1 + la] = self.sep
            input_ids[row, 2 + la : 2 + la + lb] = b
            input_ids[row, 2 + la + lb] = self.sep
            token_types[row, 2 + la : 3 + la + lb] = 1
            structure[row, 1 : 1 + la] = True
            structure[row, 2 + la : 2 + la + lb] = True
            lengths[row] = 3 + la + lb
        # a special token inside the text ([UNK]) is never a prediction target either
        candidates = structure & ~np.isin(input_ids, self.specials)
        masked, labels = mask_tokens(
            input_ids,
            candidates,
            rng,
            probability=self.mlm_probability,
            mask_id=self.mask,
            random_ids=self.random_ids,
        )
        counts["tokens_masked"] += int((labels != IGNORE).sum())
        arrays = {
            "input_ids": masked,
            "token_type_ids": token_types,
            "labels": labels,
            "length": lengths,
            "next_sentence_label": np.fromiter((p[2] for p in pairs), dtype=np.int8, count=n),
        }
        return arrays, counts

    def collate(self, arrays: dict[str, np.ndarray], rows: np.ndarray) -> tuple[dict[str, torch.Tensor], int]:
        lengths = arrays["length"][rows]
        # pad to the longest pair of the batch, a multiple of 8 for the tensor cores
        width = min(self.max_length, int(-(-lengths.max() // 8) * 8))
        batch = {
            name: torch.from_numpy(arrays[name][rows, :width].astype(np.int64))
            for name in ("input_ids", "token_type_ids", "labels")
        }
        batch["attention_mask"] = (torch.arange(width)[None, :] < torch.from_numpy(lengths)[:, None]).long()
        batch["next_sentence_label"] = torch.from_numpy(arrays["next_sentence_label"][rows].astype(np.int64))
        # the chosen positions, flat in (B x T), found here: a boolean index on the GPU waits for it
        flat = batch["labels"].reshape(-1)
        positions = torch.from_numpy(np.flatnonzero(flat.numpy() != IGNORE))
        batch["mlm_positions"], batch["mlm_labels"] = positions, flat[positions]
        return batch, int(lengths.sum())


# --- GPT: packed blocks --------------------------------------------------------------------------


def pack_blocks(stream: np.ndarray, block_size: int) -> tuple[np.ndarray, int]:
    """(blocks, block_size) of consecutive tokens, and the tokens of the tail too short for a block."""
    count = len(stream) // block_size
    return stream[: count * block_size].reshape(count, block_size), len(stream) - count * block_size


class GptExamples:
    """Blocks of exactly ``block_size`` tokens cut from the documents joined by <|endoftext|>."""

    leading_space = True

    def __init__(self, tokenizer: Any, block_size: int) -> None:
        self.block_size = block_size
        self.end = tokenizer.eos_token_id
        if self.end is None:
            raise ValueError("GPT needs a tokenizer with <|endoftext|>: use the bpe tokenizer")

    def build(self, docs: Documents, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], Counter[str]]:
        blocks, tail = pack_blocks(docs.joined(self.end), self.block_size)
        # FIXME: the tail of each sentences file (< block_size tokens) is dropped, never carried into
        # the next file: about block_size / tokens per file, 0.05% of 100,000 sentences at 1,024
        return {"input_ids": blocks}, Counter(blocks=len(blocks), tokens_dropped_tail=tail)

    def collate(self, arrays: dict[str, np.ndarray], rows: np.ndarray) -> tuple[dict[str, torch.Tensor], int]:
        ids = torch.from_numpy(arrays["input_ids"][rows].astype(np.int64))
        return {"input_ids": ids}, ids.numel()


# --- T5: span corruption -------------------------------------------------------------------------


def span_lengths(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a chunk of ``length`` tokens, as T5 counts them."""
    noise = min(max(int(round(length * noise_density)), 1), length - 1)
    spans = min(max(int(round(noise / mean_span_length)), 1), noise, length - noise)
    return noise, spans


def corrupted_lengths(max_length: int, noise_density: float, mean_span_length: float) -> tuple[int, int, int]:
    """(raw chunk length, inputs length, targets length): the longest chunk whose inputs, with a
    sentinel per span and </s>, fit in ``max_length``."""

    def lengths(raw: int) -> tuple[int, int]:
        noise, spans = span_lengths(raw, noise_density, mean_span_length)
        return raw - noise + spans + 1, noise + spans + 1

    raw = 2
    while lengths(raw + 1)[0] <= max_length:
        raw += 1
    return raw, *lengths(raw)


def _segments(total: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` non-empty lengths that add up to ``total``, every such split equally likely."""
    if count == 1:
        return np.asarray([total])
    cuts = np.sort(rng.choice(total - 1, count - 1, replace=False)) + 1
    return np.diff(np.concatenate([[0], cuts, [total]]))


def noise_mask(
    length: int, noise_density: float, mean_span_length: float, rng: np.random.Generator
) -> np.ndarray:
    """T5's random spans: (length,) bool, True on noise; spans alternate, kept text first."""
    noise, spans = span_lengths(length, noise_density, mean_span_length)
    kept = _segments(length - noise, spans, rng)
    dropped = _segments(noise, spans, rng)
    runs = np.stack([kept, dropped], axis=1).reshape(-1)
    return np.repeat(np.tile([False, True], spans), runs)


def corrupt(
    tokens: np.ndarray, mask: np.ndarray, sentinels: np.ndarray, end: int
) -> tuple[np.ndarray, np.ndarray]:
    """Inputs: the kept tokens with each noise span replaced by the next sentinel, then </s>.
    Targets: each sentinel followed by the span it replaced, then </s>."""

    def replace(hidden: np.ndarray) -> np.ndarray:
        starts = hidden & ~np.concatenate([[False], hidden[:-1]])
        values = np.where(starts, sentinels[np.cumsum(starts) - 1], tokens)
        return np.append(values[~hidden | starts], end)

    # the targets replace the kept runs instead: run k of kept text comes just before noise span k
    return replace(mask), replace(~mask)


def sentinel_ids(tokenizer: Any) -> np.ndarray:
    """Ids of <extra_id_0>, <extra_id_1>, ... as far as the tokenizer has them."""
    backend = tokenizer.backend_tokenizer
    found = []
    while (token := backend.token_to_id(f"<extra_id_{len(found)}>")) is not None:
        found.append(token)
    return np.asarray(found, dtype=np.int32)


class T5Examples:
    """Span-corrupted chunks of the documents joined by </s>: inputs of max_length, fixed-length targets."""

    leading_space = False

    def __init__(
        self,
        tokenizer: Any,
        max_length: int,
        *,
        noise_density: float = 0.15,
        mean_span_length: float = 3.0,
    ) -> None:
        self.noise_density = noise_density
        self.mean_span_length = mean_span_length
        self.raw_length, self.inputs_length, self.targets_length = corrupted_lengths(
            max_length, noise_density, mean_span_length
        )
        self.end = tokenizer.eos_token_id
        self.sentinels = sentinel_ids(tokenizer)
        spans = span_lengths(self.raw_length, noise_density, mean_span_length)[1]
        if self.end is None or len(self.sentinels) < spans:
            raise ValueError(
                f"T5 at max_length {max_length} needs </s> and {spans} sentinels <extra_id_N>; the tokenizer "
                f"has {len(self.sentinels)}: use the unigram tokenizer with extra_ids >= {spans}"
            )

    def build(self, docs: Documents, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], Counter[str]]:
        chunks, tail = pack_blocks(docs.joined(self.end), self.raw_length)
        inputs = np.zeros((len(chunks), self.inputs_length), dtype=np.int32)
        targets = np.zeros((len(chunks), self.targets_length), dtype=np.int32)
        for row, chunk in enumerate(chunks):
            mask = noise_mask(self.raw_length, self.noise_density, self.mean_span_length, rng)
            inputs[row], targets[row] = corrupt(chunk, mask, self.sentinels, self.end)
        # FIXME: as for GPT, each file's tail shorter than one chunk is dropped
        return {"input_ids": inputs, "labels": targets}, Counter(chunks=len(chunks), tokens_dropped_tail=tail)

    def collate(self, arrays: dict[str, np.ndarray], rows: np.ndarray) -> tuple[dict[str, torch.Tensor], int]:
        batch = {
            name: torch.from_numpy(arrays[name][rows].astype(np.int64)) for name in ("input_ids", "labels")
        }
        return batch, batch["input_ids"].numel() + batch["labels"].numel()


# --- the stream ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Position:
    """Where a process is in its stream: the epoch, its file slot in that epoch, batches taken of it."""

    epoch: int = 0
    slot: int = 0
    batch: int = 0

    def to_list(self) -> list[int]:
        return [self.epoch, self.slot, self.batch]

    @classmethod
    def from_list(cls, values: list[int]) -> Position:
        return cls(*map(int, values))


@dataclass
class Item:
    """One batch of a stream, what it holds, and the position just after it."""

    batch: dict[str, torch.Tensor]
    examples: int
    tokens: int
    counts: Counter[str]  # what building its file made, cut and dropped (on the file's first batch)
    position: Position


class ExampleStream:
    """Batches of a builder's examples over the corpus sentence files, one file at a time.

    Train split: every epoch visits the files in a new seeded order and shuffles each file's examples;
    held-out split (``shuffle=False``): files and examples in corpus order, the same for every run.
    """

    def __init__(
        self,
        corpus: Dataset,
        tokenizer: Any,
        builder: Builder,
        *,
        seed: int,
        batch_size: int,
        split: str = "train",
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
    ) -> None:
        self.corpus = corpus
        self.tokenizer = plain_tokenizer(tokenizer)
        self.builder = builder
        self.seed = seed
        self.batch_size = batch_size
        self.split = split
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.pin_memory = pin_memory
        self.files = corpus.table_files(CORPUS_TABLE)
        if not self.files:
            raise ValueError(
                f"{corpus.name} has no sentence files; rebuild it with `embedpipe build-text-assets`"
            )

    def plan(self, epoch: int) -> tuple[list[int], int]:
        """This process's files of an epoch (indices into the corpus's files), and its batch stride."""
        order = np.arange(len(self.files))
        if self.shuffle:
            order = np.random.default_rng(derive_seed(self.seed, _FILE_ORDER, epoch)).permutation(order)
        if len(order) >= self.world_size:
            return [int(f) for f in order[self.rank :: self.world_size]], 1
        return [int(f) for f in order], self.world_size

    def build_file(self, epoch: int, file: int) -> tuple[dict[str, np.ndarray], Counter[str]]:
        """Every example of one file in one epoch, in the order batches take them."""
        docs = read_documents(
            self.corpus,
            self.files[file],
            self.tokenizer,
            self.split,
            leading_space=self.builder.leading_space,
        )
        rng = np.random.default_rng(derive_seed(self.seed, _EXAMPLES, epoch, file))
        arrays, counts = self.builder.build(docs, rng)
        counts.update(docs.counts)
        examples = len(next(iter(arrays.values())))
        counts["examples"] += examples
        if self.shuffle and examples:
            order = rng.permutation(examples)
            arrays = {name: values[order] for name, values in arrays.items()}
        return arrays, counts

    def _file_items(
        self, epoch: int, slot: int, file: int, first_batch: int, stride: int, limit: int | None = None
    ) -> Iterator[Item]:
        arrays, counts = self.build_file(epoch, file)
        examples = len(next(iter(arrays.values())))
        if limit is not None:
            examples = min(examples, limit)
        for number, start in enumerate(range(0, examples, self.batch_size)):
            if number % stride != (self.rank if stride > 1 else 0) or number < first_batch:
                continue
            rows = np.arange(start, min(examples, start + self.batch_size))
            batch, tokens = self.builder.collate(arrays, rows)
            if self.pin_memory:
                batch = {name: tensor.pin_memory() for name, tensor in batch.items()}
            yield Item(
                batch=batch,
                examples=len(rows),
                tokens=tokens,
                counts=counts if number == 0 else Counter(),
                position=Position(epoch, slot, number + 1),
            )

    def items(self, start: Position | None = None) -> Iterator[Item]:
        """Endless: this process's batches from ``start``, epoch after epoch."""
        position = start or Position()
        epoch, slot, first_batch = position.epoch, position.slot, position.batch
        while True:
            files, stride = self.plan(epoch)
            produced = False
            for index in range(slot, len(files)):
                for item in self._file_items(epoch, index, files[index], first_batch, stride):
                    produced = True
                    yield item
                first_batch = 0
            if not produced and slot == 0 and position.batch == 0:
                raise ValueError(
                    f"process {self.rank} of {self.world_size} got no {self.split} examples from the "
                    f"{len(self.files)} sentence file(s) of {self.corpus.name}: the corpus is too small "
                    "for this sequence length (or all of it is held out)"
                )
            epoch, slot, position = epoch + 1, 0, Position(epoch + 1)

    def epoch_items(self, epoch: int = 0, max_examples: int | None = None) -> Iterator[Item]:
        """One pass: this process's batches of ``epoch``, or its first ``max_examples`` examples."""
        files, stride = self.plan(epoch)
        left = max_examples
        for slot, file in enumerate(files):
            for item in self._file_items(epoch, slot, file, 0, stride, limit=left):
                yield item
                if left is not None:
                    left -= item.examples
            if left is not None and left <= 0:
                return

    def count_examples(self, epoch: int = 0) -> int:
        """Examples of every file in ``epoch`` (all processes together): one tokenization pass."""
        return sum(self.build_file(epoch, file)[1]["examples"] for file in range(len(self.files)))


def prefetch(items: Iterator[Item], depth: int = 4) -> Iterator[Item]:
    """The items, made ``depth`` ahead in a thread: the next file is tokenized while the model trains.

    Tokenization (Rust) and NumPy release the GIL; the order is the iterator's, so nothing changes but
    the waiting. Close the returned generator to stop the thread: closing waits for the file being
    built (a thread still inside the tokenizer when Python exits aborts the process).
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(done)
        except BaseException as error:  # handed to the consumer, raised there
            slots.put(error)

    thread = threading.Thread(target=work, name="pretraining-examples", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=JOIN_TIMEOUT_S)
