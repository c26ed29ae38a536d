"""LDA topic targets: a distribution for every document, top words, NPMI coherence, repeatable runs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import Manifest, Recipe, Store
from storage.schemas import ARTICLES
from tasks import corpus as cp
from tasks import topics as tp
from tasks.common import InputError


def write_articles(store, name, rows):
    dataset = store.dataset(f"wikipedia/{name}")
    recipe = Recipe(cp.ARTICLES_KIND, {"dump": name}, {}, "test")
    dataset.begin(recipe)
    table = pa.Table.from_pylist(
        [{"page_id": p, "namespace": 0, "title": t, "text": x, "wiki": "testwiki"} for p, t, x in rows],
        schema=ARTICLES,
    )
    dataset.write_table("articles/part-00000.parquet", table)
    dataset.commit(
        Manifest.from_recipe(
            recipe, tables={"articles": (ARTICLES, ["articles/part-00000.parquet"], len(rows))}
        )
    )
    return dataset.name


@pytest.fixture(scope="module")
def assets(tmp_path_factory, shared_data):
    """Four articles (one empty, one of a single word) and Don Quijote's first chapters as paragraphs."""
    folder = tmp_path_factory.mktemp("topics")
    store = Store(folder / "store")
    articles = write_articles(
        store,
        "few",
        [
            (10, "Empty", ""),
            (11, "One word", "Sancho"),
            (12, "Knight", "Don Quijote rode Rocinante across la Mancha with Sancho."),
            (13, "Only rare words", "Zzyzx qwerty."),
        ],
    )
    book = (shared_data / "text_corpora" / "pg2000-don-quijote-es.txt").read_text(encoding="utf-8")
    path = folder / "quijote.txt"
    path.write_text("\n".join(book.splitlines()[1000:5000]), encoding="utf-8")
    options = cp.CorpusOptions(text_documents="paragraph", shard_sentences=500)
    corpus, _, tokens = cp.build_in_process(store, [articles, str(path)], "t", options, min_count=2)
    return store, corpus, tokens


def fit(store, corpus, tokens, name="topics", **options):
    options = tp.TopicOptions(**{"topics": 8, "no_below": 3, "drop_most_frequent": 30, **options})
    dataset = store.dataset(f"text/t/{name}")
    recipe = tp.topics_recipe(corpus, tokens, options)
    return dataset, tp.fit_topics.fn(dataset, recipe, tokens, corpus, options)


def test_every_document_gets_topics_summing_to_one(assets):
    store, corpus, tokens = assets
    dataset, summary = fit(store, corpus, tokens)
    topics = dataset.read_table("topics")
    articles = corpus.read_table("articles")
    assert topics.num_rows == articles.num_rows == summary["counts"]["articles"]
    assert topics.select(["source", "article_id"]).equals(articles.select(["source", "article_id"]))
    theta = np.array(topics["topics"].to_pylist())
    assert theta.shape == (articles.num_rows, 8)
    np.testing.assert_allclose(theta.sum(1), 1, rtol=1e-5)
    assert (theta >= 0).all()

    # the empty page and the page of rare words have no word left: they get the prior, and are counted
    by_id = dict(zip(topics["article_id"].to_pylist(), theta, strict=True))
    np.testing.assert_allclose(by_id[10], 1 / 8)
    np.testing.assert_allclose(by_id[13], 1 / 8)
    counts = summary["counts"]
    assert counts["articles_empty"] >= 2
    assert counts["articles_inferred"] + counts["articles_empty"] == counts["articles"]
    assert counts["documents_trained"] == counts["articles_inferred"]


