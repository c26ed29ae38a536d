"""build-text-assets: articles and text files to everything the text models train on.

Datasets, each with its manifest kind and tables (NAME defaults to the inputs' names, e.g. enwiki-sample):

    text/NAME/corpus                 text-corpus        sentences, articles, word_counts, rejects
    text/NAME/vocabulary             vocabulary         vocabulary (id, token, count; ids by frequency)
    text/NAME/tokens                 token-shards       tokens (article_id, sentence, tokens, doc), vocabulary
    text/NAME/cooccurrence           cooccurrence       cooccurrence (i, j, x), vocabulary
    text/NAME/tokenizers/wordpiece   subword-tokenizer  (files) tokenizer/: AutoTokenizer.from_pretrained
    text/NAME/tokenizers/bpe         subword-tokenizer  (files) tokenizer/
    text/NAME/tokenizers/unigram     subword-tokenizer  (files) tokenizer/
    text/NAME/topics                 lda-topics         topics (article_id, topics, source), topic_words, lda_vocabulary

The schemas are in storage/schemas.py (CORPUS_*, VOCABULARY, TOKEN_SHARDS, COOCCURRENCE, TOPICS, ...).

    embedpipe build-text-assets wikipedia/enwiki-sample --store work/store
    embedpipe build-text-assets pg2000-don-quijote-es.txt --text-documents paragraph --topics 20 \\
        --show-words quijote
    embedpipe build-text-assets wikipedia/enwiki --processes 8 --memory-mb 2048 --window 15

Steps, each its own dataset and its own cached Prefect task(s), so that running again with one
parameter changed rebuilds that step and the steps after it, and nothing else:

    corpus          normalize, split sentences, split words          (mapped over input files)
    vocabulary      min count, maximum size, ids by frequency
    tokens          token shards of vocabulary ids                    (mapped over sentence files)
    cooccurrence    weighted pair counts within a window              (mapped: count units, merge partitions)
    tokenizers      WordPiece, byte-level BPE, Unigram for transformers
    topics          LDA over bags of words, every document's topics
"""

from __future__ import annotations

import argparse
import posixpath
import time
from typing import Any

from prefect import flow
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from prefect.utilities.annotations import unmapped

from storage import Dataset, Store
from tasks import cooccurrence as co
from tasks import corpus as cp
from tasks import subword as sw
from tasks import topics as tp
from tasks.common import InputError, artifact_key, run_logger

STEPS = ("corpus", "vocabulary", "tokens", "cooccurrence", "tokenizers", "topics")
NEEDS = {
    "vocabulary": {"corpus"},
    "tokens": {"vocabulary"},
    "cooccurrence": {"tokens"},
    "tokenizers": {"corpus"},
    "topics": {"tokens"},
}
QUIJOTE_NAMES = [
    "quijote",
    "sancho",
    "dulcinea",
    "rocinante",
    "rucio",
    "teresa",
    "sansón",
    "dorotea",
    "cardenio",
    "luscinda",
    "altisidora",
    "maritornes",
]


def default_name(inputs: list[str]) -> str:
    """wikipedia/enwiki-sample -> enwiki-sample; corpus.txt.bz2 -> corpus; several joined by +."""
    stems = []
    for name in inputs:
        stem = posixpath.basename(name.rstrip("/"))
        for suffix in cp.TEXT_SUFFIXES[::-1]:
            stem = stem.removesuffix(suffix)
        stems.append(stem)
    return "+".join(stems)[:100]


def _steps_to_run(steps: list[str] | None) -> set[str]:
    wanted = set(steps or STEPS)
    if unknown := wanted - set(STEPS):
        raise InputError(f"unknown step(s) {sorted(unknown)}; steps are {', '.join(STEPS)}")
    for step in list(wanted):  # what a step reads is made first (a cached step costs nothing)
        todo = [step]
        while todo:
            for need in NEEDS.get(todo.pop(), ()):
                if need not in wanted:
                    wanted.add(need)
                    todo.append(need)
    return wanted


