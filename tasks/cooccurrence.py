"""build-text-assets, co-occurrence: weighted counts of word pairs within a window, from token shards.

    text/NAME/cooccurrence   cooccurrence/part-PPPPP-SS.parquet  COOCCURRENCE: i, j, x; one hash partition per P
                             vocabulary.parquet                  the token shards' VOCABULARY

x(i, j) adds, for every time word j stands within `window` positions of word i in one sentence row of
the token shards, 1/distance (harmonic, GloVe's weighting) or 1 (uniform). Symmetric by default, the
left and the right context both; asymmetric counts the right context only (GloVe's -symmetric 0).
Rows never cross a sentence row, and out-of-vocabulary words were dropped before the window is laid.

How it works, and why it needs no more memory than it is given:
1. count (mapped over units of ~tokens_per_task tokens): for each offset d in 1..window, pair every
   token with the one d places later by slicing the flattened ids of a batch of sentences; a pair
   that would cross a sentence becomes a sentinel. The pair and d are packed in one int64 key,
   ((i * V + j) << bits) | d, so one in-place sort of the batch groups equal pairs and equal
   distances together; run lengths times the weight of d, summed per pair, give the batch's counts.
   Weights are integers, LCM(1..window) / d, so every sum is exact and the result is the same bit for
   bit whatever the order of the shards, the number of workers or the memory budget.
2. spill: the batch's pairs are grouped by a hash of the pair into `partitions` and written as one
   run file under _runs/ (the batch size follows from memory_mb, so a bigger corpus makes more runs,
   never a bigger batch).
3. merge (mapped over partitions): a partition's slices of every run are read, summed by pair and
   written as Parquet. A partition larger than memory_mb is merged in several passes, each taking
   the pairs of one sub-range of the hash, so memory stays bounded however large the corpus.

    embedpipe build-text-assets wikipedia/enwiki --store work/store --window 10 --memory-mb 512
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import task

from storage import Dataset, Manifest, Recipe, code_version
from storage.schemas import COOCCURRENCE, VOCABULARY
from tasks.common import STORE_CACHE, InputError, run_logger
from tasks.corpus import summary

KIND = "cooccurrence"  # the manifest kind
SENTINEL = np.iinfo(np.int64).max  # a pair that crosses a sentence: sorts last and is cut off
GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads the frequent low ids over partitions
# bytes per token and offset while counting: the int64 key, the sort, run boundaries and weights
COUNT_BYTES = 22
# bytes per pair while merging: key and weight of every run, the sorted union, positions, sums, output
MERGE_BYTES = 64


@dataclass(frozen=True)
class CooccurrenceOptions:
    """What is counted (window, weighting, symmetric) and how (partitions, memory, task size)."""

    window: int = 10  # positions on each side
    weighting: str = "harmonic"  # 1/distance, or "uniform"
    symmetric: bool = True  # False: right context only
    partitions: int = 16  # output files (and merge tasks); a pair's partition is a hash of (i, j)
    memory_mb: int = 1024  # per task: counting batches and merge passes are sized to stay below it
    tokens_per_task: int = 1_000_000  # counting work per mapped task

    def __post_init__(self) -> None:
        if self.window < 1:
            raise InputError(f"window must be >= 1, got {self.window}")
        if self.weighting not in ("harmonic", "uniform"):
            raise InputError(f"weighting must be harmonic or uniform, got {self.weighting!r}")
        if not 1 <= self.partitions <= 65_536:
            raise InputError(f"partitions must be between 1 and 65536, got {self.partitions}")
        if self.memory_mb < 1 or self.tokens_per_task < 1:
            raise InputError(
                f"memory_mb and tokens_per_task must be >= 1, got {self.memory_mb} and {self.tokens_per_task}"
            )

    @property
    def parameters(self) -> dict[str, Any]:
        # memory and task size change how the work is cut, never the result (integer sums): not in the recipe
        return {
            "window": self.window,
            "weighting": self.weighting,
            "symmetric": self.symmetric,
            "partitions": self.partitions,
        }

    @property
    def distance_bits(self) -> int:
        return self.window.bit_length() if self.weighting == "harmonic" else 0

    @property
    def scale(self) -> int:
        """Every weight times this is an integer; 1 when the weights are floats (harmonic, window > 22)."""
        if self.weighting == "uniform":
            return 1
        lcm = math.lcm(*range(1, self.window + 1))
        return lcm if lcm <= 2**32 else 1

    def weights(self) -> np.ndarray:
        """The weight of distance d at index d, times scale."""
        d = np.arange(self.window + 1)
        if self.weighting == "uniform":
            return np.ones(self.window + 1, np.int64)
        if self.scale == 1:
            # TODO: past window 22, LCM(1..window) overflows the integer path; float sums then differ
            # in their last bits with the order of shards, and results are no longer bit-exact
            return np.concatenate(([0.0], 1.0 / d[1:]))
        return np.concatenate(([0], self.scale // d[1:])).astype(np.int64)


# --- the counting kernel ------------------------------------------------------------------------


def count_pairs(ids: np.ndarray, offsets: np.ndarray, vocabulary_size: int, options: CooccurrenceOptions):
    """Weighted pair counts of a batch of sentences, as (sorted int64 keys i * V + j, scaled weights).

    ids: every token of the batch, flattened (int); offsets: sentence k is ids[offsets[k]:offsets[k+1]].
    Symmetric counts are keyed by (min, max): x(i, j) = x(j, i) is expanded when written.
    """
    n = len(ids)
    window, bits = min(options.window, max(n - 1, 0)), options.distance_bits
    if window == 0:
        return np.empty(0, np.int64), np.empty(0, options.weights().dtype)
    if vocabulary_size**2 << bits >= SENTINEL:
        raise InputError(
            f"vocabulary of {vocabulary_size:,} is too large for window {options.window}; lower max_vocab_size"
        )
    # how many tokens follow each position inside its own sentence: (k, k + d) is a pair when >= d
    after = np.repeat(offsets[1:], np.diff(offsets)) - np.arange(1, n + 1)
    ids = ids.astype(np.int64, copy=False)
    keys = np.empty(sum(n - d for d in range(1, window + 1)), np.int64)
    start = 0
    for d in range(1, window + 1):
        left, right, out = ids[: n - d], ids[d:], keys[start : start + n - d]
        if options.symmetric:
            np.minimum(left, right, out=out)
            out *= vocabulary_size
            out += np.maximum(left, right)
        else:
            np.multiply(left, vocabulary_size, out=out)
            out += right
        if bits:
            out <<= bits
            out |= d
        out[after[: n - d] < d] = SENTINEL
        start += n - d
    keys.sort()  # numpy's SIMD sort: ~20M keys in 0.3 s on one core
    keys = keys[: np.searchsorted(keys, SENTINEL)]
    if len(keys) == 0:
        return keys, np.empty(0, options.weights().dtype)

    # runs of equal (pair, distance): their length times the weight of the distance
    starts = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    starts = np.concatenate(([0], starts))
    runs = np.diff(np.append(starts, len(keys)))
    distinct = keys[starts]
    if not bits:
        return distinct, runs
    weighted = runs * options.weights()[distinct & ((1 << bits) - 1)]
    pairs = distinct >> bits
    firsts = np.concatenate(([0], np.flatnonzero(pairs[1:] != pairs[:-1]) + 1))
    return pairs[firsts], np.add.reduceat(weighted, firsts)


def merge_counts(keys: list[np.ndarray], weights: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Sum the weights of equal keys across several sorted runs.

    Integer weights are summed in int64, exactly: a pair would need 3.6e15 occurrences at distance 1
    (window 10, scale 2,520) to overflow.
    """
    if len(keys) == 1:
        return keys[0], weights[0]
    every, values = np.concatenate(keys), np.concatenate(weights)
    if len(every) == 0:
        return every, values
    order = np.argsort(every, kind="stable")  # timsort: finds the sorted runs and merges them
    every, values = every[order], values[order]
    firsts = np.concatenate(([0], np.flatnonzero(every[1:] != every[:-1]) + 1))
    return every[firsts], np.add.reduceat(values, firsts)


