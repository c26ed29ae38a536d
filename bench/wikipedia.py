"""Benchmark: pages/s and MB/s of XML of ingest-wikipedia against wikiextractor on the same dump.

    python -m bench.wikipedia [--pages 5000] [--processes 1 2] [--chunk-mb 2] [--repeat 1] [--profile]

The dump is the real English sample of ../shared/data (206 pages of enwiki, 106 of them articles)
replicated under new page ids and titles to --pages pages, written as Wikipedia writes its
multistream dumps (a header stream, 100 pages a stream, a footer stream) with its index file, in a
temporary folder. Both tools read that one file, with the same numbers of processes:

- embedpipe: the ingest-wikipedia flow (chunks of whole streams, --chunk-mb each, parsed by mapped
  tasks in a pool of that many processes; one process runs them in the flow's own), writing the
  articles/, redirects/ and rejects/ tables with links, categories and images. Its time is the flow
  call's wall time in a fresh Python process whose Prefect API is already up.
- wikiextractor 3.1.0 with --no-templates: its `--processes N` extraction processes, beside which it
  always runs a reader and a writer process. Its time is the whole command's wall time. It writes
  plain text only: no links, categories or images. As installed from PyPI it runs on Python 3.11
  unchanged; a fix it needed would go in `wikiextractor_command`, never into site-packages.

pages/s counts every page of the dump (redirects too: both tools read and classify them), MB/s the
decompressed XML. Every round runs in a fresh process; with --repeat the best round of each counts,
the load of a shared machine changing by the minute. --profile also prints where one process spends
its time parsing the dump's first chunk (cProfile, without Prefect).

Measured 2026-12-04 on 2 otherwise idle cores (load average 0.7 before), the defaults, in pages/s:
1 process, embedpipe 287 and wikiextractor 252 (1.14); 2 processes, 353 and 297 (1.19); from one
process to two, 1.23x and 1.18x. Earlier the same day on 2 cores shared with other work: 152 and 134
(1.13) on one process, 149 and 148 on two.
"""

from __future__ import annotations

import argparse
import bz2
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import flows  # noqa: F401  (Prefect defaults before Prefect is imported)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = (
    ROOT.parent
    / "shared"
    / "data"
    / "wikipedia_xml"
    / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)
PAGE = re.compile(rb"<page>.*?</page>\s*", re.DOTALL)
PAGE_ID = re.compile(rb"(<page>.*?<id>)(\d+)(</id>)", re.DOTALL)
TITLE = re.compile(rb"<title>([^<]*)</title>")
PAGES_PER_STREAM = 100  # as in Wikipedia's multistream dumps


# --- the dump -----------------------------------------------------------------------------------


def replicated_pages(count: int) -> tuple[bytes, list[bytes], bytes]:
    """The sample's header, ``count`` pages (copy k of page p: id p + k * 10^7, title "T (k)"), footer."""
    xml = bz2.decompress(SAMPLE.read_bytes())
    originals = [m.group() for m in PAGE.finditer(xml)]
    header = xml[: xml.find(b"<page>")]
    footer = xml[xml.rfind(b"</page>") + len(b"</page>") :]
    pages = []
    for number in range(count):
        copy, page = divmod(number, len(originals))
        pages.append(_renamed(originals[page], copy) if copy else originals[page])
    return header, pages, footer


def _renamed(page: bytes, copy: int) -> bytes:
    page_id = PAGE_ID.search(page)
    page = page[: page_id.start(2)] + str(int(page_id[2]) + copy * 10**7).encode() + page[page_id.end(2) :]
    title = TITLE.search(page)
    return page[: title.end(1)] + f" ({copy})".encode() + page[title.end(1) :]


def write_dump(folder: Path, count: int) -> tuple[Path, int]:
    """Write the multistream dump and its index; returns the dump and its size decompressed."""
    header, pages, footer = replicated_pages(count)
    groups = [b"".join(pages[i : i + PAGES_PER_STREAM]) for i in range(0, len(pages), PAGES_PER_STREAM)]
    dump = folder / "enwiki-bench-pages-articles-multistream.xml.bz2"
    index_lines = []
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool, open(dump, "wb") as f:
        f.write(bz2.compress(header))
        for number, stream in enumerate(pool.map(bz2.compress, groups, chunksize=4)):
            offset = f.tell()
            for page in pages[number * PAGES_PER_STREAM : (number + 1) * PAGES_PER_STREAM]:
                page_id = PAGE_ID.search(page)[2].decode()
                title = TITLE.search(page)[1].decode()
                index_lines.append(f"{offset}:{page_id}:{title}\n")
            f.write(stream)
        f.write(bz2.compress(footer))
    index = folder / "enwiki-bench-pages-articles-multistream-index.txt.bz2"
    index.write_bytes(bz2.compress("".join(index_lines).encode()))
    return dump, len(header) + sum(map(len, groups)) + len(footer)


