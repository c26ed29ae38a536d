"""ELMo: a character-CNN word encoder under a two-layer bidirectional LSTM LM (Peters et al. 2018).

    embedpipe train elmo --store work/store --set size=small --set epochs=5
    embedpipe train elmo --store work/store --set size=base --nproc 8      # torchrun, one process per GPU

Trained from scratch on the token shards of build-text-assets (their vocabulary table names the ids).
Each word is read through its characters (its UTF-8 bytes between begin- and end-of-word markers), so
the model gives a vector to any word, seen or not; the softmax predicts the words seen ``min_count``
times or more, every other word is its <UNK> target. The forward LM predicts each next word, the
backward LM each previous one; the two share the character encoder and the softmax, and the loss is
the mean of the two directions' mean negative log-likelihoods.

Choices that every reader of the numbers should know:
- held-out split: sentences of the articles for which ``models.contextual.is_heldout(article_id, "")``
  holds never reach training. The token shards carry no source name (only article_id and doc), so the
  source key is ""; every model that asks is_heldout with that key holds out the same articles.
- training packs a shard's sentences, each as <S> words </S>, into one stream cut into rows of
  ``sequence_length`` tokens that overlap by one token, so every word is a forward target once and a
  backward target once per epoch. Context crosses sentence boundaries inside a row, as in the paper's
  training; predictions of the next sentence's <S> (and, backward, of the previous one's </S>) are
  not scored.
- held-out perplexity scores each sentence on its own, <S> to </S>: the forward LM predicts its words
  and </S>, the backward LM its words and <S>, <UNK> targets included. Both directions score the same
  number of tokens, so ``perplexity`` (the geometric mean of the two) is exp of ``loss``, the mean of
  the two mean negative log-likelihoods.
- contextual vectors are the scalar mix gamma * sum_j s_j h_j of the layers: h_0 the character
  encoder's output written twice (the size of the LSTM states), h_1.. the forward and backward states
  of each LSTM layer, concatenated. The paper learns s = softmax(w) and gamma per task; the export
  holds w = 0 (uniform s) and gamma = 1, and ``load(run, mix_weights=..., gamma=...)`` takes others.
- the softmax is a full one for small vocabularies and an adaptive softmax (Grave et al. 2017) for
  large ones and the base size: it gives exact, normalized probabilities, so the training loss and
  the held-out perplexity stay true perplexities, which a sampled softmax would not give.

On CUDA the steps run under models.base.autocast (bf16, or fp16 with loss scaling). Under torchrun
each process takes every world_size-th batch of an epoch, DistributedDataParallel averages the
gradients, and rank 0 writes the checkpoints and the exports.

What differs from the paper's bilm-tf: the LSTM state is not carried from one batch to the next,
cells and projections are not clipped (torch's LSTM has no clipping), and Adam is the default
optimizer (``--set optimizer=adagrad --set lr=0.2`` is the paper's).

Exports, into the run folder:
    elmo/model.safetensors   every weight, float32
    elmo/elmo_config.json    the settings, the architecture, the special tokens and the scalar mix
    elmo/words.json          the softmax vocabulary: <S>, </S>, <UNK>, then the words by frequency
    vectors.txt              each word's character-encoder vector (layer 0, once: projection_dim or
                             lstm_dim numbers), word2vec text format
                             (with vectors.safetensors and words.json, as every word model exports)
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from models import registry
from models.base import (
    CheckpointClock,
    Distributed,
    Meter,
    ModelConfig,
    TrainContext,
    TrainingInterrupted,
    autocast,
    clear_checkpoints,
    derive_seed,
    load_checkpoint,
    require,
    save_checkpoint,
    select_device,
)
from models.contextual import ContextualModel, is_heldout
from models.data import TokenShards, Vocabulary
from models.vectors import export_word_vectors
from storage import Dataset

WEIGHTS_FILE = "elmo/model.safetensors"
CONFIG_FILE = "elmo/elmo_config.json"
WORDS_FILE = "elmo/words.json"

HELDOUT_SOURCE = ""  # the token shards name no source: see the module docstring
HELDOUT_SENTENCES = 2_000  # held-out sentences scored at the end of training

# "auto" picks the adaptive softmax above this many words: a full softmax over 50k words already
# takes 2 * batch_size * sequence_length * 50k logits per step (1 GB at the default batch)
ADAPTIVE_ABOVE = 50_000

# --- characters ----------------------------------------------------------------------------------

PAD_CHAR = 0  # after the end-of-word marker, and every character of a padding position
# bytes 0..255 are ids 1..256
BEGIN_WORD = 257
END_WORD = 258
BEGIN_SENTENCE_CHAR = 259  # the one character of <S>
END_SENTENCE_CHAR = 260  # the one character of </S>
CHARACTERS = 261

# softmax ids of the special tokens; the words follow from id 3, most frequent first
BOS, EOS, UNK = 0, 1, 2
SPECIAL_TOKENS = ("<S>", "</S>", "<UNK>")


def character_ids(words: Sequence[str], max_characters: int) -> np.ndarray:
    """Each word as (max_characters,) character ids: begin-of-word, its UTF-8 bytes + 1, end-of-word, padding.

    A word longer than ``max_characters - 2`` bytes keeps its first bytes; the cut may split its last
    UTF-8 character, whose remaining bytes are still valid ids.
    """
    out = np.zeros((len(words), max_characters), np.int16)
    room = max_characters - 2
    for row, word in enumerate(words):
        data = np.frombuffer(word.encode("utf-8")[:room], np.uint8)
        out[row, 0] = BEGIN_WORD
        out[row, 1 : len(data) + 1] = data.astype(np.int16) + 1
        out[row, len(data) + 1] = END_WORD
    return out


def boundary_character_ids(max_characters: int) -> np.ndarray:
    """The rows of <S> and </S>: one character of their own between the word markers, (2, max_characters)."""
    out = np.zeros((2, max_characters), np.int16)
    out[:, 0] = BEGIN_WORD
    out[:, 1] = (BEGIN_SENTENCE_CHAR, END_SENTENCE_CHAR)
    out[:, 2] = END_WORD
    return out


# --- config --------------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    # trains on a laptop CPU in minutes: 256 filters, about 1.5M LSTM weights per direction
    "small": {
        "char_dim": 16,
        "filters": (32, 32, 64, 128),
        "highway_layers": 1,
        "lstm_dim": 256,
        "projection_dim": 128,
    },
    # the paper's: 2048 filters of widths 1-7, 2 highway layers, LSTMP 4096 cells projected to 512
    "base": {
        "char_dim": 16,
        "filters": (32, 32, 64, 128, 256, 512, 1024),
        "highway_layers": 2,
        "lstm_dim": 4096,
        "projection_dim": 512,
    },
}


@dataclass(frozen=True)
class Architecture:
    """The network's sizes, with the size preset and the overrides applied."""

    char_dim: int
    filters: tuple[int, ...]  # filters[k]: convolutions of width k + 1
    highway_layers: int
    lstm_dim: int
    projection_dim: int  # 0: no projection
    lstm_layers: int
    max_characters: int
    dropout: float
    softmax: str  # full or adaptive
    cutoffs: tuple[int, ...]  # adaptive softmax cluster boundaries, each below the vocabulary size

    @property
    def output_dim(self) -> int:
        """Size of the character encoder's output and of each direction's LSTM states."""
        return self.projection_dim or self.lstm_dim

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Architecture:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


