"""word2vec: CBOW and skip-gram with negative sampling (Mikolov et al. 2013).

    embedpipe train word2vec --store work/store --set mode=cbow --set dim=100 --set epochs=5

Trained from the vocabulary and token shards of build-text-assets, as the word2vec tool and gensim
train: frequent words are subsampled, each center word draws its window from 1..window, noise words
come from the unigram distribution raised to 0.75, and the learning rate falls linearly from lr to
min_lr over all epochs. Exports vectors.txt (word2vec text format) into the run folder.

Two backends train the same model (``backend``; auto: numba on the CPU, torch on a GPU):

numba (models/native.py) is the C tool's algorithm compiled: one pair at a time, each reading the
rows the previous pairs wrote, one chunk of ``batch_words`` tokens per thread, the threads sharing
the matrices without locks (as gensim's workers do).

torch batches a chunk into large tensor operations, for GPUs:
- one step takes a chunk of ``batch_words`` tokens (whole sentences): every center of the chunk is
  scored against the same parameters, and the updates are summed into the rows with index_add_;
- so a frequent word's row takes hundreds of updates of one step at once (as a noise word above
  all), where one-at-a-time SGD sees its sigmoid saturate after a few. Skip-gram bounds each row's
  summed update by the curvature it sums (lr x sum of sigmoid'(score) |x|^2, STEP_LIMIT); a row under
  the bound, as a rare word's is, takes plain SGD;
- skip-gram predicts the contexts from the center (as fastText does; the C tool predicts the center
  from each context, the same pairs in the other direction), ``negative`` noise words per pair.
  (Sharing one draw among a center's contexts, weighted by their number, was tried: it pushed every
  vector toward one common direction, mean cosine 0.97 after one epoch of the WordNet glosses.)

The random draws of a chunk come from a generator seeded by (seed, epoch, chunk), so a run resumed
from a checkpoint draws what the uninterrupted run drew (exactly so with one numba thread; with
several, their interleaving changes the last bits, as with gensim's workers).

Several processes (torchrun): each takes its contiguous share of the chunks and the parameters are
averaged every ``sync_every`` steps and at each epoch end. One GPU already trains far faster than the
token shards of a Wikipedia dump can be read, so this pays only for very large corpora.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from models import native, registry
from models.base import (
    CheckpointClock,
    Distributed,
    Meter,
    ModelConfig,
    TrainContext,
    TrainingInterrupted,
    clear_checkpoints,
    derive_seed,
    generator,
    host_tensor,
    load_checkpoint,
    require,
    save_checkpoint,
)
from models.data import TokenShards, Vocabulary, chunk_bounds
from models.vectors import export_word_vectors, load_embedding
from storage import Dataset

# Tokens per step. Every center of a step is scored against the same parameters and the updates are
# summed into the rows (bounded by STEP_LIMIT for skip-gram). On the CPU the size matters little once
# bounded: skip-gram 132k words/s at 2,048 tokens, 131k at 1,024 and 512 (CPU time, one core, bench
# corpus below, 2026-12); it falls to 57k at 4,096 and 8,192, whose tensors outgrow the caches. On a
# GPU a step of 8,192 tokens is a few dozen kernels, well under a millisecond.
CPU_BATCH_WORDS = 2_048
GPU_BATCH_WORDS = 8_192
# Tokens per chunk of the numba backend, one chunk a thread at a time (gensim's batch_words): large
# enough that handing a chunk to a thread costs nothing next to training it
NUMBA_BATCH_WORDS = 10_000
CHUNKS_PER_THREAD = 4  # chunks handed to each numba thread per step (NumbaChunks)

# The largest lr x curvature a row's summed update may take in one step (bounded_steps). A gradient
# step of size lr on a loss of curvature c overshoots the minimum where lr c > 1 and diverges where
# lr c > 2; a row's summed losses have a curvature of at most sum sigmoid'(score) |x|^2 over its
# entries (x: the vector on the other side of each), so at 1 no row's step passes the minimum of its
# quadratic model, whichever way its entries point.
#
# Measured 2026-12 on bench/static_embeddings.py's corpus (the English sample dumps and the 117,659
# WordNet glosses: 1.9M tokens, 23,360 words at min count 5), skip-gram dim 100, window 5, negative 5,
# sample 1e-3, 5 epochs, lr 0.025 decaying linearly, 2,048 tokens a step, 1 thread, 2 shared cores.
# Unbounded, lr x that sum was already 2.9 at step 25 for the output row of "the" (723 entries in the
# step) and between 3 and 15 for the most frequent words' rows through step 450; the step's loss per
# pair jumped to 27 at step 475 and to 2e4 at step 625 (epoch 1 of 5), and the vectors scored analogy
# 0.004, WS353 0.078. One epoch survived only because its lr falls 5 times as fast. Candidates, as
# analogy / WS353 / SimLex-999 (gensim on the same sentences: 0.070 / 0.435 / 0.227), final loss:
#   this bound, STEP_LIMIT 1                          0.063 / 0.466 / 0.215   2.17
#   this bound, STEP_LIMIT 2                          0.067 / 0.477 / 0.217   2.18
#   this bound, output rows only                      0.073 / 0.431 / 0.216   2.28
#   this bound at 512 tokens a step                   0.067 / 0.456 / 0.218   2.30
#   this bound at 8,192 tokens a step (the GPU's)     0.057 / 0.432 / 0.218   2.24
#   unbounded at 512 tokens a step                    0.069 / 0.445 / 0.219   2.25
#   skip a score beyond +-6, as gensim's MAX_EXP does 0.064 / 0.444 / 0.234   10.0 (rows blown, frozen)
#   each row's update divided by its entries          0.001 / -0.004 / -0.006 2.67 (learns nothing)
#   noise rows' updates divided by their entries      0.014 / 0.486 / 0.169   4.11
# Unbounded at 512 tokens trains here, with a quarter of the entries per row, but 8,000 glosses alone
# diverged at 8,192 tokens (test_word_models.py). The bound also holds fastText's n-gram rows, which
# many words of a step share: its loss had reached 1e18; bounded, 2.30 after 5 epochs.
STEP_LIMIT = 1.0


@dataclass
class WindowConfig(ModelConfig):
    """Settings of the models trained over windows of the token shards (word2vec, fastText)."""

    dim: int = 100  # vector size, 2..4096 (gensim: vector_size)
    window: int = 5  # largest distance to a context word, 1..100; each center draws its own from 1..window
    negative: int = 5  # noise words per center, 1..100
    ns_exponent: float = 0.75  # noise distribution = unigram counts ** ns_exponent, -1..1
    sample: float = 1e-3  # subsampling threshold: a word of frequency f > sample is kept with p = (sqrt(f/sample)+1) sample/f; 0 = off
    min_count: int = 5  # words seen fewer times are dropped, >= 1
    epochs: int = 5  # passes over the token shards, 1..1000
    lr: float = 0.025  # learning rate at the start (gensim: alpha), (0, 10]
    min_lr: float = 0.0001  # learning rate at the end, reached linearly, 0..lr
    backend: Literal["auto", "numba", "torch"] = "auto"  # auto: numba on the CPU, torch on a GPU
    batch_words: int = 0  # tokens per chunk, 256..2^20; 0 = auto (numba 10,000; torch CPU 2,048, GPU 8,192)
    sync_every: int = 64  # steps between parameter averaging across torchrun processes, >= 1

    def validate(self) -> None:
        super().validate()
        require(2 <= self.dim <= 4096, "dim", self.dim, "between 2 and 4096")
        require(1 <= self.window <= 100, "window", self.window, "between 1 and 100")
        require(1 <= self.negative <= 100, "negative", self.negative, "between 1 and 100")
        require(-1.0 <= self.ns_exponent <= 1.0, "ns_exponent", self.ns_exponent, "between -1 and 1")
        require(
            0.0 <= self.sample < 1.0,
            "sample",
            self.sample,
            "in [0, 1) (1e-3 to 1e-5 are usual; 0 turns it off)",
        )
        require(self.min_count >= 1, "min_count", self.min_count, ">= 1")
        require(1 <= self.epochs <= 1000, "epochs", self.epochs, "between 1 and 1000")
        require(0.0 < self.lr <= 10.0, "lr", self.lr, "in (0, 10]")
        require(0.0 <= self.min_lr <= self.lr, "min_lr", self.min_lr, f"between 0 and lr ({self.lr})")
        require(
            self.batch_words == 0 or 256 <= self.batch_words <= 2**20,
            "batch_words",
            self.batch_words,
            "0 (auto) or between 256 and 1,048,576 (larger steps diverge)",
        )
        require(self.sync_every >= 1, "sync_every", self.sync_every, ">= 1")

    def resolved(self, device: torch.device):
        backend = native.resolve_backend(self.backend, device)
        batch_words = self.batch_words or (
            NUMBA_BATCH_WORDS
            if backend == "numba"
            else GPU_BATCH_WORDS
            if device.type == "cuda"
            else CPU_BATCH_WORDS
        )
        return type(self).from_dict(self.to_dict() | {"backend": backend, "batch_words": batch_words})


@dataclass
class Word2VecConfig(WindowConfig):
    """word2vec settings, named as the word2vec tool and gensim name them."""

    model = "word2vec"
    mode: Literal["cbow", "skipgram"] = "skipgram"  # cbow: the mean of the contexts predicts the center

    def describe(self) -> str:
        return f"{self.mode} d{self.dim}"

    def cpu_threads(self) -> int | None:
        # a torch CBOW step is a few small gathers and scatters, where torch's threads cost more than
        # they give: 20,000 WordNet glosses on 2 cores (2026-12), 426k words/s on 1 thread, 75k on 2;
        # skip-gram's larger steps gain from both (135k on 1, 203k on 2); numba's threads each train
        # a chunk of their own
        return 1 if self.mode == "cbow" and self.backend == "torch" else None


# --- sampling ------------------------------------------------------------------------------------


class NoiseSampler:
    """Noise words drawn from counts ** exponent by search in the cumulative table (as gensim).

    A lookup on each draw's top bits (about four slots per word, 2^20 at most) gives the first word
    the draw can fall on; where no slot spans more than ``LOOKUP_STEPS`` words, stepping from there
    replaces the binary search: the same words as torch.searchsorted, in a step where it takes 15
    (0.9 ms for 35,000 draws from 23,360 words where searchsorted takes 2.1, one core, 2026-12).
    """

    LOOKUP_STEPS = 4

    def __init__(self, counts: np.ndarray, exponent: float, device: torch.device) -> None:
        cumulative = noise_table(counts, exponent)
        self.table = torch.from_numpy(cumulative).to(device)
        first, self.shift, self.steps = noise_slots(cumulative, self.LOOKUP_STEPS)
        self.first = torch.from_numpy(first).to(device) if self.steps >= 0 else None

    def sample(self, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
        draws = torch.randint(0, int(self.table[-1]), shape, generator=gen, device=self.table.device)
        return self.find(draws)

    def find(self, draws: torch.Tensor) -> torch.Tensor:
        """The word of each draw in [0, table[-1]): the first whose cumulative weight exceeds it."""
        if self.first is None:  # a long tail of tiny weights: binary search
            return torch.searchsorted(self.table, draws, right=True).clamp_(max=len(self.table) - 1)
        words = self.first[draws >> self.shift]
        for _ in range(self.steps):
            words += self.table[words] <= draws
        return words


def noise_table(counts: np.ndarray, exponent: float) -> np.ndarray:
    """The cumulative noise weights counts ** exponent as integers on a 2^31 scale: exact on every device."""
    weights = counts.astype(np.float64) ** exponent
    return np.round(np.cumsum(weights) / weights.sum() * (2**31 - 1)).astype(np.int64)


def noise_slots(cumulative: np.ndarray, most_steps: int) -> tuple[np.ndarray, int, int]:
    """The first word of each slot of a draw's top bits (about four slots a word, 2^20 at most), the
    shift that gives a draw's slot, and the steps a search from there needs (-1: over most_steps)."""
    bits = min(20, (len(cumulative) - 1).bit_length() + 2)
    shift = 31 - bits
    starts = np.arange(2**bits, dtype=np.int64) << shift
    first = np.minimum(np.searchsorted(cumulative, starts, side="right"), len(cumulative) - 1)
    # the words inside one slot's range: the steps a search from the slot's first word may need
    steps = int(np.diff(first, append=len(cumulative) - 1).max())
    return first, shift, steps if steps <= most_steps else -1


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
    """Probability of keeping each word under frequent-word subsampling (word2vec's formula)."""
    if sample <= 0:
        return np.ones(len(counts), np.float32)
    threshold = sample * counts.sum()
    keep = (np.sqrt(counts / threshold) + 1) * threshold / np.maximum(counts, 1)
    return np.minimum(keep, 1.0).astype(np.float32)


