"""Pretraining examples on real text: BERT pairs and masks, GPT blocks, T5 spans, the split, the stream."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from models import pretraining as pt
from models.contextual import is_heldout
from storage import Recipe, Store
from tasks import corpus as cp
from tasks import subword as sw

LINES_PER_DOCUMENT = 12  # lines of Don Quijote per document: several sentences each, for NSP
TOKENIZERS = {"wordpiece": 1_500, "bpe": 1_000, "unigram": 1_000}


def write_documents(shared_data: Path, path: Path, first: int = 1_000, count: int = 9_000) -> None:
    """Lines of Don Quijote without their blank lines, in paragraphs of LINES_PER_DOCUMENT lines."""
    book = (shared_data / "text_corpora" / "pg2000-don-quijote-es.txt").read_text(encoding="utf-8")
    lines = [line for line in book.splitlines()[first : first + count] if line.strip()]
    groups = [lines[k : k + LINES_PER_DOCUMENT] for k in range(0, len(lines), LINES_PER_DOCUMENT)]
    path.write_text("\n\n".join("\n".join(group) for group in groups), encoding="utf-8")


def contextual_assets(tmp_path_factory, shared_data: Path) -> tuple[Store, dict]:
    """A corpus of Don Quijote (about 90,000 words in 3 sentence files) and its three tokenizers.

    Made once per test session (the transformer model tests use the same), in the session's temp folder.
    """
    folder = tmp_path_factory.getbasetemp() / "contextual-assets"
    store = Store(folder / "store")
    names = {kind: f"text/quijote/tokenizers/{kind}" for kind in TOKENIZERS}
    if not all(store.dataset(n).is_complete() for n in names.values()):
        folder.mkdir(exist_ok=True)
        write_documents(shared_data, folder / "quijote.txt")
        corpus, _, _ = cp.build_in_process(
            store,
            [str(folder / "quijote.txt")],
            "quijote",
            cp.CorpusOptions(text_documents="paragraph", shard_sentences=1_500),
        )
        for kind, size in TOKENIZERS.items():
            dataset = store.dataset(names[kind])
            recipe = Recipe(sw.KIND, {corpus.name: corpus.manifest().fingerprint}, {"kind": kind}, "test")
            sw.train_tokenizer.fn(dataset, recipe, corpus, sw.SubwordOptions(kind, size, max_sentences=3_000))
    assets = {kind: store.dataset(name) for kind, name in names.items()}
    assets["corpus"] = store.dataset("text/quijote/corpus")
    return store, assets


@pytest.fixture(scope="module")
def assets(tmp_path_factory, shared_data):
    return contextual_assets(tmp_path_factory, shared_data)[1]


@pytest.fixture(scope="module")
def tokenizers(assets):
    return {kind: sw.load_tokenizer(assets[kind]) for kind in TOKENIZERS}


def all_documents(corpus, tokenizer, split="train", leading_space=False) -> list[pt.Documents]:
    return [
        pt.read_documents(corpus, path, tokenizer, split, leading_space=leading_space)
        for path in corpus.table_files("sentences")
    ]


# --- the held-out split --------------------------------------------------------------------------


def test_heldout_split_is_disjoint_by_article_and_stable(assets, tokenizers):
    corpus = assets["corpus"]
    tokenizer = tokenizers["wordpiece"]
    train = all_documents(corpus, tokenizer, "train")
    heldout = all_documents(corpus, tokenizer, "heldout")
    train_articles = set(np.concatenate([d.article_ids for d in train]).tolist())
    heldout_articles = set(np.concatenate([d.article_ids for d in heldout]).tolist())
    every_article = set(corpus.read_table("sentences", columns=["article_id"])["article_id"].to_pylist())

    assert train_articles.isdisjoint(heldout_articles)
    assert train_articles | heldout_articles == every_article
    assert all(is_heldout(a) for a in heldout_articles) and not any(is_heldout(a) for a in train_articles)
    assert 0.005 < len(heldout_articles) / len(every_article) < 0.05  # the 2% of contextual.is_heldout
    sentences = sum(d.counts["sentences"] for d in train + heldout)
    assert sentences == corpus.manifest().counts["sentences"]
    again = all_documents(corpus, tokenizer, "heldout")
    for first, second in zip(heldout, again, strict=True):
        assert np.array_equal(first.ids, second.ids) and np.array_equal(first.article_ids, second.article_ids)


def test_documents_are_consecutive_sentences_of_one_doc(assets, tokenizers):
    corpus = assets["corpus"]
    path = corpus.table_files("sentences")[0]
    table = pq.read_table(path, filesystem=corpus.fs).to_pydict()
    docs = pt.read_documents(corpus, path, tokenizers["bpe"], "train", leading_space=True)
    rows = [k for k, a in enumerate(table["article_id"]) if not is_heldout(a)]
    assert len(docs) == len({table["doc"][k] for k in rows})
    for document in (0, len(docs) // 2, len(docs) - 1):
        sentences = docs.sentences_of(document)
        texts = [table["text"][rows[s]] for s in sentences]
        # byte-level BPE: the document's tokens decode to its text, sentences joined by a space
        assert tokenizers["bpe"].decode(np.concatenate([docs.sentence(s) for s in sentences])) == " ".join(
            texts
        )


# --- BERT ----------------------------------------------------------------------------------------


def synthetic_documents(lengths_per_document: list[list[int]]) -> pt.Documents:
    """Documents whose token ids are 0, 1, 2, ... in order: any run of consecutive text is contiguous."""
    lengths = [n for document in lengths_per_document for n in document]
    sentence_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    document_offsets = np.concatenate([[0], np.cumsum([len(d) for d in lengths_per_document])]).astype(
        np.int64
    )
    return pt.Documents(
        ids=np.arange(sentence_offsets[-1], dtype=np.int32),
        sentence_offsets=sentence_offsets,
        document_offsets=document_offsets,
        article_ids=np.arange(len(lengths_per_document), dtype=np.int64),
    )


def test_sentence_pairs_follow_create_pretraining_data():
    rng = np.random.default_rng(0)
    shape = [[int(n) for n in rng.integers(3, 30, rng.integers(2, 12))] for _ in range(300)]
    docs = synthetic_documents(shape)
    starts = docs.sentence_offsets[docs.document_offsets]
    document_of = np.searchsorted(starts, np.arange(len(docs.ids)), side="right") - 1
    pairs, counts = pt.sentence_pairs(docs, np.random.default_rng(1), max_tokens=61)

    assert counts["pairs"] == len(pairs) > 500
    assert all(1 <= len(a) and 1 <= len(b) and len(a) + len(b) <= 61 for a, b, _ in pairs)
    # a chunk of one sentence has no B of its own and takes a random one; of the others, half do
    forced = counts["nsp_forced_random"]
    assert counts["nsp_random"] == sum(r for _, _, r in pairs)
    assert 0.45 < (counts["nsp_random"] - forced) / (len(pairs) - forced) < 0.55
    for a, b, is_random in pairs:
        assert np.all(np.diff(a) == 1) and np.all(np.diff(b) == 1)  # each segment runs in its text
        same = document_of[a[0]] == document_of[b[0]]
        if is_random:
            assert not same
        else:  # the real continuation: B starts where A stops (unless cut by truncation)
            assert same and b[0] > a[-1]
    untouched = [(a, b) for a, b, r in pairs if not r and len(a) + len(b) < 61]
    assert untouched and all(b[0] == a[-1] + 1 for a, b in untouched)
    assert counts["pairs_truncated"] > 0 and counts["tokens_truncated"] >= counts["pairs_truncated"]


def test_bert_examples_mask_15_percent_with_80_10_10(assets, tokenizers):
    tokenizer = tokenizers["wordpiece"]
    builder = pt.BertExamples(tokenizer, max_length=64)
    rng = np.random.default_rng(7)
    built = [builder.build(docs, rng) for docs in all_documents(assets["corpus"], tokenizer)]
    arrays = [a for a, _ in built]
    counts = sum((c for _, c in built), Counter())
    ids = np.concatenate([a["input_ids"] for a in arrays])
    labels = np.concatenate([a["labels"] for a in arrays])
    types = np.concatenate([a["token_type_ids"] for a in arrays])
    lengths = np.concatenate([a["length"] for a in arrays])
    nsp = np.concatenate([a["next_sentence_label"] for a in arrays])
    original = np.where(labels != pt.IGNORE, labels, ids)
    specials = np.isin(original, builder.specials)
    inside = np.arange(64)[None, :] < lengths[:, None]

    # the layout: [CLS] A [SEP] B [SEP], token type 1 from B through the last [SEP], [PAD] after
    assert (original[:, 0] == tokenizer.cls_token_id).all()
    assert ((original == tokenizer.sep_token_id) & inside).sum(axis=1).tolist() == [2] * len(ids)
    assert (original[~inside] == tokenizer.pad_token_id).all() and (types[~inside] == 0).all()
    first_sep = np.argmax(original == tokenizer.sep_token_id, axis=1)
    assert all(
        (types[r, : first_sep[r] + 1] == 0).all() and (types[r, first_sep[r] + 1 : lengths[r]] == 1).all()
        for r in range(len(ids))
    )

    chosen = labels != pt.IGNORE
    candidates = inside & ~specials
    assert candidates.sum() > 20_000
    assert not (chosen & specials).any()  # [CLS], [SEP], [PAD], [UNK] are never targets
    assert abs(chosen.sum() / candidates.sum() - 0.15) < 0.01
    assert (chosen.sum(axis=1) >= 1).all()
    became_mask = (ids == tokenizer.mask_token_id) & chosen
    kept = (ids == original) & chosen
    replaced = chosen & ~became_mask & ~kept
    total = chosen.sum()
    assert abs(became_mask.sum() / total - 0.8) < 0.02
    assert abs(kept.sum() / total - 0.1) < 0.015  # includes the rare random draw of the same token
    assert abs(replaced.sum() / total - 0.1) < 0.015
    assert not np.isin(ids[replaced], builder.specials).any()  # random tokens are never special
    assert not np.isin(ids[~chosen & inside & ~specials], [tokenizer.mask_token_id]).any()
    # half random where a real continuation exists; a document's last sentence left alone is always
    # paired with a random one (a fifth of the pairs here: long sentences, 64 tokens)
    assert counts["nsp_random"] == nsp.sum() and counts["pairs"] == len(nsp)
    forced = counts["nsp_forced_random"]
    assert forced < 0.3 * len(nsp)
    assert 0.45 < (nsp.sum() - forced) / (len(nsp) - forced) < 0.55
    assert counts["tokens_masked"] == chosen.sum()


# --- GPT -----------------------------------------------------------------------------------------


def test_gpt_blocks_are_exact_and_join_the_documents(assets, tokenizers):
    tokenizer = tokenizers["bpe"]
    builder = pt.GptExamples(tokenizer, block_size=64)
    corpus = assets["corpus"]
    path = corpus.table_files("sentences")[1]
    docs = pt.read_documents(corpus, path, tokenizer, "train", leading_space=True)
    arrays, counts = builder.build(docs, np.random.default_rng(0))
    blocks = arrays["input_ids"]
    assert blocks.shape == (counts["blocks"], 64) and counts["blocks"] > 100
    assert blocks.size + counts["tokens_dropped_tail"] == docs.counts["tokens"] + len(
        docs
    )  # + one separator each
    assert counts["tokens_dropped_tail"] < 64

    table = pq.read_table(path, filesystem=corpus.fs).to_pydict()
    texts: dict[int, str] = {}
    rows = zip(table["doc"], table["article_id"], table["sentence"], table["text"], strict=True)
    for doc, article, number, text in rows:
        if not is_heldout(article):  # a document that began in the previous file starts with a space
            texts[doc] = texts.get(doc, "") + (" " if number > 0 else "") + text
    joined = "".join(text + "<|endoftext|>" for text in texts.values())
    decoded = tokenizer.decode(blocks.reshape(-1))
    assert joined.startswith(decoded) and len(joined) - len(decoded) < 64 * 20


# --- T5 ------------------------------------------------------------------------------------------


def test_noise_mask_has_t5s_density_and_spans():
    rng = np.random.default_rng(3)
    masks = [pt.noise_mask(568, 0.15, 3.0, rng) for _ in range(200)]
    assert all(m.shape == (568,) and m.sum() == 85 and not m[0] and m[-1] for m in masks)
    changes = [np.flatnonzero(np.diff(np.concatenate([[0], m.astype(int), [0]]))) for m in masks]
    runs = [c[1::2] - c[::2] for c in changes]  # lengths of the noise spans
    assert all(len(r) == 28 for r in runs)  # round(85 / 3) spans
    assert abs(np.mean(np.concatenate(runs)) - 3.0) < 0.1
    assert len({m.tobytes() for m in masks}) == 200
    assert pt.corrupted_lengths(512, 0.15, 3.0) == (568, 512, 114)  # T5's inputs 512 -> targets 114


def reconstruct(inputs: np.ndarray, targets: np.ndarray, sentinels: np.ndarray, end: int) -> np.ndarray:
    """The chunk back from span corruption: each sentinel of the inputs replaced by its target span."""
    assert inputs[-1] == end and targets[-1] == end
    where = {int(s): k for k, s in enumerate(sentinels)}
    spans, current = {}, None
    for token in targets[:-1]:
        if int(token) in where:
            current = int(token)
            spans[current] = []
        else:
            spans[current].append(int(token))
    out = []
    for token in inputs[:-1]:
        out.extend(spans[int(token)] if int(token) in where else [int(token)])
    return np.asarray(out)


def test_t5_span_corruption_round_trips(assets, tokenizers):
    tokenizer = tokenizers["unigram"]
    builder = pt.T5Examples(tokenizer, max_length=64)
    corpus = assets["corpus"]
    docs = pt.read_documents(corpus, corpus.table_files("sentences")[0], tokenizer)
    arrays, counts = builder.build(docs, np.random.default_rng(0))
    inputs, targets = arrays["input_ids"], arrays["labels"]
    chunks, tail = pt.pack_blocks(docs.joined(tokenizer.eos_token_id), builder.raw_length)
    assert counts["chunks"] == len(inputs) == len(chunks) > 100 and counts["tokens_dropped_tail"] == tail
    assert inputs.shape[1] == builder.inputs_length <= 64 and targets.shape[1] == builder.targets_length

    sentinels = builder.sentinels
    assert sentinels[0] == len(tokenizer) - 1 and np.all(np.diff(sentinels) == -1)  # <extra_id_0> last
    noise, spans = [], []
    for row in range(len(inputs)):
        used = inputs[row][np.isin(inputs[row], sentinels)]
        assert np.array_equal(used, sentinels[: len(used)])  # <extra_id_0>, <extra_id_1>, ... in order
        assert np.array_equal(targets[row][np.isin(targets[row], sentinels)], used)
        assert targets[row][0] == sentinels[0]
        assert np.array_equal(
            reconstruct(inputs[row], targets[row], sentinels, tokenizer.eos_token_id), chunks[row]
        )
        spans.append(len(used))
        noise.append(builder.targets_length - len(used) - 1)
    assert abs(np.sum(noise) / (len(inputs) * builder.raw_length) - 0.15) < 0.01
    assert abs(np.sum(noise) / np.sum(spans) - 3.0) < 0.35


def test_too_few_sentinels_is_refused(tokenizers):
    with pytest.raises(ValueError, match="sentinels"):
        pt.T5Examples(tokenizers["unigram"], max_length=4096, mean_span_length=1.0)
    with pytest.raises(ValueError, match="wordpiece"):
        pt.BertExamples(tokenizers["bpe"], max_length=64)


# --- the stream ----------------------------------------------------------------------------------


def batch_keys(items) -> list[bytes]:
    return [item.batch["input_ids"].numpy().tobytes() for item in items]


def stream(assets, tokenizers, **options) -> pt.ExampleStream:
    tokenizer = tokenizers["bpe"]
    return pt.ExampleStream(
        assets["corpus"], tokenizer, pt.GptExamples(tokenizer, 32), seed=5, batch_size=16, **options
    )


def test_stream_resumes_where_it_stopped(assets, tokenizers):
    one = stream(assets, tokenizers)
    epoch = list(one.epoch_items(0))
    endless = one.items()
    first = [next(endless) for _ in range(len(epoch) + 5)]
    assert batch_keys(first[: len(epoch)]) == batch_keys(epoch)
    assert batch_keys(first[len(epoch) :]) != batch_keys(epoch[:5])  # a new order and shuffle in epoch 1
    for cut in (3, len(epoch) - 1, len(epoch) + 2):
        resumed = one.items(first[cut - 1].position)
        assert batch_keys([next(resumed) for _ in range(len(first) - cut)]) == batch_keys(first[cut:])
    counts = Counter()
    for item in epoch:
        counts.update(item.counts)
    assert counts["examples"] == sum(item.examples for item in epoch) == one.count_examples(0)
    assert counts["blocks"] * 32 + counts["tokens_dropped_tail"] == counts["tokens"] + counts["documents"]


@pytest.mark.parametrize("world_size", [2, 5])  # 3 files: by file, and by batch when files run short
def test_processes_share_an_epoch_without_overlap(assets, tokenizers, world_size):
    whole = batch_keys(stream(assets, tokenizers).epoch_items(0))
    parts = [
        batch_keys(stream(assets, tokenizers, rank=r, world_size=world_size).epoch_items(0))
        for r in range(world_size)
    ]
    assert all(parts) and sorted(k for part in parts for k in part) == sorted(whole)
    heldout = stream(assets, tokenizers, split="heldout", shuffle=False)
    assert batch_keys(heldout.epoch_items(0)) == batch_keys(
        stream(assets, tokenizers, split="heldout", shuffle=False).epoch_items(0)
    )


def test_prefetch_keeps_order_and_raises_the_producers_error():
    def produce():
        yield from range(10)
        raise OSError("sentences file unreadable")

    found = []
    with pytest.raises(OSError, match="unreadable"):
        for value in pt.prefetch(produce(), depth=2):
            found.append(value)
    assert found == list(range(10))
