"""The word models: they learn on real text, export what gensim loads, find planted pairs, and resume."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from gensim.models import KeyedVectors

from models import registry
from models.base import ConfigError, RunOptions, TrainContext, TrainingInterrupted, checkpoint_steps
from models.word2vec import STEP_LIMIT, NoiseSampler, bounded_steps
from storage import Store
from tests.models.text_assets import gloss_sentences, write_text_assets

TRAINED = {
    "word2vec skipgram": ("word2vec", {"mode": "skipgram", "epochs": "2", "min_count": "3", "dim": "32"}),
    "word2vec cbow": ("word2vec", {"mode": "cbow", "epochs": "2", "min_count": "3", "dim": "32"}),
    "fasttext": ("fasttext", {"epochs": "2", "min_count": "3", "dim": "32", "bucket": "20000"}),
    "glove": ("glove", {"epochs": "4", "min_count": "3", "dim": "32"}),
}
# the batched backend (a GPU's) trains the same models; CI runs it on the CPU
TRAINED |= {f"{case} torch": (model, o | {"backend": "torch"}) for case, (model, o) in list(TRAINED.items())}


@pytest.fixture(scope="module")
def glosses(tmp_path_factory, shared_data):
    """Token shards, vocabulary and co-occurrence of 8,000 WordNet glosses (about 90,000 words)."""
    store = Store(tmp_path_factory.mktemp("glosses") / "store")
    names = write_text_assets(store, "glosses", gloss_sentences(shared_data, limit=8_000), shards=2)
    return store, names


def train_run(store, names, model, overrides, run_name, **options):
    spec = registry.get(model)
    run = store.dataset(f"runs/{run_name}")
    context = TrainContext.create(run, RunOptions(device="cpu", threads=1, **options))
    config = spec.config.from_overrides(overrides).resolved(context.device)
    assets = {need.name: store.dataset(names[need.name]) for need in spec.needs}
    return spec.train(config, assets, context), run


@pytest.mark.parametrize("case", sorted(TRAINED))
def test_loss_falls_and_gensim_loads_the_vectors(glosses, case):
    store, names = glosses
    model, overrides = TRAINED[case]
    metrics, run = train_run(store, names, model, overrides, case.replace(" ", "-"), log_every_s=0.0)
    losses = [point["loss"] for point in metrics["history"] if np.isfinite(point["loss"])]
    assert len(losses) >= 4
    early, late = np.mean(losses[:3]), np.mean(losses[-3:])
    assert late < 0.9 * early, f"{case}: loss {early:.4f} -> {late:.4f}"

    vectors = KeyedVectors.load_word2vec_format(run.file("vectors.txt"))
    embedding = registry.get(model).load(run)
    assert vectors.index_to_key == embedding.words
    np.testing.assert_allclose(vectors.vectors, embedding.vectors, rtol=1e-5, atol=1e-6)
    assert vectors.vector_size == 32
    assert checkpoint_steps(run) == []  # removed once exported


@pytest.mark.parametrize(
    "case, tokens, more",
    [
        ("word2vec skipgram", 8192, {"epochs": "3"}),
        ("fasttext", 8192, {"epochs": "3"}),
        ("word2vec cbow", 32768, {"epochs": "5", "dim": "100"}),
    ],
)
def test_batched_steps_stay_bounded_when_large(glosses, case, tokens, more):
    # 8,192 tokens a step (the GPU's default) on 8,000 glosses: "the" is drawn as a noise word ~2,800
    # times a step; unbounded, the summed updates of such rows overshot and the loss rose past 1e4
    # (fastText's past 1e20) within 3 epochs; CBOW's, at 32,768 tokens, from 3.6 to 7.0 in epoch 3
    store, names = glosses
    model, overrides = TRAINED[f"{case} torch"]
    overrides = overrides | more | {"batch_words": str(tokens)}
    metrics, _ = train_run(store, names, model, overrides, f"large-{case.replace(' ', '-')}", log_every_s=0.0)
    losses = [point["loss"] for point in metrics["history"] if np.isfinite(point["loss"])]
    start = 6 * np.log(2)  # every score 0: log 2 for the context and for each of 5 noise words
    assert max(losses) < 1.1 * start, f"{case}: loss rose to {max(losses):.1f}"
    assert np.mean(losses[-3:]) < 0.8 * start, f"{case}: loss {start:.2f} -> {np.mean(losses[-3:]):.2f}"


def test_a_rows_summed_step_is_bounded_where_it_would_overshoot():
    rows = torch.tensor([0, 1, 1, 2, 2, 2, 2])
    curvature = torch.tensor([0.3, 0.2, 0.3, 0.5, 0.5, 1.0, 2.0]) * STEP_LIMIT
    scratch = torch.zeros(3)
    scale = bounded_steps(scratch, rows, curvature)
    # rows 0 and 1 sum to 0.3 and 0.5 of the limit: plain SGD; row 2 sums to 4 times it
    torch.testing.assert_close(scale, torch.tensor([1, 1, 1, 0.25, 0.25, 0.25, 0.25]))
    assert scratch.abs().sum() == 0  # left zero for the next step


@pytest.mark.parametrize("exponent, lookup", [(0.75, True), (1.0, True), (-1.0, False)])
def test_noise_words_are_those_a_binary_search_finds(exponent, lookup):
    counts = np.round(1e6 / np.arange(1, 20_001)).astype(np.int64)  # Zipf's law, as word counts go
    sampler = NoiseSampler(counts, exponent, torch.device("cpu"))
    # exponent -1 makes the frequent words the rare noise: too many in a slot, so binary search
    assert (sampler.first is not None) == lookup
    table = sampler.table
    draws = torch.randint(0, int(table[-1]), (50_000,), generator=torch.Generator().manual_seed(1))
    edges = torch.cat([table[:-1] - 1, table[:-1], torch.tensor([0, int(table[-1]) - 1])]).clamp(min=0)
    for values in (draws, edges):
        expected = torch.searchsorted(table, values, right=True)
        assert torch.equal(sampler.find(values), expected)
    words = sampler.sample((50_000,), torch.Generator().manual_seed(1))
    assert torch.equal(words, torch.searchsorted(table, draws, right=True))


def planted_pairs_corpus(seed: int = 0) -> tuple[list[list[str]], list[tuple[str, str]]]:
    """Four pairs of words; the two words of a pair appear in the same contexts, other pairs never do."""
    rng = random.Random(seed)
    pairs = [("cat", "dog"), ("car", "truck"), ("apple", "pear"), ("red", "blue")]
    contexts = {pair: [f"c{k}w{j}" for j in range(8)] for k, pair in enumerate(pairs)}
    sentences = []
    for _ in range(6_000):
        pair = rng.choice(pairs)
        words = rng.sample(contexts[pair], rng.randint(3, 6))
        words.insert(rng.randint(0, len(words)), rng.choice(pair))
        sentences.append(words)
    return sentences, pairs


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("planted") / "store")
    sentences, pairs = planted_pairs_corpus()
    return store, write_text_assets(store, "planted", sentences, shards=1, window=5), pairs


@pytest.mark.parametrize("case", sorted(TRAINED))
def test_each_model_puts_the_planted_pairs_closest(planted, case):
    store, names, pairs = planted
    model, overrides = TRAINED[case]
    overrides = overrides | {"min_count": "1", "epochs": "5" if model != "glove" else "30", "window": "5"}
    if model == "glove":
        overrides.pop("window")
    if model == "fasttext":
        # the planted words share no n-grams with their partners: their own rows must carry them
        overrides |= {"minn": "3", "maxn": "3"}
    _, run = train_run(store, names, model, overrides, f"planted-{case.replace(' ', '-')}")
    embedding = registry.get(model).load(run)
    words = [w for pair in pairs for w in pair]
    units, found = embedding.unit_words(words)
    assert found.all()
    cosines = units @ units.T
    np.fill_diagonal(cosines, -2)
    for k, word in enumerate(words):
        partner = words[k ^ 1]
        assert words[int(np.argmax(cosines[k]))] == partner, (
            f"{case}: {word} is nearest to {words[int(np.argmax(cosines[k]))]}"
        )


@pytest.mark.parametrize(
    "case", ["word2vec skipgram", "word2vec skipgram torch", "fasttext", "glove", "glove torch"]
)
def test_resume_after_a_kill_gives_the_uninterrupted_result(glosses, case):
    store, names = glosses
    model, overrides = TRAINED[case]
    # GloVe's numba steps are a million pairs by default: the whole of an epoch here
    overrides = overrides | {"epochs": "2"} | ({"batch": "16384"} if model == "glove" else {})
    name = case.replace(" ", "-")
    _, whole = train_run(store, names, model, overrides, f"{name}-whole")

    with pytest.raises(TrainingInterrupted):
        train_run(store, names, model, overrides, f"{name}-resumed", stop_after_steps=7, keep_checkpoints=1)
    assert checkpoint_steps(store.dataset(f"runs/{name}-resumed")) == [7]
    _, resumed = train_run(store, names, model, overrides, f"{name}-resumed")

    expected = registry.get(model).load(whole).vectors
    np.testing.assert_array_equal(registry.get(model).load(resumed).vectors, expected)


@pytest.mark.parametrize("case", ["word2vec skipgram", "word2vec cbow", "fasttext", "glove"])
def test_numba_threads_share_the_matrices_and_learn_as_one_does(glosses, case):
    # Hogwild: two threads write the same rows without locks; they must learn what one thread does
    store, names = glosses
    model, overrides = TRAINED[case]
    overrides = overrides | ({"batch": "65536"} if model == "glove" else {})
    name = case.replace(" ", "-")
    one, _ = train_run(store, names, model, overrides, f"{name}-one-thread")
    spec = registry.get(model)
    run = store.dataset(f"runs/{name}-two-threads")
    context = TrainContext.create(run, RunOptions(device="cpu", threads=2))
    config = spec.config.from_overrides(overrides).resolved(context.device)
    two = spec.train(config, {need.name: store.dataset(names[need.name]) for need in spec.needs}, context)
    assert (one["threads"], two["threads"]) == (1, 2)
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=0.05)
    words, vectors = registry.get(model).load(run).words, registry.get(model).load(run).vectors
    assert np.isfinite(vectors).all() and len(words) == one["vocabulary"]


def test_numba_trains_on_the_cpu_only():
    config = registry.get("word2vec").config.from_overrides({"backend": "numba"})
    with pytest.raises(ConfigError, match="backend numba trains on the CPU"):
        config.resolved(torch.device("cuda", 0))
    auto = registry.get("glove").config.from_overrides({})
    assert auto.resolved(torch.device("cuda", 0)).backend == "torch"
    assert auto.resolved(torch.device("cpu")).backend == "numba"


def test_onehot_and_phoc_export_the_vocabulary(glosses):
    store, names = glosses
    _, run = train_run(store, names, "onehot", {"max_words": "50"}, "onehot")
    onehot = KeyedVectors.load_word2vec_format(run.file("vectors.txt"))
    np.testing.assert_array_equal(onehot.vectors, np.eye(50, dtype=np.float32))

    _, run = train_run(store, names, "phoc", {"min_count": "3"}, "phoc")
    phoc = registry.get("phoc").load(run)
    assert phoc.dim == 604
    vectors, ok = phoc.build_unseen(["unseenword"])
    assert ok[0] and vectors[0].sum() > 0


def test_settings_are_checked_by_name():
    config = registry.get("word2vec").config
    with pytest.raises(ConfigError, match="window must be between 1 and 100, got 0"):
        config.from_overrides({"window": "0"})
    with pytest.raises(ConfigError, match="no setting 'windows'"):
        config.from_overrides({"windows": "5"})
    with pytest.raises(ConfigError, match="mode"):
        config.from_overrides({"mode": "skip-gram"})
    assert config.from_overrides({"mode": "cbow", "sample": "1e-4", "dim": "1e2"}).dim == 100
