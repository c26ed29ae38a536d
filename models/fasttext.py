"""fastText: skip-gram over words and their character n-grams (Bojanowski et al. 2017).

    embedpipe train fasttext --store work/store --set dim=100 --set minn=3 --set maxn=6 --set bucket=2000000

A word's input vector is the mean of its own row and the rows of its character n-grams: the n-grams
of "<word>" for n in minn..maxn, hashed with 32-bit FNV-1a over their UTF-8 bytes (as fastText and
gensim hash them) into ``bucket`` rows. Every input row of a word takes the whole gradient, as in
fastText's unsupervised models. The rest (subsampling, dynamic window, negative sampling, linear
learning-rate decay, resume, the two backends) is word2vec's loop, models/word2vec.py: numba trains
one pair at a time as fastText does; torch batches a chunk and bounds a row's summed update in a
step as skip-gram bounds a word's (STEP_LIMIT), since an n-gram row sums the curvature of every word
of the step that has it (unbounded, the loss on the bench corpus reached 1e18 in epoch 2, 2026-12).

Exports, into the run folder:
    vectors.txt            the vocabulary's vectors (the mean of word and n-gram rows), word2vec text format
    subwords.safetensors   "ngrams": the (bucket, dim) n-gram rows, and subwords.json: minn, maxn, bucket
An unseen word's vector is the mean of its n-gram rows (gensim's FastText does the same); a word
with no n-gram of minn characters or more (one letter, with minn 3: "<a>") gets none and is counted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from models import native, registry
from models.base import clear_checkpoints, require
from models.data import TokenShards, Vocabulary
from models.vectors import WordEmbedding, export_word_vectors, load_word_vectors
from models.word2vec import NegativeSampling, WindowConfig, bounded_steps, train_windows
from storage import Dataset

SUBWORDS_TENSORS = "subwords.safetensors"
SUBWORDS_JSON = "subwords.json"


@dataclass
class FastTextConfig(WindowConfig):
    """fastText skip-gram settings; the n-gram ones are named as fastText and gensim name them."""

    model = "fasttext"
    minn: int = 3  # shortest character n-gram, 1..maxn
    maxn: int = 6  # longest character n-gram, minn..20; 0 turns n-grams off (plain skip-gram)
    bucket: int = 2_000_000  # hash buckets for the n-grams, 1..2^31: memory is bucket * dim * 4 bytes, twice in a checkpoint

    def validate(self) -> None:
        super().validate()
        require(
            self.maxn == 0 or 1 <= self.minn <= self.maxn,
            "minn",
            self.minn,
            f"between 1 and maxn ({self.maxn})",
        )
        require(0 <= self.maxn <= 20, "maxn", self.maxn, "between 0 (no n-grams) and 20")
        require(1 <= self.bucket <= 2**31, "bucket", self.bucket, "between 1 and 2^31")

    def describe(self) -> str:
        return f"skipgram d{self.dim} n{self.minn}-{self.maxn}"


# --- n-grams -------------------------------------------------------------------------------------


def fnv1a_32(data: bytes) -> int:
    """fastText's hash: FNV-1a over bytes taken as signed chars (so bytes >= 0x80 set the high bits)."""
    h = 2166136261
    for byte in data:
        h ^= byte if byte < 0x80 else (byte - 256) & 0xFFFFFFFF
        h = (h * 16777619) & 0xFFFFFFFF
    return h


def char_ngrams(word: str, minn: int, maxn: int) -> list[str]:
    """The n-grams of "<word>" with minn <= n <= maxn, in fastText's order (by start, then length)."""
    if maxn == 0:
        return []
    text = f"<{word}>"
    grams = []
    for start in range(len(text)):
        for n in range(minn, maxn + 1):
            if start + n > len(text):
                break
            grams.append(text[start : start + n])
    return grams


def ngram_buckets(word: str, minn: int, maxn: int, bucket: int) -> list[int]:
    # TODO: pure Python, about 1 s per 50,000 words; a vocabulary of millions takes a minute here
    return [fnv1a_32(g.encode("utf-8")) % bucket for g in char_ngrams(word, minn, maxn)]


def subword_table(words: list[str], config: FastTextConfig) -> tuple[np.ndarray, np.ndarray]:
    """Input rows of every word as CSR: (rows, offsets); a word's rows are its id, then V + its n-gram buckets."""
    vocab_size = len(words)
    lists = [
        [w, *(vocab_size + b for b in ngram_buckets(word, config.minn, config.maxn, config.bucket))]
        for w, word in enumerate(words)
    ]
    offsets = np.zeros(vocab_size + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(rows) for rows in lists])
    return np.fromiter((r for rows in lists for r in rows), dtype=np.int64, count=int(offsets[-1])), offsets


# --- the network ---------------------------------------------------------------------------------


