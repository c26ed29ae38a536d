"""Benchmark: images/s of ingest-images against img2dataset on the same URLs, shard and resize settings.

    python -m bench.images [--urls 2000] [--processes 2] [--samples-per-shard 500] [--repeat 3]

A server on 127.0.0.1 (its own process) serves the 36 COCO photos of ../shared/data under a few
thousand URLs, each with a distinct JPEG comment so no two URLs share bytes (exact deduplication
would otherwise keep 36 images and skip the work of packing the rest). Both tools then turn the
same Parquet list of URLs and captions into WebDataset shards: 256 px keep-ratio, JPEG quality 95,
500 samples per shard, the same number of processes. Each figure is images/s over the tool's whole
run: input rows / wall time of the flow call for embedpipe (its Prefect API already up, as with
`make server` or a deployment), of the whole `img2dataset` command for img2dataset. Every round of
either tool runs in a fresh process; the best round of each counts, the load of a shared machine
changing by the minute.

img2dataset 1.47.0 pins libraries older than ours, so it gets a venv of its own,
bench/.venv-img2dataset (git ignores it), made on first use; by hand it is

    python3.11 -m venv bench/.venv-img2dataset
    bench/.venv-img2dataset/bin/pip install img2dataset==1.47.0

Measured 2026-12-03 on 2 shared cores (load average about 5 from other work), --repeat 3, in images/s
per round: img2dataset 122.2, 127.4, 120.0; embedpipe 115.3, 109.4, 150.1; best against best 1.18.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import flows  # noqa: F401  (Prefect defaults before Prefect is imported)

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "image_text" / "coco_mini_cc_by"
IMG2DATASET_VENV = ROOT / "bench" / ".venv-img2dataset"
IMG2DATASET = "img2dataset==1.47.0"


# --- the server ---------------------------------------------------------------------------------


def serve(folder: str, port_queue) -> None:
    """Serve /img/N.jpg: photo N mod 36 with a JPEG comment naming N right after its SOI marker."""
    import asyncio

    from aiohttp import web

    photos = [p.read_bytes() for p in sorted(Path(folder, "images").glob("*.jpg"))]

    async def image(request: web.Request) -> web.Response:
        number = int(request.match_info["number"])
        photo = photos[number % len(photos)]
        comment = f"url {number}".encode()
        body = photo[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + photo[2:]
        return web.Response(body=body, content_type="image/jpeg")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/img/{number}.jpg", image)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port_queue.put(site._server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


def write_urls(path: Path, port: int, count: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    captions = [
        json.loads(line)["captions"][0] for line in (PHOTOS / "captions.jsonl").read_text().splitlines()
    ]
    pq.write_table(
        pa.table(
            {
                "url": [f"http://127.0.0.1:{port}/img/{n}.jpg" for n in range(count)],
                "caption": [captions[n % len(captions)] for n in range(count)],
            }
        ),
        path,
    )


# --- the two runs -------------------------------------------------------------------------------


def time_embedpipe(urls: Path, out: Path, args: argparse.Namespace, port: int) -> tuple[float, dict]:
    """One timed flow run, in this process; the Prefect API is started before the clock."""
    from prefect import flow

    from flows.ingest_images import ingest_images, task_runner_for
    from storage import Store

    @flow(name="bench-warm-up")
    def warm_up() -> None:
        """Start the Prefect API (the temporary local server) before the clock starts."""

    warm_up()
    started = time.perf_counter()
    name = ingest_images.with_options(task_runner=task_runner_for(args.processes, None))(
        source=str(urls),
        store=str(out),
        samples_per_shard=args.samples_per_shard,
        image_size=256,
        resize_mode="keep_ratio",
        encode_quality=95,
        concurrency=args.threads,
        per_host_concurrency=args.threads,  # one host here; img2dataset has no per-host bound
        allow_private_addresses=[f"127.0.0.1:{port}"],
    )
    seconds = time.perf_counter() - started
    return seconds, Store(out).dataset(name).manifest().counts


def run_embedpipe(urls: Path, out: Path, args: argparse.Namespace, port: int) -> tuple[float, dict]:
    """A fresh Python process per round, as the command line is: nothing warm from an earlier round."""
    result = out.with_suffix(".json")
    command = [
        sys.executable, "-m", "bench.images", "--child", str(urls), str(out), str(port), str(result),
        "--processes", str(args.processes), "--threads", str(args.threads),
        "--samples-per-shard", str(args.samples_per_shard),
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=ROOT)
    seconds, counts = json.loads(result.read_text())
    return seconds, counts


def ensure_img2dataset() -> Path:
    python = IMG2DATASET_VENV / "bin" / "python"
    if not (IMG2DATASET_VENV / "bin" / "img2dataset").exists():
        print(f"making {IMG2DATASET_VENV} with {IMG2DATASET} (once)", flush=True)
        subprocess.run(["python3.11", "-m", "venv", str(IMG2DATASET_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", IMG2DATASET], check=True)
    return IMG2DATASET_VENV / "bin" / "img2dataset"


def run_img2dataset(urls: Path, out: Path, args: argparse.Namespace) -> tuple[float, dict]:
    command = [
        str(ensure_img2dataset()),
        "--url_list",
        str(urls),
        "--input_format",
        "parquet",
        "--url_col",
        "url",
        "--caption_col",
        "caption",
        "--output_format",
        "webdataset",
        "--output_folder",
        str(out),
        "--processes_count",
        str(args.processes),
        "--thread_count",
        str(args.threads),
        "--image_size",
        "256",
        "--resize_mode",
        "keep_ratio",
        "--encode_quality",
        "95",
        "--number_sample_per_shard",
        str(args.samples_per_shard),
        "--distributor",
        "multiprocessing",
        "--timeout",
        "10",
        "--retries",
        "0",
        "--enable_wandb",
        "False",
    ]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"img2dataset failed ({done.returncode}):\n{done.stderr[-3000:]}")
    stats = [json.loads(p.read_text()) for p in out.glob("*_stats.json")]
    counts = {
        "rows_in": sum(s["count"] for s in stats),
        "written": sum(s["successes"] for s in stats),
        "failed": sum(s["failed_to_download"] + s["failed_to_resize"] for s in stats),
    }
    return seconds, counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.images", description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=16, help="img2dataset threads per process = our concurrency"
    )
    parser.add_argument("--samples-per-shard", type=int, default=500)
    parser.add_argument("--only", choices=["embedpipe", "img2dataset"], help="run one side only")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds, the tools alternating first; the best round counts"
    )
    parser.add_argument("--child", nargs=4, metavar=("URLS", "OUT", "PORT", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        urls, out, port, result = args.child
        Path(result).write_text(json.dumps(time_embedpipe(Path(urls), Path(out), args, int(port))))
        return 0
    if not PHOTOS.is_dir():
        print(f"{PHOTOS} not found: the benchmark serves the shared COCO photos", file=sys.stderr)
        return 2

    # the server forks before anything here starts threads
    ports = multiprocessing.get_context("fork").Queue()
    server = multiprocessing.get_context("fork").Process(target=serve, args=(str(PHOTOS), ports), daemon=True)
    server.start()
    port = ports.get(timeout=30)
    work = Path(tempfile.mkdtemp(prefix="bench-images-"))
    try:
        urls = work / "urls.parquet"
        write_urls(urls, port, args.urls)
        results: dict[str, list[tuple[float, dict]]] = {}
        tools = [t for t in ("img2dataset", "embedpipe") if args.only in (None, t)]
        for round_ in range(max(1, args.repeat)):
            # a shared machine's load changes by the minute: alternate which tool goes first
            for tool in tools if round_ % 2 == 0 else tools[::-1]:
                if tool == "img2dataset":
                    result = run_img2dataset(urls, work / f"img2dataset-{round_}", args)
                else:
                    result = run_embedpipe(urls, work / f"store-{round_}", args, port)
                results.setdefault(tool, []).append(result)
    finally:
        server.terminate()
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\n{args.urls:,} URLs from 127.0.0.1, 256 px keep_ratio, {args.samples_per_shard} samples/shard, "
        f"{args.processes} processes, {os.cpu_count()} cores"
    )
    rates = {}
    for tool, rounds in results.items():
        seconds, counts = min(rounds, key=lambda r: r[0])
        rates[tool] = counts["rows_in"] / seconds
        every = ", ".join(f"{c['rows_in'] / s:.1f}" for s, c in rounds)
        print(f"  {tool:12s} {rates[tool]:8.1f} images/s  ({seconds:.1f} s; {counts}; rounds: {every})")
    if len(rates) == 2:
        print(f"  ratio embedpipe / img2dataset: {rates['embedpipe'] / rates['img2dataset']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
