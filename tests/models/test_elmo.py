"""ELMo: character ids, training on WordNet glosses, held-out text, contextual vectors, export and resume."""

from __future__ import annotations

import bz2
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from gensim.models import KeyedVectors
from safetensors.torch import load_file

from models import elmo, registry
from models.base import (
    ConfigError,
    RunOptions,
    TrainContext,
    TrainingInterrupted,
    checkpoint_steps,
    load_checkpoint,
)
from models.contextual import is_heldout
from storage import Store
from tests.models.text_assets import gloss_sentences, write_text_assets

REPOSITORY = Path(__file__).resolve().parents[2]

# a network a few times smaller than size=small, so that a hundred steps take seconds on one core
TINY = {
    "filters": "16,16,32,64",
    "lstm_dim": "96",
    "projection_dim": "48",
    "batch_size": "16",
    "min_count": "2",
}


@pytest.fixture(scope="module")
def glosses(tmp_path_factory, shared_data):
    """Token shards of 3,000 WordNet glosses (about 39,000 words) in two shards; one article per gloss."""
    store = Store(tmp_path_factory.mktemp("elmo-glosses") / "store")
    names = write_text_assets(store, "glosses", gloss_sentences(shared_data, limit=3_000), shards=2)
    return store, {"tokens": store.dataset(names["tokens"])}


def train_run(store, assets, overrides, run_name, **options):
    run = store.dataset(f"runs/{run_name}")
    context = TrainContext.create(run, RunOptions(device="cpu", threads=1, **options))
    config = elmo.ElmoConfig.from_overrides(overrides).resolved(context.device)
    return elmo.train(config, assets, context), run


@pytest.fixture(scope="module")
def trained(glosses):
    """80 steps of the tiny network, its final checkpoint kept beside the export."""
    store, assets = glosses
    overrides = TINY | {"max_steps": "80"}
    metrics, run = train_run(store, assets, overrides, "tiny", log_every_s=0.0, keep_final_checkpoint=True)
    return metrics, run, assets


def real_non_ascii_words(shared_data: Path) -> list[str]:
    """A Latgalian word from the ltgwiki sample and a Spanish one from Don Quijote."""
    ltgwiki = shared_data / "wikipedia_xml" / "dumpster-dive-ltgwiki-smallwiki-pages-articles.xml.bz2"
    with bz2.open(ltgwiki, "rt", encoding="utf-8") as f:
        text = f.read(200_000)
    latgalian = next(w for w in re.findall(r"\w+", text) if any(c in "āēīōūļņšžč" for c in w))
    quijote = (shared_data / "text_corpora" / "pg2000-don-quijote-es.txt").read_text(encoding="utf-8")
    spanish = re.search(r"\b\w*ñ\w*\b", quijote).group(0)
    return [latgalian, spanish]


def test_character_ids_follow_their_rules(shared_data):
    ids = elmo.character_ids(["cat", ""], 10)
    assert ids.dtype == np.int16 and ids.shape == (2, 10)
    assert (
        ids[0].tolist()
        == [elmo.BEGIN_WORD, ord("c") + 1, ord("a") + 1, ord("t") + 1, elmo.END_WORD] + [0] * 5
    )
    assert ids[1].tolist() == [elmo.BEGIN_WORD, elmo.END_WORD] + [0] * 8

    # non-ASCII letters are their UTF-8 bytes, each one id
    for word in real_non_ascii_words(shared_data):
        data = word.encode("utf-8")
        assert len(data) > len(word)
        row = elmo.character_ids([word], 50)[0]
        assert row[1 : len(data) + 1].tolist() == [b + 1 for b in data]
        assert row[len(data) + 1] == elmo.END_WORD and not row[len(data) + 2 :].any()

    # a long word keeps its first max_characters - 2 bytes, between the markers
    long_word = "pneumonoultramicroscopicsilicovolcanoconiosis" * 2
    row = elmo.character_ids([long_word], 50)[0]
    assert row[0] == elmo.BEGIN_WORD and row[-1] == elmo.END_WORD
    assert bytes(int(c) - 1 for c in row[1:-1]) == long_word.encode()[:48]
    # a cut inside a two-byte letter keeps its first byte
    cut = elmo.character_ids(["aaañ"], 6)[0]
    assert cut.tolist() == [elmo.BEGIN_WORD, 98, 98, 98, 0xC3 + 1, elmo.END_WORD]

    # the sentence boundaries have characters no word has
    boundaries = elmo.boundary_character_ids(50)
    assert boundaries[:, 1].tolist() == [elmo.BEGIN_SENTENCE_CHAR, elmo.END_SENTENCE_CHAR]
    assert ids.max() < elmo.BEGIN_SENTENCE_CHAR


