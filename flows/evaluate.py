"""evaluate: trained runs, word and contextual, on analogies, similarity and senses, with a leaderboard.

    embedpipe evaluate runs/word2vec-1a2b3c4d5e runs/glove-9f8e7d6c5b --store work/store
    embedpipe evaluate runs/fasttext-... --pairs my-pairs.tsv --analogies my-questions.txt
    embedpipe neighbours runs/word2vec-1a2b3c4d5e king queen --store work/store

For each run: the Google analogy set by section with 3CosAdd and 3CosMul, and Spearman correlation
on WordSim353, SimLex-999, the Stanford Rare Words set (where ../shared/data has it) and any file of
"word<TAB>word<TAB>score" lines given with --pairs. Coverage is always reported; unseen words are built
by the models that can (fastText, PHOC) and counted for the others. Results go to evaluations/RUN in
the store (Parquet, plots as PNG); the flow makes a leaderboard table artifact across the runs and
image artifacts of each run's analogy picture, nearest neighbours and 2-D projection.

Contextual models (ELMo, BERT, GPT, T5) are scored on their own objective over the held-out articles
(masked-token and NSP accuracy, perplexity, span accuracy), on the similarity sets with each word's
context-free vector, and, like the word models, on words with two senses (tasks/contextual_evaluation.py):
a contextual model gives a word a different vector in each sentence, a static one the same vector.
"""

from __future__ import annotations

import argparse
import base64
import math
import os
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
from prefect import flow, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact

from models import registry
from models.base import read_run_config
from storage import Dataset, Manifest, Recipe, Store, code_version, file_fingerprint
from storage.schemas import HELDOUT_METRICS, WORD_ANALOGIES, WORD_SENSES, WORD_SIMILARITY
from tasks import contextual_evaluation as cx
from tasks import evaluation as ev
from tasks.common import STORE_CACHE, InputError, artifact_key, run_logger

