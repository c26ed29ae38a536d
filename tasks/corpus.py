"""build-text-assets, first steps: documents to sentences and words, a vocabulary, token shards.

Inputs are article datasets of the store (ingest-wikipedia, kind "wikipedia-articles") and plain text
files (.txt, .txt.bz2, .txt.gz: one document per line, or per paragraph of non-blank lines).

    text/NAME/corpus      sentences/part-P-F.parquet  CORPUS_SENTENCES: normalized text and words
                          articles/part-P-F.parquet   CORPUS_ARTICLES: every document, empty ones too
                          word_counts/part-P.parquet  WORD_COUNTS of the part
                          rejects/part-P.parquet      REJECTS: articles already seen in an earlier input
    text/NAME/vocabulary  vocabulary.parquet          VOCABULARY: min count, maximum size, ids by frequency
    text/NAME/tokens      tokens/part-P-F.parquet     TOKEN_SHARDS, row k is row k of sentences/part-P-F
                          vocabulary.parquet          the vocabulary again, so trainers read one dataset

    embedpipe build-text-assets wikipedia/enwiki-sample pg2000-don-quijote-es.txt --store work/store
"""

from __future__ import annotations

import os
import posixpath
import time
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import regex
from prefect import task

from storage import Dataset, Manifest, Recipe, Store, code_version
from storage.manifest import file_fingerprint
from storage.parquet import RollingParquetWriter
from storage.schemas import (
    CORPUS_ARTICLES,
    CORPUS_SENTENCES,
    REJECTS,
    TOKEN_SHARDS,
    VOCABULARY,
    WORD_COUNTS,
)
from tasks.common import STORE_CACHE, InputError, Progress, run_logger

TEXT_SUFFIXES = (".txt", ".txt.bz2", ".txt.gz")
ARTICLES_KIND = "wikipedia-articles"
# manifest kinds of the datasets made here; trainers find their inputs by them
CORPUS_KIND, VOCABULARY_KIND, TOKENS_KIND = "text-corpus", "vocabulary", "token-shards"
SHARD_ROW_GROUP = 10_000

# --- text: normalize, split into sentences, split into words -------------------------------------

# control characters (but newlines and tabs), soft hyphens, zero-width spaces and byte order marks;
# zero-width (non-)joiners stay: Persian and Indic words need them
_INVISIBLE = regex.compile(r"(?V1)[\p{Cc}--[\n\t]]|[\u00ad\u200b\u2060\ufeff]")
_SPACES = regex.compile(r"[^\S\n]+")
# a number with inner separators, one Han character (CJK has no spaces: one token per ideograph, as
# BERT does), or a run of letters, marks and digits joined by apostrophes, hyphens or middle dots
_WORD = regex.compile(
    r"(?V1)\p{N}+(?:[.,]\p{N}+)+|\p{Han}|[[\p{L}\p{M}\p{N}]--\p{Han}]+(?:['\-·][[\p{L}\p{M}\p{N}]--\p{Han}]+)*"
)
# sentence-final punctuation, closing quotes or brackets, then the space before the next sentence;
# scripts whose full stops need no space after them are listed in _WIDE_STOPS
_WIDE_STOPS = "。！？।॥؟։።"
_BOUNDARY = regex.compile(rf"(?P<mark>[.!?…]+|[{_WIDE_STOPS}]+)[\"'”’»)\]]*(?P<space>\s*)")
_LAST_WORD = regex.compile(r"(\w+)$")
# words a period follows without ending the sentence (English and Spanish; an initial also counts)
# FIXME: other languages' abbreviations ("z. B.", "т. е.") end a sentence where they are followed by a
# capital letter or a digit
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st sr sra srta jr vs fig no nos vol pp cf ca gen col lt sgt capt mt ft ud vd dña".split()
)


def normalize(text: str, form: str = "NFKC") -> str:
    """Unicode normalization, invisible characters removed, runs of spaces as one, one apostrophe."""
    if form != "none":
        text = unicodedata.normalize(form, text)
    text = _INVISIBLE.sub("", text).replace("\u2019", "'")
    return _SPACES.sub(" ", text)


def _ends_with_abbreviation(text: str, period: int) -> bool:
    word = _LAST_WORD.search(text, max(0, period - 12), period)
    return word is not None and (len(word[1]) == 1 or word[1].lower() in ABBREVIATIONS)