@dataclass
class ElmoConfig(ModelConfig):
    """ELMo settings: a size preset, any of its sizes overridden, and the training schedule."""

    model = "elmo"
    size: Literal["small", "base"] = "small"  # small: CPU in minutes; base: the paper's sizes
    char_dim: int | None = None  # character embedding size, 1..256; None = the size's (16)
    filters: tuple[int, ...] = ()  # filters[k] = convolutions of width k + 1, each 0..4096; () = the size's
    highway_layers: int | None = None  # 0..8; None = the size's (small 1, base 2)
    lstm_dim: int | None = None  # LSTM cells per direction and layer, 8..16384; None = the size's
    # LSTMP projection of the states, also the encoder's output size: 0 = none, < lstm_dim; None = the size's
    projection_dim: int | None = None
    lstm_layers: int = 2  # LSTM layers per direction, 1..8 (the paper: 2)
    softmax: Literal["auto", "full", "adaptive"] = "auto"  # auto: adaptive for base or > 50,000 words
    # adaptive softmax clusters start at these word ids, increasing; those past the vocabulary are dropped
    adaptive_cutoffs: tuple[int, ...] = (20_000, 100_000)
    max_characters: int = 50  # characters per word with its two markers, 3..256 (the paper: 50)
    sequence_length: int = 20  # tokens per row, 4..1024 (the paper unrolls 20 steps)
    batch_size: int = 128  # rows per step and process, 1..65536
    optimizer: Literal["adam", "adagrad"] = "adam"  # the paper: adagrad at lr 0.2
    lr: float = 1e-3  # learning rate, (0, 10]
    epochs: int = 10  # passes over the training sentences, 1..1000 (the paper: 10)
    max_steps: int = 0  # stop after this many steps, even inside an epoch; 0 = run every epoch
    dropout: float = 0.1  # on the LSTM inputs and the softmax input, [0, 1)
    min_count: int = 3  # words seen fewer times are <UNK> targets (their characters still count), >= 1
    clip: float = 10.0  # gradient norm clip, 0 = off (the paper: 10)

    def validate(self) -> None:
        super().validate()
        require(self.size in PRESETS, "size", self.size, f"one of {', '.join(PRESETS)}")
        sizes = self.sizes()
        require(1 <= sizes["char_dim"] <= 256, "char_dim", self.char_dim, "between 1 and 256")
        require(
            len(sizes["filters"]) >= 1
            and all(0 <= n <= 4096 for n in sizes["filters"])
            and sum(sizes["filters"]) > 0,
            "filters",
            self.filters,
            "filter counts per width (1, 2, ...), each 0..4096, not all 0, for example 32,32,64,128",
        )
        require(0 <= sizes["highway_layers"] <= 8, "highway_layers", self.highway_layers, "between 0 and 8")
        require(8 <= sizes["lstm_dim"] <= 16384, "lstm_dim", self.lstm_dim, "between 8 and 16384")
        require(
            0 <= sizes["projection_dim"] < sizes["lstm_dim"],
            "projection_dim",
            self.projection_dim,
            f"0 (none) or below lstm_dim ({sizes['lstm_dim']})",
        )
        require(1 <= self.lstm_layers <= 8, "lstm_layers", self.lstm_layers, "between 1 and 8")
        require(
            len(self.adaptive_cutoffs) >= 1
            and all(c >= 1 for c in self.adaptive_cutoffs)
            and list(self.adaptive_cutoffs) == sorted(set(self.adaptive_cutoffs)),
            "adaptive_cutoffs",
            self.adaptive_cutoffs,
            "increasing word counts >= 1, for example 20000,100000",
        )
        require(
            max(3, len(sizes["filters"])) <= self.max_characters <= 256,
            "max_characters",
            self.max_characters,
            f"between {max(3, len(sizes['filters']))} (3, and no fewer than the widest filter) and 256",
        )
        require(
            4 <= self.sequence_length <= 1024, "sequence_length", self.sequence_length, "between 4 and 1024"
        )
        require(1 <= self.batch_size <= 65536, "batch_size", self.batch_size, "between 1 and 65536")
        require(0.0 < self.lr <= 10.0, "lr", self.lr, "in (0, 10]")
        require(1 <= self.epochs <= 1000, "epochs", self.epochs, "between 1 and 1000")
        require(self.max_steps >= 0, "max_steps", self.max_steps, ">= 0 (0 runs every epoch)")
        require(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "in [0, 1)")
        require(self.min_count >= 1, "min_count", self.min_count, ">= 1")
        require(self.clip >= 0.0, "clip", self.clip, ">= 0 (0 turns clipping off)")

    def sizes(self) -> dict[str, Any]:
        """The preset's sizes with the fields that are set replacing them."""
        sizes = dict(PRESETS[self.size]) if self.size in PRESETS else dict(PRESETS["small"])
        for name in ("char_dim", "highway_layers", "lstm_dim", "projection_dim"):
            if getattr(self, name) is not None:
                sizes[name] = getattr(self, name)
        if self.filters:
            sizes["filters"] = tuple(self.filters)
        return sizes

    def architecture(self, vocabulary_size: int) -> Architecture:
        """The network for a softmax over ``vocabulary_size`` words (special tokens included)."""
        softmax = self.softmax
        if softmax == "auto":
            softmax = "adaptive" if self.size == "base" or vocabulary_size > ADAPTIVE_ABOVE else "full"
        cutoffs = tuple(c for c in self.adaptive_cutoffs if c < vocabulary_size)
        if softmax == "adaptive" and not cutoffs:
            softmax = "full"  # train() warns: no cutoff is below the vocabulary size
        return Architecture(
            **self.sizes(),
            lstm_layers=self.lstm_layers,
            max_characters=self.max_characters,
            dropout=self.dropout,
            softmax=softmax,
            cutoffs=cutoffs if softmax == "adaptive" else (),
        )

    def describe(self) -> str:
        sizes = self.sizes()
        projection = f"/{sizes['projection_dim']}" if sizes["projection_dim"] else ""
        return f"{self.size} {self.lstm_layers}x{sizes['lstm_dim']}{projection}"


