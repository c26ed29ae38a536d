"""From fetched fragments to WebDataset shards: collection-wide deduplication, packing, the manifest.

fragments (one per input partition, any order of completion) -> shards/shard-NNNNN.tar of exactly
``samples_per_shard`` samples (the last one fewer), status/ (one row per input row), manifest.json.

Fragments are planned strictly in input order, whatever order they finish in: the first row with
a given content hash is written and every later one is a duplicate of it, and the written rows are
cut into shards in row order. The plan therefore depends on the fetched results alone, so a run
that was killed and started again makes the same shards from the same fragments: finished shards are
kept, the others are packed, and no sample is lost or written twice. Shards are packed as soon as
the partitions they draw from are planned, while later partitions are still being fetched.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from storage import Dataset, Manifest, Recipe
from storage.parquet import RollingParquetWriter
from storage.schemas import IMAGE_SHARDS, IMAGE_STATUS
from storage.webdataset import write_shard
from tasks.common import Progress, run_logger
from tasks.images import FRAGMENT_DIR, FRAGMENT_META, fragment_file
from tasks.images_input import INPUT_DIR

KIND = "image-shards"
SHARD_DIR = "shards"
KEPT = ("written", "duplicate")


def shard_file(shard: int) -> str:
    return f"{SHARD_DIR}/shard-{shard:05d}.tar"


def key_width(rows: int) -> int:
    """Keys are the input row zero-padded: 9 digits, more past a billion rows."""
    return max(9, len(str(max(rows - 1, 0))))


@dataclass
class ShardPlan:
    """The rows one shard holds, grouped by the fragment they are in, in key order."""

    shard: int
    rows: dict[int, list[int]] = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return sum(len(r) for r in self.rows.values())


class ShardPlanner:
    """Walks fragments in input order, deciding each row's final outcome and cutting shards.

    Writes the status table as it goes. Feed every partition, in order, to ``add``; call ``finish``
    once after the last.
    """

    def __init__(self, dataset: Dataset, *, rows: int, samples_per_shard: int) -> None:
        self.dataset = dataset
        self.samples_per_shard = samples_per_shard
        self.width = key_width(rows)
        self.rows = rows
        # TODO: one entry per distinct image in this process (~150 bytes each): past ~100M images, plan
        # by hash prefix (one planner per prefix, each over every fragment) instead
        self.first_by_hash: dict[str, int] = {}
        self.referenced = self._referenced_rows(dataset)
        self.final: dict[int, tuple[str, str | None, str | None]] = {}  # repeated rows: outcome, key, detail
        self.pending: list[tuple[int, int]] = []
        self.written = 0
        self.counts: Counter[str] = Counter()
        self.next_shard = 0
        self.status = RollingParquetWriter(
            dataset, "status/part", IMAGE_STATUS, max_rows=1_000_000, batch_rows=5_000
        )

    @staticmethod
    def _referenced_rows(dataset: Dataset) -> set[int]:
        """Rows whose URL comes again later: their outcome is kept for the repeats."""
        found: set[int] = set()
        for path in dataset.files(f"{INPUT_DIR}/part-*.parquet"):
            column = pq.read_table(path, columns=["repeat_of"], filesystem=dataset.fs).column("repeat_of")
            found.update(v for v in column.drop_null().unique().to_pylist())
        return found

    def key(self, row: int) -> str:
        return f"{row:0{self.width}d}"

    def add(self, partition: int, meta: pa.Table) -> list[ShardPlan]:
        """Decide the rows of one fragment; returns the shards that became complete."""
        for record in sorted(meta.to_pylist(), key=lambda r: r["row"]):
            row, outcome = record["row"], record["outcome"]
            key = shard = duplicate_of = None
            detail = record["detail"]
            if outcome == "url_repeat":
                first_outcome, first_key, first_detail = self.final[record["repeat_of"]]
                if first_outcome in KEPT:
                    outcome, duplicate_of = "duplicate", first_key
                    detail = f"same URL as row {record['repeat_of']}"
                else:
                    outcome, detail = (
                        first_outcome,
                        f"same URL as row {record['repeat_of']}: {first_detail or ''}",
                    )
            elif outcome == "ok":
                kept = self.first_by_hash.get(record["sha256"])
                if kept is not None:
                    outcome, duplicate_of, detail = (
                        "duplicate",
                        self.key(kept),
                        "same bytes as an earlier image",
                    )
                else:
                    self.first_by_hash[record["sha256"]] = row
                    outcome, key, shard = "written", self.key(row), self.written // self.samples_per_shard
                    self.written += 1
                    self.pending.append((partition, row))
            if row in self.referenced:
                self.final[row] = (outcome, key or duplicate_of, detail)
            self.counts[outcome] += 1
            status = {name: record[name] for name in IMAGE_STATUS.names if name in record}
            status.update(outcome=outcome, detail=detail, key=key, shard=shard, duplicate_of=duplicate_of)
            self.status.write(status, size_hint=len(record["url"] or "") + len(record["caption"] or "") + 200)
        plans = []
        while len(self.pending) >= self.samples_per_shard:
            plans.append(self._cut(self.samples_per_shard))
        return plans

    def _cut(self, samples: int) -> ShardPlan:
        plan = ShardPlan(self.next_shard)
        for partition, row in self.pending[:samples]:
            plan.rows.setdefault(partition, []).append(row)
        self.pending = self.pending[samples:]
        self.next_shard += 1
        return plan

    def finish(self) -> list[ShardPlan]:
        """The last, partial shard (if any rows are left); closes the status table."""
        self.status.close()
        return [self._cut(len(self.pending))] if self.pending else []


def read_fragment_meta(dataset: Dataset, partition: int) -> pa.Table:
    return pq.read_table(dataset.file(fragment_file(partition)), columns=FRAGMENT_META, filesystem=dataset.fs)


def _sample(record: dict[str, Any], key: str) -> dict[str, Any]:
    meta = {
        "key": key,
        "url": record["url"],
        "caption": record["caption"],
        "row": record["row"],
        "source_row": record["source_row"],
        "sha256": record["sha256"],
        "phash": record["phash"],
        "original_width": record["original_width"],
        "original_height": record["original_height"],
        "width": record["width"],
        "height": record["height"],
    }
    if record["page_id"] is not None:
        meta["page_id"] = record["page_id"]
    return {"__key__": key, "jpg": record["image"], "txt": record["caption"] or "", "json": meta}


@task(name="pack-shard", cache_policy=NO_CACHE)
def pack_shard(dataset: Dataset, plan: ShardPlan, width: int) -> dict[str, Any]:
    """Copy one shard's samples out of their fragments into a tar, renamed into place when complete."""
    part = f"shard-{plan.shard:05d}"
    done = dataset.finished_part(part)
    if done is not None:
        return done
    records: list[dict[str, Any]] = []
    for partition, rows in plan.rows.items():
        table = pq.read_table(
            dataset.file(fragment_file(partition)), filesystem=dataset.fs, filters=[("row", "in", rows)]
        )
        records.extend(table.to_pylist())
    records.sort(key=lambda r: r["row"])
    if len(records) != plan.samples:
        raise RuntimeError(
            f"{dataset.name}: shard {plan.shard} found {len(records)} of its {plan.samples} samples"
        )
    relative = shard_file(plan.shard)
    info = write_shard(dataset, relative, (_sample(r, f"{r['row']:0{width}d}") for r in records))
    info.update(shard=plan.shard, file=relative)
    dataset.part_done(part, info)
    return info