class StepLog:
    """Each step's dataset, whether it was built or found current in the store, and its seconds."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, step: str, dataset: Dataset, found: bool, started: float, **figures: Any) -> None:
        # decided by the store, not by task states: Prefect reports Cached only once a cache record
        # exists under the recipe's key, which a first run that built the dataset cannot leave
        state = "cached" if found else "built"
        seconds = time.perf_counter() - started
        self.rows.append(
            {"step": step, "dataset": dataset.name, "state": state, "seconds": round(seconds, 2), **figures}
        )
        run_logger().info("%s: %s %s in %.1f s", step, state, dataset.name, seconds)


def _call(task, **parameters) -> Any:
    return task(**parameters)


def _wait(futures: list[PrefectFuture], what: str) -> list[Any]:
    """Results of mapped tasks in their order, a progress line and artifact as each finishes."""
    logger = run_logger()
    artifact = create_progress_artifact(progress=0.0, description=f"{what}: done out of {len(futures)}")
    started = time.perf_counter()
    errors = []
    for done, future in enumerate(as_completed(futures), 1):
        if future.state.is_failed():
            errors.append(future)
        logger.info(
            "%s: %d/%d (%.0f%%) after %.1f s",
            what,
            done,
            len(futures),
            100 * done / len(futures),
            time.perf_counter() - started,
        )
        update_progress_artifact(artifact, progress=100 * done / len(futures))
    if errors:  # every other part finished first, so a re-run resumes from them
        errors[0].result()
    return [f.result() for f in futures]


@flow(name="build-text-assets", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def build_text_assets(
    inputs: list[str],
    store: str | None = None,
    name: str | None = None,
    steps: list[str] | None = None,
    normalization: str = "NFKC",
    lowercase: bool = True,
    text_documents: str = "line",
    shard_sentences: int = 100_000,
    min_count: int = 5,
    max_vocab_size: int | None = None,
    window: int = 10,
    weighting: str = "harmonic",
    symmetric: bool = True,
    partitions: int = 16,
    memory_mb: int = 1024,
    tokens_per_task: int = 1_000_000,
    tokenizers: list[str] | None = None,
    wordpiece_vocab_size: int = 30_522,
    bpe_vocab_size: int = 50_257,
    unigram_vocab_size: int = 32_000,
    t5_extra_ids: int = 100,
    tokenizer_max_sentences: int | None = None,
    topics: int = 100,
    lda_passes: int = 1,
    lda_engine: str = "torch",
    lda_workers: int = 1,
    stop_words: str | None = None,
    drop_most_frequent: int = 0,
    no_below: int = 5,
    no_above: float = 0.5,
    keep_n: int = 100_000,
    seed: int = 0,
    show_words: list[str] | None = None,
) -> dict[str, Any]:
    """Corpus, vocabulary, token shards, co-occurrence, subword tokenizers and LDA topics of the inputs."""
    from flows.environment import default_store

    store_ = Store(store or default_store())
    name = name or default_name(inputs)
    wanted = _steps_to_run(steps)
    log = StepLog()
    made: dict[str, Any] = {"tokenizers": {}}
    base = f"text/{name}"

    # every option is checked before any work starts
    if unknown := set(tokenizers or ()) - set(sw.KINDS):
        raise InputError(f"unknown tokenizer(s) {sorted(unknown)}; choose from {', '.join(sw.KINDS)}")
    sizes = {"wordpiece": wordpiece_vocab_size, "bpe": bpe_vocab_size, "unigram": unigram_vocab_size}
    subword_options = [
        sw.SubwordOptions(
            kind,
            sizes[kind],
            lowercase=lowercase,
            max_sentences=tokenizer_max_sentences,
            extra_ids=t5_extra_ids,
        )
        for kind in tokenizers or sw.KINDS
    ]
    cooccurrence_options = co.CooccurrenceOptions(
        window, weighting, symmetric, partitions, memory_mb, tokens_per_task
    )
    topic_options = tp.TopicOptions(
        topics=topics,
        passes=lda_passes,
        engine=lda_engine,
        stop_words=stop_words,
        drop_most_frequent=drop_most_frequent,
        no_below=no_below,
        no_above=no_above,
        keep_n=keep_n,
        seed=seed,
        workers=lda_workers,
    )

    # corpus: mapped over input files
    started = time.perf_counter()
    corpus_options = cp.CorpusOptions(normalization, lowercase, text_documents, shard_sentences)
    resolved = cp.resolve_inputs(store_, inputs)
    corpus = store_.dataset(f"{base}/corpus")
    recipe = cp.corpus_recipe(resolved, corpus_options)
    found = corpus.is_current(recipe)
    parts = _call(cp.plan_corpus, dataset=corpus, recipe=recipe, inputs=resolved["inputs"])
    futures = cp.tokenize_part.map(
        dataset=unmapped(corpus),
        recipe=unmapped(recipe),
        part=[p.number for p in parts],
        spec=parts,
        options=unmapped(corpus_options),
    )
    _wait(list(futures), "corpus parts")
    summary = _call(cp.commit_corpus, dataset=corpus, recipe=recipe, parts=parts, options=corpus_options)
    counts = summary["counts"]
    log.add(
        "corpus",
        corpus,
        found,
        started,
        documents=counts["documents"],
        empty=counts["documents_empty"],
        sentences=counts["sentences"],
        words=counts["words"],
    )
    made["corpus"] = corpus.name

    # vocabulary
    started = time.perf_counter()
    vocabulary = store_.dataset(f"{base}/vocabulary")
    recipe = cp.vocabulary_recipe(corpus, min_count, max_vocab_size)
    found = vocabulary.is_current(recipe)
    summary = _call(
        cp.build_vocabulary,
        dataset=vocabulary,
        recipe=recipe,
        corpus=corpus,
        min_count=min_count,
        max_size=max_vocab_size,
    )
    log.add(
        "vocabulary",
        vocabulary,
        found,
        started,
        words=summary["counts"]["types"],
        out_of_vocabulary=summary["counts"]["tokens_out_of_vocabulary"],
    )
    made["vocabulary"] = vocabulary.name

    # token shards: mapped over the corpus's sentence files
    started = time.perf_counter()
    tokens = store_.dataset(f"{base}/tokens")
    recipe = cp.tokens_recipe(corpus, vocabulary)
    found = tokens.is_current(recipe)
    files = _call(cp.plan_token_shards, dataset=tokens, recipe=recipe, corpus=corpus)
    futures = cp.encode_shard.map(
        dataset=unmapped(tokens),
        recipe=unmapped(recipe),
        part=list(range(len(files))),
        corpus=unmapped(corpus),
        sentences_file=files,
        vocabulary=unmapped(vocabulary),
    )
    _wait(list(futures), "token shards")
    summary = _call(
        cp.commit_token_shards, dataset=tokens, recipe=recipe, shards=len(files), vocabulary=vocabulary
    )
    log.add(
        "tokens",
        tokens,
        found,
        started,
        shards=len(files),
        tokens=summary["counts"]["tokens"],
        dropped=summary["counts"]["tokens_out_of_vocabulary"],
    )
    made["tokens"] = tokens.name

    if "cooccurrence" in wanted:
        started = time.perf_counter()
        options = cooccurrence_options
        cooccurrence = store_.dataset(f"{base}/cooccurrence")
        recipe = co.cooccurrence_recipe(tokens, options)
        found = cooccurrence.is_current(recipe)
        units = _call(
            co.plan_cooccurrence, dataset=cooccurrence, recipe=recipe, tokens=tokens, options=options
        )
        futures = co.count_unit.map(
            dataset=unmapped(cooccurrence),
            recipe=unmapped(recipe),
            part=[u["unit"] for u in units],
            tokens=unmapped(tokens),
            unit=units,
            units=unmapped(len(units)),
            options=unmapped(options),
        )
        counted = _wait(list(futures), "co-occurrence counting")
        runs = [run for info in counted for run in info["runs"]]
        size = tokens.manifest().tables["vocabulary"]["rows"]
        futures = co.merge_partition.map(
            dataset=unmapped(cooccurrence),
            recipe=unmapped(recipe),
            part=list(range(partitions)),
            runs=unmapped(runs),
            vocabulary_size=unmapped(size),
            options=unmapped(options),
        )
        _wait(list(futures), "co-occurrence partitions")
        summary = _call(
            co.commit_cooccurrence,
            dataset=cooccurrence,
            recipe=recipe,
            tokens=tokens,
            units=len(units),
            options=options,
        )
        log.add(
            "cooccurrence",
            cooccurrence,
            found,
            started,
            pairs=summary["counts"]["pairs"],
            runs=summary["counts"]["runs"],
        )
        made["cooccurrence"] = cooccurrence.name
        if show_words:
            made["shown"] = _show_pairs(cooccurrence, show_words)

    if "tokenizers" in wanted:
        for options in subword_options:
            started = time.perf_counter()
            kind = options.kind
            tokenizer = store_.dataset(f"{base}/tokenizers/{kind}")
            recipe = sw.tokenizer_recipe(corpus, options)
            found = tokenizer.is_current(recipe)
            summary = _call(
                sw.train_tokenizer, dataset=tokenizer, recipe=recipe, corpus=corpus, options=options
            )
            log.add(
                f"tokenizer {kind}",
                tokenizer,
                found,
                started,
                vocabulary=summary["counts"]["vocabulary"],
                pieces_per_word=summary["metrics"]["tokens_per_word"],
            )
            made["tokenizers"][kind] = tokenizer.name

    if "topics" in wanted:
        started = time.perf_counter()
        options = topic_options
        topic_set = store_.dataset(f"{base}/topics")
        recipe = tp.topics_recipe(corpus, tokens, options)
        found = topic_set.is_current(recipe)
        summary = _call(
            tp.fit_topics, dataset=topic_set, recipe=recipe, tokens=tokens, corpus=corpus, options=options
        )
        log.add(
            "topics",
            topic_set,
            found,
            started,
            articles=summary["counts"]["articles"],
            empty=summary["counts"]["articles_empty"],
            coherence_npmi=summary["metrics"]["coherence_npmi"],
        )
        create_markdown_artifact(
            key=artifact_key("topics", name),
            markdown=summary["markdown"],
            description=f"LDA topics of {name}",
        )
        made["topics"] = topic_set.name

    create_table_artifact(
        key=artifact_key("text-assets", name), table=log.rows, description=f"build-text-assets {name}"
    )
    made["steps"] = {row["step"]: row["state"] for row in log.rows}
    made["datasets"] = {row["step"]: row["dataset"] for row in log.rows}
    return made


def _show_pairs(cooccurrence: Dataset, words: list[str]) -> list[dict[str, Any]]:
    """A table artifact of the co-occurrence among a few words, and the same printed."""
    rows = co.cooccurrence_among(cooccurrence, words)
    missing = [w for w in words if w not in {r["word"] for r in rows}]
    description = f"co-occurrence among {len(rows)} words of {cooccurrence.name}" + (
        f" (not in the vocabulary: {', '.join(missing)})" if missing else ""
    )
    if rows:
        create_table_artifact(
            key=artifact_key("cooccurrence", cooccurrence.name.split("/")[1]),
            table=rows,
            description=description,
        )
    run_logger().info("%s\n%s", description, format_table(rows))
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    columns = list(rows[0])
    width = {
        c: max(len(str(c)), *(len(f"{r[c]:g}" if isinstance(r[c], float) else str(r[c])) for r in rows))
        for c in columns
    }
    cell = lambda v, c: (f"{v:g}" if isinstance(v, float) else str(v)).rjust(width[c])  # noqa: E731
    return "\n".join(
        [" ".join(str(c).rjust(width[c]) for c in columns)]
        + [" ".join(cell(r[c], c) for c in columns) for r in rows]
    )


def task_runner_for(processes: int, dask_address: str | None):
    """One thread by default, a process pool for several, or an existing Dask cluster."""
    if dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    return (
        ProcessPoolTaskRunner(max_workers=processes) if processes > 1 else ThreadPoolTaskRunner(max_workers=1)
    )


def _words(value: str) -> list[str]:
    return [w.strip() for w in value.split(",") if w.strip()]


def run(args: argparse.Namespace) -> int:
    show = (
        QUIJOTE_NAMES
        if args.show_words == "quijote"
        else _words(args.show_words)
        if args.show_words
        else None
    )
    made = build_text_assets.with_options(task_runner=task_runner_for(args.processes, args.dask_address))(
        inputs=args.inputs,
        store=args.store,
        name=args.name,
        steps=_words(args.steps) if args.steps else None,
        normalization=args.normalization,
        lowercase=args.lowercase,
        text_documents=args.text_documents,
        shard_sentences=args.shard_sentences,
        min_count=args.min_count,
        max_vocab_size=args.max_vocab_size,
        window=args.window,
        weighting=args.weighting,
        symmetric=not args.asymmetric,
        partitions=args.partitions,
        memory_mb=args.memory_mb,
        tokens_per_task=args.tokens_per_task,
        tokenizers=_words(args.tokenizers) if args.tokenizers else None,
        wordpiece_vocab_size=args.wordpiece_vocab_size,
        bpe_vocab_size=args.bpe_vocab_size,
        unigram_vocab_size=args.unigram_vocab_size,
        t5_extra_ids=args.t5_extra_ids,
        tokenizer_max_sentences=args.tokenizer_max_sentences,
        topics=args.topics,
        lda_passes=args.lda_passes,
        lda_engine=args.lda_engine,
        lda_workers=args.lda_workers,
        stop_words=args.stop_words,
        drop_most_frequent=args.drop_most_frequent,
        no_below=args.no_below,
        no_above=args.no_above,
        keep_n=args.keep_n,
        seed=args.seed,
        show_words=show,
    )
    store = Store(args.store)
    for step, dataset in made["datasets"].items():
        print(f"{step:>19}  {store.full_url(store.path(dataset))}  ({made['steps'][step]})")
    if made.get("shown"):
        print(f"\nco-occurrence (window {args.window}, {args.weighting}):")
        print(format_table(made["shown"]))
    return 0


def add_command(subparsers: argparse._SubParsersAction) -> None:
    from flows.cli import store_argument

    parser = subparsers.add_parser(
        "build-text-assets",
        help="vocabulary, token shards, co-occurrence, tokenizers, LDA topics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="ARTICLES",
        help="articles datasets of the store (wikipedia/NAME) or text files (.txt, .txt.bz2, .txt.gz)",
    )
    store_argument(parser)
    parser.add_argument("--name", help="datasets go under text/NAME/ (default: from the inputs' names)")
    parser.add_argument(
        "--steps",
        help=f"comma-separated steps to run, with what they need (default: all of {','.join(STEPS)})",
    )
    parser.add_argument(
        "--processes", type=int, default=1, help="run mapped tasks in this many local processes"
    )
    parser.add_argument("--dask-address", help="run mapped tasks on this Dask scheduler (tcp://host:8786)")

    group = parser.add_argument_group("corpus and vocabulary")
    group.add_argument("--normalization", choices=["NFKC", "NFC", "none"], default="NFKC")
    group.add_argument(
        "--lowercase",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="lowercase words (and WordPiece); sentence text keeps its case",
    )
    group.add_argument(
        "--text-documents",
        choices=["line", "paragraph"],
        default="line",
        help="text files: one document per line, or per paragraph of non-blank lines (books)",
    )
    group.add_argument("--shard-sentences", type=int, default=100_000, help="sentences per token shard")
    group.add_argument("--min-count", type=int, default=5, help="a word needs this many occurrences")
    group.add_argument("--max-vocab-size", type=int, help="keep at most this many words, the most frequent")

    group = parser.add_argument_group("co-occurrence")
    group.add_argument("--window", type=int, default=10, help="positions on each side")
    group.add_argument(
        "--weighting", choices=["harmonic", "uniform"], default="harmonic", help="1/distance or 1"
    )
    group.add_argument("--asymmetric", action="store_true", help="right context only (GloVe's -symmetric 0)")
    group.add_argument(
        "--partitions", type=int, default=16, help="hash partitions: output files and merge tasks"
    )
    group.add_argument(
        "--memory-mb",
        type=int,
        default=1024,
        help="per task; more data than this spills to more runs and merge passes, never more memory",
    )
    group.add_argument("--tokens-per-task", type=int, default=1_000_000, help="counting work per mapped task")
    group.add_argument(
        "--show-words", help="comma-separated words to tabulate, or 'quijote' for Don Quijote's characters"
    )

    group = parser.add_argument_group("subword tokenizers")
    group.add_argument("--tokenizers", help=f"comma-separated, from {','.join(sw.KINDS)} (default: all)")
    group.add_argument("--wordpiece-vocab-size", type=int, default=30_522)
    group.add_argument("--bpe-vocab-size", type=int, default=50_257)
    group.add_argument("--unigram-vocab-size", type=int, default=32_000)
    group.add_argument(
        "--t5-extra-ids", type=int, default=100, help="T5 sentinels added to the Unigram vocabulary"
    )
    group.add_argument(
        "--tokenizer-max-sentences", type=int, help="train on an even sample of this many sentences"
    )

    group = parser.add_argument_group("LDA topics")
    group.add_argument("--topics", type=int, default=100, help="K")
    group.add_argument("--lda-passes", type=int, default=1)
    group.add_argument(
        "--lda-engine",
        choices=list(tp.ENGINES),
        default="torch",
        help="our online VB on torch (the GPU when there is one) or gensim's LdaMulticore",
    )
    group.add_argument(
        "--lda-workers", type=int, default=1, help="torch CPU threads, or gensim worker processes"
    )
    group.add_argument("--stop-words", help="'en' or a file with one word per line")
    group.add_argument(
        "--drop-most-frequent", type=int, default=0, help="drop the vocabulary's N most frequent words"
    )
    group.add_argument("--no-below", type=int, default=5, help="keep words in at least this many documents")
    group.add_argument("--no-above", type=float, default=0.5, help="and in at most this share of documents")
    group.add_argument("--keep-n", type=int, default=100_000, help="then at most this many words")
    group.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run)