@dataclass
class Windows:
    """The kept tokens of a chunk and their (center, context) pairs."""

    tokens: torch.Tensor  # (n,) word ids after subsampling
    centers: torch.Tensor  # (C,) positions in tokens of the centers that have a context
    pair_center: torch.Tensor  # (P,) index into centers of each pair
    pair_context: torch.Tensor  # (P,) word id of each pair's context


def make_windows(
    tokens: torch.Tensor,
    sentences: torch.Tensor,
    keep: torch.Tensor,
    window: int,
    gen: torch.Generator,
) -> Windows:
    """Subsample a chunk and draw each center's window (1..window) inside its sentence."""
    device = tokens.device
    kept = torch.rand(len(tokens), generator=gen, device=device) < keep[tokens]
    tokens, sentences = tokens[kept], sentences[kept]
    n = len(tokens)
    reach = torch.randint(1, window + 1, (n,), generator=gen, device=device)
    offsets = torch.cat([torch.arange(-window, 0, device=device), torch.arange(1, window + 1, device=device)])
    positions = torch.arange(n, device=device)[:, None] + offsets[None, :]  # (n, 2 window)
    inside = (positions >= 0) & (positions < n) & (offsets.abs()[None, :] <= reach[:, None])
    positions = positions.clamp_(0, max(n - 1, 0))
    inside &= sentences[positions] == sentences[:, None]
    center_position, slot = inside.nonzero(as_tuple=True)  # row-major: centers ascending
    centers, pair_center = torch.unique_consecutive(center_position, return_inverse=True)
    return Windows(tokens, centers, pair_center, tokens[positions[center_position, slot]])


