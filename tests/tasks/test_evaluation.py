"""Word evaluation: the same numbers as gensim's KeyedVectors on the same vectors, and honest coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gensim.models import KeyedVectors

from models import registry
from models.base import RunOptions, TrainContext
from models.vectors import WordEmbedding
from storage import Store
from tasks import evaluation as ev
from tests.models.text_assets import gloss_sentences, write_text_assets


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data):
    """word2vec and fastText trained briefly on 15,000 WordNet glosses, and gensim's view of the vectors."""
    store = Store(tmp_path_factory.mktemp("evaluation") / "store")
    names = write_text_assets(store, "glosses", gloss_sentences(shared_data, limit=15_000), shards=2)
    runs = {}
    for model, overrides in (
        ("word2vec", {"epochs": "1", "dim": "40", "min_count": "2"}),
        ("fasttext", {"epochs": "1", "dim": "40", "min_count": "2", "bucket": "20000"}),
    ):
        spec = registry.get(model)
        run = store.dataset(f"runs/{model}")
        context = TrainContext.create(run, RunOptions(device="cpu"))
        config = spec.config.from_overrides(overrides).resolved(context.device)
        spec.train(config, {"tokens": store.dataset(names["tokens"])}, context)
        runs[model] = run
    return runs


def gensim_view(run) -> tuple[KeyedVectors, WordEmbedding]:
    vectors = KeyedVectors.load_word2vec_format(run.file("vectors.txt"))
    return vectors, WordEmbedding(vectors.index_to_key, vectors.vectors)


def test_analogies_equal_gensims_by_section(trained, shared_data):
    path = shared_data / "word_eval" / "gensim" / "questions-words.txt"
    vectors, embedding = gensim_view(trained["word2vec"])
    _, expected = vectors.evaluate_word_analogies(str(path))
    sections, invalid = ev.read_analogies(path)
    rows = ev.evaluate_analogies(embedding, sections)
    assert invalid == 0
    assert [r["section"] for r in rows[:-1]] == [s["section"] for s in expected[:-1]]
    for row, section in zip(rows, expected, strict=True):
        assert row["answered"] == len(section["correct"]) + len(section["incorrect"]), row["section"]
        assert row["correct_add"] == len(section["correct"]), row["section"]
    total = rows[-1]
    assert total["questions"] == 19_544 == total["answered"] + total["answered_built"] + total["unseen"]
    assert total["answered"] > 500


@pytest.mark.filterwarnings("ignore:Call to deprecated `init_sims`")
def test_3cosmul_equals_gensims_most_similar_cosmul(trained, shared_data):
    vectors, embedding = gensim_view(trained["word2vec"])
    sections, _ = ev.read_analogies(shared_data / "word_eval" / "gensim" / "questions-words.txt")
    index = vectors.key_to_index
    # the lowercase questions of the syntactic sections, where gensim's case folding changes nothing
    chosen = [
        ev.AnalogySection(s.name, [q for q in s.questions if all(w.islower() for w in q)])
        for s in sections
        if s.name.startswith("gram")
    ]
    expected_correct = 0
    answered = 0
    for section in chosen:
        for a, b, c, d in section.questions:
            if not all(w in index for w in (a, b, c, d)):
                continue
            answered += 1
            best = vectors.most_similar_cosmul(positive=[b, c], negative=[a], topn=5)
            predicted = next((w for w, _ in best if w.upper() not in {a.upper(), b.upper(), c.upper()}), None)
            expected_correct += predicted is not None and predicted.upper() == d.upper()
    rows = ev.evaluate_analogies(embedding, chosen)
    assert rows[-1]["answered"] == answered > 300
    assert rows[-1]["correct_mul"] == expected_correct


@pytest.mark.parametrize(
    "relative",
    ["gensim/wordsim353.tsv", "gensim/simlex999.txt", "faruqui_eval-word-vectors/EN-RW-STANFORD.txt"],
)
def test_similarity_equals_gensims_evaluate_word_pairs(trained, shared_data, relative):
    path = shared_data / "word_eval" / relative
    vectors, embedding = gensim_view(trained["word2vec"])
    pearson, spearman, oov_percent = vectors.evaluate_word_pairs(str(path))
    pairs, invalid = ev.read_pairs(path)
    result = ev.evaluate_pairs(embedding, pairs)
    assert invalid == 0
    assert result["spearman"] == pytest.approx(spearman.statistic, abs=1e-12)
    assert result["pearson"] == pytest.approx(pearson.statistic, abs=1e-9)
    assert 100 * result["unseen"] / result["pairs"] == pytest.approx(oov_percent)
    assert result["answered"] + result["answered_built"] + result["unseen"] == result["pairs"]


def test_fasttext_answers_rare_words_it_never_saw(trained, shared_data):
    embedding = registry.get("fasttext").load(trained["fasttext"])
    pairs, _ = ev.read_pairs(shared_data / "word_eval" / "faruqui_eval-word-vectors" / "EN-RW-STANFORD.txt")
    result = ev.evaluate_pairs(embedding, pairs)
    # every Rare Words word has n-grams of 3 to 6 characters, so every pair gets an answer
    assert result["pairs"] == 2_034
    assert result["unseen"] == 0
    assert result["answered_built"] > 1_500
    assert not math.isnan(result["spearman_all"])

    word2vec = registry.get("word2vec").load(trained["word2vec"])
    plain = ev.evaluate_pairs(word2vec, pairs)
    assert plain["answered_built"] == 0 and plain["unseen"] > 1_500


def test_neighbours_leave_the_word_out_and_rank_by_cosine():
    words = ["a", "b", "c", "d"]
    vectors = np.asarray([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], np.float32)
    near = ev.neighbours(WordEmbedding(words, vectors), "a", count=3)
    assert [w for w, _ in near] == ["b", "c", "d"]
    assert near[0][1] == pytest.approx(0.9 / np.hypot(0.9, 0.1))
    assert ev.neighbours(WordEmbedding(words, vectors), "zzz") == []


def test_one_hot_similarity_is_undefined_not_zero():
    words = ["cat", "dog", "car"]
    result = ev.evaluate_pairs(
        WordEmbedding(words, np.eye(3, dtype=np.float32)), [("cat", "dog", 8.0), ("cat", "car", 2.0)]
    )
    assert result["answered"] == 2 and math.isnan(result["spearman"])


def test_malformed_lines_are_counted(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("# comment\ncat\tdog\t7.5\nbroken line\ncat\tcar\tx\n", encoding="utf-8")
    pairs, invalid = ev.read_pairs(path)
    assert pairs == [("cat", "dog", 7.5)] and invalid == 2
    questions = tmp_path / "questions.txt"
    questions.write_text("a b c d\n", encoding="utf-8")
    with pytest.raises(ValueError, match="before any ': section' header"):
        ev.read_analogies(questions)
