"""Benchmark: word2vec (skip-gram, CBOW), fastText and GloVe against gensim on the same corpus, in one run.

    python -m bench.static_embeddings [--epochs 5] [--dim 100] [--window 5] [--negative 5] [--min-count 5]
                                      [--threads 1] [--models skipgram cbow fasttext glove]
                                      [--bucket 2000000] [--store DIR]

The corpus is the reference one of the figures below: the English sample dumps of ../shared/data (ingested by
ingest-wikipedia) plus the 117,659 WordNet glosses, through build-text-assets' corpus, vocabulary and
token shards (min count 5). gensim trains on the very same sentences (the token shards' rows, as
words), with the same dim, window, negatives, epochs, min count and subsampling, `workers` equal to
our --threads. Both sets of vectors are scored by tasks/evaluation.py, whose numbers equal gensim's own
evaluate_word_analogies/evaluate_word_pairs (tests/tasks/test_evaluation.py).

words/s is corpus words times epochs over the training loop's seconds (vocabulary building, the
matrices' initialisation and the exports excluded for both).
GloVe has no anchor in Python: Stanford's C tool (window 10, 15 iterations, 2 threads) on this corpus on
this kind of machine is written below as measured once (its build is not part of this repository).

Measured 2026-12-04, defaults (1,896,794 words, 5 epochs, dim 100, window 5, negative 5, min count 5;
GloVe window 10, 15 iterations, x_max 10), numba backend, on an x86_64 VM with 2 cores (AMD EPYC)
shared with other work, so words/s move by up to +-30% from run to run (a neighbour's memory traffic
slows these memory-bound loops); the scores repeat exactly on one thread (fixed seeds):

    1 thread / 1 worker
    model     impl                    seconds           rate  analogy answered  ws353 simlex     rw
    skipgram  ours numba                 19.9 476,270 words/s    0.079    8,921  0.423  0.235  0.392
    skipgram  gensim                     31.8 298,207 words/s    0.072    8,921  0.432  0.231  0.391
    cbow      ours numba                  6.5 1,454,374 words/s   0.040    8,921  0.347  0.130  0.334
    cbow      gensim                     14.1 671,024 words/s    0.042    8,921  0.364  0.137  0.338
    fasttext  ours numba                 51.9 182,831 words/s    0.508    8,921  0.421  0.177  0.324
    fasttext  gensim                     72.8 130,219 words/s    0.521    8,921  0.425  0.175  0.329
    glove     ours numba                 47.6 1,849,836 pairs/s  0.030    8,921  0.390  0.092  0.309
    glove     Stanford C (recorded)     110.0              -    0.034        -  0.390      -      -

    2 threads / 2 workers
    skipgram  ours numba                 12.6 755,394 words/s    0.079    8,921  0.435  0.233  0.394
    skipgram  gensim                     18.8 503,219 words/s    0.074    8,921  0.434  0.233  0.392
    cbow      ours numba                  3.8 2,514,975 words/s   0.042    8,921  0.352  0.135  0.338
    cbow      gensim                      5.5 1,735,191 words/s   0.042    8,921  0.363  0.140  0.323
    fasttext  ours numba                 30.9 307,283 words/s    0.508    8,921  0.432  0.177  0.326
    fasttext  gensim                     35.1 269,951 words/s    0.513    8,921  0.447  0.176  0.336
    glove     ours numba                 26.2 3,359,398 pairs/s  0.030    8,921  0.387  0.098  0.305

Stanford's run is matched at x_max 10 (its demo.sh value); at the tool's default of 100, GloVe here
scores 0.015 / 0.217 / 0.020 / 0.209 with either backend. The torch backend (the batched step, for
GPUs) on this CPU, one thread (`--backends torch`): skip-gram 86,908 words/s, 0.069 / 0.472 /
0.219 / 0.400; CBOW 392,613 words/s, 0.039 / 0.366 / 0.132 / 0.327; fastText 90,530 words/s,
0.477 / 0.478 / 0.160 / 0.357; GloVe (x_max 100) 579,720 pairs/s.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import flows  # noqa: F401  (Prefect defaults before Prefect is imported)
from bench.text_assets import GLOSSES, ingest_english_dumps

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
QUESTIONS = DATA / "word_eval" / "gensim" / "questions-words.txt"
PAIRS = {
    "ws353": DATA / "word_eval" / "gensim" / "wordsim353.tsv",
    "simlex": DATA / "word_eval" / "gensim" / "simlex999.txt",
    "rw": DATA / "word_eval" / "faruqui_eval-word-vectors" / "EN-RW-STANFORD.txt",
}
# Stanford's GloVe C tools on the corpus above, window 10, 15 iterations, 2 threads (the reference figure)
GLOVE_C_REFERENCE = {"seconds": 110.0, "analogy": 0.034, "ws353": 0.39}


def prepare(store_url: str) -> tuple[str, str, list[list[str]]]:
    """Token shards and co-occurrence (window 10) of the corpus, and its sentences as words for gensim."""
    import pyarrow.parquet as pq

    from storage import Store
    from tasks import cooccurrence as co
    from tasks import corpus as cp

    store = Store(store_url)
    names = ingest_english_dumps(store_url)
    _, _, tokens = cp.build_in_process(store, [*names, str(GLOSSES)], "bench-en", min_count=5)
    cooccurrence = store.dataset("text/bench-en/cooccurrence")
    co.count_in_process(cooccurrence, tokens, co.CooccurrenceOptions(window=10))
    words = tokens.read_table("vocabulary").column("token").to_pylist()
    sentences = []
    for path in tokens.table_files("tokens"):
        for row in pq.read_table(path, columns=["tokens"], filesystem=tokens.fs).column("tokens").to_pylist():
            if row:
                sentences.append([words[i] for i in row])
    return tokens.name, cooccurrence.name, sentences


def scores(embedding) -> dict[str, float]:
    from tasks import evaluation as ev

    sections, _ = ev.read_analogies(QUESTIONS)
    total = ev.evaluate_analogies(embedding, sections)[-1]
    out = {"analogy": total["accuracy_add"], "answered": total["answered"]}
    for name, path in PAIRS.items():
        result = ev.evaluate_pairs(embedding, ev.read_pairs(path)[0])
        out[name] = result["spearman_all"] if name == "rw" else result["spearman"]
    return out


def ours(store_url: str, model: str, overrides: dict[str, str], threads: int, assets: dict[str, str]) -> dict:
    from models import registry
    from models.base import RunOptions, TrainContext
    from storage import Store

    store = Store(store_url)
    spec = registry.get(model)
    run = store.dataset(f"runs/bench-{model}-{overrides.get('mode', '')}-{time.time_ns()}")
    # no checkpoints, as gensim writes none: at each epoch end one of fastText's 2M x 100 n-gram rows
    # (800 MB) took about 4 s to write here, a third of an epoch of this corpus
    options = RunOptions(
        device="auto", threads=threads, log_every_s=30.0, checkpoint_every_s=1e9, checkpoint_epochs=False
    )
    context = TrainContext.create(run, options)
    config = spec.config.from_overrides(overrides).resolved(context.device)
    started = time.perf_counter()
    metrics = spec.train(
        config, {need.name: store.dataset(assets[need.name]) for need in spec.needs}, context
    )
    wall = time.perf_counter() - started
    # the training loop's seconds, as gensim's train() is timed: setting up the matrices and
    # writing the exports (fastText's n-gram rows are 800 MB at 2M buckets) are left out of both
    return {"seconds": metrics["seconds"], "wall": wall, "metrics": metrics, **scores(spec.load(run))}


def anchor(kind: str, sentences: list[list[str]], args: argparse.Namespace) -> dict:
    from gensim.models import FastText, Word2Vec

    from models.vectors import WordEmbedding

    settings = dict(
        vector_size=args.dim,
        window=args.window,
        negative=args.negative,
        epochs=args.epochs,
        min_count=args.min_count,
        sample=1e-3,
        workers=args.threads,
        seed=1,
    )
    if kind == "fasttext":
        model = FastText(sg=1, bucket=args.bucket, min_n=3, max_n=6, **settings)
    else:
        model = Word2Vec(sg=int(kind == "skipgram"), **settings)
    model.build_vocab(sentences)
    started = time.perf_counter()
    model.train(sentences, total_examples=model.corpus_count, epochs=args.epochs)
    seconds = time.perf_counter() - started
    embedding = WordEmbedding(model.wv.index_to_key, model.wv.vectors)
    if kind == "fasttext":
        # gensim builds unseen words from n-grams too: score Rare Words with its own vectors for them
        from tasks import evaluation as ev

        result = {"seconds": seconds, **scores(embedding)}
        import numpy as np
        from scipy import stats

        pairs = ev.read_pairs(PAIRS["rw"])[0]
        sims = [
            float(np.dot(model.wv.get_vector(a, norm=True), model.wv.get_vector(b, norm=True)))
            for a, b, _ in pairs
        ]
        result["rw"] = float(stats.spearmanr([s for _, _, s in pairs], sims)[0])
        return result
    return {"seconds": seconds, **scores(embedding)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.static_embeddings", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--negative", type=int, default=5)
    parser.add_argument("--min-count", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="our threads and gensim's workers")
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["numba"],
        choices=["numba", "torch"],
        help="our backends to run (torch: the batched one, for GPUs)",
    )
    parser.add_argument("--bucket", type=int, default=2_000_000, help="fastText n-gram buckets, both")
    parser.add_argument("--glove-epochs", type=int, default=15)
    parser.add_argument(
        "--glove-x-max",
        type=float,
        default=10.0,
        help="as the reference run (the tool's demo.sh); 100 is its default",
    )
    parser.add_argument("--models", nargs="+", default=["skipgram", "cbow", "fasttext", "glove"])
    parser.add_argument("--store", help="store folder (default: a temporary one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("gensim", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as scratch:
        store_url = args.store or str(Path(scratch) / "store")
        started = time.perf_counter()
        tokens, cooccurrence, sentences = prepare(store_url)
        corpus_words = sum(len(s) for s in sentences)
        print(
            f"corpus: {len(sentences):,} sentences, {corpus_words:,} words ({time.perf_counter() - started:.0f} s)"
        )
        assets = {"tokens": tokens, "cooccurrence": cooccurrence}
        shared = {
            "dim": str(args.dim),
            "window": str(args.window),
            "negative": str(args.negative),
            "epochs": str(args.epochs),
            "min_count": str(args.min_count),
        }
        rows = []
        for kind in args.models:
            if kind == "glove":
                overrides = {
                    "dim": str(args.dim),
                    "epochs": str(args.glove_epochs),
                    "min_count": str(args.min_count),
                    "x_max": str(args.glove_x_max),
                }
                for backend in args.backends:
                    mine = ours(store_url, "glove", overrides | {"backend": backend}, args.threads, assets)
                    rows.append(("glove", f"ours {backend}", mine, mine["metrics"]["pairs_per_s"], "pairs/s"))
                reference = {**GLOVE_C_REFERENCE, "answered": None, "simlex": None, "rw": None}
                rows.append(("glove", "Stanford C (recorded)", reference, None, ""))
                continue
            model, extra = (
                ("fasttext", {"bucket": str(args.bucket)})
                if kind == "fasttext"
                else ("word2vec", {"mode": kind})
            )
            results = [
                (
                    f"ours {backend}",
                    ours(store_url, model, shared | extra | {"backend": backend}, args.threads, assets),
                )
                for backend in args.backends
            ]
            results.append(("gensim", anchor(kind, sentences, args)))
            for who, result in results:
                rows.append((kind, who, result, corpus_words * args.epochs / result["seconds"], "words/s"))
            print(format_rows(rows[-len(results) :]), flush=True)

    print(
        f"\n{corpus_words:,} words, {args.epochs} epochs, dim {args.dim}, window {args.window}, "
        f"negative {args.negative}, min count {args.min_count}, {args.threads} thread(s)/worker(s) each"
    )
    print(format_rows(rows))
    print("\nratio ours/anchor (words/s, analogy, ws353, simlex, rw):")
    anchors = {kind: (result, rate) for kind, who, result, rate, _ in rows if not who.startswith("ours")}
    for kind, who, mine, rate, _ in rows:
        if who.startswith("ours") and kind in anchors:
            theirs, rate2 = anchors[kind]
            ratios = [_ratio(rate, rate2)] + [
                _ratio(mine.get(key), theirs.get(key)) for key in ("analogy", "ws353", "simlex", "rw")
            ]
            print(f"  {kind:9} {who:12} " + "  ".join(ratios))
    return 0


def _ratio(a, b) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def format_rows(rows) -> str:
    lines = [
        f"{'model':9} {'impl':22} {'seconds':>8} {'rate':>14} {'analogy':>8} {'answered':>8}"
        f" {'ws353':>6} {'simlex':>6} {'rw':>6}"
    ]
    for kind, who, result, rate, unit in rows:

        def cell(key, fmt="{:.3f}", result=result):
            value = result.get(key)
            return fmt.format(value) if value is not None else "-"

        rate_text = f"{rate:,.0f} {unit}" if rate else "-"
        lines.append(
            f"{kind:9} {who:22} {result['seconds']:8.1f} {rate_text:>14} {cell('analogy'):>8} "
            f"{cell('answered', '{:,}'):>8} {cell('ws353'):>6} {cell('simlex'):>6} {cell('rw'):>6}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