# --- the network ---------------------------------------------------------------------------------


def bounded_steps(scratch: torch.Tensor, rows: torch.Tensor, curvature: torch.Tensor) -> torch.Tensor:
    """The factor of each entry's update that keeps its row's summed step within STEP_LIMIT.

    ``curvature`` is lr times the curvature each entry's loss adds along the row it updates; a row's
    entries are summed (in ``scratch``, a zero vector of one slot per row, left zero), and where the
    sum is over STEP_LIMIT every entry of that row is scaled by STEP_LIMIT / sum.
    """
    scratch.index_add_(0, rows, curvature)
    summed = scratch.index_select(0, rows)
    scratch.index_fill_(0, rows, 0.0)
    return STEP_LIMIT / summed.clamp_(min=STEP_LIMIT)


class NegativeSampling:
    """Input and output matrices and the two SGNS steps, with explicit sparse SGD updates."""

    def __init__(self, rows: int, words: int, dim: int, device: torch.device, seed: int) -> None:
        gen = generator(torch.device("cpu"), seed, 0)
        # inputs uniform in (-1/dim, 1/dim) as gensim and fastText draw them (word2vec.c: half that;
        # on the bench corpus that gave CBOW analogy 0.037 / 0.036 for seeds 1 / 2, this 0.042 /
        # 0.039, gensim 0.042 / 0.043), outputs zero
        self.input = host_tensor(rows, dim, device=torch.device("cpu"))
        self.input.uniform_(generator=gen).sub_(0.5).mul_(2.0 / dim)  # the draws of torch.rand(rows, dim)
        self.input = self.input.to(device)
        self.output = host_tensor(words, dim, device=device)
        # per-row sums of a step (bounded_steps), zero between steps
        self.input_sums = torch.zeros(rows, device=device)
        self.output_sums = torch.zeros(words, device=device)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"input": self.input, "output": self.output}

    def load(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.input.copy_(tensors["input"])
        self.output.copy_(tensors["output"])

    def native(self, step: str):
        """The compiled loop of ``step`` and its leading arguments: the matrices, shared with torch."""
        kernel = native.skipgram_chunk if step == "skipgram" else native.cbow_chunk
        return kernel, (self.input.numpy(), self.output.numpy())

    # the input side; fastText overrides these two to read and update a word's n-gram rows
    def gather_inputs(self, words: torch.Tensor) -> torch.Tensor:
        return self.input.index_select(0, words)

    def scatter_inputs(self, words: torch.Tensor, grads: torch.Tensor, curvature: torch.Tensor) -> None:
        """Add each word's ``grads`` to its input rows, bounded by their summed (lr x) ``curvature``."""
        scale = bounded_steps(self.input_sums, words, curvature)
        self.input.index_add_(0, words, grads * scale[:, None])

    def skipgram_step(
        self, w: Windows, noise: NoiseSampler, negative: int, lr: float, gen: torch.Generator
    ) -> tuple[torch.Tensor, int]:
        """Each center predicts each of its contexts, against ``negative`` noise words drawn per pair.

        Every score is taken from the parameters before the step. A row's update is the sum of its
        entries' SGD updates, scaled down where that sum would overshoot (see STEP_LIMIT).
        """
        center_words = w.tokens[w.centers]  # (C,)
        pairs = len(w.pair_context)
        u = self.gather_inputs(center_words)  # (C, d)
        u_pairs = u.index_select(0, w.pair_center)  # (P, d)
        # per pair: its context (label 1), then its noise words (label 0)
        targets = torch.cat([w.pair_context[:, None], noise.sample((pairs, negative), gen)], 1)  # (P, 1+K)
        flat = targets.reshape(-1)
        v = self.output.index_select(0, flat).view(pairs, negative + 1, -1)  # (P, 1+K, d)
        score = torch.bmm(u_pairs.unsqueeze(1), v.transpose(1, 2)).squeeze(1)  # (P, 1+K)

        sign = torch.full((negative + 1,), -1.0, device=u.device)
        sign[0] = 1.0
        # a noise word that is the pair's context itself is skipped, as word2vec does
        live = (targets != targets[:, :1]).to(u.dtype)
        live[:, 0] = 1.0
        signed = score * sign  # the label's side of each score
        loss = -(F.logsigmoid(signed) * live).sum()
        miss = torch.sigmoid(-signed).mul_(live)  # 1 - sigmoid: how far each prediction is from its label
        g = miss * sign * lr  # lr x the gradient of the log-likelihood with respect to the score
        h = miss * (1.0 - miss) * lr  # lr x its curvature, sigmoid(1 - sigmoid)

        # output rows: entry (p, k) moves row targets[p, k] by g u_p, curvature h |u_p|^2 along it
        u_norms = torch.linalg.vector_norm(u, dim=1).square_().index_select(0, w.pair_center)  # (P,)
        g_out = g * bounded_steps(self.output_sums, flat, (h * u_norms[:, None]).reshape(-1)).view_as(g)
        # input rows: pair p moves its center by sum_k g v_k, curvature sum_k h |v_k|^2
        grad_pairs = torch.bmm(g.unsqueeze(1), v).squeeze(1)  # (P, d)
        curvature_pairs = (h * torch.linalg.vector_norm(v, dim=2).square_()).sum(1)  # (P,)
        grad_u = torch.zeros_like(u).index_add_(0, w.pair_center, grad_pairs)
        curvature_u = torch.zeros(len(u), device=u.device).index_add_(0, w.pair_center, curvature_pairs)

        self.output.index_add_(0, flat, (g_out.unsqueeze(2) * u_pairs.unsqueeze(1)).flatten(0, 1))
        self.scatter_inputs(center_words, grad_u, curvature_u)
        return loss, pairs

    def cbow_step(
        self, w: Windows, noise: NoiseSampler, negative: int, lr: float, gen: torch.Generator
    ) -> tuple[torch.Tensor, int]:
        """The mean of each center's contexts predicts the center, against ``negative`` noise words.

        Bounded as skip-gram's step is: every context of a center takes the whole gradient of the
        mean (word2vec's cbow_mean), so the mean moves by that gradient and its curvature along it,
        sum_k sigmoid'(score_k) |v_k|^2, is what each context row's entry adds to its row's sum.
        """
        count = len(w.centers)
        contexts_per_center = torch.bincount(w.pair_center, minlength=count).to(self.input.dtype)
        h = torch.zeros(count, self.input.shape[1], device=self.input.device)
        h.index_add_(0, w.pair_center, self.input.index_select(0, w.pair_context))
        h /= contexts_per_center[:, None]  # (C, d)
        centers = w.tokens[w.centers]  # (C,)
        # per center: itself (label 1), then its noise words (label 0)
        targets = torch.cat([centers[:, None], noise.sample((count, negative), gen)], 1)  # (C, 1+K)
        flat = targets.reshape(-1)
        v = self.output.index_select(0, flat).view(count, negative + 1, -1)  # (C, 1+K, d)
        score = torch.bmm(v, h.unsqueeze(2)).squeeze(2)  # (C, 1+K)

        sign = torch.full((negative + 1,), -1.0, device=h.device)
        sign[0] = 1.0
        # a noise word that is the center itself is skipped, as word2vec does
        live = (targets != targets[:, :1]).to(h.dtype)
        live[:, 0] = 1.0
        signed = score * sign
        loss = -(F.logsigmoid(signed) * live).sum()
        miss = torch.sigmoid(-signed).mul_(live)
        g = miss * sign * lr
        curvature = miss * (1.0 - miss) * lr

        h_norms = torch.linalg.vector_norm(h, dim=1).square_()  # (C,)
        g_out = g * bounded_steps(self.output_sums, flat, (curvature * h_norms[:, None]).reshape(-1)).view_as(
            g
        )
        grad_h = torch.bmm(g.unsqueeze(1), v).squeeze(1)  # (C, d)
        curvature_h = (curvature * torch.linalg.vector_norm(v, dim=2).square_()).sum(1)  # (C,)

        self.output.index_add_(0, flat, (g_out.unsqueeze(2) * h.unsqueeze(1)).flatten(0, 1))
        # every context gets the whole gradient of the mean (word2vec's and gensim's cbow_mean)
        self.scatter_inputs(
            w.pair_context, grad_h.index_select(0, w.pair_center), curvature_h.index_select(0, w.pair_center)
        )
        return loss, count


# --- the training loop ---------------------------------------------------------------------------


@dataclass
class ChunkPlan:
    """Every chunk of every shard, in order, with its retained words; the same in every process."""

    shard: np.ndarray  # (chunks,) shard index
    first: np.ndarray  # (chunks,) first sentence
    stop: np.ndarray  # (chunks,) one past the last sentence
    words: np.ndarray  # (chunks,) tokens in the pruned vocabulary

    @classmethod
    def build(cls, shards: TokenShards, remap: np.ndarray, batch_words: int) -> ChunkPlan:
        # TODO: one pass over every shard before training; cache the plan in the run folder for dumps
        # whose token shards take minutes to read
        parts: list[tuple[np.ndarray, ...]] = []
        for index in range(len(shards)):
            ids, offsets = shards.read(index)
            bounds = chunk_bounds(offsets, batch_words)
            kept = np.concatenate([[0], np.cumsum(remap[ids] >= 0)])
            words = kept[offsets[bounds[1:]]] - kept[offsets[bounds[:-1]]]
            parts.append((np.full(len(words), index), bounds[:-1], bounds[1:], words))
        if not parts:
            return cls(*(np.zeros(0, np.int64) for _ in range(4)))
        return cls(*(np.concatenate([p[k] for p in parts]).astype(np.int64) for k in range(4)))

    def __len__(self) -> int:
        return len(self.shard)


def load_chunk(
    shards: TokenShards, plan: ChunkPlan, chunk: int, remap: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The in-vocabulary tokens of one chunk (int32) and its sentences' offsets into them (int64)."""
    ids, offsets = shards.read(int(plan.shard[chunk]))
    first, stop = int(plan.first[chunk]), int(plan.stop[chunk])
    begin, end = int(offsets[first]), int(offsets[stop])
    tokens = remap[ids[begin:end]]
    known = tokens >= 0
    kept_before = np.concatenate([[0], np.cumsum(known)])
    return tokens[known].astype(np.int32), kept_before[offsets[first : stop + 1] - begin].astype(np.int64)


class TorchChunks:
    """Trains a chunk as one batched step of NegativeSampling (any device)."""

    threads = 1  # torch spreads each step over the cores itself
    per_step = 1

    def __init__(self, net: NegativeSampling, step: str, config: WindowConfig, vocab: Vocabulary, device):
        self.run_step = net.skipgram_step if step == "skipgram" else net.cbow_step
        self.config, self.device = config, device
        self.noise = NoiseSampler(vocab.counts, config.ns_exponent, device)
        self.keep = torch.from_numpy(keep_probabilities(vocab.counts, config.sample)).to(device)

    def train(self, chunks: list[tuple[np.ndarray, np.ndarray, float, int]]) -> list[tuple[Any, int, int]]:
        (tokens_np, offsets, lr, seed), *rest = chunks
        assert not rest, "torch trains one chunk a step"
        gen = torch.Generator(device=self.device).manual_seed(seed)
        tokens = torch.from_numpy(tokens_np).to(self.device, torch.long)
        sentences = torch.repeat_interleave(
            torch.arange(len(offsets) - 1, device=self.device),
            torch.from_numpy(np.diff(offsets)).to(self.device),
        )
        windows = make_windows(tokens, sentences, self.keep, self.config.window, gen)
        if not len(windows.centers):
            return [(0.0, 0, len(windows.tokens))]
        loss, count = self.run_step(windows, self.noise, self.config.negative, lr, gen)
        return [(loss, count, len(windows.tokens))]

    def close(self) -> None:
        pass


class NumbaChunks:
    """Trains chunks with the compiled per-pair loops of models/native.py, a chunk per thread at a time."""

    def __init__(
        self, net: NegativeSampling, step: str, config: WindowConfig, vocab: Vocabulary, threads: int
    ):
        self.kernel, self.parameters = net.native(step)
        self.config = config
        cumulative = noise_table(vocab.counts, config.ns_exponent)
        first, shift, steps = noise_slots(cumulative, NoiseSampler.LOOKUP_STEPS)
        self.noise = (cumulative, first.astype(np.int32), shift, steps)
        self.keep = native.keep_thresholds(keep_probabilities(vocab.counts, config.sample))
        self.pool = native.Threads(threads)
        self.threads = self.pool.count
        # several chunks a thread per step: a thread that finishes early takes the next one, rather
        # than wait for the slowest of the step (2 threads, skip-gram: 1.29x one thread with one
        # chunk each per step, 2026-12)
        self.per_step = 1 if self.threads == 1 else self.threads * CHUNKS_PER_THREAD

    def train(self, chunks: list[tuple[np.ndarray, np.ndarray, float, int]]) -> list[tuple[Any, int, int]]:
        c = self.config
        jobs = [
            (*self.parameters, tokens, offsets, self.keep, self.noise, c.window, c.negative, lr, seed)
            for tokens, offsets, lr, seed in chunks
        ]
        return self.pool.map(self.kernel, jobs)

    def close(self) -> None:
        self.pool.close()


def train_windows(
    config: WindowConfig,
    vocab: Vocabulary,
    remap: np.ndarray,
    shards: TokenShards,
    net: NegativeSampling,
    step: str,
    ctx: TrainContext,
    what: str,
) -> dict[str, Any]:
    """The loop word2vec and fastText share: chunks in order, epoch after epoch, resumable at any step.

    A step trains one chunk (torch) or a few per thread (numba); a checkpoint's step counts chunks.
    """
    device, dist, options = ctx.device, ctx.dist, ctx.options
    plan = ChunkPlan.build(shards, remap, config.batch_words)
    if plan.words.sum() == 0:
        raise ValueError(
            f"no token of the shards is in the vocabulary (min_count={config.min_count}); lower min_count"
        )
    # each process takes a contiguous run of chunks (its own shards), all in step with each other
    per_rank = math.ceil(len(plan) / dist.world_size)
    mine = np.arange(dist.rank * per_rank, min(len(plan), (dist.rank + 1) * per_rank))
    my_words = np.concatenate([[0], np.cumsum(plan.words[mine])])
    total_steps = per_rank * config.epochs
    if config.backend == "numba":
        chunks = NumbaChunks(net, step, config, vocab, torch.get_num_threads())
    else:
        chunks = TorchChunks(net, step, config, vocab, device)

    first_step, state = 0, {"words": 0, "totals": {}, "history": []}
    checkpoint = load_checkpoint(ctx.run, device)
    if checkpoint is not None:
        net.load(checkpoint.tensors)
        first_step, state = checkpoint.step, checkpoint.state
        ctx.logger.info(f"{what}: resuming at step {first_step:,} of {total_steps:,} from its checkpoint")
    meter = Meter(
        ctx.logger,
        what,
        unit="words",
        total=int(my_words[-1]) * config.epochs,
        every_s=options.log_every_s,
        done=state["words"],
        totals=state["totals"],
        history=state["history"],
    )
    clock = CheckpointClock(options)
    lr = config.lr

    step_index = first_step
    try:
        while step_index < total_steps:
            epoch, position = divmod(step_index, per_rank)
            # a step's chunks stay inside one epoch and one averaging interval
            stop = min(position + chunks.per_step, per_rank)
            if dist.world_size > 1:
                stop = min(stop, (position // config.sync_every + 1) * config.sync_every)
            work, words = [], []
            for p in range(position, min(stop, len(mine))):
                chunk = int(mine[p])
                # linear decay over this process's words, as gensim decays over the corpus
                progress = (epoch + my_words[p] / my_words[-1]) / config.epochs
                lr = config.lr - (config.lr - config.min_lr) * progress
                tokens, offsets = load_chunk(shards, plan, chunk, remap)
                work.append((tokens, offsets, lr, derive_seed(config.seed, epoch, chunk)))
                words.append(int(plan.words[chunk]))
            results = chunks.train(work) if work else []
            for count_words, (loss, count, effective) in zip(words, results, strict=True):
                meter.update(count_words, loss, count, effective_words=effective)
            step_index += stop - position
            if dist.is_main:
                meter.maybe_log(epoch=epoch + 1, lr=lr)

            epoch_end = stop == per_rank
            if dist.world_size > 1 and (epoch_end or stop % config.sync_every == 0):
                dist.average_(list(net.tensors().values()))
            if checkpoint_due(clock, dist, step_index, epoch_end):
                if dist.is_main:
                    state = {"words": meter.done, "totals": meter.totals, "history": meter.history}
                    save_checkpoint(ctx.run, step_index, net.tensors(), state, keep=options.keep_checkpoints)
                dist.barrier()
                clock.mark()
                if clock.stop_requested(step_index) and step_index < total_steps:
                    raise TrainingInterrupted(f"{what}: stopped after step {step_index} as asked")
    finally:
        chunks.close()

    if dist.is_main:
        meter.maybe_log(force=True, epoch=config.epochs, lr=lr)
    seconds = meter.elapsed
    return {
        "steps": total_steps,
        "epochs": config.epochs,
        "vocabulary": len(vocab),
        "words": int(my_words[-1]) * config.epochs * dist.world_size,
        "seconds": round(seconds, 3),
        # rates of this process's training, scaled by the processes (each trains on its share)
        "words_per_s": round(meter.rate() * dist.world_size, 1),
        "effective_words_per_s": round(meter.rate("effective_words") * dist.world_size, 1),
        "final_loss": meter.history[-1]["loss"] if meter.history else None,
        "history": meter.history,
        "processes": dist.world_size,
        "threads": chunks.threads,
        "backend": config.backend,
        "device": str(device),
    }


def checkpoint_due(clock: CheckpointClock, dist: Distributed, step: int, epoch_end: bool) -> bool:
    """Whether to checkpoint after this step; under torchrun rank 0's clock decides for every process."""
    due = clock.due(step, epoch_end)
    if dist.world_size > 1:
        import torch.distributed as torch_dist

        flag = torch.tensor([float(due)], device=clock_device(dist))
        torch_dist.broadcast(flag, src=0)
        due = bool(flag.item())
    return due


def clock_device(dist: Distributed) -> torch.device:
    # NCCL broadcasts only tensors on the GPU
    return torch.device("cuda", dist.local_rank) if torch.cuda.is_available() else torch.device("cpu")


# --- entry points --------------------------------------------------------------------------------


def train(config: Word2VecConfig, assets: Mapping[str, Dataset], ctx: TrainContext) -> dict[str, Any]:
    """Train word2vec on the token shards, export vectors.txt, and return the run's metrics."""
    vocab, remap = Vocabulary.from_dataset(assets["tokens"]).prune(config.min_count)
    if len(vocab) < 2:
        raise ValueError(f"only {len(vocab)} words are seen {config.min_count}+ times; lower min_count")
    shards = TokenShards(assets["tokens"])
    net = NegativeSampling(len(vocab), len(vocab), config.dim, ctx.device, config.seed)
    metrics = train_windows(config, vocab, remap, shards, net, config.mode, ctx, f"word2vec {config.mode}")
    if ctx.dist.is_main:
        export_word_vectors(ctx.run, vocab.tokens, net.input)
        clear_checkpoints(ctx.run, keep_last=ctx.options.keep_final_checkpoint)
    return metrics


def load(run: Dataset):
    return load_embedding(run)


SPEC = registry.ModelSpec(
    name="word2vec",
    family="static",
    summary="word2vec CBOW or skip-gram with negative sampling (--set mode=cbow|skipgram)",
    config=Word2VecConfig,
    needs=(registry.TOKENS,),
    train=train,
    load=load,
    evaluations=("word",),
    distributed=True,
    modules=("models.base", "models.data", "models.native", "models.vectors"),
)
