"""Subword tokenizers: trained on the corpus, loaded offline by AutoTokenizer, with each family's special tokens."""

from __future__ import annotations

import json

import pytest

from storage import Recipe
from tasks import corpus as cp
from tasks import subword as sw
from tasks.common import InputError

SAMPLES = [
    "En un lugar de la Mancha, de cuyo nombre no quiero acordarme, no ha mucho tiempo que vivía un hidalgo.",
    "—¿Quién es? —preguntó Sancho Panza a su señor don Quijote.",
    "Latgaļu volūda ir vīna nu latvīšu volūdys paveidu.",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data):
    """The first chapters of Don Quijote and a few Latgalian sentences."""
    from storage import Store

    folder = tmp_path_factory.mktemp("subword")
    book = (shared_data / "text_corpora" / "pg2000-don-quijote-es.txt").read_text(encoding="utf-8")
    path = folder / "mixed.txt"
    path.write_text("\n".join(book.splitlines()[500:2500] + SAMPLES[2:] * 20), encoding="utf-8")
    store = Store(folder / "store")
    corpus, _, _ = cp.build_in_process(
        store, [str(path)], "mixed", cp.CorpusOptions(text_documents="paragraph")
    )
    return store, corpus


def train(store, corpus, options: sw.SubwordOptions):
    dataset = store.dataset(f"text/mixed/tokenizers/{options.kind}")
    recipe = Recipe(sw.KIND, {corpus.name: corpus.manifest().fingerprint}, {"kind": options.kind}, "test")
    summary = sw.train_tokenizer.fn(dataset, recipe, corpus, options)
    return dataset, summary, sw.load_tokenizer(dataset)


def test_wordpiece_for_bert(corpus):
    store, corpus = corpus
    dataset, summary, tokenizer = train(store, corpus, sw.SubwordOptions("wordpiece", 2_000))
    assert summary["counts"]["vocabulary"] == len(tokenizer) == 2_000
    assert [
        tokenizer.convert_tokens_to_ids(t) for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    ] == list(range(5))
    assert (tokenizer.pad_token, tokenizer.mask_token, tokenizer.model_max_length) == ("[PAD]", "[MASK]", 512)
    pair = tokenizer(SAMPLES[0], SAMPLES[1])
    tokens = tokenizer.convert_ids_to_tokens(pair["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"
    first = tokens.index("[SEP]") + 1
    assert set(pair["token_type_ids"][:first]) == {0} and set(pair["token_type_ids"][first:]) == {1}
    assert any(t.startswith("##") for t in tokens)
    for text in SAMPLES:  # round trip: lowercased (uncased BERT), the same letters in the same order
        decoded = tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True)
        assert "".join(decoded.split()) == "".join(text.lower().split())
    assert summary["metrics"]["unknown_rate"] < 0.01


def test_byte_level_bpe_for_gpt(corpus):
    store, corpus = corpus
    _, summary, tokenizer = train(store, corpus, sw.SubwordOptions("bpe", 1_000))
    assert len(tokenizer) == 1_000
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == 0
    assert tokenizer.eos_token == tokenizer.bos_token == tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.model_max_length == 1024
    for text in [*SAMPLES, "Emoji 🙂 and 中文, never unknown"]:  # bytes: every text comes back exactly
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == text
    assert summary["metrics"]["unknown_rate"] == 0


def test_unigram_for_t5(corpus):
    store, corpus = corpus
    dataset, summary, tokenizer = train(store, corpus, sw.SubwordOptions("unigram", 1_500, extra_ids=10))
    assert len(tokenizer) == summary["counts"]["vocabulary"] == 1_510
    assert [tokenizer.convert_tokens_to_ids(t) for t in ["<pad>", "</s>", "<unk>"]] == [0, 1, 2]
    assert tokenizer.convert_tokens_to_ids("<extra_id_0>") == 1_509  # the last id, as in T5
    assert tokenizer.convert_tokens_to_ids("<extra_id_9>") == 1_500
    assert {f"<extra_id_{i}>" for i in range(10)} <= set(tokenizer.all_special_tokens)
    for text in SAMPLES:
        ids = tokenizer(text)["input_ids"]
        assert ids[-1] == 1  # </s> closes every sequence
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    masked = tokenizer("Sancho <extra_id_0> de la Mancha")["input_ids"]
    assert 1_509 in masked
    files = dataset.manifest().metrics["files"]
    assert {"tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"} <= set(files)
    with dataset.fs.open(dataset.file("tokenizer/special_tokens_map.json")) as f:
        assert json.load(f)["eos_token"] == "</s>"


def test_sample_of_sentences(corpus):
    store, corpus = corpus
    total = corpus.manifest().tables["sentences"]["rows"]
    sampled = sum(len(batch) for batch in sw._sentences(corpus, 100))
    assert 90 <= sampled <= 100 < total


def test_bad_options_are_refused():
    with pytest.raises(InputError, match="tokenizer kind must be one of"):
        sw.SubwordOptions("sentencepiece", 1000)
    with pytest.raises(InputError, match="bpe vocab_size must be >= 300"):
        sw.SubwordOptions("bpe", 100)