def split_sentences(paragraph: str) -> list[str]:
    """Sentences of one paragraph: a stop, then space and anything but a lowercase letter."""
    sentences, start = [], 0
    for match in _BOUNDARY.finditer(paragraph):
        end = match.end()
        if end >= len(paragraph):
            break
        if not match["space"] and match["mark"][0] not in _WIDE_STOPS:
            continue  # 3.14, e.g., www.example.org
        if paragraph[end].islower():
            continue  # "e.g. the", "—dijo Sancho. y"
        if match["mark"] == "." and _ends_with_abbreviation(paragraph, match.start()):
            continue  # "Dr. Smith", "J. R. R. Tolkien"
        sentences.append(paragraph[start:end].strip())
        start = end
    sentences.append(paragraph[start:].strip())
    return [s for s in sentences if s]


def words_of(sentence: str, lowercase: bool) -> list[str]:
    # TODO: scripts written without spaces other than Han (Thai, Lao, Khmer, Japanese kana) come out
    # as one token per run of letters; they need a dictionary segmenter
    return _WORD.findall(sentence.lower() if lowercase else sentence)


@dataclass(frozen=True)
class CorpusOptions:
    """How documents become sentences and words."""

    normalization: str = "NFKC"  # NFC, NFKC (also folds ligatures and full-width forms) or none
    lowercase: bool = True  # words only; the sentence text keeps its case for subword tokenizers
    text_documents: str = "line"  # plain text: one document per "line", or per "paragraph"
    shard_sentences: int = 100_000  # rows per sentences/tokens file: the unit co-occurrence maps over

    def __post_init__(self) -> None:
        if self.normalization not in ("NFC", "NFKC", "none"):
            raise InputError(f"normalization must be NFC, NFKC or none, got {self.normalization!r}")
        if self.text_documents not in ("line", "paragraph"):
            raise InputError(f"text_documents must be line or paragraph, got {self.text_documents!r}")
        if self.shard_sentences < 1:
            raise InputError(f"shard_sentences must be >= 1, got {self.shard_sentences}")

    def sentences(self, text: str) -> list[tuple[str, list[str]]]:
        """(sentence text, words) of a document; sentences without a word are left out."""
        found = []
        for line in normalize(text, self.normalization).split("\n"):
            for sentence in split_sentences(line):
                if words := words_of(sentence, self.lowercase):
                    found.append((sentence, words))
        return found


# --- inputs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusPart:
    """One unit of corpus work: an articles table file, or a whole text file."""

    number: int
    kind: str  # "articles" or "text"
    path: str  # full path (articles file in the store) or the text file's URL
    source: str  # the wiki when the articles row names none; the file name for text
    duplicates: tuple[int, ...] = field(default=())  # rows holding an article an earlier row already had

    @property
    def name(self) -> str:
        return f"part-{self.number:05d}"


def resolve_inputs(store: Store, names: list[str]) -> dict[str, Any]:
    """Each input as an articles dataset of the store or a text file; fingerprints for the recipe."""
    if not names:
        raise InputError(
            "no input: give article datasets of the store (wikipedia/NAME) or .txt[.bz2|.gz] files"
        )
    inputs, fingerprints, text_names = [], {}, {}
    for name in names:
        dataset = store.dataset(name) if "://" not in name and not name.startswith(("/", ".")) else None
        if dataset is not None and dataset.is_complete():
            manifest = dataset.manifest()
            if manifest.kind != ARTICLES_KIND or "articles" not in manifest.tables:
                raise InputError(
                    f"{name} is a {manifest.kind!r} dataset; give a {ARTICLES_KIND!r} one (ingest-wikipedia)"
                )
            fingerprints[name] = manifest.fingerprint
            inputs.append(
                {
                    "kind": "articles",
                    "name": name,
                    "files": dataset.table_files("articles"),
                    "source": posixpath.basename(name),
                }
            )
            continue
        if not name.endswith(TEXT_SUFFIXES):
            hint = (
                " (unfinished: run ingest-wikipedia again)"
                if dataset is not None and dataset.fs.exists(dataset.path)
                else ""
            )
            raise InputError(
                f"{name!r} is neither an articles dataset in {store.url}{hint} nor a text file ending in "
                f"{', '.join(TEXT_SUFFIXES)}; list datasets with `ls {store.url}/wikipedia`"
            )
        url = name if "://" in name else os.path.abspath(name)  # workers may run elsewhere
        try:
            fingerprints[name] = file_fingerprint(url)
        except FileNotFoundError:
            raise InputError(f"text file {name!r} not found") from None
        file_name = posixpath.basename(name)
        if file_name in text_names:
            raise InputError(
                f"{text_names[file_name]!r} and {name!r} share a file name, which names their source; rename one"
            )
        text_names[file_name] = name
        inputs.append({"kind": "text", "name": name, "files": [url], "source": file_name})
    return {"inputs": inputs, "fingerprints": fingerprints}


