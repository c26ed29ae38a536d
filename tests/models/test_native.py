"""The compiled per-pair loops: each update is the one the C tools make, and the draws follow their laws."""

from __future__ import annotations

import numpy as np
import pytest

from models import native
from models.word2vec import keep_probabilities, noise_slots, noise_table

KEEP_ALL = np.full(6, 2**32, np.uint64)  # sample=0: every word kept, no draw spent


def noise(counts: np.ndarray, exponent: float = 1.0, most_steps: int = 4) -> tuple:
    cumulative = noise_table(np.asarray(counts, np.float64), exponent)
    first, shift, steps = noise_slots(cumulative, most_steps)
    return cumulative, first.astype(np.int32), shift, steps


def only_noise(word: int, words: int = 6) -> tuple:
    """A noise distribution whose every draw is ``word``."""
    counts = np.zeros(words)
    counts[word] = 1.0
    return noise(counts)


def sigmoid(x):
    # the loops' table: the sigmoid at the midpoint of x's step
    slot = np.clip(
        np.floor((x + native.MAX_SCORE) * native.TABLE_SIZE / (2 * native.MAX_SCORE)),
        0,
        native.TABLE_SIZE - 1,
    )
    return 1.0 / (
        1.0 + np.exp(-(-native.MAX_SCORE + (slot + 0.5) * 2 * native.MAX_SCORE / native.TABLE_SIZE))
    )


def matrices(seed: int = 0, words: int = 6, dim: int = 4):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(0, 0.5, (words, dim)).astype(np.float32),
        rng.normal(0, 0.5, (words, dim)).astype(np.float32),
    )


def reference_pair(hidden, outputs, targets_labels, lr):
    """One pair's SGD on negative sampling: returns the gradient for the input side; updates outputs."""
    grad = np.zeros_like(hidden)
    for target, label in targets_labels:
        g = lr * (label - sigmoid(hidden @ outputs[target]))
        grad += g * outputs[target]
        outputs[target] += g * hidden
    return grad


def test_skipgram_updates_each_pair_as_the_c_tool_does():
    inputs, outputs = matrices()
    tokens = np.array([1, 2, 3, 2, 4], np.int32)
    offsets = np.array([0, 3, 5])  # sentences [1 2 3] and [2 4]
    expected_in, expected_out = inputs.copy(), outputs.copy()
    lr = 0.1
    for sentence in ([1, 2, 3], [2, 4]):
        for i, center in enumerate(sentence):  # window 1: every draw reaches 1
            for j in (i - 1, i + 1):
                if 0 <= j < len(sentence):
                    hidden = expected_in[sentence[j]]
                    # noise word 5 twice (negative=2), never the center
                    grad = reference_pair(hidden, expected_out, [(center, 1), (5, 0), (5, 0)], lr)
                    expected_in[sentence[j]] += grad

    loss, pairs, kept = native.skipgram_chunk(
        inputs, outputs, tokens, offsets, KEEP_ALL, only_noise(5), 1, 2, lr, 7
    )
    assert (pairs, kept) == (6, 5)
    np.testing.assert_allclose(inputs, expected_in, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs, expected_out, rtol=1e-5, atol=1e-6)
    assert loss > 0