class SubwordNegativeSampling(NegativeSampling):
    """Negative sampling whose input vector of a word is the mean of its word and n-gram rows."""

    def __init__(self, words: list[str], config: FastTextConfig, device: torch.device) -> None:
        super().__init__(len(words) + config.bucket, len(words), config.dim, device, config.seed)
        rows, offsets = subword_table(words, config)
        self.row_table, self.row_offsets = rows, offsets
        self.rows = torch.from_numpy(rows).to(device)
        self.starts = torch.from_numpy(offsets[:-1]).to(device)
        self.lengths = torch.from_numpy(np.diff(offsets)).to(device)

    def native(self, step: str):
        assert step == "skipgram", "fastText trains skip-gram"
        return native.subword_skipgram_chunk, (
            self.input.numpy(),
            self.output.numpy(),
            self.row_table,
            self.row_offsets,
        )

    def _rows_of(self, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The input rows of ``words`` concatenated (N,), their bag offsets (C,) and lengths (C,)."""
        lengths = self.lengths[words]
        bag_offsets = torch.cumsum(lengths, 0) - lengths
        # position k of bag c reads rows[starts[c] + k]
        shift = torch.repeat_interleave(self.starts[words] - bag_offsets, lengths)
        flat = self.rows[torch.arange(len(shift), device=shift.device) + shift]
        return flat, bag_offsets, lengths

    def gather_inputs(self, words: torch.Tensor) -> torch.Tensor:
        flat, bag_offsets, _ = self._rows_of(words)
        return torch.nn.functional.embedding_bag(flat, self.input, bag_offsets, mode="mean")  # (C, d)

    def scatter_inputs(self, words: torch.Tensor, grads: torch.Tensor, curvature: torch.Tensor) -> None:
        # every row of a word takes the word's whole gradient; an n-gram row that many words of the
        # step share sums all their curvatures, so its step is bounded as a frequent word's is
        flat, _, lengths = self._rows_of(words)
        scale = bounded_steps(self.input_sums, flat, torch.repeat_interleave(curvature, lengths))
        self.input.index_add_(0, flat, torch.repeat_interleave(grads, lengths, dim=0) * scale[:, None])

    def word_vectors(self, vocab_size: int, batch: int = 8192) -> torch.Tensor:
        parts = []
        for start in range(0, vocab_size, batch):
            words = torch.arange(start, min(vocab_size, start + batch), device=self.input.device)
            parts.append(self.gather_inputs(words))
        return torch.cat(parts)


# --- the embedding with unseen words -------------------------------------------------------------


class FastTextEmbedding(WordEmbedding):
    """Exported vectors plus n-gram rows: unseen words get the mean of their n-gram rows."""

    builds_unseen = True

    def __init__(self, words: list[str], vectors: np.ndarray, ngrams: np.ndarray, settings: dict) -> None:
        super().__init__(words, vectors)
        self.ngrams = ngrams
        self.minn, self.maxn, self.bucket = settings["minn"], settings["maxn"], settings["bucket"]

    def build_unseen(self, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((len(words), self.dim), np.float32)
        ok = np.zeros(len(words), bool)
        for k, word in enumerate(words):
            buckets = ngram_buckets(word, self.minn, self.maxn, self.bucket)
            if buckets:
                out[k] = self.ngrams[buckets].mean(0)
                ok[k] = True
        return out, ok


# --- entry points --------------------------------------------------------------------------------


def train(config: FastTextConfig, assets: Mapping[str, Dataset], ctx) -> dict[str, Any]:
    """Train fastText skip-gram on the token shards; export vectors.txt and the n-gram rows."""
    vocab, remap = Vocabulary.from_dataset(assets["tokens"]).prune(config.min_count)
    if len(vocab) < 2:
        raise ValueError(f"only {len(vocab)} words are seen {config.min_count}+ times; lower min_count")
    shards = TokenShards(assets["tokens"])
    net = SubwordNegativeSampling(vocab.tokens, config, ctx.device)
    metrics = train_windows(config, vocab, remap, shards, net, "skipgram", ctx, "fasttext")
    if ctx.dist.is_main:
        export_word_vectors(ctx.run, vocab.tokens, net.word_vectors(len(vocab)))
        ngrams = net.input[len(vocab) :].detach().to("cpu").contiguous()
        ctx.run.write_bytes(SUBWORDS_TENSORS, save_safetensors({"ngrams": ngrams}))
        ctx.run.write_json(SUBWORDS_JSON, {"minn": config.minn, "maxn": config.maxn, "bucket": config.bucket})
        clear_checkpoints(ctx.run, keep_last=ctx.options.keep_final_checkpoint)
    return metrics


def load(run: Dataset) -> FastTextEmbedding:
    words, vectors = load_word_vectors(run)
    ngrams = load_safetensors(run.fs.cat_file(run.file(SUBWORDS_TENSORS)))["ngrams"].numpy()
    settings = json.loads(run.fs.cat_file(run.file(SUBWORDS_JSON)).decode())
    return FastTextEmbedding(words, vectors, ngrams, settings)


SPEC = registry.ModelSpec(
    name="fasttext",
    family="static",
    summary="fastText skip-gram over words and hashed character n-grams; vectors for unseen words",
    config=FastTextConfig,
    needs=(registry.TOKENS,),
    train=train,
    load=load,
    evaluations=("word",),
    distributed=True,
    modules=("models.base", "models.data", "models.native", "models.vectors", "models.word2vec"),
)