def _duplicate_rows(store: Store, inputs: list[dict[str, Any]]) -> list[tuple[int, ...]]:
    """For every articles file, the rows whose (wiki, page id) an earlier row of any input already had."""
    import polars as pl

    frames = []
    files = [
        (i, path) for i, item in enumerate(inputs) if item["kind"] == "articles" for path in item["files"]
    ]
    for number, (i, path) in enumerate(files):
        table = pq.read_table(path, columns=["page_id", "wiki"], filesystem=store.fs)
        frame = pl.from_arrow(table).with_columns(
            pl.col("wiki").fill_null(inputs[i]["source"]),
            pl.lit(number).alias("file"),
            pl.int_range(pl.len()).alias("row"),
        )
        frames.append(frame)
    if not frames:
        return []
    found = pl.concat(frames).filter(~pl.struct("wiki", "page_id").is_first_distinct())
    by_file: dict[int, list[int]] = {}
    for file, row in found.select("file", "row").iter_rows():
        by_file.setdefault(file, []).append(row)
    return [tuple(by_file.get(number, ())) for number in range(len(files))]


@task(name="plan-corpus", cache_policy=STORE_CACHE, persist_result=True)
def plan_corpus(dataset: Dataset, recipe: Recipe, inputs: list[dict[str, Any]]) -> list[CorpusPart]:
    """Cut the inputs into parts (articles files, text files), find repeated articles, prepare the folder."""
    if dataset.is_current(recipe):
        return [CorpusPart(**p) for p in dataset.manifest().metrics["parts"]]
    duplicates = iter(_duplicate_rows(dataset.store, inputs))
    parts = []
    for item in inputs:
        for path in item["files"]:
            skip = next(duplicates) if item["kind"] == "articles" else ()
            parts.append(CorpusPart(len(parts), item["kind"], path, item["source"], skip))
    dataset.begin(recipe)
    run_logger().info(
        "%s: %d input(s) in %d part(s), %d repeated article(s) to reject",
        dataset.name,
        len(inputs),
        len(parts),
        sum(len(p.duplicates) for p in parts),
    )
    return parts


# --- corpus parts -------------------------------------------------------------------------------


def _text_documents(url: str, mode: str, counts: Counter[str]):
    """(first line number, text) of each document of a text file; bad UTF-8 becomes U+FFFD and is counted."""
    line_number, paragraph, first = 0, [], 0
    try:
        with fsspec.open(url, "rt", compression="infer", encoding="utf-8", errors="replace") as f:
            for line_number, line in enumerate(f, 1):  # noqa: B007  (read after the loop)
                line = line.rstrip("\n")
                counts["lines_with_bad_utf8"] += "\ufffd" in line
                if mode == "line":
                    yield line_number, line
                elif line.strip():
                    first = first or line_number
                    paragraph.append(line.strip())
                elif paragraph:
                    yield first, " ".join(paragraph)
                    paragraph, first = [], 0
    except (OSError, EOFError, ValueError) as e:
        raise InputError(
            f"{url}: unreadable after line {line_number:,} ({type(e).__name__}: {e}); "
            "the file is truncated or corrupt: fetch it again"
        ) from e
    if paragraph:
        yield first, " ".join(paragraph)


def _article_documents(dataset: Dataset, part: CorpusPart, counts: Counter[str], rejects: list[dict]):
    """(page id, text, title, wiki) of each article of one articles file; repeated ones become rejects."""
    skip = set(part.duplicates)
    parquet = pq.ParquetFile(part.path, filesystem=dataset.fs)
    row = 0
    for batch in parquet.iter_batches(batch_size=1_000, columns=["page_id", "title", "text", "wiki"]):
        for record in batch.to_pylist():
            if row in skip:
                counts["rejected_duplicate_article"] += 1
                rejects.append(
                    {
                        "page_id": record["page_id"],
                        "title": record["title"],
                        "reason": "duplicate_article",
                        "detail": f"{record['wiki'] or part.source}:{record['page_id']} seen in an earlier input",
                        "chunk": part.number,
                    }
                )
            else:
                yield record["page_id"], record["text"] or "", record["title"], record["wiki"] or part.source
            row += 1