# --- the two tools ------------------------------------------------------------------------------


def time_embedpipe(dump: Path, store: Path, processes: int, chunk_mb: float) -> dict:
    """One timed flow run, in this process; the Prefect API is started before the clock."""
    from prefect import flow

    from flows.ingest_wikipedia import ingest_wikipedia, task_runner_for
    from storage import Store

    @flow(name="bench-warm-up")
    def warm_up() -> None:
        """Start the Prefect API (the temporary local server) before the clock starts."""

    warm_up()
    started = time.perf_counter()
    name = ingest_wikipedia.with_options(task_runner=task_runner_for(processes, None))(
        source=str(dump), store=str(store), chunk_mb=chunk_mb
    )
    seconds = time.perf_counter() - started
    dataset = Store(store).dataset(name)
    manifest = dataset.manifest()
    articles = dataset.read_table("articles", columns=["links", "categories"])
    extracted = {
        "links": sum(map(len, articles["links"].to_pylist())),
        "categories": sum(map(len, articles["categories"].to_pylist())),
    }
    return {"seconds": seconds, "chunks": manifest.metrics["chunks"], **manifest.counts, **extracted}


def run_embedpipe(dump: Path, work: Path, processes: int, chunk_mb: float, round_: int) -> dict:
    """A fresh Python process per round, as the command line is: nothing warm from an earlier round."""
    result = work / f"embedpipe-{processes}-{round_}.json"
    store = work / f"store-{processes}-{round_}"
    command = [
        sys.executable, "-m", "bench.wikipedia", "--child", str(dump), str(store), str(result),
        "--processes", str(processes), "--chunk-mb", str(chunk_mb),
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=ROOT)
    figures = json.loads(result.read_text())
    figures["store_bytes"] = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    shutil.rmtree(store, ignore_errors=True)
    return figures


def wikiextractor_command(dump: Path, out: Path, processes: int) -> list[str]:
    return [
        sys.executable, "-m", "wikiextractor.WikiExtractor", "--no-templates", "--quiet",
        "--processes", str(processes), "--output", str(out), str(dump),
    ]  # fmt: skip


def run_wikiextractor(dump: Path, work: Path, processes: int, round_: int) -> dict:
    out = work / f"wikiextractor-{processes}-{round_}"
    started = time.perf_counter()
    done = subprocess.run(wikiextractor_command(dump, out, processes), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"wikiextractor failed ({done.returncode}):\n{done.stderr[-3000:]}")
    documents = sum(path.read_bytes().count(b"<doc id=") for path in out.rglob("wiki_*"))
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": seconds, "articles": documents}


# --- where the time goes ------------------------------------------------------------------------


def profile_first_chunk(dump: Path, chunk_mb: float, top: int = 14) -> None:
    """cProfile of reading and cleaning the dump's first chunk in this process, without Prefect."""
    import cProfile
    import pstats

    from tasks.dumps import find_index, plan_chunks
    from tasks.wikitext import Cleaner
    from tasks.wikixml import RawPage, decompressed_blocks, iter_pages, read_siteinfo

    chunk = plan_chunks(dump, int(chunk_mb * 2**20), find_index(dump))[0]
    with open(dump, "rb") as f:
        siteinfo, _ = read_siteinfo(decompressed_blocks(f, str(dump)))
    cleaner = Cleaner(siteinfo)

    def parse() -> int:
        pages = 0
        with open(dump, "rb") as f:
            for page in iter_pages(decompressed_blocks(f, str(dump), chunk.start, chunk.end), str(dump)):
                pages += 1
                if isinstance(page, RawPage) and page.namespace == 0 and not page.redirect and page.text:
                    cleaner.clean(page.text)
        return pages

    profiler = cProfile.Profile()
    started = time.process_time()
    pages = profiler.runcall(parse)
    seconds = time.process_time() - started
    print(f"\n== where one process spends its time: the first chunk, {pages:,} pages, {seconds:.2f} s CPU")
    print("   (cProfile slows Python code more than C code: shares are indicative)")
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(top)