KIND = "word-evaluation"
SHARED_DATA = Path(
    os.environ.get("EMBEDPIPE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
ANALOGY_AXES = (("she", "he"), ("queen", "woman"))
ANALOGY_WORDS = [
    "he",
    "she",
    "man",
    "woman",
    "king",
    "queen",
    "boy",
    "girl",
    "brother",
    "sister",
    "father",
    "mother",
    "son",
    "daughter",
    "uncle",
    "aunt",
    "husband",
    "wife",
]
NEIGHBOUR_WORDS = ["king", "water", "red", "good", "france", "computer", "run", "music", "dog"]


def default_sets() -> tuple[str, list[str]]:
    """The Google analogies, WordSim353 and SimLex-999 that gensim ships; Rare Words from the shared data."""
    from gensim.test.utils import datapath

    pairs = [datapath("wordsim353.tsv"), datapath("simlex999.txt")]
    rare_words = SHARED_DATA / "word_eval" / "faruqui_eval-word-vectors" / "EN-RW-STANFORD.txt"
    if rare_words.exists():
        pairs.append(str(rare_words))
    return datapath("questions-words.txt"), pairs


def set_name(path: str) -> str:
    return Path(path).stem


def _images(embedding, run_name: str) -> dict[str, bytes]:
    images = {}
    if not embedding.dense:
        return images
    plots = {
        "analogy": lambda: ev.analogy_plot(
            embedding, f"{run_name}: he-she and woman-queen", ANALOGY_AXES, ANALOGY_WORDS
        ),
        "neighbours": lambda: ev.neighbours_plot(embedding, f"{run_name}: nearest words", NEIGHBOUR_WORDS),
        "projection": lambda: ev.projection_plot(embedding, f"{run_name}: 300 most frequent words, PCA"),
    }
    for name, make in plots.items():
        png = make()
        if png is not None:
            images[name] = png
    return images


def _read_pair_sets(pairs: list[str]) -> dict[str, tuple[list[tuple[str, str, float]], int]]:
    """Each similarity file's pairs and its count of invalid lines, by file."""
    return {path: ev.read_pairs(path) for path in pairs}


def _word_results(
    run: Dataset,
    embedding,
    analogies: str | None,
    pair_sets: dict[str, tuple[list[tuple[str, str, float]], int]],
    restrict_vocab: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """Analogy rows by section and one similarity row per pairs file, with each file's invalid lines."""
    logger = run_logger()
    analogy_rows, similarity_rows = [], []
    invalid = {set_name(path): bad for path, (_, bad) in pair_sets.items()}
    if analogies:
        sections, invalid[set_name(analogies)] = ev.read_analogies(analogies)
        for row in ev.evaluate_analogies(embedding, sections, restrict_vocab=restrict_vocab):
            analogy_rows.append({"run": run.name, "set": set_name(analogies), **row})
        total = analogy_rows[-1]
        logger.info(
            f"{run.name} {set_name(analogies)}: 3CosAdd {total['accuracy_add']:.3f} 3CosMul {total['accuracy_mul']:.3f} "
            f"of {total['answered']:,}/{total['questions']:,} answered ({total['answered_built']:,} more built)"
        )
    for path, (items, _) in pair_sets.items():
        row = ev.evaluate_pairs(embedding, items, restrict_vocab=restrict_vocab)
        similarity_rows.append({"run": run.name, "set": set_name(path), **row})
        logger.info(
            f"{run.name} {set_name(path)}: Spearman {row['spearman']:.3f} on {row['answered']:,}/{row['pairs']:,} pairs"
            + (
                f", {row['spearman_all']:.3f} with {row['answered_built']:,} built"
                if row["answered_built"]
                else ""
            )
        )
    return analogy_rows, similarity_rows, invalid


def _pair_words(pair_sets: dict[str, tuple[list[tuple[str, str, float]], int]]) -> list[str]:
    words: dict[str, None] = {}
    for items, _ in pair_sets.values():
        for a, b, _ in items:
            words[a.lower()] = None
            words[b.lower()] = None
    return list(words)


@task(name="evaluate-run", cache_policy=STORE_CACHE)
def evaluate_run(
    dataset: Dataset,
    recipe: Recipe,
    run: Dataset,
    analogies: str | None,
    pairs: list[str],
    restrict_vocab: int,
    max_examples: int = 2_000,
) -> dict[str, Any]:
    """Evaluate one run into evaluations/RUN; returns its result rows.

    Word models: analogies, similarity, the sense check and their plots. Contextual models: their
    held-out objective, the sense check, and similarity with each word's context-free vector.
    """
    from flows.train import run_assets

    logger = run_logger()
    spec = registry.get(read_run_config(run)["model"])
    loaded = spec.load(run)
    dataset.begin(recipe)
    pair_sets = _read_pair_sets(pairs)
    plots_made: dict[str, bytes] = {}
    heldout_rows: list[dict[str, Any]] = []
    if spec.family == "contextual":
        scores = loaded.heldout(run_assets(run, spec), max_examples=max_examples)
        heldout_rows = [{"run": run.name, "metric": k, "value": float(v)} for k, v in scores.items()]
        logger.info(f"{run.name} held out: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
        embedding = loaded.static_embedding(_pair_words(pair_sets))
        analogy_rows, similarity_rows, invalid = _word_results(
            run, embedding, None, pair_sets, restrict_vocab
        )
        encode = loaded.encode_words
        history = run.manifest().metrics.get("history") or []
        if (png := cx.heldout_plot(history, f"{run.name}: training loss")) is not None:
            plots_made["loss"] = png
    else:
        embedding = loaded
        analogy_rows, similarity_rows, invalid = _word_results(
            run, embedding, analogies, pair_sets, restrict_vocab
        )
        encode = cx.static_encoder(embedding)
        plots_made.update(_images(embedding, run.name))
    sense_rows = [{"run": run.name, **row} for row in cx.sense_rows(encode)]
    senses = cx.summarize_senses(sense_rows)
    logger.info(
        f"{run.name} senses: {senses['sense_accuracy']:.3f} of {senses['sense_items']} words told apart, "
        f"cosine {senses['context_cosine']:.3f} within a sense, {senses['other_sense_cosine']:.3f} across"
    )
    if (png := cx.senses_plot(sense_rows, f"{run.name}: one word, two senses")) is not None:
        plots_made["senses"] = png

    tables = {}
    for table, schema, rows in (
        ("analogies", WORD_ANALOGIES, analogy_rows),
        ("similarity", WORD_SIMILARITY, similarity_rows),
        ("senses", WORD_SENSES, sense_rows),
        ("heldout", HELDOUT_METRICS, heldout_rows),
    ):
        dataset.write_table(f"{table}.parquet", pa.Table.from_pylist(rows, schema=schema))
        tables[table] = (schema, [f"{table}.parquet"], len(rows))
    plots = {}
    for name, png in plots_made.items():
        plots[name] = dataset.write_bytes(f"plots/{name}.png", png)
    counts = {
        "questions": sum(r["questions"] for r in analogy_rows if r["section"] != "total"),
        "questions_unseen": sum(r["unseen"] for r in analogy_rows if r["section"] != "total"),
        "pairs": sum(r["pairs"] for r in similarity_rows),
        "pairs_unseen": sum(r["unseen"] for r in similarity_rows),
        "sense_items": senses["sense_items"],
        "sense_items_unseen": senses["sense_items_unseen"],
        "invalid_lines": sum(invalid.values()),
    }
    dataset.commit(
        Manifest.from_recipe(recipe, tables=tables, counts=counts, metrics={"plots": sorted(plots), **senses})
    )
    return read_results(dataset)


def read_results(dataset: Dataset) -> dict[str, Any]:
    return {
        table: dataset.read_table(table).to_pylist()
        for table in ("analogies", "similarity", "senses", "heldout")
    }


def leaderboard_row(run: Dataset, results: dict[str, Any]) -> dict[str, Any]:
    """One line of the leaderboard: the model, its settings, analogy accuracy and each set's Spearman."""
    config = read_run_config(run)
    spec = registry.get(config["model"])
    settings = spec.config.from_dict(config["config"]).describe()
    metrics = run.manifest().metrics
    row: dict[str, Any] = {"run": run.name.removeprefix("runs/"), "model": f"{spec.name} {settings}".strip()}
    total = next((r for r in results["analogies"] if r["section"] == "total"), None)
    if total:
        row["analogy_add"] = _round(total["accuracy_add"])
        row["analogy_mul"] = _round(total["accuracy_mul"])
        row["analogy_answered"] = f"{total['answered'] + total['answered_built']}/{total['questions']}"
    for item in results["similarity"]:
        value = item["spearman_all"] if item["answered_built"] else item["spearman"]
        row[item["set"]] = _round(value)
        row[f"{item['set']}_answered"] = f"{item['answered'] + item['answered_built']}/{item['pairs']}"
    for item in results["heldout"]:
        if item["metric"] in HELDOUT_SHOWN:
            row[item["metric"]] = _round(item["value"])
    senses = cx.summarize_senses(results["senses"])
    row["sense_accuracy"] = _round(senses["sense_accuracy"])
    row["context_cosine"] = _round(senses["context_cosine"])
    unit = next((u for u in ("words", "tokens", "pairs") if metrics.get(f"{u}_per_s")), None)
    row["train_rate"] = f"{metrics[f'{unit}_per_s']:,.0f} {unit}/s" if unit else ""
    return row


# the held-out figures the leaderboard shows (all of them are in evaluations/RUN/heldout.parquet)
HELDOUT_SHOWN = ("mlm_accuracy", "nsp_accuracy", "span_accuracy", "perplexity")


def _round(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(value, 4)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Rows as an aligned text table (columns in order of first appearance; '-' for no value)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    cells = [[("-" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[k]) for r in cells)) for k, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _resolve_run(store: Store, name: str) -> Dataset:
    name = name if name.startswith("runs/") else f"runs/{name}"
    run = store.dataset(name)
    if not run.is_complete():
        raise InputError(f"{store.url}/{name} is not a finished run; train it with `embedpipe train MODEL`")
    return run


@flow(name="evaluate", log_prints=True)
def evaluate(
    runs: list[str],
    store: str | None = None,
    analogies: str | None = None,
    pairs: list[str] | None = None,
    restrict_vocab: int = ev.RESTRICT_VOCAB,
    default_sets_too: bool = True,
    max_examples: int = 2_000,
) -> list[dict[str, Any]]:
    """Evaluate trained runs, word and contextual; returns the leaderboard rows (best 3CosAdd first)."""
    from flows.environment import default_store

    store_ = Store(store or default_store())
    default_analogies, default_pairs = default_sets() if default_sets_too else (None, [])
    analogies = analogies or default_analogies
    pairs = [*default_pairs, *(pairs or [])]
    for path in [analogies, *pairs]:
        if path and not Path(path).exists():
            raise InputError(f"evaluation file {path} does not exist; give an existing file")
    if restrict_vocab < 1:
        raise InputError(f"restrict_vocab must be >= 1, got {restrict_vocab}")
    if max_examples < 1:
        raise InputError(f"max_examples must be >= 1, got {max_examples}")
    board = []
    for name in runs:
        run = _resolve_run(store_, name)
        dataset = store_.dataset(f"evaluations/{run.name.removeprefix('runs/')}")
        files = [p for p in [analogies, *pairs] if p]
        recipe = Recipe(
            KIND,
            {run.name: run.manifest().fingerprint, **{set_name(p): file_fingerprint(p) for p in files}},
            {
                "analogies": set_name(analogies) if analogies else None,
                "pairs": [set_name(p) for p in pairs],
                "restrict_vocab": restrict_vocab,
                "max_examples": max_examples,
            },
            code_version("tasks.evaluation", "tasks.contextual_evaluation", "flows.evaluate"),
        )
        if dataset.is_current(recipe):
            results = read_results(dataset)
        else:
            results = evaluate_run(
                dataset=dataset,
                recipe=recipe,
                run=run,
                analogies=analogies,
                pairs=pairs,
                restrict_vocab=restrict_vocab,
                max_examples=max_examples,
            )
        board.append(leaderboard_row(run, results))
        _plot_artifacts(dataset, run.name)
    board.sort(key=lambda r: -(r.get("analogy_add") or 0.0))
    create_table_artifact(key=artifact_key("leaderboard"), table=board, description="embeddings: leaderboard")
    print(format_table(board))
    return board


def _plot_artifacts(dataset: Dataset, run_name: str) -> None:
    files = dataset.files("plots/*.png")
    if not files:
        return
    parts = [f"# {run_name}"]
    for path in files:
        stem = Path(path).stem
        url = dataset.store.full_url(path)
        create_image_artifact(
            image_url=url if "://" in url else Path(url).as_uri(),
            key=artifact_key("plot", run_name, stem),
            description=f"{run_name}: {stem}",
        )
        data = base64.b64encode(dataset.fs.cat_file(path)).decode()
        parts.append(f"## {stem}\n\n![{stem}](data:image/png;base64,{data})")
    create_markdown_artifact(
        key=artifact_key("plots", run_name), markdown="\n\n".join(parts), description=run_name
    )


# --- neighbours ----------------------------------------------------------------------------------


def nearest_words(
    store: str, run_name: str, words: list[str], count: int = 10
) -> dict[str, list[tuple[str, float]]]:
    """The nearest vocabulary words of each word (built for unseen words where the model can)."""
    run = _resolve_run(Store(store), run_name)
    embedding = registry.get(read_run_config(run)["model"]).load(run)
    return {word: ev.neighbours(embedding, word, count) for word in words}


# --- command line --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    try:
        evaluate(
            runs=args.runs,
            store=args.store,
            analogies=args.analogies,
            pairs=args.pairs,
            restrict_vocab=args.restrict_vocab,
            default_sets_too=not args.no_default_sets,
            max_examples=args.max_examples,
        )
    except InputError as error:
        print(f"embedpipe evaluate: {error}", file=sys.stderr)
        return 2
    return 0


def run_neighbours(args: argparse.Namespace) -> int:
    try:
        found = nearest_words(args.store, args.run_name, args.words, args.count)
    except InputError as error:
        print(f"embedpipe neighbours: {error}", file=sys.stderr)
        return 2
    status = 0
    for word, near in found.items():
        if not near:
            print(f"{word}: not in the vocabulary, and this model builds no vector for unseen words")
            status = 1
            continue
        print(f"{word}: " + ", ".join(f"{w} {s:.3f}" for w, s in near))
    return status


def add_command(subparsers: argparse._SubParsersAction) -> None:
    from flows.cli import store_argument

    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate trained runs: analogies, similarity, senses, held-out scores, leaderboard",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="runs/NAME (or NAME) of trained runs")
    store_argument(parser)
    parser.add_argument("--analogies", help="an analogy file in questions-words format (default: Google's)")
    parser.add_argument(
        "--pairs", action="append", default=[], help="a similarity file (word TAB word TAB score), repeatable"
    )
    parser.add_argument("--no-default-sets", action="store_true", help="only the files given")
    parser.add_argument(
        "--restrict-vocab", type=int, default=ev.RESTRICT_VOCAB, help="search the first N words"
    )
    parser.add_argument(
        "--max-examples", type=int, default=2_000, help="held-out examples scored per contextual model"
    )
    parser.set_defaults(run=run)

    near = subparsers.add_parser("neighbours", help="print the nearest words of words in a run")
    near.add_argument("run_name", metavar="RUN", help="runs/NAME (or NAME)")
    near.add_argument("words", nargs="+", metavar="WORD")
    store_argument(near)
    near.add_argument("--count", type=int, default=10, help="words to print for each")
    near.set_defaults(run=run_neighbours)
