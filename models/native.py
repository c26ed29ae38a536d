"""Compiled per-pair SGD loops for training the word models on the CPU (numba), as the C tools train.

word2vec's C tool, fastText, gensim and Stanford's GloVe all train one (word, context) pair at a
time: each pair reads the current rows, takes its gradient step and writes the rows back before the
next pair is read, and several threads do so at once on the same matrices without locks (Hogwild,
Recht et al. 2011). A frequent word's rows thereby see their score saturate after a few updates,
where a batched step sums hundreds of updates computed against the same old rows (the reason
models/word2vec.py bounds each row's summed step). These loops are that algorithm compiled:

- ``skipgram_chunk``: skip-gram with negative sampling; each context word's input row predicts the
  center's output row (the direction of the C tool and gensim);
- ``cbow_chunk``: the mean of the window's input rows predicts the center; every context row takes
  the whole gradient (``cbow_mean=1`` of the C tool and gensim);
- ``subword_skipgram_chunk``: fastText's skip-gram, the center's input is the mean of its word row
  and its n-gram rows, each of which takes the whole gradient;
- ``glove_pairs``: Stanford GloVe's AdaGrad step on each co-occurrence pair.

One call trains one chunk of whole sentences and releases the GIL, so ``Threads`` runs several
chunks at once. Every random draw of a chunk (subsampling, window sizes, noise words) comes from a
xorshift generator seeded by the caller from the chunk's position: on one thread a run is exactly
repeatable and resumes exactly; on several, the threads' interleaving of writes to shared rows
changes the last bits, as it does for gensim with ``workers > 1``.

Scores are clipped to +-MAX_SCORE (the C tool's MAX_EXP), and the sigmoid and log-likelihood are
looked up in a table of TABLE_SIZE steps, as the tools do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

MAX_SCORE = 6.0  # scores beyond are clipped: the sigmoid is within 0.0025 of 0 or 1 there
MAX_SENTENCE = 10_000  # longer sentences are trained in pieces of this many kept words

# fastmath without its no-NaN/no-inf assumptions, under which the check for an overflowed error
# would be compiled away; reassociation lets the dot products use vector registers
_JIT = {
    "nogil": True,
    "fastmath": {"nsz", "arcp", "contract", "afn", "reassoc"},
    "cache": True,
    "error_model": "numpy",
    "boundscheck": False,
}


# --- random draws --------------------------------------------------------------------------------


@numba.njit(**_JIT)
def _next(state: np.ndarray) -> np.uint64:
    """xorshift64* (Vigna 2016): the next 64 random bits; state is a one-slot uint64 array."""
    x = state[0]
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    state[0] = x
    return x * np.uint64(2685821657736338717)


@numba.njit(**_JIT)
def _noise_word(state: np.ndarray, noise) -> np.int64:
    """A word drawn from the noise distribution: the first whose cumulative weight exceeds the draw.

    ``noise`` is (cumulative, first, shift, steps) as models/word2vec.noise_slots makes it: the
    draw's top bits give the first word it can fall on, ``steps`` steps at most find it from there;
    steps < 0 (a long tail of tiny weights) falls back to binary search.
    """
    cumulative, first, shift, steps = noise
    total = cumulative[len(cumulative) - 1]
    draw = np.int64((_next(state) >> np.uint64(33)) % np.uint64(total))
    if steps >= 0:
        word = np.int64(first[draw >> shift])
        for _ in range(steps):
            word += cumulative[word] <= draw
        return word
    low, high = 0, len(cumulative) - 1
    while low < high:
        middle = (low + high) >> 1
        if cumulative[middle] <= draw:
            low = middle + 1
        else:
            high = middle
    return low


@numba.njit(**_JIT)
def _subsample(tokens, offsets, keep, state) -> tuple[np.ndarray, np.ndarray]:
    """The kept words of a chunk's sentences, and the bounds of its pieces in them.

    keep[w] is P(keep w) on a 2^32 scale. A piece is a sentence, or MAX_SENTENCE of its words where
    it is longer (as gensim cuts them); windows stay inside a piece.
    """
    kept = np.empty(len(tokens), np.int64)
    bounds = np.empty(len(tokens) // MAX_SENTENCE + len(offsets), np.int64)
    n, pieces = 0, 0
    bounds[0] = 0
    for sentence in range(len(offsets) - 1):
        for piece in range(offsets[sentence], offsets[sentence + 1], MAX_SENTENCE):
            for position in range(piece, min(piece + MAX_SENTENCE, offsets[sentence + 1])):
                word = tokens[position]
                if (
                    keep[word] >= np.uint64(1) << np.uint64(32)
                    or (_next(state) >> np.uint64(32)) < keep[word]
                ):
                    kept[n] = word
                    n += 1
            pieces += 1
            bounds[pieces] = n
    return kept[:n], bounds[: pieces + 1]


@numba.njit(**_JIT)
def _seeded(seed) -> np.ndarray:
    return np.array([np.uint64(seed) | np.uint64(1)], dtype=np.uint64)


@numba.njit(**_JIT)
def _window(state, window, i, start, end) -> tuple[int, int]:
    """Positions [first, stop) of word i's window, its reach drawn from 1..window, inside [start, end)."""
    reach = window - np.int64(_next(state) % np.uint64(window))
    return max(start, i - reach), min(end, i + reach + 1)


