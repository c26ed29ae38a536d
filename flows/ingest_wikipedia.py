"""ingest-wikipedia: a MediaWiki dump to clean article, redirect and reject tables in the store.

    embedpipe ingest-wikipedia simplewiki:latest --store work/store
    embedpipe ingest-wikipedia enwiki-20240601-pages-articles-multistream.xml.bz2 --processes 8
    embedpipe ingest-wikipedia ... --dask-address tcp://scheduler:8786

Steps: fetch the dump (download with resume and checksum, or a local file), plan chunks of whole
bz2 streams, parse the chunks in parallel (mapped tasks), write the manifest. A re-run with the same
dump and parameters does nothing; a run that died resumes from its finished chunks.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import unmapped

from flows.environment import default_store, work_dir
from flows.ingest_images import PreloadedProcessPoolTaskRunner, api_for_worker_processes
from storage import Recipe, Store, code_version, file_fingerprint
from tasks.common import InputError, artifact_key, run_logger
from tasks.dumps import DEFAULT_MIRROR, ChecksumError, fetch
from tasks.wikipedia import (
    CODE_MODULES,
    COUNT_KEYS,
    KIND,
    finalize,
    parse_chunk,
    plan,
    summary,
    wait_and_report,
)


def _worth_retrying(task, task_run, state) -> bool:
    """A dropped connection or a bad checksum is worth a fresh try; a bad source or file is not."""
    try:
        state.result()
    except ChecksumError:
        return True
    except InputError:
        return False
    except Exception:
        return True
    return False


@task(name="fetch-dump", retries=2, retry_delay_seconds=30, retry_condition_fn=_worth_retrying)
def fetch_dump(source: str, download_dir: str, mirror: str) -> tuple[str, str | None]:
    """The dump as a local file (downloaded, resumed and verified if remote) and its index if any."""
    dump, index = fetch(source, Path(download_dir), mirror)
    return str(dump), str(index) if index else None


def dataset_name(dump: str) -> str:
    """enwiki-20240601-pages-articles-multistream.xml.bz2 -> enwiki-20240601-pages-articles-multistream."""
    return re.sub(r"\.(xml|bz2|gz)(?=\.|-|$)", "", Path(dump).name)


# chunks one at a time unless the caller gives a task runner (the CLI: --processes, --dask-address):
# Prefect's default thread pool would parse several in one process, for no gain under the GIL
# TODO: a deployment's runs (prefect.yaml) get this runner only; parameters for processes and a Dask
# address, choosing the runner inside the flow, would let scheduled runs parse in parallel too
@flow(name="ingest-wikipedia", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def ingest_wikipedia(
    source: str,
    store: str | None = None,
    name: str | None = None,
    namespaces: list[int] | None = None,
    chunk_mb: float = 32.0,
    index: str | None = None,
    mirror: str = DEFAULT_MIRROR,
    download_dir: str | None = None,
    max_rows_per_file: int = 20_000,
    max_mb_per_file: int = 256,
    disambiguation_templates: list[str] | None = None,
) -> str:
    """Turn a Wikipedia dump into articles/, redirects/ and rejects/ Parquet tables; returns the dataset name."""
    logger = run_logger()
    namespaces = sorted(set(namespaces or [0]))
    if chunk_mb <= 0 or max_rows_per_file < 1 or max_mb_per_file < 1:
        raise InputError("chunk_mb, max_rows_per_file and max_mb_per_file must be positive")
    store_ = Store(store or default_store())
    dump, found_index = fetch_dump(source, download_dir or str(work_dir() / "downloads"), mirror)
    index = index or found_index
    dataset = store_.dataset(f"wikipedia/{name or dataset_name(dump)}")
    parameters = {
        "namespaces": namespaces,
        "chunk_mb": chunk_mb,
        "max_rows_per_file": max_rows_per_file,
        "max_mb_per_file": max_mb_per_file,
        "disambiguation_templates": sorted(disambiguation_templates or []),
    }
    inputs = {"dump": dump, "dump_fingerprint": file_fingerprint(dump), "index": index}
    recipe = Recipe(KIND, inputs, parameters, code_version(*CODE_MODULES))
    if dataset.is_current(recipe):
        logger.info("%s is up to date with %s: nothing to do", dataset.name, Path(dump).name)
        _report(store_, summary(dataset))
        return dataset.name

    planned = plan(dataset, recipe, dump, index, int(chunk_mb * 2**20))
    chunks = planned["chunks"]
    with api_for_worker_processes():  # worker processes report to this run's API, not their own
        futures = parse_chunk.map(
            dataset=unmapped(dataset),
            recipe=unmapped(recipe),
            part=[c.number for c in chunks],
            dump=unmapped(dump),
            chunk=chunks,
            chunks=unmapped(len(chunks)),
            siteinfo=unmapped(planned["siteinfo"]),
            namespaces=unmapped(namespaces),
            max_rows_per_file=unmapped(max_rows_per_file),
            max_bytes_per_file=unmapped(max_mb_per_file * 2**20),
            disambiguation_templates=unmapped(sorted(disambiguation_templates or [])),
        )
        wait_and_report(list(futures), len(chunks))
    finished = finalize(dataset, recipe, chunks, planned["siteinfo"])
    _report(store_, finished)
    return dataset.name


def _report(store: Store, summary: dict[str, Any]) -> None:
    counts = summary["counts"]
    key = artifact_key("wikipedia", summary["dataset"].split("/", 1)[-1])
    create_table_artifact(
        key=key,
        table=summary["per_chunk"] + [{"chunk": "total", **{k: counts.get(k, 0) for k in COUNT_KEYS}}],
        description=f"Pages of {summary['dataset']} by outcome, per chunk",
    )
    reasons = {k.removeprefix("rejected_"): v for k, v in counts.items() if k.startswith("rejected_")}
    create_markdown_artifact(
        key=f"{key}-summary",
        markdown=(
            f"### {summary['dataset']}\n\n"
            f"- {counts['pages_in']:,} pages in: {counts['articles']:,} articles "
            f"({counts.get('disambiguation', 0):,} disambiguation), {counts['redirects']:,} redirects, "
            f"{counts['other_namespace']:,} in other namespaces, {counts['empty_after_cleaning']:,} empty after "
            f"cleaning, {counts['rejected']:,} rejected {reasons or ''}\n"
            f"- {counts.get('images', 0):,} image references\n"
            f"- store: `{store.full_url(store.path(summary['dataset']))}`\n"
        ),
        description="ingest-wikipedia summary",
    )


def show_articles(store: str, name: str, limit: int = 3, width: int = 300) -> None:
    """Print where a dataset is and the start of a few of its articles."""
    import pyarrow.parquet as pq

    dataset = Store(store).dataset(name)
    manifest = dataset.manifest()
    print(f"{dataset.store.full_url(dataset.path)}")
    print("  " + ", ".join(f"{k}={v:,}" for k, v in manifest.counts.items() if not k.startswith("rejected_")))
    files = dataset.table_files("articles")
    if not files:
        return
    table = pq.read_table(
        files[0], filesystem=dataset.fs, columns=["page_id", "title", "text", "categories", "images"]
    )
    for row in table.slice(0, limit).to_pylist():
        text = " ".join(row["text"].split())
        print(
            f"\n  [{row['page_id']}] {row['title']} ({len(row['images'])} images, categories: "
            f"{', '.join(row['categories'][:3])})\n  {text[:width]}..."
        )


class ChunkProcessPool(PreloadedProcessPoolTaskRunner):
    """A pool of processes forked from a server that has imported Prefect and the chunk parser."""

    preload = ["prefect.task_engine", "prefect.task_runners", "tasks.wikipedia"]


def task_runner_for(processes: int, dask_address: str | None):
    """One chunk at a time in this process, a pool of processes, or an existing Dask cluster."""
    if processes < 1:
        raise InputError(f"--processes must be at least 1, got {processes}")
    if dask_address:
        # every Dask worker reads the dump and writes the store itself: with local paths, they must
        # see the same files at the same paths (one machine, or a shared file system)
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    if processes > 1:
        return ChunkProcessPool(max_workers=processes)
    return ThreadPoolTaskRunner(max_workers=1)


def run(args: argparse.Namespace) -> int:
    runner = task_runner_for(args.processes, args.dask_address)
    name = ingest_wikipedia.with_options(task_runner=runner)(
        source=args.source,
        store=args.store,
        name=args.name,
        namespaces=args.namespaces,
        chunk_mb=args.chunk_mb,
        index=args.index,
        mirror=args.mirror,
        download_dir=args.download_dir,
        max_rows_per_file=args.max_rows_per_file,
        max_mb_per_file=args.max_mb_per_file,
        disambiguation_templates=args.disambiguation_template,
    )
    show_articles(args.store, name, limit=args.show)
    return 0


def namespace_list(value: str) -> list[int]:
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected namespace numbers such as 0,14, got {value!r}") from None


def add_command(subparsers: argparse._SubParsersAction) -> None:
    from flows.cli import store_argument

    parser = subparsers.add_parser(
        "ingest-wikipedia",
        help="a Wikipedia dump to clean article tables",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="a local .xml/.xml.bz2/.xml.gz dump, an http(s) URL, or WIKI:DATE")
    store_argument(parser)
    parser.add_argument("--name", help="dataset name under wikipedia/ (default: from the file name)")
    parser.add_argument(
        "--namespaces",
        type=namespace_list,
        default=[0],
        help="comma-separated namespace numbers to keep (default: 0, articles; 14 adds categories)",
    )
    parser.add_argument(
        "--chunk-mb", type=float, default=32.0, help="compressed MB per chunk (multistream dumps)"
    )
    parser.add_argument("--index", help="multistream index file (default: found next to the dump)")
    parser.add_argument("--mirror", default=DEFAULT_MIRROR, help="dump mirror for WIKI:DATE sources")
    parser.add_argument("--download-dir", help="where downloads go (default: WORK/downloads)")
    parser.add_argument(
        "--max-rows-per-file", type=int, default=20_000, help="rows per articles/ Parquet file"
    )
    parser.add_argument(
        "--max-mb-per-file", type=int, default=256, help="MB of text per articles/ Parquet file"
    )
    parser.add_argument(
        "--disambiguation-template",
        action="append",
        default=[],
        help="a template name that marks disambiguation pages on this wiki (repeatable)",
    )
    parser.add_argument("--processes", type=int, default=1, help="parse chunks in this many local processes")
    parser.add_argument("--dask-address", help="run the chunk tasks on this Dask scheduler")
    parser.add_argument("--show", type=int, default=3, help="print the start of this many articles")
    parser.set_defaults(run=run)