# --- the network ---------------------------------------------------------------------------------


class CharEncoder(nn.Module):
    """Characters of each word -> one vector: embeddings, max-pooled convolutions, highway, projection."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.embedding = nn.Embedding(CHARACTERS, arch.char_dim, padding_idx=PAD_CHAR)
        self.convolutions = nn.ModuleList(
            nn.Conv1d(arch.char_dim, count, width)
            for width, count in enumerate(arch.filters, start=1)
            if count
        )
        total = sum(arch.filters)
        self.highways = nn.ModuleList(nn.Linear(total, 2 * total) for _ in range(arch.highway_layers))
        with torch.no_grad():
            for layer in self.highways:
                # the gates start mostly shut: each layer first carries its input through
                layer.bias[total:].fill_(-1.0)
        self.projection = nn.Linear(total, arch.output_dim)

    def forward(self, chars: torch.Tensor) -> torch.Tensor:
        x = self.embedding(chars).transpose(1, 2)  # (N, E, C)
        h = torch.relu(torch.cat([conv(x).amax(dim=2) for conv in self.convolutions], dim=1))  # (N, F)
        for layer in self.highways:
            transform, gate = layer(h).chunk(2, dim=1)
            gate = torch.sigmoid(gate)
            h = gate * torch.relu(transform) + (1.0 - gate) * h
        return self.projection(h)  # (N, D)


def reversal_index(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, T) positions that reverse each row within its length and leave the padding after it in place."""
    positions = torch.arange(steps, device=lengths.device)[None, :]
    lengths = lengths[:, None]
    return torch.where(positions < lengths, lengths - 1 - positions, positions)


def reverse_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.gather(1, index[:, :, None].expand_as(x))