def pack_as_fetched(
    dataset: Dataset, fetches: list, planner: ShardPlanner, total_rows: int
) -> list[dict[str, Any]]:
    """Plan fragments in input order as their fetch tasks finish and submit each shard once complete.

    Every fetch is waited for even when one fails, so a re-run resumes from all that finished.
    Returns the fetch results in partition order and the pack futures.
    """
    from prefect.futures import as_completed

    logger = run_logger()
    progress = Progress(f"{dataset.name}", total=total_rows, unit="images")
    index = {future.task_run_id: number for number, future in enumerate(fetches)}
    finished: dict[int, dict[str, Any]] = {}
    packs = []
    next_partition = 0
    errors: list[BaseException] = []
    for future in as_completed(fetches):
        number = index[future.task_run_id]
        try:
            finished[number] = future.result()
        except BaseException as error:  # let the other partitions finish, so a re-run resumes from them
            errors.append(error)
            logger.error("partition %d failed: %s", number, error)
            continue
        progress.advance(finished[number]["rows"])
        # a failed partition stops the planning at its place; the shards before it are still packed
        while next_partition in finished:
            for plan in planner.add(next_partition, read_fragment_meta(dataset, next_partition)):
                packs.append(pack_shard.submit(dataset, plan, planner.width))
            next_partition += 1
    if errors:
        # the shards already submitted draw on finished partitions only: let them finish for the re-run
        for future in packs:
            future.wait()
        raise errors[0]
    for plan in planner.finish():
        packs.append(pack_shard.submit(dataset, plan, planner.width))
    elapsed = progress.finish()
    logger.info(
        "%s: %s rows fetched in %.1f s (%.1f images/s); %s written, packing %d shard(s)",
        dataset.name,
        f"{total_rows:,}",
        elapsed,
        total_rows / max(elapsed, 1e-9),
        f"{planner.written:,}",
        len(packs),
    )
    shards = [future.result() for future in packs]
    return [finished[n] for n in range(len(fetches))], shards


