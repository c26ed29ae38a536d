"""Co-occurrence counts equal a brute-force count on real text, with every option and every way of cutting the work."""

from __future__ import annotations

from collections import defaultdict
from fractions import Fraction

import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks import cooccurrence as co
from tasks import corpus as cp
from tasks.common import InputError


@pytest.fixture(scope="module")
def quijote_tokens(tmp_path_factory, shared_data):
    """Token shards of two chapters of Don Quijote (~25k tokens), cut in several shards."""
    from storage import Store

    folder = tmp_path_factory.mktemp("cooccurrence")
    book = (shared_data / "text_corpora" / "pg2000-don-quijote-es.txt").read_text(encoding="utf-8")
    path = folder / "quijote.txt"
    path.write_text("\n".join(book.splitlines()[1000:3000]), encoding="utf-8")
    store = Store(folder / "store")
    options = cp.CorpusOptions(text_documents="paragraph", shard_sentences=400)
    _, _, tokens = cp.build_in_process(store, [str(path)], "quijote", options, min_count=2)
    return store, tokens


def brute_force(tokens, window: int, weighting: str, symmetric: bool) -> dict[tuple[int, int], Fraction]:
    """Every pair of positions of every sentence row, one at a time, in exact fractions."""
    counts: dict[tuple[int, int], Fraction] = defaultdict(Fraction)
    for path in tokens.table_files("tokens"):
        for ids in pq.read_table(path)["tokens"].to_pylist():
            for p, word in enumerate(ids):
                for d in range(1, window + 1):
                    if p + d >= len(ids):
                        break
                    weight = Fraction(1, d) if weighting == "harmonic" else Fraction(1)
                    counts[word, ids[p + d]] += weight
                    if symmetric:
                        counts[ids[p + d], word] += weight
    return counts


def as_dict(dataset) -> dict[tuple[int, int], float]:
    table = dataset.read_table("cooccurrence")
    i, j, x = (table[c].to_numpy() for c in "ijx")
    found = dict(zip(zip(i.tolist(), j.tolist(), strict=True), x.tolist(), strict=True))
    assert len(found) == table.num_rows, "a pair is in more than one row"
    return found


@pytest.mark.parametrize(
    ("window", "weighting", "symmetric"),
    [
        (10, "harmonic", True),
        (10, "harmonic", False),
        (5, "uniform", True),
        (3, "uniform", False),
        (1, "harmonic", True),
    ],
)
def test_equals_brute_force_count(quijote_tokens, window, weighting, symmetric):
    store, tokens = quijote_tokens
    options = co.CooccurrenceOptions(window, weighting, symmetric, partitions=3)
    dataset = store.dataset(f"text/quijote/cooccurrence-{window}-{weighting}-{symmetric}")
    co.count_in_process(dataset, tokens, options)

    found, expected = as_dict(dataset), brute_force(tokens, window, weighting, symmetric)
    assert found.keys() == expected.keys()
    # the exact sum, rounded once to float32: equal to the last bit
    assert all(found[k] == np.float32(float(v)) for k, v in expected.items())
    assert dataset.manifest().counts["pairs"] == len(expected)
    assert dataset.read_table("vocabulary").equals(tokens.read_table("vocabulary"))
    if symmetric:
        assert all(found[i, j] == found[j, i] for i, j in found)


def test_same_result_however_the_work_is_cut(quijote_tokens):
    """Many counting units, batches of a few thousand tokens, several merge passes: the same rows."""
    store, tokens = quijote_tokens
    whole = store.dataset("text/quijote/cooccurrence-whole")
    co.count_in_process(whole, tokens, co.CooccurrenceOptions(partitions=1))
    cut = store.dataset("text/quijote/cooccurrence-cut")
    options = co.CooccurrenceOptions(partitions=2, memory_mb=1, tokens_per_task=3_000)
    co.count_in_process(cut, tokens, options)

    counts = cut.manifest().counts
    assert counts["runs"] > len(tokens.table_files("tokens")) > 1  # several batches per unit
    assert counts["merge_passes"] > options.partitions  # partitions larger than memory_mb merged in passes
    assert len(cut.table_files("cooccurrence")) == counts["merge_passes"]
    assert as_dict(whole) == as_dict(cut)
    assert not cut.files("_runs/*"), "spilled runs are removed once the manifest is written"


