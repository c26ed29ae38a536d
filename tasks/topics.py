"""build-text-assets, LDA topic targets: a topic distribution for every document, for TextTopicNet.

    text/NAME/topics   topics/part-P.parquet        TOPICS: one row per corpus document, K floats summing to 1
                       topic_words.parquet          TOPIC_WORDS: each topic's top words with p(word | topic)
                       lda_vocabulary.parquet       LDA_VOCABULARY: the columns of the topic-word matrix
                       model/lambda.npy, model/lda.json, model/corpus.json   the model, to infer new text
                       topics.md                    each topic's top words and coherence

Bags of words come from the token shards (so the vocabulary's min count applies), grouped by document,
then filtered: stop words (a built-in list or a file), the most frequent vocabulary words, words in
fewer than no_below documents or more than a no_above share of them, and at most keep_n words.
A document left without words (empty, or only filtered words) gets the prior, uniform over topics,
and is counted. Coherence is NPMI over each topic's top words, with sentences as the co-occurrence
unit (a token shard row; NPMI from -1 to 1, higher is better).

    model = load_topic_model(store.dataset("text/NAME/topics"))
    model.infer_texts(["Don Quijote y Sancho Panza salieron de la aldea"])   # (1, K)
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from models.online_lda import LdaConfig, OnlineLDA, batches_of
from storage import Dataset, Manifest, Recipe, code_version
from storage.schemas import LDA_VOCABULARY, TOPIC_WORDS, TOPICS
from tasks.common import STORE_CACHE, InputError, Progress, run_logger
from tasks.corpus import CorpusOptions, summary

KIND = "lda-topics"  # the manifest kind
ENGINES = ("torch", "gensim")


@dataclass(frozen=True)
class TopicOptions:
    """The bag-of-words filters and the LDA model."""

    topics: int = 100
    passes: int = 1
    batch_size: int = 2_000
    iterations: int = 50
    alpha: float | None = None  # None: 1/K
    eta: float | None = None  # None: 1/K
    seed: int = 0
    engine: str = "torch"  # our online VB on torch (GPU when there is one), or gensim's LdaMulticore
    # "en" (gensim's list), a file with one word per line, or None; other languages need a file
    stop_words: str | None = None
    drop_most_frequent: int = 0  # also drop the vocabulary's N most frequent words
    no_below: int = 5  # keep words in at least this many documents
    no_above: float = 0.5  # and in at most this share of them
    keep_n: int = 100_000  # then the keep_n most frequent
    top_words: int = 20  # per topic in topic_words and topics.md; coherence uses the top 10
    # CPU threads of the torch engine, or gensim's worker processes. One by default: torch's intra-op
    # threads spin-wait, and on cores shared with other tasks 2 threads ran 7x slower than 1 (2026-12)
    workers: int = 1

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise InputError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.workers < 1 or self.passes < 1 or self.batch_size < 1 or self.iterations < 1:
            raise InputError(f"workers, passes, batch_size and iterations must be >= 1; got {self}")
        if not 0 < self.no_above <= 1 or self.no_below < 1 or self.keep_n < 1 or self.topics < 2:
            raise InputError(
                f"need 0 < no_above <= 1, no_below >= 1, keep_n >= 1 and topics >= 2; got {self}"
            )
        if self.stop_words not in (None, "en") and not Path(self.stop_words).is_file():
            raise InputError(
                f"stop_words must be 'en' or a file with one word per line; {self.stop_words!r} is neither"
            )

    def lda_config(self) -> LdaConfig:
        return LdaConfig(
            topics=self.topics,
            alpha=self.alpha,
            eta=self.eta,
            passes=self.passes,
            batch_size=self.batch_size,
            iterations=self.iterations,
            seed=self.seed,
        )

    def stop_list(self) -> set[str]:
        if self.stop_words is None:
            return set()
        if self.stop_words == "en":
            from gensim.parsing.preprocessing import STOPWORDS

            return set(STOPWORDS)
        return {
            w.strip() for w in Path(self.stop_words).read_text(encoding="utf-8").splitlines() if w.strip()
        }


# --- bags of words ------------------------------------------------------------------------------


def document_bags(
    tokens: Dataset, column_of: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(documents, indptr, indices, counts): CSR bags of the token shards' documents, shard by shard.

    column_of maps a vocabulary id to its bag column, -1 to drop it. A document whose sentences run
    over into the next shard is held back and completed there, so every document comes once, whole.
    """
    held_doc, held_words = None, np.empty(0, np.int64)
    files = tokens.table_files("tokens")
    width = int(column_of.max()) + 1
    for number, path in enumerate(files):
        table = pq.read_table(path, filesystem=tokens.fs, columns=["doc", "tokens"])
        column = table["tokens"].combine_chunks()
        lengths = np.diff(column.offsets.to_numpy())
        docs = np.repeat(table["doc"].to_numpy(), lengths)
        words = column_of[column.flatten().to_numpy()]
        if held_doc is not None:
            docs, words = (
                np.concatenate((np.full(len(held_words), held_doc), docs)),
                np.concatenate((held_words, words)),
            )
        kept = words >= 0
        docs, words = docs[kept], words[kept]
        if number + 1 < len(files) and len(docs):
            last = docs[-1]
            cut = np.searchsorted(docs, last)
            held_doc, held_words = last, words[cut:]
            docs, words = docs[:cut], words[:cut]
        else:
            held_doc, held_words = None, np.empty(0, np.int64)
        if len(docs):
            yield csr_bags(docs, words, width)
    if held_doc is not None and len(held_words):
        yield csr_bags(np.full(len(held_words), held_doc), held_words, width)