# --- memory ----------------------------------------------------------------------------------------


@intrinsic
def _prefetch(typingctx, rows, index, column):
    """Ask the CPU to load the cache line of rows[index, column] (a 2-D array), without waiting."""
    sig = types.void(rows, index, column)

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        pointer = cgutils.get_item_pointer(
            context, builder, signature.args[0], array, [args[1], args[2]], wraparound=False
        )
        byte_pointer = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]), "llvm.prefetch.p0"
        )
        # read, keep in every cache level, data
        builder.call(prefetch, [builder.bitcast(pointer, byte_pointer), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(**_JIT)
def _prefetch_row(rows, index) -> None:
    """Fetch a row of float32 into the cache, a 64-byte line at a time.

    The rows a pair touches are scattered over matrices larger than the caches, and each update
    waits on its row's load; fetching every target row of a pair before scoring the first lets the
    loads overlap (2026-12, this VM: a loop of random row reads 25% faster, skip-gram about 10%).
    """
    for column in range(0, rows.shape[1], 16):
        _prefetch(rows, index, column)


@numba.njit(**_JIT)
def _draw_targets(state, noise, positive, negative, outputs, targets) -> int:
    """targets[0] = positive, then the noise words that differ from it (word2vec skips the others);
    their output rows are fetched. Returns how many targets there are."""
    targets[0] = positive
    count = 1
    for _ in range(negative):
        word = _noise_word(state, noise)
        if word != positive:
            targets[count] = word
            count += 1
    for q in range(count):
        _prefetch_row(outputs, targets[q])
    return count


# --- one scored target -----------------------------------------------------------------------------


# sigmoid and log-sigmoid at the midpoints of TABLE_SIZE steps over [-MAX_SCORE, MAX_SCORE]: a
# lookup where exp and log1p took a quarter of skip-gram's time; off by at most 0.0008 (the
# sigmoid's slope, 1/4, times half a step)
TABLE_SIZE = 4096
_MIDPOINTS = -MAX_SCORE + (np.arange(TABLE_SIZE) + 0.5) * (2 * MAX_SCORE / TABLE_SIZE)
SIGMOID = (1.0 / (1.0 + np.exp(-_MIDPOINTS))).astype(np.float32)
LOG_SIGMOID = (-np.log1p(np.exp(-_MIDPOINTS))).astype(np.float32)
_TABLE_SCALE = TABLE_SIZE / (2 * MAX_SCORE)


@numba.njit(**_JIT)
def _dot(a, b) -> np.float32:
    total = np.float32(0.0)
    for k in range(len(a)):
        total += a[k] * b[k]
    return total


@numba.njit(**_JIT)
def _add(total, row) -> None:
    """total += row, as an explicit loop: numba's in-place array expression took fastText 2.2x as long."""
    for k in range(len(total)):
        total[k] += row[k]


@numba.njit(**_JIT)
def _score(hidden, rows, target, label, lr, grad) -> float:
    """Score hidden against rows[target] for label (1 or 0): add lr x gradient to grad, update the
    target row, and return the pair's negative log-likelihood."""
    row = rows[target]
    s = _dot(hidden, row)
    z = s if label else -s  # the label's side of the score
    slot = min(max(np.int64((z + MAX_SCORE) * _TABLE_SCALE), 0), TABLE_SIZE - 1)
    g = np.float32(lr * (1.0 - SIGMOID[slot]))  # lr x (1 - sigmoid(z)): how far from the label
    if not label:
        g = -g
    for k in range(len(hidden)):
        grad[k] += g * row[k]
        row[k] += g * hidden[k]
    return -LOG_SIGMOID[slot]


# --- word2vec ------------------------------------------------------------------------------------


@numba.njit(**_JIT)
def skipgram_chunk(
    inputs, outputs, tokens, offsets, keep, noise, window, negative, lr, seed
) -> tuple[float, int, int]:
    """Skip-gram over the sentences tokens[offsets[s]:offsets[s+1]]; returns (loss, pairs, kept words)."""
    state = _seeded(seed)
    kept, bounds = _subsample(tokens, offsets, keep, state)
    grad = np.zeros(inputs.shape[1], np.float32)
    targets = np.empty(negative + 1, np.int64)
    loss, pairs = 0.0, 0
    for piece in range(len(bounds) - 1):
        for i in range(bounds[piece], bounds[piece + 1]):
            first, stop = _window(state, window, i, bounds[piece], bounds[piece + 1])
            for j in range(first, stop):
                if j == i:
                    continue
                hidden = inputs[kept[j]]
                grad[:] = 0.0
                count = _draw_targets(state, noise, kept[i], negative, outputs, targets)
                for q in range(count):
                    loss += _score(hidden, outputs, targets[q], q == 0, lr, grad)
                _add(hidden, grad)
                pairs += 1
    return loss, pairs, len(kept)


@numba.njit(**_JIT)
def cbow_chunk(
    inputs, outputs, tokens, offsets, keep, noise, window, negative, lr, seed
) -> tuple[float, int, int]:
    """CBOW over the sentences of a chunk; returns (loss, centers trained, kept words)."""
    state = _seeded(seed)
    kept, bounds = _subsample(tokens, offsets, keep, state)
    grad = np.zeros(inputs.shape[1], np.float32)
    hidden = np.zeros(inputs.shape[1], np.float32)
    targets = np.empty(negative + 1, np.int64)
    loss, centers = 0.0, 0
    for piece in range(len(bounds) - 1):
        for i in range(bounds[piece], bounds[piece + 1]):
            first, stop = _window(state, window, i, bounds[piece], bounds[piece + 1])
            if stop - first < 2:
                continue
            hidden[:] = 0.0
            for j in range(first, stop):
                if j != i:
                    _add(hidden, inputs[kept[j]])
            scale = np.float32(1.0 / (stop - first - 1))
            for k in range(len(hidden)):
                hidden[k] *= scale
            grad[:] = 0.0
            count = _draw_targets(state, noise, kept[i], negative, outputs, targets)
            for q in range(count):
                loss += _score(hidden, outputs, targets[q], q == 0, lr, grad)
            for j in range(first, stop):
                if j != i:
                    _add(inputs[kept[j]], grad)
            centers += 1
    return loss, centers, len(kept)


# --- fastText ------------------------------------------------------------------------------------


@numba.njit(**_JIT)
def subword_skipgram_chunk(
    inputs, outputs, rows, row_offsets, tokens, offsets, keep, noise, window, negative, lr, seed
) -> tuple[float, int, int]:
    """fastText skip-gram: word w's input rows are rows[row_offsets[w]:row_offsets[w+1]] of ``inputs``."""
    state = _seeded(seed)
    kept, bounds = _subsample(tokens, offsets, keep, state)
    grad = np.zeros(inputs.shape[1], np.float32)
    hidden = np.zeros(inputs.shape[1], np.float32)
    targets = np.empty(negative + 1, np.int64)
    loss, pairs = 0.0, 0
    for piece in range(len(bounds) - 1):
        for i in range(bounds[piece], bounds[piece + 1]):
            first, stop = _window(state, window, i, bounds[piece], bounds[piece + 1])
            own = rows[row_offsets[kept[i]] : row_offsets[kept[i] + 1]]
            scale = np.float32(1.0 / len(own))
            for j in range(first, stop):
                if j == i:
                    continue
                # the mean of the center's rows, read again for each pair as they change
                hidden[:] = 0.0
                for r in own:
                    _add(hidden, inputs[r])
                for k in range(len(hidden)):
                    hidden[k] *= scale
                grad[:] = 0.0
                count = _draw_targets(state, noise, kept[j], negative, outputs, targets)
                for q in range(count):
                    loss += _score(hidden, outputs, targets[q], q == 0, lr, grad)
                for r in own:
                    _add(inputs[r], grad)
                pairs += 1
    return loss, pairs, len(kept)


# --- GloVe ---------------------------------------------------------------------------------------


# without "reassoc", under which LLVM compiled the overflow check below away (the dot product,
# inlined from _dot, keeps its own flags)
@numba.njit(**(_JIT | {"fastmath": {"nsz", "arcp", "contract", "afn"}}))
def glove_pairs(w, c, bw, bc, gw, gc, gbw, gbc, i, j, log_x, weight, order, lr) -> tuple[float, int]:
    """AdaGrad on the pairs order[...] of (i, j, log x, f(x)); returns (summed f(x) error^2, pairs skipped).

    A pair whose error is not finite (an overflow on a broken corpus) is skipped, as the tool does.
    """
    dim = w.shape[1]
    loss, skipped = 0.0, 0
    for p in order:
        a, b = i[p], j[p]
        wa, cb, ga, gb = w[a], c[b], gw[a], gc[b]
        diff = _dot(wa, cb) + bw[a] + bc[b] - log_x[p]
        if not np.isfinite(diff):
            skipped += 1
            continue
        loss += weight[p] * diff * diff
        fdiff = np.float32(lr * weight[p] * diff)  # the learning rate inside the accumulated gradient
        for k in range(dim):
            g1 = fdiff * cb[k]
            g2 = fdiff * wa[k]
            wa[k] -= g1 / np.sqrt(ga[k])
            cb[k] -= g2 / np.sqrt(gb[k])
            ga[k] += g1 * g1
            gb[k] += g2 * g2
        bw[a] -= fdiff / np.sqrt(gbw[a])
        bc[b] -= fdiff / np.sqrt(gbc[b])
        gbw[a] += fdiff * fdiff
        gbc[b] += fdiff * fdiff
    return loss, skipped


# --- threads -------------------------------------------------------------------------------------


class Threads:
    """A pool that runs compiled loops (which release the GIL) on several cores at once."""

    def __init__(self, count: int) -> None:
        self.count = max(1, count)
        self._pool = ThreadPoolExecutor(self.count, thread_name_prefix="sgd") if self.count > 1 else None

    def map(self, work: Callable, jobs: Sequence[tuple]) -> list:
        if self._pool is None or len(jobs) == 1:
            return [work(*job) for job in jobs]
        return list(self._pool.map(lambda job: work(*job), jobs))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


def resolve_backend(backend: str, device) -> str:
    """The backend a word model's "auto" means on ``device`` (numba on the CPU, torch on a GPU), checked."""
    from models.base import ConfigError

    if backend == "auto":
        return "torch" if device.type == "cuda" else "numba"
    if backend == "numba" and device.type != "cpu":
        raise ConfigError(
            f"backend numba trains on the CPU, but the run's device is {device}; "
            "use --set backend=torch on a GPU, or --device cpu"
        )
    return backend


def keep_thresholds(keep: np.ndarray) -> np.ndarray:
    """Keep probabilities as the uint64 thresholds _subsample compares 32 random bits with."""
    return np.round(np.clip(keep.astype(np.float64), 0.0, 1.0) * 2.0**32).astype(np.uint64)