class BiLM(nn.Module):
    """The character encoder, a forward and a backward stack of LSTMs, and the softmax they share."""

    def __init__(self, arch: Architecture, vocabulary_size: int) -> None:
        super().__init__()
        self.arch = arch
        self.encoder = CharEncoder(arch)
        dim = arch.output_dim

        def lstm() -> nn.LSTM:
            return nn.LSTM(dim, arch.lstm_dim, proj_size=arch.projection_dim, batch_first=True)

        self.forward_lstms = nn.ModuleList(lstm() for _ in range(arch.lstm_layers))
        self.backward_lstms = nn.ModuleList(lstm() for _ in range(arch.lstm_layers))
        self.dropout = nn.Dropout(arch.dropout)
        if arch.softmax == "adaptive":
            self.softmax = nn.AdaptiveLogSoftmaxWithLoss(
                dim, vocabulary_size, list(arch.cutoffs), div_value=4.0
            )
        else:
            self.softmax = nn.Linear(dim, vocabulary_size)

    def states(
        self, chars: torch.Tensor, inverse: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Token vectors (B, T, D) and each layer's forward and backward states, (B, T, D) each.

        ``chars`` (U, C) are the characters of the batch's distinct tokens, ``inverse`` (B, T) the
        distinct token at each position: the encoder reads each distinct word of a batch once.
        """
        tokens = self.encoder(chars)[inverse]  # (B, T, D)
        index = reversal_index(lengths, tokens.shape[1])
        directions = []
        for lstms, inputs in (
            (self.forward_lstms, tokens),
            (self.backward_lstms, reverse_rows(tokens, index)),
        ):
            layers, h = [], inputs
            for depth, lstm in enumerate(lstms):
                out, _ = lstm(self.dropout(h))
                if depth > 0:
                    out = out + h  # residual connection from the layer below
                layers.append(out)
                h = out
            directions.append(layers)
        forward, backward = directions
        return tokens, forward, [reverse_rows(layer, index) for layer in backward]

    def forward(
        self, chars: torch.Tensor, inverse: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """Summed negative log-likelihoods (2,) of the forward and backward targets (B, T; -1 = none)."""
        _, forward, backward = self.states(chars, inverse, lengths)
        mask_forward, mask_backward = target_masks(targets)
        # position t of the forward LM predicts t + 1; position t of the backward LM predicts t - 1
        hidden = torch.cat([forward[-1][:, :-1].flatten(0, 1), backward[-1][:, 1:].flatten(0, 1)])
        wanted = torch.cat([targets[:, 1:].flatten(), targets[:, :-1].flatten()])
        scored = torch.cat([mask_forward.flatten(), mask_backward.flatten()])
        direction = torch.cat(
            [
                torch.zeros_like(mask_forward, dtype=torch.long),
                torch.ones_like(mask_backward, dtype=torch.long),
            ]
        ).flatten()
        hidden = self.dropout(hidden)
        if isinstance(self.softmax, nn.AdaptiveLogSoftmaxWithLoss):
            # the adaptive softmax takes only real targets
            nll = -self.softmax(hidden[scored], wanted[scored]).output.float()
            direction = direction[scored]
        else:
            logits = self.softmax(hidden).float()  # (2 B (T - 1), V)
            nll = F.cross_entropy(logits, wanted.masked_fill(~scored, -100), reduction="none")
        return torch.zeros(2, device=nll.device).index_add_(0, direction, nll)


def target_masks(targets: torch.Tensor | np.ndarray):
    """Which forward (B, T-1: of targets[:, 1:]) and backward (of targets[:, :-1]) targets are scored.

    A pair of real positions is scored, except the forward LM predicting <S> and the backward LM
    predicting </S>: across a sentence boundary inside a packed row, those are given.
    """
    valid = targets >= 0
    both = valid[:, 1:] & valid[:, :-1]
    return both & (targets[:, 1:] != BOS), both & (targets[:, :-1] != EOS)


# --- the training data ---------------------------------------------------------------------------


def heldout_rows(dataset: Dataset, path: str, sentences: int) -> np.ndarray:
    """Whether each sentence of one token-shard file belongs to a held-out article, (sentences,) bool."""
    table = pq.read_table(path, columns=["article_id"], filesystem=dataset.fs)
    articles = table.column("article_id").to_numpy()
    if len(articles) != sentences:
        raise ValueError(
            f"{path}: {len(articles)} article ids for {sentences} sentences; rebuild the token shards"
        )
    # one hash per article, not per sentence
    unique, inverse = np.unique(articles, return_inverse=True)
    held = np.fromiter((is_heldout(int(a), HELDOUT_SOURCE) for a in unique), bool, len(unique))
    return held[inverse]


@dataclass
class Batch:
    """One step's rows as the network takes them, with the counts of what they score."""

    chars: torch.Tensor  # (U, C) characters of the distinct tokens
    inverse: torch.Tensor  # (B, T) distinct token at each position
    lengths: torch.Tensor  # (B,) real positions per row
    targets: torch.Tensor  # (B, T) softmax ids, -1 at padding
    forward_targets: int
    backward_targets: int
    words: int  # word tokens (not <S>, </S>) among the forward targets


def make_batch(
    tokens: np.ndarray, lengths: np.ndarray, targets: np.ndarray, char_rows, device: torch.device
) -> Batch:
    """Rows of token ids (B, T), their lengths and softmax targets -> a Batch.

    ``char_rows(ids)`` gives the characters of distinct token ids, (U, C).
    """
    unique, inverse = np.unique(tokens, return_inverse=True)
    mask_forward, mask_backward = target_masks(targets)
    words = int((mask_forward & (targets[:, 1:] != EOS)).sum())
    return Batch(
        chars=char_rows(unique).to(device, torch.long),
        inverse=torch.from_numpy(inverse.reshape(tokens.shape)).to(device),
        lengths=torch.from_numpy(lengths.astype(np.int64)).to(device),
        targets=torch.from_numpy(targets.astype(np.int64)).to(device),
        forward_targets=int(mask_forward.sum()),
        backward_targets=int(mask_backward.sum()),
        words=words,
    )


class TrainingData:
    """The training sentences of the token shards: one stream per shard, cut into rows, drawn in batches.

    Token ids in a stream are the token shards' vocabulary ids, with ``vocabulary_size`` for <S>,
    ``vocabulary_size + 1`` for </S> and ``vocabulary_size + 2`` for padding. Sentences of held-out
    articles and empty sentences are left out. Each epoch visits the shards in an order drawn from
    (seed, epoch) and each shard's rows in an order drawn from (seed, epoch, shard), so any step's
    batch is a function of its position alone.
    """

    def __init__(
        self,
        dataset: Dataset,
        vocabulary_size: int,
        sequence_length: int,
        batch_size: int,
        *,
        cache_tokens: int = 100_000_000,
    ) -> None:
        self.dataset = dataset
        self.shards = TokenShards(dataset, cache_tokens=1)  # the streams below are the cache
        self.begin_token, self.end_token, self.pad_token = (vocabulary_size + k for k in range(3))
        self.sequence_length = sequence_length
        self.batch_size = batch_size
        self.cache_tokens = cache_tokens
        self._streams: OrderedDict[int, np.ndarray] = OrderedDict()
        self._order: tuple[tuple[int, int], np.ndarray] | None = None
        self.counts = {"sentences": 0, "words": 0, "heldout_sentences": 0, "heldout_words": 0, "empty": 0}
        self.rows: list[int] = []
        # one pass to size every shard: the plan must be known before the first step
        # TODO: for dumps of thousands of shards this pass takes minutes before the first step; keep
        # the row counts in the run folder so that a resumed run skips it
        for shard in range(len(self.shards)):
            self.rows.append(self._row_count(len(self._build(shard, count=True))))

    def _row_count(self, stream_length: int) -> int:
        # rows overlap by one token: row k covers stream[k (T-1) : k (T-1) + T]
        return 0 if stream_length < 2 else math.ceil((stream_length - 1) / (self.sequence_length - 1))

    def _build(self, shard: int, count: bool = False) -> np.ndarray:
        ids, offsets = self.shards.read(shard)
        lengths = np.diff(offsets)
        held = heldout_rows(self.dataset, self.shards.files[shard], len(lengths))
        keep = ~held & (lengths > 0)
        if count:
            self.counts["sentences"] += int(keep.sum())
            self.counts["words"] += int(lengths[keep].sum())
            self.counts["heldout_sentences"] += int((held & (lengths > 0)).sum())
            self.counts["heldout_words"] += int(lengths[held].sum())
            self.counts["empty"] += int((lengths == 0).sum())

        # each kept sentence becomes <S> w1 .. wn </S>
        sizes = lengths[keep] + 2
        ends = np.cumsum(sizes)
        starts = ends - sizes
        stream = np.empty(int(sizes.sum()), np.int32)
        marker = np.zeros(len(stream), bool)
        marker[starts] = marker[ends - 1] = True
        stream[starts] = self.begin_token
        stream[ends - 1] = self.end_token
        stream[~marker] = ids[np.repeat(keep, lengths)]

        self._streams[shard] = stream
        while len(self._streams) > 1 and sum(len(s) for s in self._streams.values()) > self.cache_tokens:
            self._streams.popitem(last=False)
        return stream

    def stream(self, shard: int) -> np.ndarray:
        if shard in self._streams:
            self._streams.move_to_end(shard)
            return self._streams[shard]
        return self._build(shard)

    def chunks(self) -> int:
        """Batches per epoch, over every process."""
        return sum(math.ceil(rows / self.batch_size) for rows in self.rows)

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        """(chunks, 2) shard and batch index of each batch of an epoch, in the order they are trained."""
        shard_order = np.random.default_rng(derive_seed(seed, epoch)).permutation(len(self.rows))
        parts = [
            np.stack([np.full(n, shard), np.arange(n)], axis=1)
            for shard in shard_order
            if (n := math.ceil(self.rows[shard] / self.batch_size))
        ]
        return np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)

    def batch(self, seed: int, epoch: int, shard: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows (B, T) of token ids, padded, and their lengths (B,)."""
        if self._order is None or self._order[0] != (epoch, shard):
            rng = np.random.default_rng(derive_seed(seed, epoch, shard))
            self._order = ((epoch, shard), rng.permutation(self.rows[shard]))
        rows = self._order[1][index * self.batch_size : (index + 1) * self.batch_size]
        stream = self.stream(shard)
        steps = self.sequence_length
        starts = rows.astype(np.int64) * (steps - 1)
        positions = starts[:, None] + np.arange(steps)[None, :]
        tokens = np.where(
            positions < len(stream), stream[np.minimum(positions, len(stream) - 1)], self.pad_token
        )
        return tokens.astype(np.int64), np.minimum(len(stream) - starts, steps)


# --- checkpoints of the optimizer ----------------------------------------------------------------


def optimizer_tensors(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """The optimizer's state as named tensors (for safetensors) and its parameter groups (for JSON)."""
    state = optimizer.state_dict()
    tensors = {
        f"optimizer/{index}/{key}": value
        for index, values in state["state"].items()
        for key, value in values.items()
        if torch.is_tensor(value)
    }
    groups = [
        {k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state["param_groups"]
    ]
    return tensors, groups


def restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], groups: list[dict[str, Any]]
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer/"):
            _, index, key = name.split("/", 2)
            # step counts stay on the CPU, where a non-capturable Adam keeps them
            state.setdefault(int(index), {})[key] = value.cpu() if key == "step" else value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _checkpoint_due(clock: CheckpointClock, dist: Distributed, step: int, epoch_end: bool) -> bool:
    """Whether to checkpoint after this step; under torchrun rank 0's clock decides for every process."""
    due = clock.due(step, epoch_end)
    if dist.world_size > 1:
        import torch.distributed as torch_dist

        # NCCL broadcasts only tensors on the GPU
        device = torch.device("cuda", dist.local_rank) if torch.cuda.is_available() else torch.device("cpu")
        flag = torch.tensor([float(due)], device=device)
        torch_dist.broadcast(flag, src=0)
        due = bool(flag.item())
    return due


# --- the loaded model ----------------------------------------------------------------------------


class ElmoEmbedder(ContextualModel):
    """A trained biLM: words in context -> the scalar mix of its layers; held-out perplexity.

    ``mix_weights`` are the paper's unnormalized w_j, one per layer (character layer first); the
    layers are weighted by s = softmax(w) and the sum scaled by ``gamma``. None: w = 0, uniform.
    """

    name = "elmo"

    def __init__(
        self,
        net: BiLM,
        words: list[str],
        device: torch.device | str = "cpu",
        *,
        mix_weights: Sequence[float] | None = None,
        gamma: float = 1.0,
    ) -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.arch = net.arch
        self.words = list(words)
        self.index = {word: i for i, word in enumerate(self.words) if i >= len(SPECIAL_TOKENS)}
        self.boundaries = torch.from_numpy(boundary_character_ids(self.arch.max_characters))
        self.set_mix(mix_weights, gamma)

    @property
    def dim(self) -> int:
        return 2 * self.arch.output_dim

    @property
    def layer_count(self) -> int:
        return self.arch.lstm_layers + 1

    def set_mix(self, mix_weights: Sequence[float] | None = None, gamma: float = 1.0) -> None:
        weights = np.zeros(self.layer_count) if mix_weights is None else np.asarray(mix_weights, np.float64)
        if weights.shape != (self.layer_count,) or not np.isfinite(weights).all():
            raise ValueError(
                f"mix_weights must hold {self.layer_count} finite numbers (the character layer, then each "
                f"LSTM layer), got {list(mix_weights or [])}"
            )
        if not math.isfinite(gamma):
            raise ValueError(f"gamma must be a finite number, got {gamma!r}")
        exponentials = np.exp(weights - weights.max())
        self.mix = exponentials / exponentials.sum()
        self.gamma = float(gamma)

    def _batches(self, sentences: list[list[str]], budget: int = 8_192):
        """Batches of sentence indices, by length, of at most ``budget`` tokens each."""
        order = sorted(range(len(sentences)), key=lambda k: len(sentences[k]))
        batch: list[int] = []
        for k in order:
            if batch and (len(batch) + 1) * (len(sentences[k]) + 2) > budget:
                yield batch
                batch = []
            batch.append(k)
        if batch:
            yield batch

    def _batch(self, sentences: list[list[str]]) -> Batch:
        """<S> words </S> per sentence, padded; local token ids: 0 <S>, 1 </S>, then the distinct words."""
        distinct = list(dict.fromkeys(w for s in sentences for w in s))
        local = {word: k + 2 for k, word in enumerate(distinct)}
        steps = max(len(s) for s in sentences) + 2
        tokens = np.zeros((len(sentences), steps), np.int64)
        targets = np.full((len(sentences), steps), -1, np.int64)
        for row, sentence in enumerate(sentences):
            tokens[row, 1 : len(sentence) + 2] = [*(local[w] for w in sentence), 1]
            targets[row, : len(sentence) + 2] = [BOS, *(self.index.get(w, UNK) for w in sentence), EOS]
        lengths = np.array([len(s) + 2 for s in sentences])
        chars = torch.cat(
            [self.boundaries, torch.from_numpy(character_ids(distinct, self.arch.max_characters))]
        )
        return make_batch(
            tokens, lengths, targets, lambda unique: chars[torch.from_numpy(unique)], self.device
        )

    @torch.inference_mode()
    def layers(self, sentences: list[list[str]]) -> list[np.ndarray]:
        """Every layer for every word: a (layers, len(words), dim) float32 array per sentence.

        Layer 0 is the character encoder's vector written twice, each later layer the forward and
        backward LSTM states; each sentence is read between <S> and </S>, which are dropped here.
        """
        out: list[np.ndarray] = [np.zeros((self.layer_count, 0, self.dim), np.float32)] * len(sentences)
        filled = [k for k, s in enumerate(sentences) if s]
        for group in self._batches([sentences[k] for k in filled]):
            indices = [filled[k] for k in group]
            batch = self._batch([list(sentences[k]) for k in indices])
            with autocast(self.device):
                tokens, forward, backward = self.net.states(batch.chars, batch.inverse, batch.lengths)
            stacked = torch.stack(
                [torch.cat([tokens, tokens], -1)]
                + [torch.cat([f, b], -1) for f, b in zip(forward, backward, strict=True)],
                dim=1,
            )  # (B, layers, T, 2 D)
            stacked = stacked.float().cpu().numpy()
            for row, k in enumerate(indices):
                out[k] = stacked[row, :, 1 : len(sentences[k]) + 1]
        return out

    def encode_words(self, sentences: list[list[str]]) -> list[np.ndarray]:
        weights = (self.gamma * self.mix).astype(np.float32)
        return [np.tensordot(weights, layers, axes=1).astype(np.float32) for layers in self.layers(sentences)]

    @torch.inference_mode()
    def word_vectors(self, words: Sequence[str], batch: int = 4_096) -> np.ndarray:
        """The character encoder's vector of each word, (len(words), output_dim): context-free layer 0."""
        parts = [np.zeros((0, self.arch.output_dim), np.float32)]
        for start in range(0, len(words), batch):
            chars = torch.from_numpy(character_ids(words[start : start + batch], self.arch.max_characters))
            with autocast(self.device):
                vectors = self.net.encoder(chars.to(self.device, torch.long))
            parts.append(vectors.float().cpu().numpy())
        return np.concatenate(parts)

    @torch.inference_mode()
    def score(self, sentences: list[list[str]]) -> dict[str, float]:
        """Perplexities of the two LMs on sentences, each read alone from <S> to </S> (see the module doc)."""
        nll = torch.zeros(2, dtype=torch.float64)
        counts = np.zeros(2, np.int64)
        filled = [s for s in sentences if s]
        for group in self._batches(filled):
            batch = self._batch([filled[k] for k in group])
            with autocast(self.device):
                sums = self.net(batch.chars, batch.inverse, batch.lengths, batch.targets)
            nll += sums.double().cpu()
            counts += (batch.forward_targets, batch.backward_targets)
        if counts.min() == 0:
            nan = float("nan")
            return {
                "perplexity_forward": nan,
                "perplexity_backward": nan,
                "perplexity": nan,
                "loss": nan,
                "examples": 0,
                "tokens": 0,
            }
        forward, backward = (nll.numpy() / counts).tolist()
        return {
            "perplexity_forward": math.exp(forward),
            "perplexity_backward": math.exp(backward),
            "perplexity": math.exp((forward + backward) / 2),
            "loss": (forward + backward) / 2,
            "examples": len(filled),
            "tokens": int(counts[0]),
        }

    def heldout(self, assets: Mapping[str, Dataset], max_examples: int = 2_000) -> dict[str, float]:
        """Perplexities on the first ``max_examples`` held-out sentences of assets["tokens"]."""
        return self.score(heldout_sentences(assets, max_examples))


def heldout_sentences(assets: Mapping[str, Dataset], max_examples: int) -> list[list[str]]:
    """The non-empty sentences of the held-out articles of assets["tokens"], in shard order, as words."""
    if "tokens" not in assets:
        raise KeyError(
            f"elmo scores held-out text from assets['tokens'] (token shards); got {sorted(assets)}"
        )
    dataset = assets["tokens"]
    tokens = Vocabulary.from_dataset(dataset).tokens
    shards = TokenShards(dataset, cache_tokens=1)
    sentences: list[list[str]] = []
    for shard in range(len(shards)):
        if len(sentences) >= max_examples:
            break
        ids, offsets = shards.read(shard)
        held = np.flatnonzero(heldout_rows(dataset, shards.files[shard], len(offsets) - 1))
        for k in held:
            if offsets[k + 1] > offsets[k]:
                sentences.append([tokens[i] for i in ids[offsets[k] : offsets[k + 1]]])
                if len(sentences) >= max_examples:
                    break
    return sentences


# --- entry points --------------------------------------------------------------------------------


def train(config: ElmoConfig, assets: Mapping[str, Dataset], ctx: TrainContext) -> dict[str, Any]:
    """Train the biLM on the token shards, export it (elmo/, vectors.txt), and return the run's metrics."""
    device, dist, options, logger = ctx.device, ctx.dist, ctx.options, ctx.logger
    dataset = assets["tokens"]
    source = Vocabulary.from_dataset(dataset)
    vocab, remap = source.prune(config.min_count)
    if len(vocab) < 2:
        raise ValueError(f"only {len(vocab)} words are seen {config.min_count}+ times; lower min_count")
    words = [*SPECIAL_TOKENS, *vocab.tokens]
    arch = config.architecture(len(words))
    if config.softmax == "adaptive" and arch.softmax == "full":
        logger.warning(
            f"elmo: no adaptive_cutoffs {config.adaptive_cutoffs} is below the vocabulary size "
            f"({len(words):,}); using a full softmax"
        )

    data = TrainingData(dataset, len(source), config.sequence_length, config.batch_size)
    counts = data.counts
    if counts["words"] == 0:
        raise ValueError(f"{dataset.name}: no sentence outside the held-out articles has a word to train on")
    chunks = data.chunks()
    if chunks < dist.world_size:
        raise ValueError(
            f"{chunks} batches of {config.batch_size} rows for {dist.world_size} processes; "
            "lower batch_size or the process count"
        )
    # each process takes every world_size-th batch; the last chunks % world_size of an epoch are left out
    steps_per_epoch = chunks // dist.world_size
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    logger.info(
        f"elmo: {counts['sentences']:,} sentences ({counts['words']:,} words) to train on, "
        f"{counts['heldout_sentences']:,} held-out sentences ({counts['heldout_words']:,} words) left out; "
        f"{len(vocab):,} words seen {config.min_count}+ times, {arch.softmax} softmax; "
        f"{steps_per_epoch:,} steps per epoch, {total_steps:,} in all"
    )

    # the targets and the characters of every token id of the streams
    target_of = np.concatenate([np.where(remap >= 0, remap + len(SPECIAL_TOKENS), UNK), [BOS, EOS, -1]])
    char_table = torch.from_numpy(
        np.concatenate(
            [
                character_ids(source.tokens, config.max_characters),
                boundary_character_ids(config.max_characters),
                np.zeros((1, config.max_characters), np.int16),
            ]
        )
    ).to(device)

    def char_rows(unique: np.ndarray) -> torch.Tensor:
        return char_table[torch.from_numpy(unique).to(device)]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(config.seed))
        net = BiLM(arch, len(words)).to(device)
    if config.optimizer == "adagrad":
        optimizer = torch.optim.Adagrad(net.parameters(), lr=config.lr, initial_accumulator_value=1.0)
    else:
        optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    half = device.type == "cuda" and not torch.cuda.is_bf16_supported()  # fp16 autocast needs loss scaling
    scaler = torch.amp.GradScaler("cuda", enabled=half)

    first_step, state = 0, {"words": 0, "totals": {}, "history": []}
    checkpoint = load_checkpoint(ctx.run, device)
    if checkpoint is not None:
        net.load_state_dict(
            {k[len("model/") :]: v for k, v in checkpoint.tensors.items() if k.startswith("model/")}
        )
        restore_optimizer(optimizer, checkpoint.tensors, checkpoint.state["optimizer"])
        if half and checkpoint.state.get("scaler"):
            scaler.load_state_dict(checkpoint.state["scaler"])
        first_step, state = checkpoint.step, checkpoint.state
        logger.info(f"elmo: resuming at step {first_step:,} of {total_steps:,} from its checkpoint")

    module: nn.Module = net
    if dist.world_size > 1:
        module = nn.parallel.DistributedDataParallel(
            net,
            device_ids=[device.index] if device.type == "cuda" else None,
            # the adaptive softmax's tail clusters get no gradient in a batch without their words
            find_unused_parameters=arch.softmax == "adaptive",
        )
    parameters = sum(p.numel() for p in net.parameters())
    logger.info(f"elmo: {parameters:,} parameters ({config.describe()}), on {device} x {dist.world_size}")

    meter = Meter(
        logger,
        "elmo",
        unit="words",
        # this process's share of the words of every step to run
        total=math.ceil(counts["words"] * total_steps / (steps_per_epoch * dist.world_size)),
        every_s=options.log_every_s,
        done=state["words"],
        totals=state["totals"],
        history=state["history"],
    )
    clock = CheckpointClock(options)
    order, order_epoch = np.zeros((0, 2), np.int64), -1
    module.train()
    logged = first_step >= total_steps  # nothing left to log

    for step in range(first_step, total_steps):
        epoch, position = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order, order_epoch = data.epoch_order(config.seed, epoch), epoch
        shard, index = (int(v) for v in order[position * dist.world_size + dist.rank])
        tokens, lengths = data.batch(config.seed, epoch, shard, index)
        batch = make_batch(tokens, lengths, target_of[tokens], char_rows, device)

        # dropout draws from the global generator: seed it from the step's position
        torch.manual_seed(derive_seed(config.seed, epoch, position, dist.rank))
        with autocast(device):
            nll = module(batch.chars, batch.inverse, batch.lengths, batch.targets)
        # each process's mean over its own targets; DDP averages the gradients of the processes
        loss = (nll[0] / max(batch.forward_targets, 1) + nll[1] / max(batch.backward_targets, 1)) / 2
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(net.parameters(), config.clip)
        scaler.step(optimizer)
        scaler.update()

        meter.update(batch.words, loss.detach(), 1)
        logged = dist.is_main and meter.maybe_log(epoch=epoch + 1)
        # the last step checkpoints as an epoch end does, so keep_final_checkpoint has one to keep
        epoch_end = position == steps_per_epoch - 1 or step + 1 == total_steps
        if _checkpoint_due(clock, dist, step + 1, epoch_end):
            if dist.is_main:
                tensors, groups = optimizer_tensors(optimizer)
                tensors |= {f"model/{k}": v for k, v in net.state_dict().items()}
                state = {
                    "words": meter.done,
                    "totals": meter.totals,
                    "history": meter.history,
                    "optimizer": groups,
                    "scaler": scaler.state_dict() if half else {},
                }
                save_checkpoint(ctx.run, step + 1, tensors, state, keep=options.keep_checkpoints)
            dist.barrier()
            clock.mark()
            if clock.stop_requested(step + 1) and step + 1 < total_steps:
                raise TrainingInterrupted(f"elmo: stopped after step {step + 1} as asked")

    if dist.is_main and not logged:  # the steps since the last line
        meter.maybe_log(force=True, epoch=order_epoch + 1)
    seconds = meter.elapsed
    # words trained by every process since this one started (a resumed run counts from its resume)
    trained = dist.sum_(torch.tensor([float(meter.counted)], device=device))
    metrics: dict[str, Any] = {
        "steps": total_steps,
        "epochs": config.epochs,
        "epochs_trained": round(total_steps / steps_per_epoch, 4),  # below epochs when max_steps stops it
        "vocabulary": len(vocab),
        "parameters": parameters,
        # rank 0's count times the processes: each trains on an equal share of the batches
        "words": int(meter.done) * dist.world_size,
        "seconds": round(seconds, 3),
        "words_per_s": round(float(trained.item()) / max(seconds, 1e-9), 1),
        "final_loss": meter.history[-1]["loss"] if meter.history else None,
        "training_sentences": counts["sentences"],
        "heldout_sentences": counts["heldout_sentences"],
        "softmax": arch.softmax,
        "history": meter.history,
        "processes": dist.world_size,
        "device": str(device),
    }
    if dist.is_main:
        embedder = ElmoEmbedder(net, words, device)
        export(ctx.run, config, embedder, vocab.tokens)
        scores = embedder.heldout(assets, HELDOUT_SENTENCES)
        for key in ("perplexity_forward", "perplexity_backward", "perplexity"):
            metrics[f"heldout_{key}"] = scores[key] if scores["examples"] else None
        metrics["heldout_examples"] = scores["examples"]
        logger.info(
            f"elmo: held-out perplexity {scores['perplexity']:.1f} "
            f"(forward {scores['perplexity_forward']:.1f}, backward {scores['perplexity_backward']:.1f}) "
            f"on {scores['examples']:,} sentences"
        )
        clear_checkpoints(ctx.run, keep_last=options.keep_final_checkpoint)
    dist.barrier()
    return metrics