def test_a_noise_word_equal_to_the_center_is_skipped():
    inputs, outputs = matrices()
    before = outputs.copy()
    tokens = np.array([1, 2], np.int32)
    # every noise draw is word 2: skipped for center 2, taken for center 1
    native.skipgram_chunk(inputs, outputs, tokens, np.array([0, 2]), KEEP_ALL, only_noise(2), 1, 3, 0.1, 1)
    expected_in, expected_out = matrices()
    grad = reference_pair(expected_in[2], expected_out, [(1, 1), (2, 0), (2, 0), (2, 0)], 0.1)
    expected_in[2] += grad
    grad = reference_pair(expected_in[1], expected_out, [(2, 1)], 0.1)
    expected_in[1] += grad
    np.testing.assert_allclose(outputs, expected_out, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(outputs, before)


def test_cbow_averages_the_window_and_gives_every_context_the_whole_gradient():
    inputs, outputs = matrices(1)
    tokens = np.array([1, 2, 3], np.int32)
    expected_in, expected_out = inputs.copy(), outputs.copy()
    for i, center in enumerate([1, 2, 3]):
        contexts = [[1, 2, 3][j] for j in (i - 1, i + 1) if 0 <= j < 3]
        hidden = expected_in[contexts].mean(0)
        grad = reference_pair(hidden, expected_out, [(center, 1), (4, 0)], 0.05)
        for context in contexts:
            expected_in[context] += grad
    loss, centers, _ = native.cbow_chunk(
        inputs, outputs, tokens, np.array([0, 3]), KEEP_ALL, only_noise(4), 1, 1, 0.05, 3
    )
    assert centers == 3
    np.testing.assert_allclose(inputs, expected_in, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs, expected_out, rtol=1e-5, atol=1e-6)


def test_subword_skipgram_reads_the_mean_of_a_words_rows_and_updates_them_all():
    rng = np.random.default_rng(2)
    inputs = rng.normal(0, 0.5, (10, 4)).astype(np.float32)  # 4 words, then 6 n-gram rows
    outputs = rng.normal(0, 0.5, (4, 4)).astype(np.float32)
    rows = np.array([0, 4, 5, 1, 5, 6, 7, 2, 3, 8, 9], np.int64)
    row_offsets = np.array([0, 3, 7, 8, 11])  # word 1 has n-gram rows 5, 6, 7 (5 shared with word 0)
    tokens = np.array([0, 1], np.int32)
    expected_in, expected_out = inputs.copy(), outputs.copy()
    for center, context in ((0, 1), (1, 0)):
        own = rows[row_offsets[center] : row_offsets[center + 1]]
        grad = reference_pair(expected_in[own].mean(0), expected_out, [(context, 1), (3, 0)], 0.1)
        expected_in[own] += grad
    native.subword_skipgram_chunk(
        inputs,
        outputs,
        rows,
        row_offsets,
        tokens,
        np.array([0, 2]),
        KEEP_ALL[:4],
        only_noise(3, 4),
        1,
        1,
        0.1,
        5,
    )
    np.testing.assert_allclose(inputs, expected_in, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs, expected_out, rtol=1e-5, atol=1e-6)


def test_glove_takes_the_tools_adagrad_step_pair_by_pair():
    rng = np.random.default_rng(3)
    words, dim = 5, 3
    w, c = (rng.uniform(-0.5, 0.5, (words, dim)).astype(np.float32) for _ in range(2))
    bw, bc = (rng.uniform(-0.5, 0.5, words).astype(np.float32) for _ in range(2))
    gw, gc = np.ones((words, dim), np.float32), np.ones((words, dim), np.float32)
    gbw, gbc = np.ones(words, np.float32), np.ones(words, np.float32)
    i = np.array([0, 1, 0, 3])
    j = np.array([1, 0, 1, 4])  # pair 0 and 2 are the same: the second sees the first's update
    x = np.array([3.0, 3.0, 3.0, 200.0], np.float32)
    log_x, weight = np.log(x), np.minimum(1.0, (x / 100.0) ** 0.75).astype(np.float32)
    state = [a.copy() for a in (w, c, bw, bc, gw, gc, gbw, gbc)]
    ew, ec, ebw, ebc, egw, egc, egbw, egbc = state
    expected_loss = 0.0
    for p in [2, 0, 3, 1]:
        a, b = i[p], j[p]
        diff = ew[a] @ ec[b] + ebw[a] + ebc[b] - log_x[p]
        expected_loss += weight[p] * diff**2
        fdiff = 0.05 * weight[p] * diff
        g1, g2 = fdiff * ec[b], fdiff * ew[a]
        ew[a] -= g1 / np.sqrt(egw[a])
        ec[b] -= g2 / np.sqrt(egc[b])
        egw[a] += g1**2
        egc[b] += g2**2
        ebw[a] -= fdiff / np.sqrt(egbw[a])
        ebc[b] -= fdiff / np.sqrt(egbc[b])
        egbw[a] += fdiff**2
        egbc[b] += fdiff**2

    loss, skipped = native.glove_pairs(
        w, c, bw, bc, gw, gc, gbw, gbc, i, j, log_x, weight, np.array([2, 0, 3, 1]), 0.05
    )
    assert skipped == 0
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    for got, expected in zip((w, c, bw, bc, gw, gc, gbw, gbc), state, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_glove_skips_a_pair_whose_error_overflows():
    w = np.array([[1e30, 1e30]], np.float32)
    c = np.array([[1e30, 1e30]], np.float32)
    rest = [
        np.zeros(1, np.float32),
        np.zeros(1, np.float32),
        np.ones((1, 2), np.float32),
        np.ones((1, 2), np.float32),
    ]
    rest += [np.ones(1, np.float32), np.ones(1, np.float32)]
    before = w.copy()
    loss, skipped = native.glove_pairs(
        w,
        c,
        *rest,
        np.array([0]),
        np.array([0]),
        np.array([1.0], np.float32),
        np.array([1.0], np.float32),
        np.array([0]),
        0.05,
    )
    assert skipped == 1 and loss == 0.0
    np.testing.assert_array_equal(w, before)


@pytest.mark.parametrize("most_steps", [4, -1])  # the slot lookup, and binary search
def test_noise_draws_follow_the_table_and_subsampling_its_probabilities(most_steps):
    counts = np.array([5000, 2000, 1000, 500, 100, 10])
    table = noise(counts, 0.75, most_steps)
    assert (table[3] >= 0) == (most_steps >= 0)
    state = np.array([12345], np.uint64)
    draws = np.array([native._noise_word(state, table) for _ in range(60_000)])
    expected = counts**0.75 / (counts**0.75).sum()
    observed = np.bincount(draws, minlength=6) / len(draws)
    np.testing.assert_allclose(observed, expected, atol=0.006)

    keep = keep_probabilities(counts, 1e-2)
    assert keep[0] < 0.5 and keep[-1] == 1.0
    tokens = np.repeat(np.arange(6, dtype=np.int32), 20_000)
    kept, bounds = native._subsample(tokens, np.array([0, len(tokens)]), native.keep_thresholds(keep), state)
    np.testing.assert_allclose(np.bincount(kept, minlength=6) / 20_000, keep, atol=0.015)
    # a sentence longer than MAX_SENTENCE is cut into pieces of that many words, before subsampling
    assert len(bounds) - 1 == -(-len(tokens) // native.MAX_SENTENCE) and bounds[-1] == len(kept)


def test_windows_stay_inside_their_sentence():
    inputs, outputs = matrices()
    tokens = np.array([1, 2, 3, 4], np.int32)
    # two sentences of two words, window 5: each word has one context, its sentence's other word
    _, pairs, _ = native.skipgram_chunk(
        inputs, outputs, tokens, np.array([0, 2, 4]), KEEP_ALL, only_noise(5), 5, 1, 0.1, 1
    )
    assert pairs == 4


def test_a_chunk_repeats_its_draws_from_its_seed():
    tokens = np.random.default_rng(4).integers(0, 6, 400).astype(np.int32)
    offsets = np.array([0, 150, 400])
    keep = native.keep_thresholds(np.full(6, 0.7))
    table = noise(np.arange(1, 7), 0.75)
    runs = []
    for seed in (9, 9, 10):
        inputs, outputs = matrices()
        runs.append(
            (native.skipgram_chunk(inputs, outputs, tokens, offsets, keep, table, 3, 4, 0.05, seed), inputs)
        )
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert runs[0][0][1] != runs[2][0][1] or not np.array_equal(runs[0][1], runs[2][1])
