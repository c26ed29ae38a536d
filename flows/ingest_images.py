"""ingest-images: image URLs and captions to WebDataset shards, with a status row for every input row.

    embedpipe ingest-images urls.parquet --store work/store          # columns url, caption (or URL, TEXT)
    embedpipe ingest-images photos/ --image-size 384 --resize-mode center_crop
    embedpipe ingest-images wikipedia/enwiki --processes 8          # images of ingest-wikipedia articles
    embedpipe ingest-images urls.parquet --dask-address tcp://scheduler:8786

Steps: split the input into partitions; fetch every partition (mapped tasks: download, check,
decode, resize, re-encode); plan the fetched partitions in input order (deduplicate by content
hash across the collection, cut shards of a fixed number of samples) and pack each shard as soon as
it is complete; write the status table and the manifest. A re-run with the same input and
parameters does nothing; a run that died resumes from its finished partitions and shards.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from prefect.utilities.annotations import unmapped

from flows.environment import default_store
from storage import Dataset, Manifest, Recipe, Store, code_version
from tasks.common import InputError, artifact_key, run_logger
from tasks.images import ImageOptions, PartitionSettings, fetch_partition
from tasks.images_fetch import DEFAULT_USER_AGENT, FetchOptions
from tasks.images_input import Source, split_input
from tasks.images_shards import KIND, ShardPlanner, commit, outcome_rows, pack_as_fetched

CODE_MODULES = (
    "tasks.images",
    "tasks.images_fetch",
    "tasks.images_input",
    "tasks.images_shards",
    "storage.webdataset",
)


@task(name="split-input", cache_policy=NO_CACHE)
def prepare(
    dataset: Dataset,
    recipe: Recipe,
    source: Source,
    partition_rows: int,
    url_col: str | None,
    caption_col: str | None,
) -> dict[str, Any]:
    """Prepare the dataset folder and split the input into partitions (kept from an interrupted run)."""
    dataset.begin(recipe)
    info = split_input(
        dataset, source, partition_rows=partition_rows, url_col=url_col, caption_col=caption_col
    )
    resumed = [n for n in range(info["partitions"]) if dataset.finished_part(f"fetch-{n:05d}") is not None]
    run_logger().info(
        "%s: %s rows (%s repeat an earlier URL) in %d partition(s)%s",
        source.text,
        f"{info['rows']:,}",
        f"{info['url_repeats']:,}",
        info["partitions"],
        f", {len(resumed)} already fetched" if resumed else "",
    )
    return info


@flow(name="ingest-images", log_prints=True)
def ingest_images(
    source: str,
    store: str | None = None,
    name: str | None = None,
    url_col: str | None = None,
    caption_col: str | None = None,
    samples_per_shard: int = 10_000,
    partition_rows: int | None = None,
    image_size: int = 256,
    resize_mode: str = "keep_ratio",
    resize_only_if_bigger: bool = False,
    encode_quality: int = 95,
    min_image_size: int = 0,
    max_image_pixels: int = ImageOptions.max_image_pixels,
    max_bytes: int = FetchOptions.max_bytes,
    timeout: float = 10.0,
    retries: int = 2,
    concurrency: int = 64,
    per_host_concurrency: int = 8,
    cpu_threads: int = 2,
    user_agent: str = DEFAULT_USER_AGENT,
    respect_robots_txt: bool = True,
    respect_x_robots_tag: bool = True,
    allow_private_addresses: bool | list[str] = False,
) -> str:
    """Fetch the images of a URL table, an image folder or Wikipedia articles into WebDataset shards."""
    logger = run_logger()
    started = time.perf_counter()
    store_ = Store(store or default_store())
    source_ = Source(source, store_)
    if samples_per_shard < 1:
        raise InputError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    partition_rows = partition_rows or samples_per_shard
    if partition_rows < 1:
        raise InputError(f"partition_rows must be >= 1, got {partition_rows}")
    try:
        image = ImageOptions(
            image_size, resize_mode, resize_only_if_bigger, encode_quality, max_image_pixels, min_image_size
        )
        fetch = FetchOptions(
            user_agent=user_agent,
            timeout=timeout,
            retries=retries,
            max_bytes=max_bytes,
            concurrency=concurrency,
            per_host_concurrency=per_host_concurrency,
            respect_robots_txt=respect_robots_txt,
            respect_x_robots_tag=respect_x_robots_tag,
            allow_private_addresses=(
                allow_private_addresses
                if isinstance(allow_private_addresses, bool)
                else tuple(allow_private_addresses)
            ),
        )
    except ValueError as error:
        raise InputError(str(error)) from None
    settings = PartitionSettings(
        fetch=fetch, image=image, cpu_threads=cpu_threads, local_files=source_.kind == "folder"
    )

    dataset = store_.dataset(f"images/{name or source_.name}")
    # what a written sample looks like and which rows may be fetched at all; timeouts, retries and
    # concurrency change only how, so a re-run with other values resumes instead of starting over
    parameters = {
        "url_col": url_col,
        "caption_col": caption_col,
        "samples_per_shard": samples_per_shard,
        "partition_rows": partition_rows,
        "image_size": image_size,
        "resize_mode": resize_mode,
        "resize_only_if_bigger": resize_only_if_bigger,
        "encode_quality": encode_quality,
        "min_image_size": min_image_size,
        "max_image_pixels": max_image_pixels,
        "max_bytes": max_bytes,
        "user_agent": user_agent,
        "respect_robots_txt": respect_robots_txt,
        "respect_x_robots_tag": respect_x_robots_tag,
        "allow_private_addresses": fetch.allow_private_addresses,
    }
    # TODO: a table that grew by appended rows has a new fingerprint, so it is fetched again from the
    # first row; keeping the partitions of its unchanged prefix would make such runs incremental
    recipe = Recipe(KIND, {"source": source_.fingerprint()}, parameters, code_version(*CODE_MODULES))
    if dataset.is_current(recipe):
        logger.info("%s is up to date with %s: nothing to do", dataset.name, source)
        _report(dataset, dataset.manifest())
        return dataset.name

    info = prepare(dataset, recipe, source_, partition_rows, url_col, caption_col)
    with api_for_worker_processes():
        fetches = fetch_partition.map(
            dataset=unmapped(dataset), partition=list(range(info["partitions"])), settings=unmapped(settings)
        )
        planner = ShardPlanner(dataset, rows=info["rows"], samples_per_shard=samples_per_shard)
        fetched, shards = pack_as_fetched(dataset, list(fetches), planner, info["rows"])
    manifest = commit(dataset, recipe, planner, fetched, shards, started)
    _report(dataset, manifest)
    return dataset.name


def _report(dataset: Dataset, manifest: Manifest) -> None:
    counts, metrics = manifest.counts, manifest.metrics
    key = artifact_key("images", dataset.name.split("/", 1)[-1])
    create_table_artifact(
        key=key, table=list(outcome_rows(counts)), description=f"Rows of {dataset.name} by outcome"
    )
    skipped = counts.get("robots_disallowed", 0) + counts.get("opted_out", 0)
    create_markdown_artifact(
        key=f"{key}-summary",
        markdown=(
            f"### {dataset.name}\n\n"
            f"- {counts.get('rows_in', 0):,} rows in: {counts.get('written', 0):,} images written in "
            f"{metrics.get('shards', 0)} shard(s) of {metrics.get('samples_per_shard')}, "
            f"{counts.get('duplicate', 0):,} duplicates, {skipped:,} skipped at the publisher's request "
            f"(robots.txt {counts.get('robots_disallowed', 0):,}, X-Robots-Tag {counts.get('opted_out', 0):,})\n"
            f"- {metrics.get('images_per_s', 0):,} images/s over {metrics.get('elapsed_s', 0)} s\n"
            f"- store: `{dataset.store.full_url(dataset.path)}`\n"
        ),
        description="ingest-images summary",
    )
    print(f"{dataset.store.full_url(dataset.path)}: " + ", ".join(f"{k}={v:,}" for k, v in counts.items()))


@contextlib.contextmanager
def api_for_worker_processes() -> Iterator[None]:
    """Point the workers of a process pool at the API this flow run reports to.

    With no PREFECT_API_URL set, a flow runs against a temporary local server. ProcessPoolTaskRunner
    hands its workers only the settings that were set explicitly, so each worker would start a
    temporary server of its own (about 30 s each, measured on 2 cores) and record its task runs
    where nobody looks. Exporting the running server's URL for the length of the flow avoids both.
    """
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL

    context = FlowRunContext.get()
    runner = getattr(context, "task_runner", None)
    if (
        PREFECT_API_URL.value()
        or "PREFECT_API_URL" in os.environ
        or not isinstance(runner, ProcessPoolTaskRunner)
    ):
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    if not server.running:
        yield
        return
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)


# what every worker process needs, imported once by the fork server instead of once per worker
WORKER_PRELOAD = ["prefect.task_engine", "prefect.task_runners", "tasks.images", "tasks.images_shards"]


class PreloadedProcessPoolTaskRunner(ProcessPoolTaskRunner):
    """Prefect's process pool, its workers forked from a server that has imported Prefect and the tasks.

    Spawned workers each import Prefect and the image tasks afresh, about 3 s of CPU apiece (2 cores,
    2026-12-03), which a run of a few thousand URLs feels; forked ones start at once.
    """

    preload: list[str] = WORKER_PRELOAD  # the modules the fork server imports

    def __enter__(self):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        super().__enter__()
        # this reuses internals of Prefect 3.9's ProcessPoolTaskRunner (the worker initializer, the
        # executor and the log queue); where a Prefect lacks them, the spawned pool is kept as it is
        try:
            from prefect.task_runners import _initialize_process_pool_worker

            queue, spawned = self._subprocess_message_queue, self._executor
        except (ImportError, AttributeError):
            run_logger().warning("worker processes are spawned: this Prefect cannot fork them from a server")
            return self
        spawned.shutdown(wait=False)  # no worker was started yet: replace the pool
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(self.preload)
        self._executor = ProcessPoolExecutor(
            max_workers=self._max_workers,
            mp_context=context,
            initializer=_initialize_process_pool_worker,
            initargs=(
                queue,
                getattr(self, "_initializer", None),
                getattr(self, "_initargs", ()),
            ),
        )
        return self


def task_runner_for(processes: int, dask_address: str | None):
    """Partitions one at a time in this process, in a pool of processes, or on an existing Dask cluster.

    One partition at a time per process keeps ``concurrency`` a bound per process: each partition
    opens its own HTTP session with that many requests in flight.
    """
    if dask_address:
        # the workers write into the store themselves: with a local folder as store, every worker
        # must see that folder at the same path (one machine, or a shared file system)
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    if processes > 1:
        return PreloadedProcessPoolTaskRunner(max_workers=processes)
    return ThreadPoolTaskRunner(max_workers=1)


def _private_addresses(value: str) -> bool | list[str]:
    if value.lower() in ("", "all", "true", "yes"):
        return True
    return [entry.strip() for entry in value.split(",") if entry.strip()]


def run(args: argparse.Namespace) -> int:
    if args.processes < 1:
        print(f"ingest-images: --processes must be >= 1, got {args.processes}", file=sys.stderr)
        return 2
    runner = task_runner_for(args.processes, args.dask_address)
    try:
        _run_flow(runner, args)
    except InputError as error:
        print(f"ingest-images: {error}", file=sys.stderr)
        return 2
    return 0


def _run_flow(runner, args: argparse.Namespace) -> None:
    ingest_images.with_options(task_runner=runner)(
        source=args.source,
        store=args.store,
        name=args.name,
        url_col=args.url_col,
        caption_col=args.caption_col,
        samples_per_shard=args.samples_per_shard,
        partition_rows=args.partition_rows,
        image_size=args.image_size,
        resize_mode=args.resize_mode,
        resize_only_if_bigger=args.resize_only_if_bigger,
        encode_quality=args.encode_quality,
        min_image_size=args.min_image_size,
        max_image_pixels=args.max_image_pixels,
        max_bytes=args.max_bytes,
        timeout=args.timeout,
        retries=args.retries,
        concurrency=args.concurrency,
        per_host_concurrency=args.per_host_concurrency,
        cpu_threads=args.cpu_threads,
        user_agent=args.user_agent,
        respect_robots_txt=not args.ignore_robots_txt,
        respect_x_robots_tag=not args.ignore_x_robots_tag,
        allow_private_addresses=args.allow_private_addresses,
    )


def add_command(subparsers: argparse._SubParsersAction) -> None:
    from flows.cli import store_argument

    parser = subparsers.add_parser(
        "ingest-images",
        help="image URLs and captions to WebDataset shards",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source",
        help="a .parquet/.csv/.tsv/.jsonl table of URLs and captions, a folder of images with .txt captions, "
        "or a wikipedia-articles dataset of the store (e.g. wikipedia/enwiki)",
    )
    store_argument(parser)
    parser.add_argument("--name", help="dataset name under images/ (default: from the source)")
    parser.add_argument("--url-col", help="column of image URLs (default: url, or URL and the like)")
    parser.add_argument("--caption-col", help="column of captions (default: caption, or TEXT and the like)")
    shards = parser.add_argument_group("shards and images")
    shards.add_argument(
        "--samples-per-shard",
        "--number-sample-per-shard",
        type=int,
        default=10_000,
        help="samples in every shard but the last (default: 10000)",
    )
    shards.add_argument(
        "--partition-rows", type=int, help="input rows per fetch task (default: samples per shard)"
    )
    shards.add_argument("--image-size", type=int, default=256, help="pixels (default: 256)")
    shards.add_argument(
        "--resize-mode",
        default="keep_ratio",
        choices=["no", "keep_ratio", "keep_ratio_largest", "center_crop", "border"],
    )
    shards.add_argument("--resize-only-if-bigger", action="store_true")
    shards.add_argument("--encode-quality", type=int, default=95, help="JPEG quality (default: 95)")
    shards.add_argument(
        "--min-image-size", type=int, default=0, help="refuse images whose smaller side is below"
    )
    shards.add_argument(
        "--max-image-pixels",
        type=int,
        default=ImageOptions.max_image_pixels,
        help="width x height past which an image is refused as a decompression bomb",
    )
    fetching = parser.add_argument_group("fetching")
    fetching.add_argument("--max-bytes", type=int, default=FetchOptions.max_bytes, help="largest download")
    fetching.add_argument("--timeout", type=float, default=10.0, help="seconds per attempt (default: 10)")
    fetching.add_argument(
        "--retries", type=int, default=2, help="retries after 429, 5xx, dropped connections"
    )
    fetching.add_argument("--concurrency", type=int, default=64, help="requests in flight per process")
    fetching.add_argument("--per-host-concurrency", type=int, default=8, help="requests in flight per host")
    fetching.add_argument("--cpu-threads", type=int, default=2, help="decode/resize threads per process")
    fetching.add_argument(
        "--user-agent",
        default=DEFAULT_USER_AGENT,
        help="its first word is the token robots.txt and X-Robots-Tag rules are matched to",
    )
    fetching.add_argument("--ignore-robots-txt", action="store_true", help="do not honour robots.txt")
    fetching.add_argument(
        "--ignore-x-robots-tag",
        action="store_true",
        help="do not skip images whose X-Robots-Tag says noai/noimageai/noindex/noimageindex",
    )
    fetching.add_argument(
        "--allow-private-addresses",
        nargs="?",
        const=True,
        default=False,
        type=_private_addresses,
        metavar="ADDRESS[/PREFIX][:PORT],...",
        help="fetch from private, loopback and link-local addresses too: all of them, or only those listed",
    )
    parser.add_argument(
        "--processes", type=int, default=1, help="fetch partitions in this many local processes"
    )
    parser.add_argument("--dask-address", help="run the fetch and pack tasks on this Dask scheduler")
    parser.set_defaults(run=run)
