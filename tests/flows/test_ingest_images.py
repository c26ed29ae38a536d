"""ingest-images end to end: a misbehaving 127.0.0.1 server over the real COCO photos, into shards."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
import pytest
from PIL import Image

from storage import Store
from storage.webdataset import iter_samples, shard_files

pytestmark = pytest.mark.slow


def _load_server_module():
    name = "embedpipe_test_image_server"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "image_server.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def server(shared_data):
    running = _load_server_module().ImageServer(shared_data / "image_text" / "coco_mini_cc_by").start()
    yield running
    running.stop()


PHOTOS = ["000000000790.jpg", "000000062554.jpg", "000000078499.jpg", "000000084284.jpg", "000000107438.jpg"]

# (path, expected outcome): every way the server misbehaves, between well-behaved photos
CASES = [
    ("/photos/000000000790.jpg", "written"),
    ("/missing/000000062554.jpg", "http_404"),
    ("/flaky/000000062554.jpg", "written"),  # 500, then the photo on the retry
    ("/busy/000000078499.jpg", "written"),  # 429 with Retry-After: 1, then the photo
    ("/slow/000000084284.jpg", "timeout"),
    ("/truncated/000000107438.jpg", "corrupt_image"),
    ("/text/000000107438.jpg", "not_an_image"),
    ("/huge/000000107438.jpg", "too_large"),
    ("/stream/000000107438.jpg", "too_large"),
    ("/bomb/000000107438.jpg", "decompression_bomb"),
    ("/noai/000000107438.jpg", "opted_out"),
    ("/otherbot/000000107438.jpg", "written"),  # an opt-out addressed to another crawler
    ("/private/000000084284.jpg", "robots_disallowed"),
    ("/to-private/000000084284.jpg", "blocked_address"),
    ("/to-metadata/000000084284.jpg", "blocked_address"),
    ("/to-localhost/000000084284.jpg", "blocked_address"),
    ("/mirror/000000000790.jpg", "duplicate"),  # the same bytes as row 0 under another URL
    ("/photos/000000000790.jpg", "duplicate"),  # the very URL of row 0 again
    ("/moved/000000084284.jpg", "written"),  # a 301 to a photo
    ("/photos/000000062554.jpg", "duplicate"),  # the bytes row 2 wrote after its retry
    ("/missing/000000062554.jpg", "http_404"),  # a repeat of a failed URL takes its outcome
    ("/photos/000000114174.jpg", "written"),
    ("", "bad_url"),
    ("ftp://127.0.0.1/x.jpg", "bad_url"),
]


def write_cases(path: Path, server, cases=CASES) -> list[str]:
    urls = [server.url(p) if p.startswith("/") else p for p, _ in cases]
    captions = [f"caption of row {n}: {p}" for n, (p, _) in enumerate(cases)]
    # img2dataset's column names, to show its inputs work unchanged
    pq.write_table(pa.table({"URL": urls, "TEXT": captions, "extra": list(range(len(cases)))}), path)
    return captions


def run_flow(source: Path | str, store: Store, server, **options):
    from flows.ingest_images import ingest_images

    settings = dict(
        samples_per_shard=2,
        partition_rows=5,
        timeout=1.0,
        max_bytes=2_000_000,
        user_agent="embedpipe-test/1.0 (+http://127.0.0.1/contact)",
        allow_private_addresses=server.allow,
    )
    settings.update(options)
    return ingest_images(source=str(source), store=store.url, **settings)


def test_every_misbehaviour_gets_its_outcome_and_the_shards_hold_the_rest(
    prefect_server, server, store, tmp_path
):
    urls = tmp_path / "urls.parquet"
    captions = write_cases(urls, server)
    server.reset()
    name = run_flow(urls, store, server)
    dataset = store.dataset(name)
    assert name == "images/urls"

    # every row has its outcome
    status = dataset.read_table("status").sort_by("row").to_pylist()
    assert [s["row"] for s in status] == list(range(len(CASES)))
    assert [s["outcome"] for s in status] == [outcome for _, outcome in CASES]
    assert [s["source_row"] for s in status] == list(range(len(CASES)))
    assert [s["caption"] for s in status] == captions
    by_row = {s["row"]: s for s in status}
    assert by_row[1]["http_status"] == 404
    assert by_row[16]["duplicate_of"] == by_row[0]["key"] == "000000000"
    assert by_row[17]["duplicate_of"] == "000000000"
    assert by_row[19]["duplicate_of"] == by_row[2]["key"]
    assert "127.0.0.2" in by_row[13]["detail"] and "169.254.169.254" in by_row[14]["detail"]
    assert "X-Robots-Tag" in by_row[10]["detail"]

    # the counts add up to the input rows
    manifest = dataset.manifest()
    expected = Counter(outcome for _, outcome in CASES)
    assert manifest.counts == {"rows_in": len(CASES), **expected}
    assert sum(v for k, v in manifest.counts.items() if k != "rows_in") == len(CASES)

    # retries waited: the 429 for its Retry-After, and each retried URL was asked twice
    busy = server.times["/busy/000000078499.jpg"]
    assert len(busy) == 2 and busy[1] - busy[0] >= 0.95
    assert server.hits["/flaky/000000062554.jpg"] == 2
    assert server.hits["/missing/000000062554.jpg"] == 1  # its repeat was not fetched again
    assert server.hits["/photos/000000000790.jpg"] == 1
    assert server.hits["/private/000000084284.jpg"] == 0  # robots.txt said no: never requested
    assert server.hits["/robots.txt"] <= 1
    assert server.user_agents == {"embedpipe-test/1.0 (+http://127.0.0.1/contact)"}

    # the shards: a fixed number of samples each, keys in row order, every written row exactly once
    shards = shard_files(dataset)
    written = [s for s in status if s["outcome"] == "written"]
    assert [s["samples"] for s in shards] == [2] * (len(written) // 2) + [len(written) % 2] * (
        len(written) % 2
    )
    assert all(Path(s["file"]).name == f"shard-{n:05d}.tar" for n, s in enumerate(shards))
    samples = list(iter_samples(dataset))
    assert [s["__key__"] for s in samples] == [s["key"] for s in written]
    for sample, row in zip(samples, written, strict=True):
        meta = json.loads(sample["json"])
        image = Image.open(io.BytesIO(sample["jpg"]))
        assert image.format == "JPEG" and image.mode == "RGB"
        assert image.size == (row["width"], row["height"]) == (meta["width"], meta["height"])
        assert min(image.size) == 256  # keep_ratio: the smaller side fits image_size
        assert sample["txt"].decode() == row["caption"] == meta["caption"]
        assert meta["url"] == row["url"] and meta["sha256"] == row["sha256"] and meta["row"] == row["row"]
        assert (meta["original_width"], meta["original_height"]) == (
            row["original_width"],
            row["original_height"],
        )
        assert max(meta["original_width"], meta["original_height"]) == 320  # the shared photos' size
        assert len(meta["phash"]) == 16 and "page_id" not in meta
        assert shards[row["shard"]]["first_key"] <= sample["__key__"] <= shards[row["shard"]]["last_key"]

    # nothing temporary is left behind
    leftovers = [
        p for p in dataset.fs.find(dataset.path) if ".tmp-" in p or "/_fragments/" in p or "/_input/" in p
    ]
    assert leftovers == []

    # the same input and parameters again: nothing to do, not one request
    server.reset()
    before = manifest.created
    assert run_flow(urls, store, server) == name
    assert dataset.manifest().created == before
    assert sum(server.hits.values()) == 0


def test_switches_for_robots_txt_and_x_robots_tag_and_resize_modes(prefect_server, server, store, tmp_path):
    cases = [("/private/000000084284.jpg", "written"), ("/noai/000000107438.jpg", "written")]
    urls = tmp_path / "polite.jsonl"
    with urls.open("w") as f:
        for path, _ in cases:
            f.write(json.dumps({"url": server.url(path), "caption": path}) + "\n")
    name = run_flow(
        urls,
        store,
        server,
        respect_robots_txt=False,
        respect_x_robots_tag=False,
        resize_mode="center_crop",
        image_size=96,
        encode_quality=80,
    )
    dataset = store.dataset(name)
    assert dataset.manifest().counts == {"rows_in": 2, "written": 2}
    assert all(Image.open(io.BytesIO(s["jpg"])).size == (96, 96) for s in iter_samples(dataset))

    # border: the larger side fits, the rest is padded to a square
    name = run_flow(
        urls,
        store,
        server,
        name="polite-border",
        respect_robots_txt=False,
        respect_x_robots_tag=False,
        resize_mode="border",
        image_size=64,
    )
    sizes = [json.loads(s["json"]) for s in iter_samples(store.dataset(name))]
    assert [(m["width"], m["height"]) for m in sizes] == [(64, 64), (64, 64)]


def test_a_run_killed_half_way_resumes_with_every_sample_exactly_once(
    prefect_server, server, store, tmp_path, monkeypatch
):
    import tasks.images
    import tasks.images_shards

    names = sorted(server.photos)
    cases = [(f"/photos/{n}", "written") for n in names[:20]]
    urls = tmp_path / "many.csv"
    pa.csv.write_csv(
        pa.table({"url": [server.url(p) for p, _ in cases], "caption": [p for p, _ in cases]}), urls
    )

    # the first run dies while fetching partition 2 and while packing shard 1
    real_write_shard = tasks.images_shards.write_shard
    packed: list[str] = []

    def failing_write_shard(dataset, relative, samples):
        if relative.endswith("shard-00001.tar"):
            raise RuntimeError("killed while packing")
        packed.append(relative)
        return real_write_shard(dataset, relative, samples)

    def failing_fetch_rows(rows, settings, on_result):
        if rows[0]["row"] == 10:
            raise RuntimeError("killed while fetching")
        return real_fetch_rows(rows, settings, on_result)

    real_fetch_rows = tasks.images.fetch_rows
    monkeypatch.setattr(tasks.images_shards, "write_shard", failing_write_shard)
    monkeypatch.setattr(tasks.images, "fetch_rows", failing_fetch_rows)
    server.reset()
    with pytest.raises(RuntimeError, match="killed"):
        run_flow(urls, store, server, samples_per_shard=3, partition_rows=5, name="resume")
    dataset = store.dataset("images/resume")
    assert not dataset.is_complete()
    first_hits = sum(server.hits.values())
    first_shards = {p: Path(dataset.file(p)).stat().st_mtime_ns for p in packed}
    # shards 0-2 draw on partitions 0 and 1 only, which finished; shard 1 died while being packed
    assert sorted(first_shards) == ["shards/shard-00000.tar", "shards/shard-00002.tar"]
    assert dataset.files("shards/*") == [dataset.file(p) for p in sorted(first_shards)]

    # the second run fetches only what did not finish and packs only the missing shards
    monkeypatch.setattr(tasks.images_shards, "write_shard", real_write_shard)
    monkeypatch.setattr(tasks.images, "fetch_rows", real_fetch_rows)
    server.reset()
    run_flow(urls, store, server, samples_per_shard=3, partition_rows=5, name="resume")
    assert dataset.manifest().counts == {"rows_in": 20, "written": 20}
    assert sum(v for k, v in server.hits.items() if k != "/robots.txt") == 5  # partition 2 only
    assert first_hits >= 15
    assert {p: Path(dataset.file(p)).stat().st_mtime_ns for p in packed} == first_shards
    keys = [s["__key__"] for s in iter_samples(dataset)]
    assert keys == [f"{n:09d}" for n in range(20)]
    assert [s["samples"] for s in shard_files(dataset)] == [3] * 6 + [2]


def test_a_folder_of_images_with_caption_files(prefect_server, store, tmp_path, shared_data):
    photos = shared_data / "image_text" / "coco_mini_cc_by"
    folder = tmp_path / "album"
    (folder / "sub").mkdir(parents=True)
    captions = {}
    for line in (photos / "captions.jsonl").read_text().splitlines()[:6]:
        record = json.loads(line)
        name = Path(record["image"]).name
        target = folder / ("sub" if len(captions) % 2 else "") / name
        target.write_bytes((photos / record["image"]).read_bytes())
        target.with_suffix(".txt").write_text(record["captions"][0])
        captions[name] = record["captions"][0]
    (folder / "notes.md").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")

    from flows.ingest_images import ingest_images

    name = ingest_images(source=str(folder), store=store.url, samples_per_shard=4, image_size=128)
    dataset = store.dataset(name)
    assert name == "images/album"
    counts = dataset.manifest().counts
    assert counts == {"rows_in": 7, "written": 6, "corrupt_image": 1}
    samples = list(iter_samples(dataset))
    assert {Path(json.loads(s["json"])["url"]).name: s["txt"].decode() for s in samples} == captions
    assert [s["samples"] for s in shard_files(dataset)] == [4, 2]


def test_the_command_line(prefect_server, server, store, tmp_path):
    from flows.cli import main

    urls = tmp_path / "cli.tsv"
    urls.write_text(
        "image\tdescription\n"
        + "".join(f"{server.url('/photos/' + n)}\tphoto {n}\n" for n in PHOTOS[:3])
        + f"{server.url('/missing/x.jpg')}\tgone\n"
    )
    code = main(
        [
            "ingest-images",
            str(urls),
            "--store",
            store.url,
            "--url-col",
            "image",
            "--caption-col",
            "description",
            "--number-sample-per-shard",
            "2",
            "--image-size",
            "64",
            "--resize-mode",
            "keep_ratio_largest",
            "--allow-private-addresses",
            server.allow[0],
            "--timeout",
            "2",
        ]
    )
    assert code == 0
    dataset = store.dataset("images/cli")
    assert dataset.manifest().counts == {"rows_in": 4, "written": 3, "http_404": 1}
    assert all(
        max(json.loads(s["json"])["width"], json.loads(s["json"])["height"]) == 64
        for s in iter_samples(dataset)
    )


def test_without_permission_loopback_is_refused(prefect_server, server, store, tmp_path):
    urls = tmp_path / "plain.jsonl"
    urls.write_text(json.dumps({"url": server.url("/photos/000000000790.jpg"), "caption": "x"}) + "\n")
    server.reset()
    name = run_flow(urls, store, server, allow_private_addresses=False)
    assert store.dataset(name).manifest().counts == {"rows_in": 1, "blocked_address": 1}
    assert sum(server.hits.values()) == 0


def _photo_table(path: Path, server, count: int) -> None:
    names = sorted(server.photos)[:count]
    pq.write_table(pa.table({"url": [server.url(f"/photos/{n}") for n in names], "caption": names}), path)


def test_partitions_in_worker_processes(prefect_server, server, store, tmp_path):
    from flows.cli import main

    _photo_table(tmp_path / "procs.parquet", server, 12)
    code = main([
        "ingest-images", str(tmp_path / "procs.parquet"), "--store", store.url, "--processes", "2",
        "--samples-per-shard", "5", "--partition-rows", "4", "--allow-private-addresses", server.allow[0],
    ])  # fmt: skip
    assert code == 0
    dataset = store.dataset("images/procs")
    assert dataset.manifest().counts == {"rows_in": 12, "written": 12}
    assert [s["samples"] for s in shard_files(dataset)] == [5, 5, 2]
    assert [s["__key__"] for s in iter_samples(dataset)] == [f"{n:09d}" for n in range(12)]


def test_partitions_on_a_dask_cluster(prefect_server, server, store, tmp_path):
    from distributed import LocalCluster

    from flows.ingest_images import ingest_images, task_runner_for

    _photo_table(tmp_path / "dask.parquet", server, 8)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        name = ingest_images.with_options(task_runner=task_runner_for(1, cluster.scheduler_address))(
            source=str(tmp_path / "dask.parquet"),
            store=store.url,
            samples_per_shard=3,
            partition_rows=3,
            allow_private_addresses=server.allow,
        )
    dataset = store.dataset(name)
    assert dataset.manifest().counts == {"rows_in": 8, "written": 8}
    assert [s["__key__"] for s in iter_samples(dataset)] == [f"{n:09d}" for n in range(8)]


def test_bad_arguments_exit_with_a_message_naming_the_fix(prefect_server, store, tmp_path, capsys):
    from flows.cli import main

    assert main(["ingest-images", str(tmp_path / "nothing.csv"), "--store", store.url]) == 2
    assert "neither a file, a folder, nor a finished dataset" in capsys.readouterr().err
    (tmp_path / "x.csv").write_text("url,caption\nhttp://example.org/a.jpg,a\n")
    assert (
        main(["ingest-images", str(tmp_path / "x.csv"), "--store", store.url, "--encode-quality", "0"]) == 2
    )
    assert "encode_quality must be between 1 and 100" in capsys.readouterr().err