def test_loss_falls_over_the_steps(trained):
    metrics, _, _ = trained
    losses = [point["loss"] for point in metrics["history"]]
    assert metrics["steps"] == 80 and len(losses) >= 40
    early, late = np.mean(losses[:5]), np.mean(losses[-5:])
    assert late < 0.8 * early, f"loss {early:.3f} -> {late:.3f}"
    assert metrics["words"] > 10_000 and metrics["words_per_s"] > 0
    assert checkpoint_steps(trained[1]) == [80]  # kept: keep_final_checkpoint


def test_heldout_perplexity_is_finite_and_below_the_vocabulary(trained):
    metrics, run, assets = trained
    scores = elmo.load(run, device="cpu").heldout(assets, max_examples=500)
    words = len(json.loads(run.fs.cat_file(run.file(elmo.WORDS_FILE))))
    assert scores["examples"] == metrics["heldout_examples"] > 20
    for key in ("perplexity_forward", "perplexity_backward", "perplexity"):
        assert np.isfinite(scores[key]) and 1 < scores[key] < words / 4, (key, scores[key], words)
        # the metrics of the run came from the model before its export
        assert scores[key] == pytest.approx(metrics[f"heldout_{key}"], rel=1e-5)
    geometric = np.sqrt(scores["perplexity_forward"] * scores["perplexity_backward"])
    assert scores["perplexity"] == pytest.approx(geometric, rel=1e-9)
    assert scores["loss"] == pytest.approx(np.log(scores["perplexity"]), rel=1e-9)
    # each sentence: its words and </S> forward
    sentences = elmo.heldout_sentences(assets, 500)
    assert scores["tokens"] == sum(len(s) + 1 for s in sentences)


def test_a_word_gets_a_vector_per_sentence_and_one_character_vector(trained):
    _, run, _ = trained
    model = elmo.load(run, device="cpu")
    first = ["the", "bank", "of", "a", "river"]
    second = ["a", "bank", "that", "lends", "money", "to", "people"]
    vectors = model.encode_words([first, second, []])
    assert [v.shape for v in vectors] == [(5, model.dim), (7, model.dim), (0, model.dim)]
    in_river, in_money = vectors[0][1], vectors[1][1]
    change = np.linalg.norm(in_river - in_money) / np.linalg.norm(in_river)
    assert change > 1e-3, change

    layers = model.layers([first, second])
    assert layers[0].shape == (3, 5, model.dim)
    np.testing.assert_array_equal(layers[0][0, 1], layers[1][0, 1])  # layer 0: characters only
    assert not np.allclose(layers[0][1, 1], layers[1][1, 1])
    half = model.dim // 2
    np.testing.assert_array_equal(layers[0][0, :, :half], layers[0][0, :, half:])
    # the default mix is the mean of the layers; other weights take their softmax
    np.testing.assert_allclose(vectors[0], layers[0].mean(axis=0), rtol=1e-5, atol=1e-6)
    reweighted = elmo.load(run, device="cpu", mix_weights=[0.0, 0.0, 30.0], gamma=2.0)
    np.testing.assert_allclose(reweighted.encode_words([first])[0], 2 * layers[0][2], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="mix_weights must hold 3"):
        elmo.load(run, device="cpu", mix_weights=[1.0, 2.0])


def test_each_direction_reads_only_its_side_and_padding_changes_nothing(trained):
    _, run, _ = trained
    model = elmo.load(run, device="cpu")
    half = model.dim // 2
    sentence = ["a", "tall", "tree", "with", "green", "leaves"]
    other_end = [*sentence[:-1], "roots"]
    other_start = ["the", *sentence[1:]]
    base, changed_end, changed_start = model.layers([sentence, other_end, other_start])
    for layer in (1, 2):
        # the forward LM at words 0..4 has not read word 5; the backward LM at words 1..5 has not read word 0
        np.testing.assert_allclose(changed_end[layer, :5, :half], base[layer, :5, :half], atol=1e-5)
        np.testing.assert_allclose(changed_start[layer, 1:, half:], base[layer, 1:, half:], atol=1e-5)
        assert not np.allclose(changed_end[layer, :5, half:], base[layer, :5, half:], atol=1e-5)
        assert not np.allclose(changed_start[layer, 1:, :half], base[layer, 1:, :half], atol=1e-5)

    # a sentence batched with a longer one (padded after its end) gets what it gets alone
    alone = model.layers([sentence])[0]
    np.testing.assert_allclose(base, alone, rtol=1e-5, atol=1e-5)
    longer = model.layers([[*sentence, "in", "the", "early", "spring", "rain"], sentence])[1]
    np.testing.assert_allclose(longer, alone, rtol=1e-5, atol=1e-5)