@task(name="tokenize-part", cache_policy=STORE_CACHE, persist_result=True)
def tokenize_part(
    dataset: Dataset, recipe: Recipe, part: int, spec: CorpusPart, options: CorpusOptions
) -> dict:
    """Normalize, split and tokenize every document of one part into sentence rows; count every word."""
    logger = run_logger()
    if (done := dataset.finished_part(spec.name)) is not None:
        logger.info("%s already finished: skipped", spec.name)
        return done
    for table in ("sentences", "articles", "word_counts", "rejects"):  # leftovers of a killed attempt
        for stale in dataset.files(f"{table}/{spec.name}*"):
            dataset.fs.rm(stale)

    counts: Counter[str] = Counter(
        documents_in=0, documents=0, documents_empty=0, rejected_duplicate_article=0
    )
    words: Counter[str] = Counter()
    rejects: list[dict] = []
    sentence_writer = RollingParquetWriter(
        dataset,
        f"sentences/{spec.name}",
        CORPUS_SENTENCES,
        max_rows=options.shard_sentences,
        batch_rows=2_000,
    )
    article_writer = RollingParquetWriter(
        dataset, f"articles/{spec.name}", CORPUS_ARTICLES, max_rows=1_000_000
    )
    progress = Progress(f"{spec.name} {posixpath.basename(spec.path)}", None, "documents", artifact=False)
    if spec.kind == "articles":
        documents = _article_documents(dataset, spec, counts, rejects)
    else:
        documents = (
            (line, text, None, spec.source)
            for line, text in _text_documents(spec.path, options.text_documents, counts)
        )
    with sentence_writer, article_writer:
        for index, (article_id, text, title, source) in enumerate(documents):
            doc = spec.number << 32 | index
            sentences = options.sentences(text)
            n_words = 0
            for number, (sentence, tokens) in enumerate(sentences):
                sentence_writer.write(
                    {
                        "doc": doc,
                        "article_id": article_id,
                        "sentence": number,
                        "text": sentence,
                        "words": tokens,
                    },
                    size_hint=2 * len(sentence),
                )
                words.update(tokens)
                n_words += len(tokens)
            article_writer.write(
                {
                    "doc": doc,
                    "source": source,
                    "article_id": article_id,
                    "title": title,
                    "sentences": len(sentences),
                    "words": n_words,
                }
            )
            counts["documents"] += 1
            counts["documents_empty"] += not sentences
            counts["sentences"] += len(sentences)
            counts["words"] += n_words
            counts["characters"] += len(text)
            progress.advance()
    counts["documents_in"] = counts["documents"] + counts["rejected_duplicate_article"]
    seconds = progress.finish()

    files = {
        "sentences": sentence_writer.files,
        "articles": article_writer.files,
        "word_counts": [],
        "rejects": [],
    }
    rows = {
        "sentences": sentence_writer.rows,
        "articles": article_writer.rows,
        "word_counts": len(words),
        "rejects": len(rejects),
    }
    counted = pa.table({"token": list(words), "count": list(words.values())}, schema=WORD_COUNTS)
    dataset.write_table(f"word_counts/{spec.name}.parquet", counted)
    files["word_counts"].append(f"word_counts/{spec.name}.parquet")
    if rejects:
        dataset.write_table(f"rejects/{spec.name}.parquet", pa.Table.from_pylist(rejects, schema=REJECTS))
        files["rejects"].append(f"rejects/{spec.name}.parquet")
    logger.info(
        "%s done: %s documents (%s empty) in %.1f s, %.0f documents/s, %s sentences, %s words (%.0f words/s)",
        spec.name,
        f"{counts['documents']:,}",
        f"{counts['documents_empty']:,}",
        seconds,
        counts["documents"] / max(seconds, 1e-9),
        f"{counts['sentences']:,}",
        f"{counts['words']:,}",
        counts["words"] / max(seconds, 1e-9),
    )
    result = {
        "part": spec.number,
        "source": spec.path,
        "counts": dict(counts),
        "files": files,
        "rows": rows,
        "seconds": round(seconds, 3),
    }
    dataset.part_done(spec.name, result)
    return result