def commit(
    dataset: Dataset,
    recipe: Recipe,
    planner: ShardPlanner,
    fetched: list[dict[str, Any]],
    shards: list[dict[str, Any]],
    started: float,
) -> Manifest:
    """Write the shard index and the manifest (last), then drop the fragments and input partitions."""
    counts = {"rows_in": planner.rows, **dict(sorted(planner.counts.items()))}
    accounted = sum(v for k, v in counts.items() if k != "rows_in")
    if accounted != planner.rows:
        raise AssertionError(f"{dataset.name}: {accounted:,} rows accounted for out of {planner.rows:,}")
    if sum(s["samples"] for s in shards) != counts.get("written", 0):
        raise AssertionError(
            f"{dataset.name}: shards hold {sum(s['samples'] for s in shards)} samples, "
            f"{counts.get('written', 0)} written"
        )
    index = pa.Table.from_pylist(
        [{name: s[name] for name in IMAGE_SHARDS.names} for s in sorted(shards, key=lambda s: s["shard"])],
        schema=IMAGE_SHARDS,
    )
    dataset.write_table("shards.parquet", index)
    elapsed = time.perf_counter() - started
    manifest = Manifest.from_recipe(
        recipe,
        tables={
            "status": (IMAGE_STATUS, planner.status.files, planner.status.rows),
            "shards": (IMAGE_SHARDS, ["shards.parquet"], index.num_rows),
        },
        counts=counts,
        metrics={
            "shards": index.num_rows,
            "samples_per_shard": planner.samples_per_shard,
            "shard_bytes": int(sum(s["bytes"] for s in shards)),
            "elapsed_s": round(elapsed, 2),
            "images_per_s": round(planner.rows / max(elapsed, 1e-9), 1),
            "robots_fetches": sum(f.get("robots_fetches", 0) for f in fetched),
        },
    )
    dataset.commit(manifest)
    for folder in (FRAGMENT_DIR, INPUT_DIR):  # only the shards and tables are needed from now on
        if dataset.fs.exists(dataset.file(folder)):
            dataset.fs.rm(dataset.file(folder), recursive=True)
    return manifest


def outcome_rows(counts: dict[str, int]) -> Iterable[dict[str, Any]]:
    """Rows of the summary table: each outcome with its count and share of the input."""
    total = max(counts.get("rows_in", 0), 1)
    for outcome, rows in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if outcome != "rows_in":
            yield {"outcome": outcome, "rows": rows, "share": f"{100 * rows / total:.1f}%"}
    yield {"outcome": "total", "rows": counts.get("rows_in", 0), "share": "100.0%"}