def export(run: Dataset, config: ElmoConfig, embedder: ElmoEmbedder, vocabulary: list[str]) -> None:
    """Write elmo/ (weights, config, softmax vocabulary) and the layer-0 vectors in word2vec format."""
    weights = {k: v.detach().float().cpu().contiguous() for k, v in embedder.net.state_dict().items()}
    run.write_bytes(WEIGHTS_FILE, save_safetensors(weights))
    run.write_json(
        CONFIG_FILE,
        {
            "config": config.to_dict(),
            "architecture": asdict(embedder.arch),
            "vocabulary_size": len(embedder.words),
            "special_tokens": list(SPECIAL_TOKENS),
            "characters": {
                "ids": "UTF-8 byte + 1; 0 padding",
                "begin_word": BEGIN_WORD,
                "end_word": END_WORD,
                "begin_sentence": BEGIN_SENTENCE_CHAR,
                "end_sentence": END_SENTENCE_CHAR,
            },
            # the paper learns these per task: w (softmax-normalized to s) and gamma
            "mix": {"weights": [0.0] * embedder.layer_count, "gamma": 1.0},
        },
    )
    run.write_bytes(WORDS_FILE, json.dumps(embedder.words, ensure_ascii=False).encode())
    export_word_vectors(run, vocabulary, embedder.word_vectors(vocabulary))