def csr_bags(docs: np.ndarray, words: np.ndarray, width: int):
    """CSR of word counts per document, from parallel arrays sorted by document."""
    keys = np.unique(
        np.cumsum(np.concatenate(([0], docs[1:] != docs[:-1]))) * width + words, return_counts=True
    )
    row, column = np.divmod(keys[0], width)
    firsts = np.concatenate(([0], np.flatnonzero(docs[1:] != docs[:-1]) + 1))
    indptr = np.concatenate(([0], np.cumsum(np.bincount(row, minlength=len(firsts)))))
    return docs[firsts], indptr, column.astype(np.int32), keys[1].astype(np.float32)


def lda_vocabulary(tokens: Dataset, options: TopicOptions) -> tuple[pa.Table, np.ndarray, int]:
    """The filtered word list, the map from vocabulary id to its column, and documents with a word."""
    vocabulary = tokens.read_table("vocabulary", columns=["id", "token"])
    size = vocabulary.num_rows
    identity = np.arange(size)
    frequency, documents = np.zeros(size, np.int64), 0
    for _, indptr, indices, _ in document_bags(tokens, identity):
        frequency += np.bincount(indices, minlength=size)
        documents += int(np.count_nonzero(np.diff(indptr)))
    keep = (frequency >= options.no_below) & (frequency <= options.no_above * documents)
    keep[: options.drop_most_frequent] = False
    stop = options.stop_list()
    if stop:
        keep &= ~np.isin(vocabulary["token"].to_numpy(zero_copy_only=False), list(stop))
    chosen = np.flatnonzero(keep)
    chosen = chosen[np.argsort(-frequency[chosen], kind="stable")][: options.keep_n]
    chosen.sort()
    column_of = np.full(size, -1, np.int64)
    column_of[chosen] = np.arange(len(chosen))
    table = pa.table(
        {
            "id": np.arange(len(chosen), dtype=np.int32),
            "token": vocabulary["token"].take(chosen),
            "vocabulary_id": chosen.astype(np.int32),
            "documents": frequency[chosen],
        },
        schema=LDA_VOCABULARY,
    )
    return table, column_of, documents


# --- coherence ----------------------------------------------------------------------------------


def npmi_coherence(tokens: Dataset, top: np.ndarray) -> np.ndarray:
    """NPMI of each topic's top words (vocabulary ids, (K, N)), sentences as the co-occurrence unit."""
    from scipy import sparse

    union = np.unique(top)
    position = np.full(int(tokens.manifest().tables["vocabulary"]["rows"]), -1)
    position[union] = np.arange(len(union))
    together = np.zeros((len(union), len(union)))
    sentences = 0
    for path in tokens.table_files("tokens"):
        column = pq.read_table(path, filesystem=tokens.fs, columns=["tokens"])["tokens"].combine_chunks()
        rows = np.repeat(np.arange(len(column)), np.diff(column.offsets.to_numpy()))
        cols = position[column.flatten().to_numpy()]
        hit = cols >= 0
        present = sparse.csr_matrix(
            (np.ones(hit.sum()), (rows[hit], cols[hit])), shape=(len(column), len(union))
        )
        present.data[:] = 1  # duplicates were summed: a sentence holds a word or not
        together += (present.T @ present).toarray()
        sentences += len(column)
    p = together / max(sentences, 1)
    scores = []
    for words in top:
        index = position[words]
        total, pairs = 0.0, 0
        for a in range(1, len(index)):
            for b in range(a):
                joint, pa_, pb = p[index[a], index[b]], p[index[a], index[a]], p[index[b], index[b]]
                total += (
                    -1.0
                    if joint == 0
                    else (1.0 if joint == 1 else np.log(joint / (pa_ * pb)) / -np.log(joint))
                )
                pairs += 1
        scores.append(total / max(pairs, 1))
    return np.array(scores)