def test_window_past_22_uses_float_weights(quijote_tokens):
    store, tokens = quijote_tokens
    dataset = store.dataset("text/quijote/cooccurrence-25")
    options = co.CooccurrenceOptions(window=25, partitions=2)
    assert options.scale == 1
    co.count_in_process(dataset, tokens, options)
    found, expected = as_dict(dataset), brute_force(tokens, 25, "harmonic", True)
    assert found.keys() == expected.keys()
    keys = list(expected)
    np.testing.assert_allclose([found[k] for k in keys], [float(expected[k]) for k in keys], rtol=1e-6)


def test_sentence_rows_are_never_crossed():
    # two sentences [0 1 2] [3 4]: nothing pairs 2 with 3
    ids, offsets = np.array([0, 1, 2, 3, 4]), np.array([0, 3, 5])
    keys, sums = co.count_pairs(ids, offsets, 5, co.CooccurrenceOptions(window=10, weighting="uniform"))
    pairs = {(int(k) // 5, int(k) % 5): int(s) for k, s in zip(keys, sums, strict=True)}
    assert pairs == {(0, 1): 1, (0, 2): 1, (1, 2): 1, (3, 4): 1}


def test_a_word_next_to_itself_counts_in_both_directions(store, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("la la\nla\n")
    _, _, tokens = cp.build_in_process(store, [str(text)], "self", min_count=1)
    dataset = store.dataset("text/self/cooccurrence")
    co.count_in_process(dataset, tokens, co.CooccurrenceOptions())
    assert as_dict(dataset) == {(0, 0): 2.0}  # GloVe's symmetric count: left context and right context


def test_empty_corpus_gives_an_empty_table(store, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("\n...\n")
    _, _, tokens = cp.build_in_process(store, [str(text)], "empty", min_count=1)
    dataset = store.dataset("text/empty/cooccurrence")
    summary = co.count_in_process(dataset, tokens, co.CooccurrenceOptions(partitions=2))
    assert summary["counts"]["pairs"] == 0 and dataset.read_table("cooccurrence").num_rows == 0


def test_among_a_few_words(quijote_tokens):
    store, tokens = quijote_tokens
    dataset = store.dataset("text/quijote/cooccurrence-10-harmonic-True")
    co.count_in_process(dataset, tokens, co.CooccurrenceOptions(partitions=3))
    rows = co.cooccurrence_among(dataset, ["quijote", "sancho", "no-such-word"])
    assert [r["word"] for r in rows] == ["quijote", "sancho"]
    assert rows[0]["sancho"] == rows[1]["quijote"] > 0


def test_bad_options_name_the_option():
    with pytest.raises(InputError, match="window must be >= 1, got 0"):
        co.CooccurrenceOptions(window=0)
    with pytest.raises(InputError, match="weighting must be harmonic or uniform"):
        co.CooccurrenceOptions(weighting="linear")
    with pytest.raises(InputError, match="partitions"):
        co.CooccurrenceOptions(partitions=0)


def test_worker_processes_give_the_same_rows(quijote_tokens):
    store, tokens = quijote_tokens
    options = co.CooccurrenceOptions(partitions=3, tokens_per_task=5_000)
    alone, pooled = store.dataset("text/quijote/co-alone"), store.dataset("text/quijote/co-pooled")
    co.count_in_process(alone, tokens, options)
    co.count_in_process(pooled, tokens, options, workers=2)
    assert as_dict(alone) == as_dict(pooled)
