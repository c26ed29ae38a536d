"""The ingest-wikipedia flow end to end, on the real sample dumps."""

from __future__ import annotations

import bz2

import pyarrow.parquet as pq
import pytest

from flows.ingest_wikipedia import ingest_wikipedia
from storage import IncompleteDatasetError, schemas
from tasks import wikipedia
from tasks.wikixml import DumpError
from tests.tasks.wikidumps import write_multistream

ENGLISH = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
LATGALIAN = "dumpster-dive-ltgwiki-smallwiki-pages-articles.xml.bz2"

pytestmark = pytest.mark.usefixtures("prefect_server")


def task_states(flow_run_id) -> dict[str, list[str]]:
    """Task name -> the state names of its runs in one flow run, read back from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    states: dict[str, list[str]] = {}
    for run in runs:
        states.setdefault(run.name.rsplit("-", 1)[0], []).append(run.state.name)
    return states


def articles_of(dataset) -> list[dict]:
    return dataset.read_table("articles", columns=["page_id", "title", "text"]).to_pylist()


def artifacts_of(flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def test_english_sample_to_tables_and_a_rerun_does_nothing(shared_data, store):
    source = str(shared_data / "wikipedia_xml" / ENGLISH)
    state = ingest_wikipedia(
        source=source, store=store.url, name="en", max_rows_per_file=50, return_state=True
    )
    name = state.result()
    dataset = store.dataset(name)
    manifest = dataset.manifest()
    assert manifest.kind == "wikipedia-articles"
    counts = manifest.counts
    assert (counts["pages_in"], counts["articles"], counts["redirects"]) == (206, 106, 99)
    assert (counts["other_namespace"], counts["empty_after_cleaning"], counts["rejected"]) == (1, 0, 0)
    assert counts["disambiguation"] == 8 and counts["images"] > 1000
    assert manifest.inputs["dump"] == source and manifest.inputs["dump_fingerprint"].startswith("file:")

    articles = dataset.read_table("articles")
    assert articles.schema.equals(schemas.ARTICLES) and articles.num_rows == 106
    anarchism = next(row for row in articles.to_pylist() if row["page_id"] == 12)
    assert anarchism["title"] == "Anarchism" and anarchism["revision_id"] and anarchism["timestamp"]
    assert anarchism["wiki"] == "enwiki" and anarchism["sections"][0]["start"] == 0
    redirects = dataset.read_table("redirects").to_pylist()
    assert len(redirects) == 99 and all(r["target"] for r in redirects)
    files = dataset.table_files("articles")
    assert [pq.ParquetFile(path).metadata.num_rows for path in files] == [50, 50, 6]  # bounded files
    for path in files:
        assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
    assert dataset.read_table("rejects").num_rows == 0

    # what the UI shows: progress over chunks, the per-chunk table, the summary
    artifacts = {a.type: a for a in artifacts_of(state.state_details.flow_run_id)}
    assert set(artifacts) == {"progress", "table", "markdown"}
    assert artifacts["progress"].data == 100.0
    table = artifacts["table"].data
    assert "206" in table and "total" in table
    assert "206 pages in: 106 articles (8 disambiguation), 99 redirects" in artifacts["markdown"].data

    again = ingest_wikipedia(
        source=source, store=store.url, name="en", max_rows_per_file=50, return_state=True
    )
    assert again.result() == name
    states = task_states(again.state_details.flow_run_id)
    assert states == {"fetch-dump": ["Completed"]}  # the dump is found, its dataset current: no step runs
    assert dataset.manifest().created == manifest.created
    assert {a.type for a in artifacts_of(again.state_details.flow_run_id)} == {"table", "markdown"}


@pytest.mark.slow
@pytest.mark.parametrize("with_index", [True, False])
def test_multistream_chunks_in_two_processes_give_the_same_articles(shared_data, store, tmp_path, with_index):
    from flows.ingest_wikipedia import task_runner_for

    xml = bz2.decompress((shared_data / "wikipedia_xml" / ENGLISH).read_bytes())
    dump, index = write_multistream(xml, tmp_path / "enwiki-test-pages-articles-multistream.xml.bz2", 10)
    if not with_index:
        index.unlink()  # chunks found by scanning for stream headers instead
    whole = ingest_wikipedia(
        source=str(shared_data / "wikipedia_xml" / ENGLISH), store=store.url, name="whole"
    )
    in_processes = ingest_wikipedia.with_options(task_runner=task_runner_for(2, None))
    parts = in_processes(source=str(dump), store=store.url, chunk_mb=0.05)  # an index is found beside it
    assert parts == "wikipedia/enwiki-test-pages-articles-multistream"
    manifest = store.dataset(parts).manifest()
    assert manifest.metrics["chunks"] > 3
    assert manifest.inputs["index"] == (str(index) if with_index else None)
    assert manifest.counts == store.dataset(whole).manifest().counts
    key = lambda rows: sorted((r["page_id"], r["title"], r["text"]) for r in rows)  # noqa: E731
    assert key(articles_of(store.dataset(parts))) == key(articles_of(store.dataset(whole)))


def test_killed_run_resumes_from_finished_chunks(shared_data, store, tmp_path, monkeypatch):
    xml = bz2.decompress((shared_data / "wikipedia_xml" / ENGLISH).read_bytes())
    dump, index = write_multistream(xml, tmp_path / "enwiki-x-pages-articles-multistream.xml.bz2", 10)
    parsed: list[int] = []
    real_iter_pages = wikipedia.iter_pages

    def failing_on_chunk_2(blocks, source):
        pages = list(real_iter_pages(blocks, source))
        parsed.append(pages[0].page_id)
        if len(parsed) == 3:
            raise MemoryError("worker killed")
        return iter(pages)

    monkeypatch.setattr(wikipedia, "iter_pages", failing_on_chunk_2)
    with pytest.raises(MemoryError):
        ingest_wikipedia(source=str(dump), store=store.url, name="resume", chunk_mb=0.05)
    dataset = store.dataset("wikipedia/resume")
    with pytest.raises(IncompleteDatasetError):
        dataset.manifest()
    finished = dataset.finished_parts()
    chunks = len(wikipedia.plan_chunks(dump, int(0.05 * 2**20), index))
    assert len(finished) == chunks - 1

    parsed.clear()
    monkeypatch.setattr(wikipedia, "iter_pages", lambda b, s: (parsed.append(0), real_iter_pages(b, s))[1])
    ingest_wikipedia(source=str(dump), store=store.url, name="resume", chunk_mb=0.05)
    assert len(parsed) == 1  # only the chunk that died is parsed again
    assert dataset.manifest().counts["articles"] == 106


def test_truncated_dump_stops_naming_the_file_and_a_rerun_resumes(shared_data, store, tmp_path, monkeypatch):
    xml = bz2.decompress((shared_data / "wikipedia_xml" / ENGLISH).read_bytes())
    dump, index = write_multistream(xml, tmp_path / "enwiki-t-pages-articles-multistream.xml.bz2", 10)
    data = dump.read_bytes()
    dump.write_bytes(data[: int(len(data) * 0.8)])
    with pytest.raises(
        DumpError, match=r"enwiki-t-pages-articles-multistream\.xml\.bz2 is truncated: .* at byte"
    ):
        ingest_wikipedia(source=str(dump), store=store.url, name="cut", chunk_mb=0.05)
    dataset = store.dataset("wikipedia/cut")
    finished = len(dataset.finished_parts())
    assert not dataset.is_complete() and finished >= 3

    # the whole file arrives: the run goes on from the chunks it has
    dump.write_bytes(data)
    parsed: list[int] = []
    real_iter_pages = wikipedia.iter_pages
    monkeypatch.setattr(wikipedia, "iter_pages", lambda b, s: (parsed.append(0), real_iter_pages(b, s))[1])
    ingest_wikipedia(source=str(dump), store=store.url, name="cut", chunk_mb=0.05)
    chunks = len(wikipedia.plan_chunks(dump, int(0.05 * 2**20), index))
    assert len(parsed) == chunks - finished
    assert dataset.manifest().counts["pages_in"] == 206 and dataset.manifest().counts["articles"] == 106


def test_bad_pages_are_rejected_with_reasons_and_counted(shared_data, store, tmp_path):
    xml = bz2.decompress((shared_data / "wikipedia_xml" / ENGLISH).read_bytes()).decode()
    first_page_end = xml.index("</page>") + len("</page>")
    broken = (
        "\n<page><title>Broken</title><ns>0</ns><id>900001</id><revision><text>a <b> c</text></revision></page>"
        '\n<page><title>Hidden</title><ns>0</ns><id>900002</id><revision><id>1</id><text deleted="deleted" />'
        "</revision></page>"
        "\n<page><title>Blank</title><ns>0</ns><id>900003</id><revision><id>2</id><text>{{stub}}</text>"
        "</revision></page>"
    )
    dump = tmp_path / "enwiki-bad.xml"
    dump.write_text(xml[:first_page_end] + broken + xml[first_page_end:])
    name = ingest_wikipedia(source=str(dump), store=store.url)
    dataset = store.dataset(name)
    counts = dataset.manifest().counts
    assert counts["pages_in"] == 209 and counts["articles"] == 106
    assert counts["rejected"] == 2 and counts["empty_after_cleaning"] == 1
    assert counts["rejected_malformed_xml"] == 1 and counts["rejected_missing_text"] == 1
    rejects = {r["page_id"]: r["reason"] for r in dataset.read_table("rejects").to_pylist()}
    assert rejects == {900001: "malformed_xml", 900002: "missing_text"}


# pages, articles, redirects, other namespaces of the smaller samples (../shared/data/README.md)
SMALL_SAMPLES = {
    "enwiki-table-markup.xml.bz2": (5, 5, 0, 0),  # no siteinfo
    "zulko-wiki_dump_extractor-tiny_dump-enwiki-export-0.11.xml.bz2": (70, 6, 64, 0),  # schema 0.11
    "wikipedia2vec-enwiki-pages-articles-sample.xml.bz2": (3, 2, 1, 0),
}


@pytest.mark.parametrize("name", sorted(SMALL_SAMPLES))
def test_smaller_samples_to_tables(shared_data, store, name):
    dataset = store.dataset(
        ingest_wikipedia(source=str(shared_data / "wikipedia_xml" / name), store=store.url)
    )
    counts = dataset.manifest().counts
    pages, articles, redirects, other = SMALL_SAMPLES[name]
    assert (counts["pages_in"], counts["articles"], counts["redirects"], counts["other_namespace"]) == (
        pages, articles, redirects, other,
    )  # fmt: skip
    assert counts["rejected"] == counts["empty_after_cleaning"] == 0
    table = dataset.read_table("articles")
    assert table.schema.equals(schemas.ARTICLES) and table.num_rows == articles
    assert dataset.read_table("redirects").schema.equals(schemas.REDIRECTS)
    for text in table["text"].to_pylist():
        assert text and not any(m in text for m in ("{{", "[[", "<ref", "{|", "|}", "||"))


def test_latgalian_dump_with_other_namespaces(shared_data, store):
    name = ingest_wikipedia(
        source=str(shared_data / "wikipedia_xml" / LATGALIAN), store=store.url, namespaces=[0, 14]
    )
    dataset = store.dataset(name)
    counts = dataset.manifest().counts
    assert counts["pages_in"] == 2004
    assert sum(counts[k] for k in wikipedia.COUNT_KEYS[1:]) == 2004
    articles = dataset.read_table("articles", columns=["namespace", "wiki", "categories"])
    assert set(articles["namespace"].to_pylist()) == {0, 14}
    assert set(articles["wiki"].to_pylist()) == {"ltgwiki"}
    assert dataset.manifest().metrics["siteinfo"]["namespaces"]["14"] == "Kategoreja"


def test_cli_names_a_missing_dump_and_the_fix(tmp_path, capsys):
    from flows.cli import main

    status = main(["ingest-wikipedia", str(tmp_path / "nope.xml.bz2"), "--store", str(tmp_path / "s")])
    assert status == 2
    assert "nope.xml.bz2' not found: give a local" in capsys.readouterr().err


def test_cli_downloads_wiki_date_from_a_mirror_that_drops_the_connection(shared_data, tmp_path, capsys):
    import hashlib

    from flows.cli import main
    from tests.tasks.wikidumps import Mirror

    xml = bz2.decompress((shared_data / "wikipedia_xml" / ENGLISH).read_bytes())
    dump, index = write_multistream(xml, tmp_path / "src-pages-articles-multistream.xml.bz2", 20)
    base = "/testwiki/20240601/testwiki-20240601"
    sums = ""
    with Mirror() as mirror:
        for suffix, path in (
            ("pages-articles-multistream.xml.bz2", dump),
            ("pages-articles-multistream-index.txt.bz2", index),
        ):
            mirror.files[f"{base}-{suffix}"] = path.read_bytes()
            sums += f"{hashlib.sha1(path.read_bytes()).hexdigest()}  testwiki-20240601-{suffix}\n"
        mirror.files[f"{base}-sha1sums.txt"] = sums.encode()
        mirror.drop_after[f"{base}-pages-articles-multistream.xml.bz2"] = dump.stat().st_size // 2
        status = main([
            "ingest-wikipedia", "testwiki:20240601", "--mirror", mirror.url, "--store", str(tmp_path / "store"),
            "--download-dir", str(tmp_path / "downloads"), "--chunk-mb", "0.1", "--show", "1",
        ])  # fmt: skip
        ranges = [r for p, r in mirror.requests if p.endswith("multistream.xml.bz2")]
    assert status == 0
    assert ranges == [None, f"bytes={dump.stat().st_size // 2}-"]  # resumed where the drop left it
    from storage import Store

    dataset = Store(tmp_path / "store").dataset("wikipedia/testwiki-20240601-pages-articles-multistream")
    assert dataset.manifest().counts["articles"] == 106 and dataset.manifest().metrics["chunks"] > 1
    assert "[12] Anarchism" in capsys.readouterr().out


def test_cli_stops_on_a_wrong_checksum(shared_data, tmp_path, capsys, monkeypatch):
    from flows import ingest_wikipedia as module
    from flows.cli import main
    from tests.tasks.wikidumps import Mirror

    # a bad checksum is worth a fresh download, twice, 30 s apart; once is enough here
    monkeypatch.setattr(module, "fetch_dump", module.fetch_dump.with_options(retries=0))

    with Mirror() as mirror:
        mirror.files["/enwiki/20240601/enwiki-20240601-pages-articles.xml.bz2"] = (
            shared_data / "wikipedia_xml" / ENGLISH
        ).read_bytes()
        mirror.files["/enwiki/20240601/enwiki-20240601-sha1sums.txt"] = (
            f"{'0' * 40}  enwiki-20240601-pages-articles.xml.bz2\n".encode()
        )
        status = main([
            "ingest-wikipedia", f"{mirror.url}/enwiki/20240601/enwiki-20240601-pages-articles.xml.bz2",
            "--store", str(tmp_path / "store"), "--download-dir", str(tmp_path / "downloads"),
        ])  # fmt: skip
    assert status == 2
    assert "the mirror publishes 0000000000" in capsys.readouterr().err
    assert list((tmp_path / "downloads").iterdir()) == []


@pytest.mark.slow
def test_runs_on_a_local_dask_cluster(shared_data, store, tmp_path):
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    xml = bz2.decompress((shared_data / "wikipedia_xml" / ENGLISH).read_bytes())
    dump, _ = write_multistream(xml, tmp_path / "enwiki-d-pages-articles-multistream.xml.bz2", 10)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        flow = ingest_wikipedia.with_options(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
        name = flow(source=str(dump), store=store.url, chunk_mb=0.05)
    manifest = store.dataset(name).manifest()
    assert manifest.metrics["chunks"] > 3 and manifest.counts["articles"] == 106


@pytest.mark.slow
def test_cli_in_two_processes_reports_to_one_temporary_server(shared_data, tmp_path):
    """With no PREFECT_API_URL, the worker processes report to the run's temporary server."""
    import os
    import subprocess
    import sys

    xml = bz2.decompress((shared_data / "wikipedia_xml" / ENGLISH).read_bytes())
    dump, _ = write_multistream(xml, tmp_path / "enwiki-p-pages-articles-multistream.xml.bz2", 20)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    command = [
        sys.executable, "-m", "flows.cli", "ingest-wikipedia", str(dump), "--store", str(tmp_path / "store"),
        "--processes", "2", "--chunk-mb", "0.1", "--show", "0",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert output.count("Starting temporary server") == 1
    assert "articles=106" in done.stdout and "redirects=99" in done.stdout