def test_top_words_coherence_and_markdown(assets):
    store, corpus, tokens = assets
    dataset, summary = fit(store, corpus, tokens)
    words = dataset.read_table("topic_words")
    assert words.num_rows == 8 * 20
    per_topic = words.to_pylist()[:20]
    assert [w["rank"] for w in per_topic] == list(range(20))
    assert all(a["weight"] >= b["weight"] for a, b in itertools.pairwise(per_topic))
    most_frequent = tokens.read_table("vocabulary")["token"].to_pylist()[:30]
    assert not set(words["token"].to_pylist()) & set(most_frequent)
    metrics = dataset.manifest().metrics
    assert -1 <= metrics["coherence_npmi"] <= 1 and len(metrics["coherence_npmi_per_topic"]) == 8
    markdown = summary["markdown"]
    assert markdown.count("\n| ") == 2 + 8 and per_topic[0]["token"] in markdown
    lda_words = dataset.read_table("lda_vocabulary")
    vocabulary = tokens.read_table("vocabulary")
    assert lda_words["token"].to_pylist() == vocabulary["token"].take(lda_words["vocabulary_id"]).to_pylist()


def test_same_seed_same_topics(assets):
    store, corpus, tokens = assets
    first, _ = fit(store, corpus, tokens, "a", seed=3)
    second, _ = fit(store, corpus, tokens, "b", seed=3)
    assert first.read_table("topics").equals(second.read_table("topics"))
    assert first.read_table("topic_words").equals(second.read_table("topic_words"))


def test_gensim_engine_gives_the_same_tables(assets):
    store, corpus, tokens = assets
    dataset, summary = fit(store, corpus, tokens, "gensim", engine="gensim")
    theta = np.array(dataset.read_table("topics")["topics"].to_pylist())
    np.testing.assert_allclose(theta.sum(1), 1, rtol=1e-5)
    assert summary["metrics"]["engine"] == "gensim" and -1 <= summary["metrics"]["coherence_npmi"] <= 1


def test_filters(assets):
    store, corpus, tokens = assets
    vocabulary = tokens.read_table("vocabulary")
    options = tp.TopicOptions(no_below=5, no_above=0.2, drop_most_frequent=3, keep_n=300)
    table, column_of, documents = tp.lda_vocabulary(tokens, options)
    assert table.num_rows == 300 == int((column_of >= 0).sum())
    kept = set(table["vocabulary_id"].to_pylist())
    assert not kept & {0, 1, 2}
    assert min(table["documents"].to_pylist()) >= 5 and max(table["documents"].to_pylist()) <= 0.2 * documents
    # keep_n keeps the words in the most documents
    assert vocabulary.num_rows > 300


def test_npmi_equals_a_direct_count(assets):
    store, corpus, tokens = assets
    top = np.array([[0, 1, 2, 5], [3, 7, 11, 40]])
    sentences = [
        set(ids) for path in tokens.table_files("tokens") for ids in pq.read_table(path)["tokens"].to_pylist()
    ]
    n = len(sentences)

    def npmi(a, b):
        joint = sum(a in s and b in s for s in sentences) / n
        pa_, pb = sum(a in s for s in sentences) / n, sum(b in s for s in sentences) / n
        return -1.0 if joint == 0 else math.log(joint / (pa_ * pb)) / -math.log(joint)

    expected = [np.mean([npmi(a, b) for a, b in itertools.combinations(words, 2)]) for words in top]
    np.testing.assert_allclose(tp.npmi_coherence(tokens, top), expected, rtol=1e-9)


def test_saved_model_infers_new_text(assets):
    store, corpus, tokens = assets
    dataset, _ = fit(store, corpus, tokens)
    model = tp.load_topic_model(dataset, device="cpu")
    theta = model.infer_texts(["Don Quijote y Sancho Panza salieron de la aldea", "", "zzyzx"])
    assert theta.shape == (3, 8)
    np.testing.assert_allclose(theta.sum(1), 1, rtol=1e-5)
    np.testing.assert_allclose(theta[1], 1 / 8)


def test_nothing_left_after_filtering_is_a_clear_error(assets):
    store, corpus, tokens = assets
    with pytest.raises(InputError, match="no word is left for LDA"):
        fit(store, corpus, tokens, "none", no_below=10**9)
    with pytest.raises(InputError, match="stop_words must be"):
        tp.TopicOptions(stop_words="/no/such/file")