@task(name="commit-corpus", cache_policy=STORE_CACHE, persist_result=True)
def commit_corpus(
    dataset: Dataset, recipe: Recipe, parts: list[CorpusPart], options: CorpusOptions
) -> dict[str, Any]:
    """Check every part finished, add up the counts, write the corpus manifest last."""
    if dataset.is_current(recipe):
        return summary(dataset)
    done = _finished(dataset, [p.name for p in parts])
    counts: Counter[str] = Counter()
    files: dict[str, list[str]] = {"sentences": [], "articles": [], "word_counts": [], "rejects": []}
    rows: Counter[str] = Counter()
    for info in done:
        counts.update(info["counts"])
        rows.update(info["rows"])
        for table, names in info["files"].items():
            files[table].extend(names)
    if counts["documents"] + counts["rejected_duplicate_article"] != counts["documents_in"]:
        raise AssertionError(f"{dataset.name}: documents do not add up: {dict(counts)}")
    schemas = {
        "sentences": CORPUS_SENTENCES,
        "articles": CORPUS_ARTICLES,
        "word_counts": WORD_COUNTS,
        "rejects": REJECTS,
    }
    manifest = Manifest.from_recipe(
        recipe,
        tables={t: (schemas[t], files[t], rows[t]) for t in schemas},
        counts=dict(counts),
        metrics={
            "options": asdict(options),
            "parts": [asdict(p) for p in parts],
            "words_per_second_per_worker": round(
                counts["words"] / max(sum(i["seconds"] for i in done), 1e-9), 1
            ),
        },
    )
    dataset.commit(manifest)
    return summary(dataset)


def summary(dataset: Dataset) -> dict[str, Any]:
    """What a step task returns: the dataset's name, counts and metrics, from its manifest."""
    manifest = dataset.manifest()
    return {"dataset": dataset.name, "counts": manifest.counts, "metrics": manifest.metrics}


def _finished(dataset: Dataset, names: list[str]) -> list[dict[str, Any]]:
    found = [dataset.finished_part(name) for name in names]
    if missing := [n for n, f in zip(names, found, strict=True) if f is None]:
        raise RuntimeError(
            f"{dataset.name}: {len(missing)} part(s) unfinished ({', '.join(missing[:5])}); run again"
        )
    return found


# --- vocabulary ---------------------------------------------------------------------------------


@task(name="build-vocabulary", cache_policy=STORE_CACHE, persist_result=True)
def build_vocabulary(
    dataset: Dataset, recipe: Recipe, corpus: Dataset, min_count: int, max_size: int | None
) -> dict:
    """Add up the parts' word counts; keep words seen min_count times, the max_size most frequent."""
    if min_count < 1 or (max_size is not None and max_size < 1):
        raise InputError(f"min_count and max_size must be >= 1, got {min_count} and {max_size}")
    if dataset.is_current(recipe):
        return summary(dataset)
    started = time.perf_counter()
    dataset.begin(recipe)
    # FIXME: every distinct word of the corpus is held at once; a full English Wikipedia (tens of
    # millions of types, most seen once) needs several GB here
    total: pa.Table | None = None
    for path in corpus.table_files("word_counts"):
        table = pq.read_table(path, filesystem=corpus.fs, schema=WORD_COUNTS)
        total = table if total is None else pa.concat_tables([total, table])
        # merge as we go, so memory holds one part plus the distinct words seen so far
        total = total.group_by("token").aggregate([("count", "sum")])
        total = total.rename_columns(["token", "count"]).cast(WORD_COUNTS)
    total = total if total is not None else WORD_COUNTS.empty_table()
    tokens_in = pc.sum(total["count"]).as_py() or 0
    kept = total.filter(pc.greater_equal(total["count"], min_count))
    kept = kept.take(pc.sort_indices(kept, sort_keys=[("count", "descending"), ("token", "ascending")]))
    over = max(0, kept.num_rows - max_size) if max_size else 0
    kept = kept.slice(0, kept.num_rows - over)
    vocabulary = pa.table(
        {
            "id": pa.array(np.arange(kept.num_rows, dtype=np.int32)),
            "token": kept["token"],
            "count": kept["count"],
        },
        schema=VOCABULARY,
    )
    dataset.write_table("vocabulary.parquet", vocabulary)
    tokens_kept = pc.sum(vocabulary["count"]).as_py() or 0
    counts = {
        "types_in": total.num_rows,
        "types": vocabulary.num_rows,
        "types_below_min_count": total.num_rows - kept.num_rows - over,
        "types_over_max_size": over,
        "tokens_in": tokens_in,
        "tokens_in_vocabulary": tokens_kept,
        "tokens_out_of_vocabulary": tokens_in - tokens_kept,
    }
    metrics = {
        "coverage": round(tokens_kept / max(tokens_in, 1), 6),
        "seconds": round(time.perf_counter() - started, 3),
    }
    dataset.commit(
        Manifest.from_recipe(
            recipe,
            tables={"vocabulary": (VOCABULARY, ["vocabulary.parquet"], vocabulary.num_rows)},
            counts=counts,
            metrics=metrics,
        )
    )
    run_logger().info(
        "vocabulary: %s of %s word types (min count %d%s), %.2f%% of %s tokens",
        f"{vocabulary.num_rows:,}",
        f"{total.num_rows:,}",
        min_count,
        f", at most {max_size:,}" if max_size else "",
        100 * metrics["coverage"],
        f"{tokens_in:,}",
    )
    return summary(dataset)