# --- the report ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wikipedia", description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=5000)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--chunk-mb", type=float, default=2.0, help="compressed MB per chunk of our flow")
    parser.add_argument("--only", choices=["embedpipe", "wikiextractor"], help="run one side only")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds, the tools alternating first; the best round counts"
    )
    parser.add_argument("--profile", action="store_true", help="also profile the first chunk's parse")
    parser.add_argument("--child", nargs=3, metavar=("DUMP", "STORE", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        dump, store, result = args.child
        figures = time_embedpipe(Path(dump), Path(store), args.processes[0], args.chunk_mb)
        Path(result).write_text(json.dumps(figures))
        return 0
    if not SAMPLE.is_file():
        print(f"{SAMPLE} not found: the benchmark replicates the shared English sample", file=sys.stderr)
        return 2

    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-wikipedia-"))
    try:
        started = time.perf_counter()
        dump, xml_bytes = write_dump(work, args.pages)
        print(
            f"{dump.name}: {args.pages:,} pages, {xml_bytes / 1e6:,.1f} MB of XML, "
            f"{dump.stat().st_size / 1e6:,.1f} MB bz2 in {-(-args.pages // PAGES_PER_STREAM)} streams "
            f"(written in {time.perf_counter() - started:.0f} s)",
            flush=True,
        )
        tools = [t for t in ("wikiextractor", "embedpipe") if args.only in (None, t)]
        results: dict[tuple[str, int], list[dict]] = {}
        for round_ in range(max(1, args.repeat)):
            for processes in args.processes:
                # a shared machine's load changes by the minute: alternate which tool goes first
                for tool in tools if (round_ + processes) % 2 == 0 else tools[::-1]:
                    if tool == "embedpipe":
                        result = run_embedpipe(dump, work, processes, args.chunk_mb, round_)
                    else:
                        result = run_wikiextractor(dump, work, processes, round_)
                    print(f"  {tool} with {processes} process(es): {result['seconds']:.1f} s", flush=True)
                    results.setdefault((tool, processes), []).append(result)
        if args.profile:
            profile_first_chunk(dump, args.chunk_mb)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\n{args.pages:,} pages ({xml_bytes / 1e6:,.1f} MB of XML), {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, load average {load_before:.1f} "
        f"before and {os.getloadavg()[0]:.1f} after (other work on the machine counts in it)"
    )
    print(f"{'tool':<15} {'processes':>9} {'seconds':>8} {'pages/s':>8} {'MB/s XML':>9}  output")
    rates: dict[tuple[str, int], float] = {}
    for (tool, processes), rounds in results.items():
        best = min(rounds, key=lambda r: r["seconds"])
        rates[tool, processes] = args.pages / best["seconds"]
        if tool == "embedpipe":
            output = (
                f"{best['articles']:,} articles, {best['redirects']:,} redirects, {best['links']:,} links, "
                f"{best['categories']:,} categories, {best['images']:,} images ({best['chunks']} chunks, "
                f"{best['store_bytes'] / 1e6:,.1f} MB of Parquet)"
            )
        else:
            output = f"{best['articles']:,} articles, text only"
        every = ", ".join(f"{args.pages / r['seconds']:.0f}" for r in rounds)
        print(
            f"{tool:<15} {processes:>9} {best['seconds']:>8.1f} {rates[tool, processes]:>8.0f} "
            f"{xml_bytes / 1e6 / best['seconds']:>9.1f}  {output}"
            + (f" (rounds: {every})" if len(rounds) > 1 else "")
        )
    for processes in args.processes:
        if ("embedpipe", processes) in rates and ("wikiextractor", processes) in rates:
            ratio = rates["embedpipe", processes] / rates["wikiextractor", processes]
            print(f"ratio embedpipe / wikiextractor pages/s, {processes} process(es): {ratio:.2f}")
    for tool in tools:
        if len(args.processes) > 1 and all((tool, p) in rates for p in args.processes):
            low, high = min(args.processes), max(args.processes)
            print(
                f"scaling {tool}, {high} processes / {low}: {rates[tool, high] / rates[tool, low]:.2f}x "
                f"(linear: {high / low:.0f}x)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
