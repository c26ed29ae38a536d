"""The build-text-assets flow: every step's dataset, and re-runs that rebuild exactly what changed."""

from __future__ import annotations

import pyarrow as pa
import pytest

from flows.build_text_assets import build_text_assets, default_name
from storage import Manifest, Recipe, Store
from storage.schemas import ARTICLES
from tasks.common import InputError

SMALL = {
    "min_count": 2,
    "shard_sentences": 400,
    "partitions": 3,
    "wordpiece_vocab_size": 800,
    "bpe_vocab_size": 600,
    "unigram_vocab_size": 600,
    "t5_extra_ids": 5,
    "topics": 5,
    "no_below": 2,
    "text_documents": "paragraph",
}
KINDS = {
    "corpus": "text-corpus",
    "vocabulary": "vocabulary",
    "tokens": "token-shards",
    "cooccurrence": "cooccurrence",
    "topics": "lda-topics",
}


def write_articles(store: Store, name: str, rows: list[tuple[int, str, str]]) -> str:
    dataset = store.dataset(f"wikipedia/{name}")
    recipe = Recipe("wikipedia-articles", {"dump": name}, {}, "test")
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


@pytest.fixture
def inputs(store, shared_data, tmp_path):
    articles = write_articles(
        store,
        "sample",
        [
            (1, "Empty", ""),
            (2, "One word", "Sancho"),
            (3, "Knight", "Don Quijote rode Rocinante. Sancho followed on his donkey."),
        ],
    )
    book = (shared_data / "text_corpora" / "pg2000-don-quijote-es.txt").read_text(encoding="utf-8")
    path = tmp_path / "quijote.txt"
    path.write_text("\n".join(book.splitlines()[1000:2500]), encoding="utf-8")
    return [articles, str(path)]


def manifests(store: Store, made: dict) -> dict[str, str]:
    """Each step's dataset: its manifest's creation time and fingerprint, which change only when rebuilt."""
    names = {k: v for k, v in made.items() if k in KINDS}
    names.update({f"tokenizer {k}": v for k, v in made["tokenizers"].items()})
    return {step: store.dataset(name).manifest().fingerprint for step, name in names.items()}


def test_builds_every_step_then_rebuilds_only_what_a_parameter_changes(prefect_server, store, inputs):
    made = build_text_assets(inputs, store=store.url, name="t", show_words=["quijote", "sancho"], **SMALL)
    assert set(made["steps"].values()) == {"built"}
    for step, kind in KINDS.items():
        assert made[step] == f"text/t/{step}"
        assert store.dataset(made[step]).manifest().kind == kind
    assert set(made["tokenizers"]) == {"wordpiece", "bpe", "unigram"}
    corpus = store.dataset("text/t/corpus").manifest()
    assert (
        corpus.counts["documents_empty"] >= 1 and corpus.counts["documents_in"] == corpus.counts["documents"]
    )
    topics = store.dataset("text/t/topics").read_table("topics")
    assert topics.num_rows == corpus.tables["articles"]["rows"]
    before = manifests(store, made)

    # nothing changed: every step is found in the store
    again = build_text_assets(inputs, store=store.url, name="t", **SMALL)
    assert set(again["steps"].values()) == {"cached"}
    assert manifests(store, again) == before

    # a new window: co-occurrence alone is counted again
    window = build_text_assets(inputs, store=store.url, name="t", **{**SMALL, "window": 4})
    rebuilt = {step for step, state in window["steps"].items() if state == "built"}
    assert rebuilt == {"cooccurrence"}
    after = manifests(store, window)
    assert {s for s in before if before[s] != after[s]} == {"cooccurrence"}

    # a new min count: the vocabulary and everything made from it; the corpus and the tokenizers stay
    vocabulary = build_text_assets(
        inputs, store=store.url, name="t", **{**SMALL, "window": 4, "min_count": 3}
    )
    rebuilt = {step for step, state in vocabulary["steps"].items() if state == "built"}
    assert rebuilt == {"vocabulary", "tokens", "cooccurrence", "topics"}
    final = manifests(store, vocabulary)
    assert {s for s in after if after[s] != final[s]} == {"vocabulary", "tokens", "cooccurrence", "topics"}


def test_steps_run_with_what_they_need_only(prefect_server, store, inputs):
    made = build_text_assets(inputs, store=store.url, name="c", steps=["cooccurrence"], **SMALL)
    assert set(made["steps"]) == {"corpus", "vocabulary", "tokens", "cooccurrence"}
    assert made["tokenizers"] == {} and "topics" not in made
    assert not store.dataset("text/c/topics").is_complete()