# --- token shards -------------------------------------------------------------------------------


@task(name="plan-token-shards", cache_policy=STORE_CACHE, persist_result=True)
def plan_token_shards(dataset: Dataset, recipe: Recipe, corpus: Dataset) -> list[str]:
    """The corpus's sentence files, one token shard each; prepare the folder."""
    if not dataset.is_current(recipe):
        dataset.begin(recipe)
    return corpus.manifest().tables["sentences"]["files"]


def encode(words: pa.ListArray | pa.ChunkedArray, vocabulary: pa.Array) -> tuple[pa.ListArray, int]:
    """Word lists as lists of vocabulary ids, words outside the vocabulary dropped; and how many were."""
    if isinstance(words, pa.ChunkedArray):
        words = words.combine_chunks()
    ids = pc.index_in(words.flatten(), value_set=vocabulary)  # null where a word is out of vocabulary
    known = ids.is_valid().to_numpy(zero_copy_only=False)
    offsets = words.offsets.to_numpy()
    rows = np.repeat(np.arange(len(words)), np.diff(offsets))
    kept_per_row = np.bincount(rows[known], minlength=len(words))
    new_offsets = np.concatenate(([0], np.cumsum(kept_per_row))).astype(np.int32)
    values = ids.drop_null().cast(pa.int32())
    return pa.ListArray.from_arrays(pa.array(new_offsets), values), int(len(known) - known.sum())


@task(name="encode-shard", cache_policy=STORE_CACHE, persist_result=True)
def encode_shard(
    dataset: Dataset, recipe: Recipe, part: int, corpus: Dataset, sentences_file: str, vocabulary: Dataset
) -> dict:
    """One sentences file to its token shard: vocabulary ids, out-of-vocabulary words dropped and counted."""
    name = f"shard-{part:05d}"
    if (done := dataset.finished_part(name)) is not None:
        return done
    started = time.perf_counter()
    tokens = vocabulary.read_table("vocabulary", columns=["token"])["token"].combine_chunks()
    table = pq.read_table(
        corpus.file(sentences_file), filesystem=corpus.fs, columns=["doc", "article_id", "sentence", "words"]
    )
    ids, dropped = encode(table["words"], tokens)
    shard = pa.table(
        {
            "article_id": table["article_id"],
            "sentence": table["sentence"],
            "tokens": ids,
            "doc": table["doc"],
        },
        schema=TOKEN_SHARDS,
    )
    relative = "tokens/" + posixpath.basename(sentences_file)
    with dataset.open_atomic(relative) as f:
        # small row groups let co-occurrence cut a shard into several tasks
        pq.write_table(shard, f, compression="zstd", row_group_size=SHARD_ROW_GROUP)
    kept = len(ids.values)
    empty = int(np.count_nonzero(np.diff(ids.offsets.to_numpy()) == 0))
    seconds = time.perf_counter() - started
    counts = {
        "sentences": shard.num_rows,
        "tokens_in": kept + dropped,
        "tokens": kept,
        "tokens_out_of_vocabulary": dropped,
        "sentences_without_tokens": empty,
    }
    run_logger().info(
        "%s: %s sentences, %s tokens kept, %s out of vocabulary, %.0f tokens/s",
        name,
        f"{shard.num_rows:,}",
        f"{kept:,}",
        f"{dropped:,}",
        (kept + dropped) / max(seconds, 1e-9),
    )
    result = {"file": relative, "counts": counts, "seconds": round(seconds, 3)}
    dataset.part_done(name, result)
    return result


