"""Benchmark: co-occurrence counting (tokens/s, peak memory) and LDA (documents/s, coherence).

    python -m bench.text_assets [--workers 1 2] [--small-memory-mb 16] [--copies 4] [--repeat 3]
                                [--topics 50] [--passes 1] [--skip-lda] [--store DIR]

The corpus is GloVe's reference figure's: the English sample dumps of ../shared/data (ingested by
ingest-wikipedia) plus the 117,659 WordNet glosses (one document per line), vocabulary at min count 5.

Co-occurrence (window 10, 1/distance, symmetric), each setting run --repeat times in a fresh process
and the fastest run shown (the cores may be shared with other work): with 1 and more worker
processes; with a small memory budget, which spills more runs and merges partitions in several
passes, as a corpus larger than RAM does; and with that budget on the corpus --copies times over,
whose peak memory must stay where it was. Peak memory is the counting process's own high-water mark,
plus its workers' resident memory sampled every 50 ms (forked workers share their parent's pages,
which this counts twice). Every run must give the same rows. The anchor is GloVe's C `cooccur` on
the same corpus on this kind of machine, a figure measured once and written below (its build is not
part of this repository).

LDA: our online variational Bayes on torch against gensim's LdaMulticore in the same run, on the
same bags of words, with the same priors (1/K), batch size, passes and iterations, one worker each.
Throughput is training documents/s; coherence is mean NPMI of each topic's top 10 words, over the
token shards' sentences, computed by the same function for both models.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import tempfile
import threading
import time
from pathlib import Path

import flows  # noqa: F401  (Prefect defaults before Prefect is imported)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
ENGLISH_DUMPS = [
    "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
    "enwiki-table-markup.xml.bz2",
    "zulko-wiki_dump_extractor-tiny_dump-enwiki-export-0.11.xml.bz2",
    "wikipedia2vec-enwiki-pages-articles-sample.xml.bz2",
]
GLOSSES = DATA / "text_corpora" / "wordnet30_glosses" / "wordnet30-glosses.txt.bz2"
# GloVe's cooccur -window-size 10 -symmetric 1 (1/distance), vocab_count -min-count 5, on the same
# corpus on this kind of machine: 2.07M tokens, 23,411 words, 2.7 s wall, 546 MB peak, 6.18M pairs
GLOVE = {"tokens": 2.07e6, "seconds": 2.7, "tokens_per_second": 0.8e6, "peak_mb": 546, "pairs": 6.18e6}


def _status_mb(field: str, pid: str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakMemory:
    """Peak resident memory of this process (VmHWM, exact) and, with workers, of it plus its children.

    Children are sampled every 50 ms, so a shorter spike of theirs can be missed. (ru_maxrss will not
    do: a spawned process inherits its parent's high-water mark across exec.)
    """

    def __init__(self, children: bool, every_s: float = 0.05) -> None:
        self.children, self.every_s = children, every_s
        self.base_mb = _status_mb("VmRSS")
        self.peak_mb = self.base_mb
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(self.every_s):
            total = _status_mb("VmRSS")
            for child in me.children():
                with contextlib.suppress(psutil.Error, OSError):
                    total += _status_mb("VmRSS", str(child.pid))
            self.peak_mb = max(self.peak_mb, total)

    def __enter__(self) -> PeakMemory:
        if self.children:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.children:
            self._stop.set()
            self._thread.join()
        self.peak_mb = max(self.peak_mb, _status_mb("VmHWM"))


def ingest_english_dumps(store_url: str) -> list[str]:
    """The English sample dumps as article datasets of the store (ingested once); their names."""
    from flows.ingest_wikipedia import ingest_wikipedia
    from storage import Store

    store = Store(store_url)
    names = []
    for dump in ENGLISH_DUMPS:
        name = "bench-" + dump.split(".")[0]
        dataset = store.dataset(f"wikipedia/{name}")
        if not dataset.is_complete():
            ingest_wikipedia(source=str(DATA / "wikipedia_xml" / dump), store=store_url, name=name)
        names.append(dataset.name)
    return names


def prepare(store_url: str) -> tuple[str, dict]:
    """Ingest the English dumps (once) and build corpus, vocabulary and token shards (once)."""
    from storage import Store
    from tasks import corpus as cp

    store = Store(store_url)
    names = ingest_english_dumps(store_url)
    started = time.perf_counter()
    corpus, vocabulary, tokens = cp.build_in_process(store, [*names, str(GLOSSES)], "bench-en", min_count=5)
    figures = {
        "documents": corpus.manifest().counts["documents"],
        "tokens": tokens.manifest().counts["tokens"],
        "vocabulary": vocabulary.manifest().counts["types"],
        "seconds": time.perf_counter() - started,
    }
    return tokens.name, figures


def replicate(store_url: str, tokens_name: str, copies: int) -> str:
    """The same token shards `copies` times over, as one token-shards dataset: a corpus `copies` times larger."""
    from storage import Manifest, Recipe, Store
    from storage.schemas import TOKEN_SHARDS, VOCABULARY

    store = Store(store_url)
    tokens = store.dataset(tokens_name)
    manifest = tokens.manifest()
    bigger = store.dataset(f"{tokens_name}-x{copies}")
    recipe = Recipe(manifest.kind, {tokens.name: manifest.fingerprint}, {"copies": copies}, "bench")
    if bigger.is_current(recipe):
        return bigger.name
    bigger.begin(recipe)
    files = []
    for copy in range(copies):
        for path in manifest.tables["tokens"]["files"]:
            relative = f"tokens/copy{copy}-{path.rsplit('/', 1)[-1]}"
            with tokens.fs.open(tokens.file(path), "rb") as f:
                bigger.write_bytes(relative, f.read())
            files.append(relative)
    bigger.write_table("vocabulary.parquet", tokens.read_table("vocabulary"))
    rows = manifest.tables["tokens"]["rows"] * copies
    counts = {k: v * copies for k, v in manifest.counts.items()}
    bigger.commit(
        Manifest.from_recipe(
            recipe,
            tables={
                "tokens": (TOKEN_SHARDS, files, rows),
                "vocabulary": (VOCABULARY, ["vocabulary.parquet"], manifest.tables["vocabulary"]["rows"]),
            },
            counts=counts,
            metrics={**manifest.metrics, "shard_tokens": manifest.metrics["shard_tokens"] * copies},
        )
    )
    return bigger.name


def _count(
    store_url: str, tokens_name: str, out: str, memory_mb: int, workers: int, tokens_per_task: int, queue
) -> None:
    """One co-occurrence run in a fresh process; reports its figures and peak memory."""
    from storage import Store
    from tasks import cooccurrence as co

    store = Store(store_url)
    tokens, dataset = store.dataset(tokens_name), store.dataset(out)
    options = co.CooccurrenceOptions(memory_mb=memory_mb, tokens_per_task=tokens_per_task)
    with PeakMemory(
        children=workers > 1
    ) as memory:  # its base: the interpreter with numpy, pyarrow and prefect imported
        started = time.perf_counter()
        summary = co.count_in_process(dataset, tokens, options, workers=workers)
        seconds = time.perf_counter() - started
    peak, baseline = memory.peak_mb, memory.base_mb
    table = dataset.read_table("cooccurrence")
    checksum = float(table["x"].to_numpy().astype("float64").sum())
    queue.put(
        {
            **summary["counts"],
            "seconds": seconds,
            "peak_mb": peak,
            "baseline_mb": baseline,
            "checksum": checksum,
        }
    )


def count_cooccurrence(
    store_url: str, tokens_name: str, memory_mb: int, workers: int, tokens_per_task: int, repeat: int
) -> dict:
    """The fastest of `repeat` runs, each in a fresh process into a fresh dataset; the largest peak memory."""
    from storage import Store

    context = multiprocessing.get_context("spawn")
    results = []
    for _ in range(repeat):
        queue = context.Queue()
        out = f"text/bench-en/cooccurrence-bench-{memory_mb}mb-{workers}w-{time.time_ns()}"
        process = context.Process(
            target=_count, args=(store_url, tokens_name, out, memory_mb, workers, tokens_per_task, queue)
        )
        process.start()
        results.append(queue.get())
        process.join()
        Store(store_url).fs.rm(Store(store_url).path(out), recursive=True)
    best = min(results, key=lambda r: r["seconds"])
    return {**best, "peak_mb": max(r["peak_mb"] for r in results)}


def lda(store_url: str, tokens_name: str, topics: int, passes: int) -> list[dict]:
    """Ours and gensim's LdaMulticore on the same bags, one worker each."""
    import numpy as np
    import torch

    from models.online_lda import OnlineLDA
    from storage import Store
    from tasks import topics as tp

    store = Store(store_url)
    tokens = store.dataset(tokens_name)
    options = tp.TopicOptions(topics=topics, passes=passes, stop_words="en", workers=1)
    words, column_of, _ = tp.lda_vocabulary(tokens, options)
    batches = list(tp.training_batches(tokens, column_of, options.batch_size))
    documents = sum(len(b[0]) - 1 for b in batches)
    bags = list(tp._GensimCorpus(tokens, column_of, documents))
    vocabulary_ids = words["vocabulary_id"].to_numpy()
    print(
        f"LDA: {documents:,} documents with a word, {words.num_rows:,} words, K={topics}, {passes} pass(es)"
    )

    results = []
    with tp.torch_threads(1):
        model = OnlineLDA(options.lda_config(), words.num_rows)
        started = time.perf_counter()
        model.fit(lambda: iter(batches), documents)
        seconds = time.perf_counter() - started
    top = np.argsort(-model.topic_word(), axis=1)[:, :10]
    coherence = tp.npmi_coherence(tokens, vocabulary_ids[top]).mean()
    results.append(
        {"engine": f"embedpipe torch ({model.device}, 1 thread)", "seconds": seconds, "npmi": coherence}
    )

    started = time.perf_counter()
    lam = tp.train_gensim(bags, words.num_rows, options)
    seconds = time.perf_counter() - started
    top = np.argsort(-lam / lam.sum(1, keepdims=True), axis=1)[:, :10]
    coherence = tp.npmi_coherence(tokens, vocabulary_ids[top]).mean()
    results.append({"engine": "gensim LdaMulticore (1 worker)", "seconds": seconds, "npmi": coherence})
    for r in results:
        r["documents_per_second"] = documents * passes / r["seconds"]
    del torch
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.text_assets", description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="where the bench's datasets go (default: a temporary folder)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="co-occurrence processes")
    parser.add_argument("--small-memory-mb", type=int, default=16, help="the out-of-core run's budget")
    parser.add_argument(
        "--tokens-per-task",
        type=int,
        default=250_000,
        help="co-occurrence counting unit (the flow's default: 1M)",
    )
    parser.add_argument("--copies", type=int, default=4, help="the larger corpus of the out-of-core run")
    parser.add_argument(
        "--repeat", type=int, default=3, help="co-occurrence runs per setting; the fastest is shown"
    )
    parser.add_argument("--skip-lda", action="store_true")
    parser.add_argument("--topics", type=int, default=50)
    parser.add_argument("--passes", type=int, default=1)
    args = parser.parse_args(argv)
    store_url = args.store or tempfile.mkdtemp(prefix="embedpipe-bench-text-")

    tokens_name, corpus = prepare(store_url)
    print(
        f"\ncorpus: {corpus['documents']:,} documents, {corpus['tokens']:,} tokens, vocabulary "
        f"{corpus['vocabulary']:,} at min count 5 (GloVe's run: 23,411); ready in {corpus['seconds']:.1f} s"
    )

    print("\n== co-occurrence: window 10, 1/distance, symmetric")
    header = (
        f"{'run':<34} {'seconds':>8} {'tokens/s':>10} {'peak MB':>8} {'(base)':>7} {'pairs':>11} {'runs':>5} "
        f"{'passes':>6}"
    )
    print(header)
    glove = GLOVE
    print(
        f"{'GloVe cooccur (C, 1 thread; given)':<34} {glove['seconds']:>8.2f} {glove['tokens_per_second']:>10,.0f} "
        f"{glove['peak_mb']:>8.0f} {'':>7} {glove['pairs']:>11,.0f} {'':>5} {'':>6}"
    )
    runs = []
    for workers in args.workers:
        runs.append(
            (
                f"embedpipe, {workers} process(es), 1024 MB",
                count_cooccurrence(store_url, tokens_name, 1024, workers, args.tokens_per_task, args.repeat),
            )
        )
    small = args.small_memory_mb
    runs.append(
        (
            f"embedpipe, 1 process, {small} MB",
            count_cooccurrence(store_url, tokens_name, small, 1, args.tokens_per_task, args.repeat),
        )
    )
    bigger = replicate(store_url, tokens_name, args.copies)
    larger = (
        f"embedpipe, 1 process, {small} MB, x{args.copies}",
        count_cooccurrence(store_url, bigger, small, 1, args.tokens_per_task, args.repeat),
    )
    for label, r in [*runs, larger]:
        rate = r["tokens"] / r["seconds"]
        print(
            f"{label:<34} {r['seconds']:>8.2f} {rate:>10,.0f} {r['peak_mb']:>8.0f} {r['baseline_mb']:>7.0f} "
            f"{r['pairs']:>11,} "
            f"{r['runs']:>5} {r['merge_passes']:>6}"
        )
    for label, r in runs:
        rate = r["tokens"] / r["seconds"]
        print(f"ratio ours/GloVe tokens/s, {label}: {rate / glove['tokens_per_second']:.2f}x")
    same = len({(r["pairs"], round(r["checksum"], 3)) for _, r in runs}) == 1
    print(f"every run gave the same rows (pairs and sum of x): {same}")
    print(
        f"x{args.copies}: the corpus {args.copies} times over; each pair's x is {args.copies} times as large: "
        f"{larger[1]['pairs'] == runs[0][1]['pairs'] and abs(larger[1]['checksum'] / runs[0][1]['checksum'] - args.copies) < 1e-6}"
    )
    print("peak MB: the run's process, plus its workers sampled every 50 ms; (base): before counting")

    if args.skip_lda:
        return 0
    print("\n== LDA")
    results = lda(store_url, tokens_name, args.topics, args.passes)
    print(f"{'engine':<40} {'seconds':>8} {'documents/s':>12} {'NPMI':>8}")
    for r in results:
        print(f"{r['engine']:<40} {r['seconds']:>8.2f} {r['documents_per_second']:>12,.0f} {r['npmi']:>8.4f}")
    ours, theirs = results
    print(
        f"ratio ours/gensim: throughput {ours['documents_per_second'] / theirs['documents_per_second']:.2f}x, "
        f"NPMI {ours['npmi']:.4f} vs {theirs['npmi']:.4f} ({ours['npmi'] - theirs['npmi']:+.4f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