def test_an_unseen_word_gets_a_vector_through_its_characters(trained, shared_data):
    _, run, _ = trained
    model = elmo.load(run, device="cpu")
    unseen = ["glossopneumographical", *real_non_ascii_words(shared_data)]
    assert not set(unseen) & set(model.words)
    vectors = model.encode_words([["a", *unseen]])[0]
    assert np.isfinite(vectors).all() and (np.linalg.norm(vectors[1:], axis=1) > 0).all()
    static = model.static_embedding(unseen)
    assert static.vectors.shape == (3, model.dim) and (static.norms > 0).all()


def test_export_and_load_give_the_model_before_its_export(trained):
    _, run, _ = trained
    # the final checkpoint holds the weights as training left them
    checkpoint = load_checkpoint(run, torch.device("cpu"), restore_rng=False)
    words = json.loads(run.fs.cat_file(run.file(elmo.WORDS_FILE)))
    arch = elmo.Architecture.from_dict(run.read_json(elmo.CONFIG_FILE)["architecture"])
    net = elmo.BiLM(arch, len(words))
    net.load_state_dict(
        {k[len("model/") :]: v for k, v in checkpoint.tensors.items() if k.startswith("model/")}
    )
    before = elmo.ElmoEmbedder(net, words, "cpu")
    after = registry.get("elmo").load(run)

    sentences = [["a", "small", "boat", "on", "the", "lake"], ["the", "unseenwordzz", "rises"]]
    for expected, got in zip(before.layers(sentences), after.layers(sentences), strict=True):
        np.testing.assert_array_equal(got, expected)
    assert after.dim == 2 * 48 and after.words[:3] == list(elmo.SPECIAL_TOKENS)


def test_gensim_loads_the_character_layer_vectors(trained):
    _, run, _ = trained
    vectors = KeyedVectors.load_word2vec_format(run.file("vectors.txt"))
    model = elmo.load(run, device="cpu")
    assert vectors.index_to_key == model.words[3:] and vectors.vector_size == 48
    sample = vectors.index_to_key[:50]
    np.testing.assert_allclose(vectors[sample], model.word_vectors(sample), rtol=1e-5, atol=1e-5)
    layer0 = model.layers([sample[:5]])[0][0, :, :48]
    np.testing.assert_allclose(vectors[sample[:5]], layer0, rtol=1e-5, atol=1e-5)


def test_heldout_articles_never_reach_training(tmp_path, shared_data):
    sentences = gloss_sentences(shared_data, limit=1_500)
    # write_text_assets makes article k + 1 of sentence k: plant a word in every held-out sentence
    held = [k for k in range(len(sentences)) if is_heldout(k + 1)]
    assert len(held) > 10
    for k in held:
        sentences[k] = [*sentences[k], "plantedheldoutword"]
    store = Store(tmp_path / "store")
    tokens = store.dataset(write_text_assets(store, "planted", sentences, shards=3)["tokens"])
    words = tokens.read_table("vocabulary").column("token").to_pylist()
    planted = words.index("plantedheldoutword")

    data = elmo.TrainingData(tokens, len(words), sequence_length=7, batch_size=8)
    held_set = set(held)
    expected_words = sum(len(s) for k, s in enumerate(sentences) if k not in held_set)
    assert data.counts["words"] == expected_words
    assert data.counts["heldout_sentences"] == len(held)
    seen = np.zeros(len(words) + 3, np.int64)
    for epoch in range(2):
        for shard, index in data.epoch_order(seed=3, epoch=epoch):
            batch, lengths = data.batch(3, epoch, int(shard), int(index))
            # every word is a forward target once per epoch: at a row position after the first
            targets = (np.arange(batch.shape[1])[None, :] < lengths[:, None]) & (
                np.arange(batch.shape[1]) > 0
            )
            np.add.at(seen, batch[targets], 1)
    assert seen[planted] == 0
    assert seen[: len(words)].sum() == 2 * expected_words
    # </S> ends each kept sentence; <S> starts each, less the first of each of the 3 shard streams
    kept = len(sentences) - len(held)
    assert (seen[len(words)], seen[len(words) + 1]) == (2 * (kept - 3), 2 * kept)

    heldout = elmo.heldout_sentences({"tokens": tokens}, max_examples=10_000)
    assert len(heldout) == len(held) and all(s[-1] == "plantedheldoutword" for s in heldout)


