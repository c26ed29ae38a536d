"""Online variational LDA on torch: recovers planted topics, repeats with a seed, saves and loads."""

from __future__ import annotations

import numpy as np
import pytest

from models.online_lda import LdaConfig, OnlineLDA, batches_of

TOPICS, WORDS_PER_TOPIC = 4, 25


def planted_corpus(documents=800, seed=1):
    """Documents mixing 1-2 of 4 topics, each topic with its own 25 words: CSR (indptr, indices, counts)."""
    rng = np.random.default_rng(seed)
    indptr, indices, counts, mixes = [0], [], [], []
    for _ in range(documents):
        chosen = rng.choice(TOPICS, size=rng.integers(1, 3), replace=False)
        mix = np.zeros(TOPICS)
        mix[chosen] = rng.dirichlet(np.ones(len(chosen)))
        words = rng.choice(
            TOPICS * WORDS_PER_TOPIC, size=60, p=np.repeat(mix / WORDS_PER_TOPIC, WORDS_PER_TOPIC)
        )
        unique, count = np.unique(words, return_counts=True)
        indices += unique.tolist()
        counts += count.tolist()
        indptr.append(len(indices))
        mixes.append(mix)
    return (np.array(indptr), np.array(indices), np.array(counts, np.float32)), np.array(mixes)


def fit(config: LdaConfig, corpus) -> OnlineLDA:
    indptr, indices, counts = corpus
    model = OnlineLDA(config, TOPICS * WORDS_PER_TOPIC)
    model.fit(lambda: batches_of(indptr, indices, counts, config.batch_size), len(indptr) - 1)
    return model


def test_recovers_planted_topics():
    corpus, mixes = planted_corpus()
    model = fit(LdaConfig(topics=TOPICS, passes=5, batch_size=200, device="cpu"), corpus)
    beta = model.topic_word()
    np.testing.assert_allclose(beta.sum(1), 1, rtol=1e-6)
    # each learned topic puts nearly all its mass on one planted topic's words, a different one each
    mass = beta.reshape(TOPICS, TOPICS, WORDS_PER_TOPIC).sum(2)  # (learned, planted)
    assert (mass.max(1) > 0.9).all()
    assert sorted(mass.argmax(1)) == list(range(TOPICS))

    theta = model.transform(corpus)
    np.testing.assert_allclose(theta.sum(1), 1, rtol=1e-5)
    # the documents' proportions match the planted mixes, up to the order of topics
    matched = theta[:, np.argsort(mass.argmax(1))]
    assert np.abs(matched - mixes).mean() < 0.05


def test_a_document_without_words_gets_the_prior():
    model = OnlineLDA(LdaConfig(topics=3, device="cpu"), 10)
    theta = model.transform((np.array([0, 0, 2]), np.array([1, 2]), np.array([3.0, 1.0], np.float32)))
    np.testing.assert_allclose(theta[0], 1 / 3)
    assert theta[1].sum() == pytest.approx(1)


def test_same_seed_same_model_other_seed_other_start():
    corpus, _ = planted_corpus(documents=300)
    config = LdaConfig(topics=TOPICS, batch_size=100, seed=7, device="cpu")
    first, second = fit(config, corpus), fit(config, corpus)
    np.testing.assert_array_equal(first.lam.numpy(), second.lam.numpy())
    other = fit(LdaConfig(topics=TOPICS, batch_size=100, seed=8, device="cpu"), corpus)
    assert not np.allclose(first.lam.numpy(), other.lam.numpy())


def test_saved_model_infers_the_same():
    corpus, _ = planted_corpus(documents=200)
    model = fit(LdaConfig(topics=TOPICS, batch_size=100, device="cpu"), corpus)
    loaded = OnlineLDA.from_saved(model.to_json(), model.lam.numpy(), "cpu")
    assert loaded.updates == model.updates == 2 and loaded.documents_seen == 200
    np.testing.assert_array_equal(loaded.transform(corpus), model.transform(corpus))


def test_converges_like_gensim_on_the_same_corpus():
    """The same priors and schedule as gensim's LdaModel: on planted topics both find them."""
    from gensim.models import LdaModel

    corpus, _ = planted_corpus()
    indptr, indices, counts = corpus
    bags = [
        list(zip(indices[a:b].tolist(), counts[a:b].astype(int).tolist(), strict=True))
        for a, b in zip(indptr[:-1], indptr[1:], strict=True)
    ]
    ours = fit(LdaConfig(topics=TOPICS, passes=5, batch_size=200, device="cpu"), corpus).topic_word()
    theirs = LdaModel(
        bags, num_topics=TOPICS, passes=5, chunksize=200, alpha=1 / TOPICS, eta=1 / TOPICS, random_state=0
    ).get_topics()
    for beta in (ours, theirs):
        mass = beta.reshape(TOPICS, TOPICS, WORDS_PER_TOPIC).sum(2)
        assert sorted(mass.argmax(1)) == list(range(TOPICS)) and (mass.max(1) > 0.9).all()


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="decay must be in"):
        LdaConfig(decay=0.2)
    with pytest.raises(ValueError, match="must be >= 1"):
        LdaConfig(topics=0)


@pytest.mark.gpu
def test_cuda_fits_what_the_cpu_fits():
    corpus, _ = planted_corpus(documents=400)
    cpu = fit(LdaConfig(topics=TOPICS, passes=3, batch_size=200, device="cpu"), corpus)
    gpu = fit(LdaConfig(topics=TOPICS, passes=3, batch_size=200, device="cuda"), corpus)
    assert gpu.lam.is_cuda
    np.testing.assert_allclose(gpu.topic_word(), cpu.topic_word(), atol=1e-3)
    np.testing.assert_allclose(gpu.transform(corpus), cpu.transform(corpus), atol=1e-3)