# --- the task -----------------------------------------------------------------------------------


class _GensimCorpus:
    """The bags as gensim reads them: lists of (column, count), re-iterable for several passes."""

    def __init__(self, tokens: Dataset, column_of: np.ndarray, documents: int) -> None:
        self.tokens, self.column_of, self.documents = tokens, column_of, documents

    def __len__(self) -> int:
        return self.documents

    def __iter__(self):
        for _, indptr, indices, counts in document_bags(self.tokens, self.column_of):
            for d in range(len(indptr) - 1):
                span = slice(indptr[d], indptr[d + 1])
                yield list(zip(indices[span].tolist(), counts[span].tolist(), strict=True))


def train_gensim(corpus, columns: int, options: TopicOptions) -> np.ndarray:
    """gensim's LdaMulticore with the same priors and schedule; its lambda, (K, V)."""
    from gensim.models import LdaMulticore

    alpha, eta = options.lda_config().prior
    model = LdaMulticore(
        corpus=corpus,
        num_topics=options.topics,
        id2word={i: str(i) for i in range(columns)},
        workers=options.workers,
        chunksize=options.batch_size,
        passes=options.passes,
        alpha=alpha,
        eta=eta,
        iterations=options.iterations,
        random_state=options.seed,
        eval_every=None,
    )
    return model.state.get_lambda()


def training_batches(tokens: Dataset, column_of: np.ndarray, batch_size: int):
    """Minibatches of bags, in corpus order; every bag has a word."""
    for _, indptr, indices, counts in document_bags(tokens, column_of):
        yield from batches_of(indptr, indices, counts, batch_size)


def _inferred(tokens: Dataset, column_of: np.ndarray, model: OnlineLDA, batch_size: int):
    for docs, indptr, indices, counts in document_bags(tokens, column_of):
        theta = np.concatenate([model.transform(b) for b in batches_of(indptr, indices, counts, batch_size)])
        yield docs, theta


def _write_topics(
    dataset: Dataset,
    corpus: Dataset,
    tokens: Dataset,
    column_of: np.ndarray,
    model: OnlineLDA,
    batch_size: int,
) -> tuple[list[str], dict[str, int]]:
    """TOPICS for every corpus document, file by file: inferred where it has words, the prior where not."""
    K = model.config.topics
    prior = np.full(K, 1.0 / K, np.float32)  # the symmetric prior's mean
    inferred = _inferred(tokens, column_of, model, batch_size)
    held_docs, held_theta = np.empty(0, np.int64), np.empty((0, K), np.float32)
    files, counts = [], {"articles": 0, "articles_inferred": 0, "articles_empty": 0}
    for number, path in enumerate(corpus.table_files("articles")):
        articles = pq.read_table(path, filesystem=corpus.fs, columns=["doc", "source", "article_id"])
        docs = articles["doc"].to_numpy()
        # documents come in the same order from both sides: pull inferred ones up to this file's last
        while len(docs) and (len(held_docs) == 0 or held_docs[-1] < docs[-1]):
            found = next(inferred, None)
            if found is None:
                break
            held_docs, held_theta = (
                np.concatenate((held_docs, found[0])),
                np.concatenate((held_theta, found[1])),
            )
        theta = np.tile(prior, (len(docs), 1))
        at = np.minimum(np.searchsorted(held_docs, docs), max(len(held_docs) - 1, 0))
        hit = (held_docs[at] == docs) if len(held_docs) else np.zeros(len(docs), bool)
        theta[hit] = held_theta[at[hit]]
        keep = held_docs > (docs[-1] if len(docs) else -1)
        held_docs, held_theta = held_docs[keep], held_theta[keep]
        values = pa.array(theta.astype(np.float32).ravel())
        lists = pa.ListArray.from_arrays(pa.array(np.arange(0, len(docs) * K + 1, K, dtype=np.int32)), values)
        table = pa.table(
            {"article_id": articles["article_id"], "topics": lists, "source": articles["source"]},
            schema=TOPICS,
        )
        relative = f"topics/part-{number:05d}.parquet"
        dataset.write_table(relative, table)
        files.append(relative)
        counts["articles"] += len(docs)
        counts["articles_inferred"] += int(hit.sum())
        counts["articles_empty"] += int((~hit).sum())
    return files, counts