def test_resume_after_a_stop_equals_an_uninterrupted_run(glosses):
    store, assets = glosses
    overrides = TINY | {"lstm_dim": "32", "projection_dim": "16", "max_steps": "12", "seed": "7"}
    train_run(store, assets, overrides, "whole")

    with pytest.raises(TrainingInterrupted):
        train_run(store, assets, overrides, "resumed", stop_after_steps=5, keep_checkpoints=1)
    assert checkpoint_steps(store.dataset("runs/resumed")) == [5]
    metrics, _ = train_run(store, assets, overrides, "resumed")
    assert metrics["steps"] == 12

    whole = load_file(store.dataset("runs/whole").file(elmo.WEIGHTS_FILE))
    resumed = load_file(store.dataset("runs/resumed").file(elmo.WEIGHTS_FILE))
    assert whole.keys() == resumed.keys()
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], msg=name)
    another_seed = train_run(store, assets, overrides | {"seed": "8"}, "seed8")[1]
    other = load_file(another_seed.file(elmo.WEIGHTS_FILE))
    assert not torch.equal(other["softmax.weight"], whole["softmax.weight"])


def test_adaptive_softmax_trains_and_falls_back_when_no_cutoff_fits(glosses, caplog):
    store, assets = glosses
    overrides = TINY | {"softmax": "adaptive", "adaptive_cutoffs": "100,1000", "max_steps": "15"}
    metrics, run = train_run(store, assets, overrides, "adaptive")
    assert metrics["softmax"] == "adaptive"
    assert np.isfinite(metrics["heldout_perplexity"]) and metrics["heldout_perplexity"] > 1
    assert np.isfinite(metrics["final_loss"])

    config = elmo.ElmoConfig.from_overrides({"softmax": "adaptive", "adaptive_cutoffs": "20000"})
    assert config.architecture(5_000).softmax == "full"
    assert config.architecture(50_000).cutoffs == (20_000,)
    assert elmo.ElmoConfig(size="base").architecture(30_000).cutoffs == (20_000,)
    assert elmo.ElmoConfig().architecture(60_000).softmax == "adaptive"  # auto, above 50,000 words


def test_settings_are_checked_by_name():
    config = registry.get("elmo").config
    assert config is elmo.ElmoConfig
    with pytest.raises(ConfigError, match="projection_dim must be 0 \\(none\\) or below lstm_dim \\(256\\)"):
        config.from_overrides({"projection_dim": "512"})
    with pytest.raises(ConfigError, match="sequence_length must be between 4 and 1024, got 2"):
        config.from_overrides({"sequence_length": "2"})
    with pytest.raises(ConfigError, match="max_characters must be between 7"):
        config.from_overrides({"size": "base", "max_characters": "5"})
    with pytest.raises(ConfigError, match="adaptive_cutoffs"):
        config.from_overrides({"adaptive_cutoffs": "100,50"})
    with pytest.raises(ConfigError, match="size"):
        config.from_overrides({"size": "large"})
    base = config.from_overrides({"size": "base"})
    arch = base.architecture(800_000)
    assert (sum(arch.filters), arch.highway_layers, arch.lstm_dim, arch.projection_dim) == (
        2048,
        2,
        4096,
        512,
    )
    assert base.describe() == "base 2x4096/512"
    assert config.from_overrides({"filters": "8,8", "lstm_dim": "64", "projection_dim": "0"}).sizes()[
        "filters"
    ] == (8, 8)


@pytest.mark.slow
def test_two_processes_train_one_model_with_ddp(glosses, tmp_path):
    """torchrun, 2 CPU processes over gloo: each trains on its share of the batches, rank 0 exports."""
    store, assets = glosses
    script = tmp_path / "ddp_train.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json

            from models import elmo
            from models.base import RunOptions, TrainContext
            from storage import Store

            store = Store({str(store.url)!r})
            context = TrainContext.create(store.dataset("runs/ddp"), RunOptions(device="cpu", threads=1))
            config = elmo.ElmoConfig.from_overrides({TINY | {"max_steps": "10"}!r})
            metrics = elmo.train(config, {{"tokens": store.dataset({assets["tokens"].name!r})}}, context)
            if context.dist.rank == 0:
                json.dump(metrics, open({str(tmp_path / "metrics.json")!r}, "w"))
            context.dist.close()
            """
        )
    )
    environment = os.environ | {"PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
    ]
    result = subprocess.run(
        command, cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 10
    assert np.isfinite(metrics["heldout_perplexity"])
    assert elmo.load(store.dataset("runs/ddp"), device="cpu").encode_words([["a", "tree"]])[0].shape == (
        2,
        96,
    )