def pair_hash(keys: np.ndarray) -> np.ndarray:
    return (keys.astype(np.uint64) * GOLDEN) >> np.uint64(32)


def expand(
    keys: np.ndarray, sums: np.ndarray, vocabulary_size: int, options: CooccurrenceOptions
) -> pa.Table:
    """Rows i, j, x of merged keys; symmetric keys (min, max) give both (i, j) and (j, i)."""
    i = (keys // vocabulary_size).astype(np.int32)
    j = (keys % vocabulary_size).astype(np.int32)
    x = sums.astype(np.float64)
    if options.symmetric:
        diagonal = i == j
        x[diagonal] *= 2  # (a, a) was counted once per occurrence; its left and right context both hold it
        off = ~diagonal
        i, j, x = np.concatenate((i, j[off])), np.concatenate((j, i[off])), np.concatenate((x, x[off]))
    x = (x / options.scale).astype(np.float32)
    return pa.table({"i": i, "j": j, "x": x}, schema=COOCCURRENCE)


# --- tasks --------------------------------------------------------------------------------------


@task(name="plan-cooccurrence", cache_policy=STORE_CACHE, persist_result=True)
def plan_cooccurrence(
    dataset: Dataset, recipe: Recipe, tokens: Dataset, options: CooccurrenceOptions
) -> list[dict]:
    """Cut the token shards into units of about tokens_per_task tokens (whole row groups); prepare the folder."""
    manifest = tokens.manifest()
    units = []
    for path, shard_tokens in zip(
        manifest.tables["tokens"]["files"], manifest.metrics["shard_tokens"], strict=True
    ):
        metadata = pq.ParquetFile(tokens.file(path), filesystem=tokens.fs).metadata
        rows = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
        pieces = max(1, min(len(rows), round(shard_tokens / options.tokens_per_task)))
        # row groups cut evenly by rows: within one shard, tokens per row are about even
        bounds = np.searchsorted(np.cumsum(rows), np.linspace(0, sum(rows), pieces + 1)[1:-1], side="right")
        edges = [0, *sorted(set(bounds.tolist()) - {0, len(rows)}), len(rows)]
        for first, last in zip(edges, edges[1:], strict=False):
            units.append({"unit": len(units), "file": path, "row_groups": [first, last]})
    if not dataset.is_current(recipe):  # a finished dataset keeps its parts: every task finds its own done
        dataset.begin(recipe)
    run_logger().info(
        "%s: %d shard(s) in %d counting unit(s), %d partition(s)",
        dataset.name,
        len(manifest.tables["tokens"]["files"]),
        len(units),
        options.partitions,
    )
    return units


@task(name="count-cooccurrence", cache_policy=STORE_CACHE, persist_result=True)
def count_unit(
    dataset: Dataset,
    recipe: Recipe,
    part: int,
    tokens: Dataset,
    unit: dict,
    units: int,
    options: CooccurrenceOptions,
) -> dict:
    """Count the pairs of one unit of token shards, batch by batch, each batch spilled as one run."""
    name = f"unit-{part:05d}"
    if (done := dataset.finished_part(name)) is not None:
        return done
    started = time.perf_counter()
    vocabulary_size = tokens.manifest().tables["vocabulary"]["rows"]
    parquet = pq.ParquetFile(tokens.file(unit["file"]), filesystem=tokens.fs)
    column = parquet.read_row_groups(range(*unit["row_groups"]), columns=["tokens"])[
        "tokens"
    ].combine_chunks()
    ids = column.flatten().to_numpy()
    offsets = column.offsets.to_numpy().astype(np.int64)
    offsets -= offsets[0]
    batch_tokens = max(1_000, options.memory_mb * 2**20 // (COUNT_BYTES * options.window))
    cuts = np.searchsorted(offsets, np.arange(batch_tokens, offsets[-1], batch_tokens))
    bounds = [0, *sorted(set(cuts.tolist()) - {0, len(offsets) - 1}), len(offsets) - 1]
    runs, counts = [], Counter(tokens=len(ids), sentences=len(offsets) - 1)
    for batch, (first, last) in enumerate(zip(bounds, bounds[1:], strict=False)):
        keys, sums = count_pairs(
            ids[offsets[first] : offsets[last]],
            offsets[first : last + 1] - offsets[first],
            vocabulary_size,
            options,
        )
        counts["batch_pairs"] += len(keys)
        # group by partition: a stable radix sort of 16-bit partition numbers keeps each group sorted
        partition = (pair_hash(keys) % np.uint64(options.partitions)).astype(np.uint16)
        order = np.argsort(partition, kind="stable")
        bounds_p = np.concatenate(([0], np.cumsum(np.bincount(partition, minlength=options.partitions))))
        relative = f"_runs/{name}-{batch:03d}.bin"
        with dataset.open_atomic(relative) as f:
            f.write(keys[order].tobytes())
            f.write(sums[order].tobytes())
        runs.append(
            {"file": relative, "pairs": len(keys), "offsets": bounds_p.tolist(), "dtype": sums.dtype.str}
        )
    seconds = time.perf_counter() - started
    counts["runs"] = len(runs)
    counts["spilled_bytes"] = sum(16 * r["pairs"] for r in runs)
    run_logger().info(
        "count %s (%d/%d): %s tokens in %d batch(es), %s distinct pairs, %.2f s, %s tokens/s",
        name,
        part + 1,
        units,
        f"{len(ids):,}",
        len(runs),
        f"{counts['batch_pairs']:,}",
        seconds,
        f"{len(ids) / max(seconds, 1e-9):,.0f}",
    )
    result = {"runs": runs, "counts": dict(counts), "seconds": round(seconds, 3)}
    dataset.part_done(name, result)
    return result


def _read_slice(dataset: Dataset, run: dict, partition: int) -> tuple[np.ndarray, np.ndarray]:
    first, last = run["offsets"][partition], run["offsets"][partition + 1]
    with dataset.fs.open(dataset.file(run["file"]), "rb") as f:
        f.seek(8 * first)
        keys = np.frombuffer(f.read(8 * (last - first)), np.int64)
        f.seek(8 * (run["pairs"] + first))
        weights = np.frombuffer(f.read(8 * (last - first)), np.dtype(run["dtype"]))
    return keys, weights


@task(name="merge-cooccurrence", cache_policy=STORE_CACHE, persist_result=True)
def merge_partition(
    dataset: Dataset,
    recipe: Recipe,
    part: int,
    runs: list[dict],
    vocabulary_size: int,
    options: CooccurrenceOptions,
) -> dict:
    """Sum one partition of every run into Parquet, in as many passes as memory_mb requires."""
    name = f"partition-{part:05d}"
    if (done := dataset.finished_part(name)) is not None:
        return done
    started = time.perf_counter()
    size = sum(r["offsets"][part + 1] - r["offsets"][part] for r in runs)
    passes = max(1, math.ceil(size * MERGE_BYTES / (options.memory_mb * 2**20)))
    files, rows, distinct = [], 0, 0
    for sub in range(passes):
        keys, weights = [], []
        for run in runs:
            k, w = _read_slice(dataset, run, part)
            if passes > 1:
                mine = (pair_hash(k) // np.uint64(options.partitions)) % np.uint64(passes) == sub
                k, w = k[mine], w[mine]
            keys.append(k)
            weights.append(w)
        if not keys:  # a corpus without a single pair
            keys, weights = [np.empty(0, np.int64)], [options.weights()[:0]]
        merged, sums = merge_counts(keys, weights)
        table = expand(merged, sums, vocabulary_size, options)
        relative = f"cooccurrence/part-{part:05d}-{sub:02d}.parquet"
        dataset.write_table(relative, table)
        files.append(relative)
        rows += table.num_rows
        distinct += len(merged)
    seconds = time.perf_counter() - started
    run_logger().info(
        "merge %s: %s run pairs in %d pass(es), %s rows, %.2f s",
        name,
        f"{size:,}",
        passes,
        f"{rows:,}",
        seconds,
    )
    result = {
        "files": files,
        "rows": rows,
        "run_pairs": size,
        "distinct": distinct,
        "passes": passes,
        "seconds": round(seconds, 3),
    }
    dataset.part_done(name, result)
    return result


@task(name="commit-cooccurrence", cache_policy=STORE_CACHE, persist_result=True)
def commit_cooccurrence(
    dataset: Dataset, recipe: Recipe, tokens: Dataset, units: int, options: CooccurrenceOptions
) -> dict:
    """Check every unit and partition finished, copy the vocabulary beside them, write the manifest, drop the runs."""
    if dataset.is_current(recipe):
        return summary(dataset)
    counted = [dataset.finished_part(f"unit-{k:05d}") for k in range(units)]
    merged = [dataset.finished_part(f"partition-{p:05d}") for p in range(options.partitions)]
    if any(info is None for info in counted + merged):
        raise RuntimeError(f"{dataset.name}: unfinished units or partitions; run again")
    counts: Counter[str] = Counter()
    for info in counted:
        counts.update(info["counts"])
    counts["pairs"] = sum(m["rows"] for m in merged)
    counts["merge_passes"] = sum(m["passes"] for m in merged)
    vocabulary = tokens.read_table("vocabulary")
    dataset.write_table("vocabulary.parquet", vocabulary)
    count_seconds, merge_seconds = sum(c["seconds"] for c in counted), sum(m["seconds"] for m in merged)
    metrics = {
        "count_seconds": round(count_seconds, 3),
        "merge_seconds": round(merge_seconds, 3),
        "tokens_per_second_per_worker": round(counts["tokens"] / max(count_seconds + merge_seconds, 1e-9), 1),
        "scale": options.scale,
        "memory_mb": options.memory_mb,
        "tokens_per_task": options.tokens_per_task,
    }
    files = [f for m in merged for f in m["files"]]
    manifest = Manifest.from_recipe(
        recipe,
        tables={
            "cooccurrence": (COOCCURRENCE, files, counts["pairs"]),
            "vocabulary": (VOCABULARY, ["vocabulary.parquet"], vocabulary.num_rows),
        },
        counts=dict(counts),
        metrics=metrics,
    )
    dataset.commit(manifest)
    for info in counted:  # the runs are only needed until the manifest is written
        for run in info["runs"]:
            with contextlib.suppress(FileNotFoundError):
                dataset.fs.rm(dataset.file(run["file"]))
    run_logger().info(
        "%s: %s non-zero pairs from %s tokens (%s runs, %d merge passes)",
        dataset.name,
        f"{counts['pairs']:,}",
        f"{counts['tokens']:,}",
        counts["runs"],
        counts["merge_passes"],
    )
    return summary(dataset)


# --- the recipe, and the step without Prefect ---------------------------------------------------


def cooccurrence_recipe(tokens: Dataset, options: CooccurrenceOptions) -> Recipe:
    return Recipe(
        KIND,
        {tokens.name: tokens.manifest().fingerprint},
        options.parameters,
        code_version("tasks.cooccurrence"),
    )


def count_in_process(
    dataset: Dataset, tokens: Dataset, options: CooccurrenceOptions, workers: int = 1
) -> dict[str, Any]:
    """The co-occurrence step without Prefect (notebooks, benchmarks, tests); `workers` processes when > 1."""
    recipe = cooccurrence_recipe(tokens, options)
    if dataset.is_current(recipe):
        return summary(dataset)
    units = plan_cooccurrence.fn(dataset, recipe, tokens, options)
    size = tokens.manifest().tables["vocabulary"]["rows"]
    with contextlib.ExitStack() as stack:
        each = map
        if workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # fork where there is one: a spawned worker spends seconds importing before it counts
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            each = stack.enter_context(ProcessPoolExecutor(workers, mp_context=context)).map

        counted = list(
            each(_count, [(dataset, recipe, u["unit"], tokens, u, len(units), options) for u in units])
        )
        runs = [run for info in counted for run in info["runs"]]
        list(each(_merge, [(dataset, recipe, p, runs, size, options) for p in range(options.partitions)]))
    return commit_cooccurrence.fn(dataset, recipe, tokens, len(units), options)


def _count(arguments: tuple) -> dict:  # module functions: worker processes find them by name
    return count_unit.fn(*arguments)


def _merge(arguments: tuple) -> dict:
    return merge_partition.fn(*arguments)


# --- reading ------------------------------------------------------------------------------------


def cooccurrence_among(dataset: Dataset, words: list[str]) -> list[dict[str, Any]]:
    """The table of x(i, j) among a few words (rows i, columns j); words outside the vocabulary are left out."""
    vocabulary = dataset.read_table("vocabulary", columns=["id", "token"])
    index = dict(zip(vocabulary["token"].to_pylist(), vocabulary["id"].to_pylist(), strict=True))
    found = [w for w in words if w in index]
    ids = pa.array([index[w] for w in found], pa.int32())
    cells: dict[tuple[int, int], float] = {}
    for path in dataset.table_files("cooccurrence"):
        table = pq.read_table(path, filesystem=dataset.fs)
        table = table.filter(pc.and_(pc.is_in(table["i"], ids), pc.is_in(table["j"], ids)))
        for i, j, x in zip(*(table[c].to_pylist() for c in "ijx"), strict=True):
            cells[i, j] = x
    return [{"word": w, **{v: round(cells.get((index[w], index[v]), 0.0), 2) for v in found}} for w in found]
