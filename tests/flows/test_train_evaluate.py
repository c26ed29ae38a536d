"""The train and evaluate flows end to end, the neighbours command, and the gpu concurrency limit."""

from __future__ import annotations

import asyncio

import pyarrow.parquet as pq
import pytest
import torch

from flows.cli import main
from flows.evaluate import evaluate, nearest_words
from flows.train import GPU_TAG, _train_with_torchrun, find_assets, setup_gpu_limit, train
from models import registry
from models.base import RunOptions
from tasks.common import InputError
from tests.models.text_assets import gloss_sentences, write_text_assets


@pytest.fixture
def glosses(store, shared_data):
    write_text_assets(store, "glosses", gloss_sentences(shared_data, limit=6_000), shards=2)
    return store


@pytest.mark.slow
def test_train_then_evaluate_then_neighbours(prefect_server, glosses, capsys):
    store = glosses
    run = train(model="word2vec", store=store.url, overrides={"epochs": "1", "dim": "24", "min_count": "2"})
    assert run.startswith("runs/word2vec-")
    manifest = store.dataset(run).manifest()
    assert manifest.kind == "run/word2vec"
    assert manifest.metrics["words"] > 50_000 and manifest.metrics["words_per_s"] > 0
    assert store.dataset(run).read_json("config.json")["config"]["dim"] == 24

    # the same settings on the same assets: nothing to do, the same run
    assert (
        train(model="word2vec", store=store.url, overrides={"epochs": "1", "dim": "24", "min_count": "2"})
        == run
    )
    assert store.dataset(run).manifest().created == manifest.created

    phoc = train(model="phoc", store=store.url, overrides={"min_count": "2"})
    board = evaluate(runs=[run, phoc], store=store.url)
    assert {row["run"] for row in board} == {run.removeprefix("runs/"), phoc.removeprefix("runs/")}
    for row in board:
        assert row["analogy_answered"].endswith("/19544")
        assert {"wordsim353", "simlex999", "EN-RW-STANFORD"} <= set(row)
    phoc_row = next(r for r in board if r["run"] == phoc.removeprefix("runs/"))
    assert phoc_row["EN-RW-STANFORD_answered"] == "2034/2034"  # PHOC builds every unseen word

    results = store.dataset(f"evaluations/{run.removeprefix('runs/')}")
    analogies = pq.read_table(results.file("analogies.parquet")).to_pylist()
    assert analogies[-1]["section"] == "total" and len(analogies) == 15
    assert sorted(p.rsplit("/", 1)[-1] for p in results.files("plots/*.png")) == [
        "analogy.png",
        "neighbours.png",
        "projection.png",
        "senses.png",
    ]
    # a static model: one vector per word, whatever the sentence around it
    for row in board:
        assert row["context_cosine"] == pytest.approx(1.0, abs=1e-5) and row["sense_accuracy"] == 0.0
    senses = pq.read_table(results.file("senses.parquet")).to_pylist()
    assert len(senses) == 16 and sum(r["seen"] for r in senses) >= 8
    assert "leaderboard" not in capsys.readouterr().err

    near = nearest_words(store.url, run, ["water", "notaword"], count=5)
    assert len(near["water"]) == 5 and "water" not in [w for w, _ in near["water"]]
    assert near["notaword"] == []
    assert main(["neighbours", run, "water", "--store", store.url, "--count", "3"]) == 0
    assert capsys.readouterr().out.startswith("water: ")


def test_missing_assets_name_the_step_that_makes_them(store):
    with pytest.raises(InputError, match="embedpipe build-text-assets"):
        find_assets(store, registry.get("glove"))


def test_several_text_assets_need_a_choice(store):
    sentences = [["a", "b", "c"], ["b", "c", "d"]]
    write_text_assets(store, "one", sentences, shards=1)
    write_text_assets(store, "two", sentences, shards=1)
    with pytest.raises(InputError, match="--text NAME"):
        find_assets(store, registry.get("word2vec"))
    assert (
        find_assets(store, registry.get("glove"), text="two")["cooccurrence"].name == "text/two/cooccurrence"
    )


def test_bad_settings_fail_before_training(store, capsys):
    assert main(["train", "word2vec", "--store", store.url, "--set", "window"]) == 2
    assert "--set takes key=value" in capsys.readouterr().err


def test_setup_gpu_limit_creates_the_limit(prefect_server):
    from prefect.client.orchestration import get_client

    setup_gpu_limit(3)

    async def read():
        async with get_client() as client:
            return await client.read_concurrency_limit_by_tag(GPU_TAG)

    assert asyncio.run(read()).concurrency_limit == 3
    with pytest.raises(InputError, match=">= 1"):
        setup_gpu_limit(0)


@pytest.mark.slow
def test_word2vec_trains_under_torchrun_with_two_processes(glosses):
    """Two CPU processes (gloo) each train on their share and average; rank 0 exports."""
    store = glosses
    assets = find_assets(store, registry.get("word2vec"))
    run = store.dataset("runs/word2vec-two-processes")
    config = registry.get("word2vec").config.from_overrides({"epochs": "1", "dim": "16", "min_count": "2"})
    config = config.resolved(torch.device("cpu"))
    run.fs.makedirs(run.path, exist_ok=True)
    metrics = _train_with_torchrun(run, "word2vec", config.to_dict(), assets, RunOptions(device="cpu"), 2)
    assert metrics["processes"] == 2
    embedding = registry.get("word2vec").load(run)
    assert len(embedding) == metrics["vocabulary"] and embedding.norms.min() > 0


@pytest.mark.slow
def test_a_contextual_run_is_scored_on_held_out_articles_and_senses(
    prefect_server, tmp_path_factory, shared_data
):
    from tests.models.test_pretraining import contextual_assets

    store, _ = contextual_assets(tmp_path_factory, shared_data)
    tiny = {"hidden_size": "64", "intermediate_size": "128", "heads": "2", "block_size": "64"}
    run = train(
        model="gpt",
        store=store.url,
        overrides=tiny | {"steps": "30", "batch_size": "16"},
        threads=1,
        log_every_s=0.0,  # a loss point every step, for the loss plot
    )
    assert run.startswith("runs/gpt-")
    (row,) = evaluate(runs=[run], store=store.url, max_examples=64)
    assert row["run"] == run.removeprefix("runs/")

    results = store.dataset(f"evaluations/{run.removeprefix('runs/')}")
    heldout = {r["metric"]: r["value"] for r in pq.read_table(results.file("heldout.parquet")).to_pylist()}
    # a model barely trained is far better than chance over its 8,000 pieces, and far from perfect
    assert 1.0 < heldout["perplexity"] < 8_000
    senses = pq.read_table(results.file("senses.parquet")).to_pylist()
    assert len({r["word"] for r in senses}) == 16
    # a word's vector depends on its sentence: two sentences never give it the same one
    # (a static run gives cosine 1.0 for every word)
    assert max(r["cosine_same_sense"] for r in senses) < 0.999999
    assert sorted(p.rsplit("/", 1)[-1] for p in results.files("plots/*.png")) == ["loss.png", "senses.png"]
    for key in ("wordsim353", "simlex999", "sense_accuracy"):
        assert key in row
