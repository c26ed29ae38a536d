"""The sense check that puts static and contextual models in one table."""

from __future__ import annotations

import numpy as np
import pytest

from models.vectors import WordEmbedding
from tasks import contextual_evaluation as cx


def _sense_words() -> list[str]:
    words = {w for item in cx.SENSES for s in (*item.same, item.other) for w in s.split()}
    return sorted(words)


def test_a_static_model_gives_a_word_one_vector_and_tells_no_sense_apart():
    words = _sense_words()
    missing = {"bark", "mouse"}  # a vocabulary without two of the sense words
    kept = [w for w in words if w not in missing]
    vectors = np.random.default_rng(0).normal(size=(len(kept), 16)).astype(np.float32)
    rows = cx.sense_rows(cx.static_encoder(WordEmbedding(kept, vectors)))

    assert [r["word"] for r in rows] == [item.word for item in cx.SENSES]
    for row in rows:
        if row["word"] in missing:
            assert not row["seen"] and not row["separated"]
        else:
            assert row["seen"] and not row["separated"]
            assert row["cosine_same_sense"] == pytest.approx(1.0, abs=1e-6)
            assert row["cosine_other_sense"] == pytest.approx(1.0, abs=1e-6)
    summary = cx.summarize_senses(rows)
    assert summary["sense_items"] == len(cx.SENSES) and summary["sense_items_unseen"] == 2
    assert summary["sense_accuracy"] == 0.0
    assert summary["context_cosine"] == pytest.approx(1.0, abs=1e-6)


def test_a_model_that_reads_context_moves_the_word_and_can_separate_senses():
    words = _sense_words()
    rng = np.random.default_rng(1)
    base = {w: rng.normal(size=32) for w in words}

    def encode(sentences):
        # each word plus the mean of its sentence: the same word differs from sentence to sentence
        out = []
        for sentence in sentences:
            context = np.mean([base[w] for w in sentence], axis=0)
            out.append(np.stack([base[w] + 2.0 * context for w in sentence]).astype(np.float32))
        return out

    rows = cx.sense_rows(encode)
    assert all(r["seen"] for r in rows)
    assert all(r["cosine_same_sense"] < 0.999 for r in rows)
    summary = cx.summarize_senses(rows)
    assert summary["context_cosine"] < 0.999
    # the accuracy is the share of rows with cos(same) > cos(other), recomputed here
    expected = np.mean([r["cosine_same_sense"] > r["cosine_other_sense"] + 1e-6 for r in rows])
    assert summary["sense_accuracy"] == pytest.approx(expected)
    png = cx.senses_plot(rows, "context")
    assert png is not None and png[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_sense_item_must_hold_its_word_once_in_each_sentence():
    bad = (cx.SenseItem("bank", ("the bank of the river", "a river"), "money in the bank"),)
    with pytest.raises(ValueError, match="bank"):
        cx.sense_rows(lambda sentences: [np.ones((len(s), 2)) for s in sentences], bad)


def test_the_loss_plot_needs_two_points():
    assert cx.heldout_plot([{"done": 1, "loss": 2.0}], "one point") is None
    png = cx.heldout_plot([{"done": 1, "loss": 3.0}, {"done": 2, "loss": 2.0}], "falls")
    assert png is not None and png[:4] == b"\x89PNG"