def load(
    run: Dataset,
    *,
    device: str = "auto",
    mix_weights: Sequence[float] | None = None,
    gamma: float | None = None,
) -> ElmoEmbedder:
    """The exported biLM of a run, with the export's (uniform) scalar mix or ``mix_weights`` and ``gamma``."""
    if not run.fs.exists(run.file(WEIGHTS_FILE)):
        raise FileNotFoundError(f"{run.name} has no {WEIGHTS_FILE}; train it again to export the model")
    meta = run.read_json(CONFIG_FILE)
    arch = Architecture.from_dict(meta["architecture"])
    words = json.loads(run.fs.cat_file(run.file(WORDS_FILE)).decode())
    net = BiLM(arch, len(words))
    net.load_state_dict(load_safetensors(run.fs.cat_file(run.file(WEIGHTS_FILE))))
    mix = meta.get("mix", {})
    return ElmoEmbedder(
        net,
        words,
        select_device(device),
        mix_weights=mix.get("weights") if mix_weights is None else mix_weights,
        gamma=mix.get("gamma", 1.0) if gamma is None else gamma,
    )


SPEC = registry.ModelSpec(
    name="elmo",
    family="contextual",
    summary="ELMo: character-CNN + 2-layer biLSTM language model, vectors from a scalar mix of its layers",
    config=ElmoConfig,
    needs=(registry.TOKENS,),
    train=train,
    load=load,
    evaluations=("contextual",),
    distributed=True,
    modules=("models.base", "models.data", "models.vectors", "models.contextual"),
)