def topics_markdown(name: str, topic_words: pa.Table, coherence: np.ndarray, shown: int = 10) -> str:
    """Each topic's top words and NPMI, as a markdown table."""
    words: dict[int, list[str]] = {}
    for topic, token in zip(topic_words["topic"].to_pylist(), topic_words["token"].to_pylist(), strict=True):
        words.setdefault(topic, []).append(token)
    lines = [
        f"### Topics of {name}",
        "",
        f"Mean NPMI coherence (top 10 words, sentence co-occurrence): **{coherence.mean():.4f}**",
        "",
        "| topic | NPMI | top words |",
        "| ---: | ---: | --- |",
    ]
    lines += [
        f"| {k} | {coherence[k]:.3f} | {' '.join(words.get(k, [])[:shown])} |" for k in range(len(coherence))
    ]
    return "\n".join(lines) + "\n"


@task(name="fit-topics", cache_policy=STORE_CACHE, persist_result=True)
def fit_topics(
    dataset: Dataset, recipe: Recipe, tokens: Dataset, corpus: Dataset, options: TopicOptions
) -> dict[str, Any]:
    """Bags of words per document, an LDA model, every document's topics, top words and coherence."""
    if dataset.is_current(recipe):
        with dataset.fs.open(dataset.file("topics.md"), "r") as f:
            return {**summary(dataset), "markdown": f.read()}
    with torch_threads(options.workers):
        return _fit(dataset, recipe, tokens, corpus, options)