@task(name="commit-token-shards", cache_policy=STORE_CACHE, persist_result=True)
def commit_token_shards(dataset: Dataset, recipe: Recipe, shards: int, vocabulary: Dataset) -> dict[str, Any]:
    """Check every shard finished, copy the vocabulary beside them, write the manifest last."""
    if dataset.is_current(recipe):
        return summary(dataset)
    done = _finished(dataset, [f"shard-{k:05d}" for k in range(shards)])
    counts: Counter[str] = Counter()
    for info in done:
        counts.update(info["counts"])
    table = vocabulary.read_table("vocabulary")
    dataset.write_table("vocabulary.parquet", table)
    manifest = Manifest.from_recipe(
        recipe,
        tables={
            "tokens": (TOKEN_SHARDS, [i["file"] for i in done], counts["sentences"]),
            "vocabulary": (VOCABULARY, ["vocabulary.parquet"], table.num_rows),
        },
        counts=dict(counts),
        metrics={"shard_tokens": [i["counts"]["tokens"] for i in done], "vocabulary_size": table.num_rows},
    )
    dataset.commit(manifest)
    return summary(dataset)


# --- recipes, and the three steps without Prefect ----------------------------------------------


def corpus_recipe(resolved: dict[str, Any], options: CorpusOptions) -> Recipe:
    return Recipe(CORPUS_KIND, resolved["fingerprints"], asdict(options), code_version("tasks.corpus"))


def vocabulary_recipe(corpus: Dataset, min_count: int, max_size: int | None) -> Recipe:
    return Recipe(
        VOCABULARY_KIND,
        {corpus.name: corpus.manifest().fingerprint},
        {"min_count": min_count, "max_size": max_size},
        code_version("tasks.corpus"),
    )


def tokens_recipe(corpus: Dataset, vocabulary: Dataset) -> Recipe:
    return Recipe(
        TOKENS_KIND,
        {corpus.name: corpus.manifest().fingerprint, vocabulary.name: vocabulary.manifest().fingerprint},
        {},
        code_version("tasks.corpus"),
    )


def build_in_process(
    store: Store,
    inputs: list[str],
    name: str,
    options: CorpusOptions | None = None,
    *,
    min_count: int = 5,
    max_size: int | None = None,
) -> tuple[Dataset, Dataset, Dataset]:
    """Corpus, vocabulary and token shards under text/NAME/, one task after another in this process.

    The same datasets and recipes as the flow's (a later flow run finds them current), without Prefect:
    for notebooks, benchmarks and tests. Returns the three datasets.
    """
    options = options or CorpusOptions()
    resolved = resolve_inputs(store, inputs)
    corpus = store.dataset(f"text/{name}/corpus")
    recipe = corpus_recipe(resolved, options)
    if not corpus.is_current(recipe):
        parts = plan_corpus.fn(corpus, recipe, resolved["inputs"])
        for part in parts:
            tokenize_part.fn(corpus, recipe, part.number, part, options)
        commit_corpus.fn(corpus, recipe, parts, options)

    vocabulary = store.dataset(f"text/{name}/vocabulary")
    build_vocabulary.fn(
        vocabulary, vocabulary_recipe(corpus, min_count, max_size), corpus, min_count, max_size
    )

    tokens = store.dataset(f"text/{name}/tokens")
    recipe = tokens_recipe(corpus, vocabulary)
    if not tokens.is_current(recipe):
        files = plan_token_shards.fn(tokens, recipe, corpus)
        for number, path in enumerate(files):
            encode_shard.fn(tokens, recipe, number, corpus, path, vocabulary)
        commit_token_shards.fn(tokens, recipe, len(files), vocabulary)
    return corpus, vocabulary, tokens