def test_cli_on_an_ingested_dump(prefect_server, store, shared_data, capsys):
    """The English sample dump through ingest-wikipedia, then the CLI on its article dataset."""
    from flows.cli import main
    from flows.ingest_wikipedia import ingest_wikipedia

    dump = (
        shared_data / "wikipedia_xml" / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    )
    articles = ingest_wikipedia(source=str(dump), store=store.url, name="enwiki-sample")
    code = main(
        [
            "build-text-assets",
            articles,
            "--store",
            store.url,
            "--steps",
            "cooccurrence",
            "--min-count",
            "3",
            "--show-words",
            "anarchism,state,society",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "text/enwiki-sample/cooccurrence" in out and "anarchism" in out
    tokens = store.dataset("text/enwiki-sample/tokens").manifest()
    assert tokens.counts["tokens"] > 100_000
    assert store.dataset("text/enwiki-sample/corpus").manifest().counts["documents"] == 106


def test_bad_input_is_refused_before_any_work(store, inputs):
    with pytest.raises(InputError, match="unknown step"):
        build_text_assets.fn(inputs, store=store.url, steps=["parse"])
    with pytest.raises(InputError, match="unknown tokenizer"):
        build_text_assets.fn(inputs, store=store.url, tokenizers=["sentencepiece"])
    with pytest.raises(InputError, match="window must be >= 1"):
        build_text_assets.fn(inputs, store=store.url, window=0)
    with pytest.raises(InputError, match="bpe vocab_size must be >= 300"):
        build_text_assets.fn(inputs, store=store.url, bpe_vocab_size=10)
    with pytest.raises(InputError, match="engine must be one of"):
        build_text_assets.fn(inputs, store=store.url, lda_engine="mallet")
    assert not store.datasets("text")


def test_default_names():
    assert default_name(["wikipedia/enwiki-sample"]) == "enwiki-sample"
    assert (
        default_name(["/data/pg2000-don-quijote-es.txt.bz2", "wikipedia/ltgwiki"])
        == "pg2000-don-quijote-es+ltgwiki"
    )


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["processes", "dask"])
def test_mapped_steps_on_worker_processes_and_dask(prefect_server, store, inputs, runner):
    """The same co-occurrence rows whether the mapped tasks run in this process, a process pool or Dask."""
    from flows.build_text_assets import task_runner_for

    alone = build_text_assets(inputs, store=store.url, name="alone", steps=["cooccurrence"], **SMALL)
    if runner == "processes":
        task_runner = task_runner_for(2, None)
    else:
        from prefect_dask import DaskTaskRunner

        task_runner = DaskTaskRunner(
            cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True}
        )
    flow = build_text_assets.with_options(task_runner=task_runner)
    pooled = flow(inputs, store=store.url, name=runner, steps=["cooccurrence"], **SMALL)

    def rows(made):
        table = store.dataset(made["cooccurrence"]).read_table("cooccurrence")
        return sorted(zip(*(table[c].to_pylist() for c in "ijx"), strict=True))

    assert rows(alone) == rows(pooled)


@pytest.mark.slow
def test_latgalian_wikipedia(prefect_server, store, shared_data):
    """The Latgalian sample dump, ingested, then split into words that keep their letters."""
    import regex

    from flows.ingest_wikipedia import ingest_wikipedia

    dump = shared_data / "wikipedia_xml" / "dumpster-dive-ltgwiki-smallwiki-pages-articles.xml.bz2"
    articles = ingest_wikipedia(source=str(dump), store=store.url, name="ltgwiki-sample")
    made = build_text_assets([articles], store=store.url, steps=["tokens"], min_count=2)
    corpus = store.dataset(made["corpus"]).manifest()
    assert corpus.counts["documents"] == store.dataset(articles).manifest().tables["articles"]["rows"]
    words = store.dataset(made["vocabulary"]).read_table("vocabulary")["token"].to_pylist()
    # Latgalian's common words, with its long vowels and soft consonants, are in the vocabulary whole
    assert {"i", "ir", "nu", "latgolys", "volūda"} <= set(words)
    marked = [w for w in words if regex.search(r"[āēīōūļņķģšžč]", w)]
    assert len(marked) > 0.2 * len(words)
    assert all(regex.fullmatch(r"[\p{L}\p{M}\p{N}'·.,\-]+", w) for w in words)