@contextlib.contextmanager
def torch_threads(threads: int):
    """Run with this many torch CPU threads, then restore the setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit(dataset: Dataset, recipe: Recipe, tokens: Dataset, corpus: Dataset, options: TopicOptions) -> dict:
    logger = run_logger()
    started = time.perf_counter()
    dataset.begin(recipe)
    words, column_of, _ = lda_vocabulary(tokens, options)
    documents = sum(len(bag[0]) for bag in document_bags(tokens, column_of)) if words.num_rows else 0
    if documents == 0:
        raise InputError(
            f"{dataset.name}: no word is left for LDA after filtering (no_below={options.no_below}, no_above="
            f"{options.no_above}, stop words, drop_most_frequent={options.drop_most_frequent}); relax them"
        )
    logger.info(
        "LDA: %d topics over %s documents, %s words (of %s), engine %s",
        options.topics,
        f"{documents:,}",
        f"{words.num_rows:,}",
        f"{len(column_of):,}",
        options.engine,
    )

    # train on the documents that have a word left
    config = options.lda_config()
    progress = Progress(f"LDA {options.topics} topics", documents * options.passes, "documents")
    train_started = time.perf_counter()
    if options.engine == "torch":
        model = OnlineLDA(config, words.num_rows)
        model.fit(
            lambda: training_batches(tokens, column_of, config.batch_size),
            documents,
            on_batch=lambda sweep, n: progress.advance(n),
        )
    else:
        lam = train_gensim(_GensimCorpus(tokens, column_of, documents), words.num_rows, options)
        model = OnlineLDA(config, words.num_rows, lam)
        progress.advance(documents * options.passes)
    train_seconds = time.perf_counter() - train_started
    progress.finish()

    # every corpus document's topics; top words, coherence; the model for later inference
    files, counts = _write_topics(dataset, corpus, tokens, column_of, model, config.batch_size)
    beta = model.topic_word()
    order = np.argsort(-beta, axis=1, kind="stable")[:, : options.top_words]
    vocabulary_ids = words["vocabulary_id"].to_numpy()
    tokens_of = words["token"].to_pylist()
    coherence = npmi_coherence(tokens, vocabulary_ids[order[:, :10]])
    topic_words = pa.table(
        {
            "topic": np.repeat(np.arange(options.topics, dtype=np.int32), order.shape[1]),
            "rank": np.tile(np.arange(order.shape[1], dtype=np.int32), options.topics),
            "token": [tokens_of[c] for c in order.ravel()],
            "weight": np.take_along_axis(beta, order, 1).ravel().astype(np.float32),
        },
        schema=TOPIC_WORDS,
    )
    dataset.write_table("topic_words.parquet", topic_words)
    dataset.write_table("lda_vocabulary.parquet", words)
    buffer = io.BytesIO()
    np.save(buffer, model.lam.cpu().numpy())
    dataset.write_bytes("model/lambda.npy", buffer.getvalue())
    dataset.write_bytes("model/lda.json", model.to_json().encode())
    dataset.write_json("model/corpus.json", corpus.manifest().metrics["options"])
    markdown = topics_markdown(dataset.name, topic_words, coherence)
    dataset.write_bytes("topics.md", markdown.encode())
    counts.update(documents_trained=documents, lda_words=words.num_rows)
    metrics = {
        "coherence_npmi": round(float(coherence.mean()), 4),
        "coherence_npmi_per_topic": [round(float(c), 4) for c in coherence],
        "train_seconds": round(train_seconds, 3),
        "documents_per_second": round(documents * options.passes / max(train_seconds, 1e-9), 1),
        "engine": options.engine,
        "device": str(model.device),
        "options": asdict(options),
        "seconds": round(time.perf_counter() - started, 3),
    }
    manifest = Manifest.from_recipe(
        recipe,
        tables={
            "topics": (TOPICS, files, counts["articles"]),
            "topic_words": (TOPIC_WORDS, ["topic_words.parquet"], topic_words.num_rows),
            "lda_vocabulary": (LDA_VOCABULARY, ["lda_vocabulary.parquet"], words.num_rows),
        },
        counts=counts,
        metrics=metrics,
    )
    dataset.commit(manifest)
    logger.info(
        "LDA: %s documents/s over %d pass(es); NPMI coherence %.4f; %s articles, %s without words (prior)",
        f"{metrics['documents_per_second']:,.0f}",
        options.passes,
        metrics["coherence_npmi"],
        f"{counts['articles']:,}",
        f"{counts['articles_empty']:,}",
    )
    return {**summary(dataset), "markdown": markdown}


def topics_recipe(corpus: Dataset, tokens: Dataset, options: TopicOptions) -> Recipe:
    return Recipe(
        KIND,
        {tokens.name: tokens.manifest().fingerprint, corpus.name: corpus.manifest().fingerprint},
        asdict(options),
        code_version("tasks.topics", "models.online_lda"),
    )


# --- inference for new text ---------------------------------------------------------------------


class TopicModel:
    """A trained model with its word list and the corpus's tokenization, to give new text its topics."""

    def __init__(self, model: OnlineLDA, words: list[str], corpus_options: CorpusOptions) -> None:
        self.model = model
        self.column = {w: i for i, w in enumerate(words)}
        self.corpus_options = corpus_options

    def infer_texts(self, texts: list[str]) -> np.ndarray:
        """(len(texts), K) topic proportions; a text with no known word gets the prior (uniform)."""
        indptr, indices, counts = [0], [], []
        for text in texts:
            bag: dict[int, int] = {}
            for _, words in self.corpus_options.sentences(text):
                for w in words:
                    if (c := self.column.get(w)) is not None:
                        bag[c] = bag.get(c, 0) + 1
            indices += list(bag)
            counts += list(bag.values())
            indptr.append(len(indices))
        batch = (np.array(indptr), np.array(indices, np.int64), np.array(counts, np.float32))
        return self.model.transform(batch)


def load_topic_model(dataset: Dataset, device: str | None = None) -> TopicModel:
    """The LDA model of a topics dataset, ready to infer topics for new text."""
    dataset.manifest()  # refuses an unfinished dataset
    with dataset.fs.open(dataset.file("model/lambda.npy"), "rb") as f:
        lam = np.load(io.BytesIO(f.read()))
    with dataset.fs.open(dataset.file("model/lda.json"), "r") as f:
        model = OnlineLDA.from_saved(f.read(), lam, device)
    words = dataset.read_table("lda_vocabulary", columns=["token"])["token"].to_pylist()
    options = CorpusOptions(**dataset.read_json("model/corpus.json"))
    return TopicModel(model, words, options)
