"""Finding, downloading and cutting dumps: against a mirror served from 127.0.0.1 by the test."""

from __future__ import annotations

import bz2
import gzip
import hashlib
from pathlib import Path

import httpx
import pytest

from tasks.dumps import (
    ChecksumError,
    RemoteDump,
    download,
    fetch,
    find_index,
    offsets_by_scanning,
    offsets_from_index,
    plan_chunks,
    resolve,
)
from tasks.wikixml import RawPage, decompressed_blocks, iter_pages
from tests.tasks.wikidumps import Mirror, write_multistream

ENGLISH = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


@pytest.fixture
def mirror():
    with Mirror() as m:
        yield m


@pytest.fixture(scope="module")
def english_bytes(shared_data) -> bytes:
    return (shared_data / "wikipedia_xml" / ENGLISH).read_bytes()


def test_resolve_wiki_date_local_and_missing(tmp_path):
    remote = resolve("simplewiki:20240601", "http://127.0.0.1:9")
    assert remote == RemoteDump(
        url="http://127.0.0.1:9/simplewiki/20240601/simplewiki-20240601-pages-articles-multistream.xml.bz2",
        index_url="http://127.0.0.1:9/simplewiki/20240601/simplewiki-20240601-pages-articles-multistream-index.txt.bz2",
        checksums_url="http://127.0.0.1:9/simplewiki/20240601/simplewiki-20240601-sha1sums.txt",
    )
    local = tmp_path / "a.xml.bz2"
    local.write_bytes(b"")
    assert resolve(str(local)) == local
    with pytest.raises(ValueError, match="not found: give a local"):
        resolve(str(tmp_path / "missing.xml.bz2"))


def test_download_resumes_with_range_after_a_dropped_connection(mirror, english_bytes, tmp_path):
    half = len(english_bytes) // 2
    mirror.files["/d.xml.bz2"] = english_bytes
    mirror.drop_after["/d.xml.bz2"] = half  # the connection drops half way through
    sha1 = hashlib.sha1(english_bytes).hexdigest()
    path = download(
        f"{mirror.url}/d.xml.bz2", tmp_path / "d.xml.bz2", checksum=("sha1", sha1), backoff_s=0.01
    )
    assert path.read_bytes() == english_bytes
    assert mirror.requests == [("/d.xml.bz2", None), ("/d.xml.bz2", f"bytes={half}-")]
    assert not (tmp_path / "d.xml.bz2.part").exists()


def test_interrupted_download_resumes_on_the_next_run(mirror, english_bytes, tmp_path):
    half = len(english_bytes) // 2
    mirror.files["/d.xml.bz2"] = english_bytes
    mirror.drop_after["/d.xml.bz2"] = half
    with pytest.raises(httpx.TransportError):  # one attempt only: the run dies with half the file
        download(f"{mirror.url}/d.xml.bz2", tmp_path / "d.xml.bz2", attempts=1)
    assert (tmp_path / "d.xml.bz2.part").stat().st_size == half
    download(f"{mirror.url}/d.xml.bz2", tmp_path / "d.xml.bz2")
    assert (tmp_path / "d.xml.bz2").read_bytes() == english_bytes
    assert mirror.requests[-1] == ("/d.xml.bz2", f"bytes={half}-")


def test_download_starts_over_when_the_server_ignores_range(mirror, english_bytes, tmp_path):
    mirror.files["/d.xml.bz2"] = english_bytes
    mirror.drop_after["/d.xml.bz2"] = 50_000
    mirror.ignore_range = True
    path = download(f"{mirror.url}/d.xml.bz2", tmp_path / "d.xml.bz2", backoff_s=0.01)
    assert path.read_bytes() == english_bytes


def test_wrong_checksum_deletes_the_download(mirror, english_bytes, tmp_path):
    mirror.files["/d.xml.bz2"] = english_bytes
    with pytest.raises(ChecksumError, match="sha1 is .* the mirror publishes 0000"):
        download(f"{mirror.url}/d.xml.bz2", tmp_path / "d.xml.bz2", checksum=("sha1", "0" * 40))
    assert not (tmp_path / "d.xml.bz2").exists() and not (tmp_path / "d.xml.bz2.part").exists()


def test_fetch_wiki_date_downloads_dump_and_index_verified(mirror, shared_data, tmp_path):
    xml = bz2.decompress((shared_data / "wikipedia_xml" / ENGLISH).read_bytes())
    dump, index = write_multistream(xml, tmp_path / "src-multistream.xml.bz2")
    base = "/testwiki/20240601/testwiki-20240601"
    names = {
        "dump": "testwiki-20240601-pages-articles-multistream.xml.bz2",
        "index": "testwiki-20240601-pages-articles-multistream-index.txt.bz2",
    }
    mirror.files[f"{base}-pages-articles-multistream.xml.bz2"] = dump.read_bytes()
    mirror.files[f"{base}-pages-articles-multistream-index.txt.bz2"] = index.read_bytes()
    mirror.files[f"{base}-sha1sums.txt"] = (
        f"{hashlib.sha1(dump.read_bytes()).hexdigest()}  {names['dump']}\n"
        f"{hashlib.sha1(index.read_bytes()).hexdigest()}  {names['index']}\n"
    ).encode()
    got_dump, got_index = fetch("testwiki:20240601", tmp_path / "downloads", mirror.url)
    assert got_dump.name == names["dump"] and got_dump.read_bytes() == dump.read_bytes()
    assert got_index is not None and got_index.read_bytes() == index.read_bytes()
    # a second fetch finds the verified files and downloads nothing
    before = len(mirror.requests)
    fetch("testwiki:20240601", tmp_path / "downloads", mirror.url)
    assert [path for path, _ in mirror.requests[before:]] == [f"{base}-sha1sums.txt"] * 2


def test_fetch_stops_on_a_wrong_published_checksum(mirror, shared_data, tmp_path):
    xml = bz2.decompress((shared_data / "wikipedia_xml" / ENGLISH).read_bytes())
    dump, index = write_multistream(xml, tmp_path / "src-multistream.xml.bz2")
    base = "/testwiki/20240601/testwiki-20240601"
    name = "testwiki-20240601-pages-articles-multistream.xml.bz2"
    mirror.files[f"{base}-pages-articles-multistream.xml.bz2"] = dump.read_bytes()
    mirror.files[f"{base}-pages-articles-multistream-index.txt.bz2"] = index.read_bytes()
    mirror.files[f"{base}-sha1sums.txt"] = f"{'ab' * 20}  {name}\n".encode()
    mirror.drop_after[f"{base}-pages-articles-multistream.xml.bz2"] = dump.stat().st_size // 2
    with pytest.raises(ChecksumError, match=rf"{name}: sha1 is [0-9a-f]{{40}}, the mirror publishes abab"):
        fetch("testwiki:20240601", tmp_path / "downloads", mirror.url)
    assert list((tmp_path / "downloads").iterdir()) == []  # nothing unverified is left to be read


def pages_in(dump: Path, chunk) -> list[int]:
    with open(dump, "rb") as f:
        return [
            p.page_id
            for p in iter_pages(decompressed_blocks(f, str(dump), chunk.start, chunk.end), str(dump))
            if isinstance(p, RawPage)
        ]


@pytest.mark.parametrize("with_index", [True, False])
def test_multistream_chunks_hold_whole_streams_and_every_page_once(shared_data, tmp_path, with_index):
    xml = bz2.decompress((shared_data / "wikipedia_xml" / ENGLISH).read_bytes())
    dump, index = write_multistream(xml, tmp_path / "x-multistream.xml.bz2", pages_per_stream=10)
    assert find_index(dump) == index
    streams = offsets_from_index(index)
    assert len(streams) == 21 and streams == offsets_by_scanning(dump)[1:-1]
    chunks = plan_chunks(dump, 60_000, index if with_index else None)
    assert len(chunks) > 3
    assert chunks[0].start == 0 and chunks[-1].end == dump.stat().st_size
    assert all(a.end == b.start for a, b in zip(chunks, chunks[1:], strict=False))
    assert all(c.start in offsets_by_scanning(dump) for c in chunks)
    ids = [page for chunk in chunks for page in pages_in(dump, chunk)]
    with open(shared_data / "wikipedia_xml" / ENGLISH, "rb") as f:
        whole = [p.page_id for p in iter_pages(decompressed_blocks(f, ENGLISH), ENGLISH)]
    assert ids == whole


def test_chunk_digests_tell_a_completed_file_from_another(shared_data, tmp_path):
    xml = bz2.decompress((shared_data / "wikipedia_xml" / ENGLISH).read_bytes())
    dump, index = write_multistream(xml, tmp_path / "x-multistream.xml.bz2", pages_per_stream=10)
    whole = plan_chunks(dump, 60_000, index)
    data = dump.read_bytes()
    dump.write_bytes(data[: int(len(data) * 0.6)])  # a copy cut short: its first chunks are the same
    cut = plan_chunks(dump, 60_000, index)
    same = [a == b for a, b in zip(whole, cut, strict=False)]
    assert same[:-1] == [True] * (len(cut) - 1) and not same[-1]
    other = bytearray(data)
    other[100] ^= 1  # a different file of the same size: no chunk of it is taken for the old one
    dump.write_bytes(bytes(other))
    assert plan_chunks(dump, 60_000, index)[0].digest != whole[0].digest


def test_single_stream_and_gzip_are_one_chunk(shared_data, tmp_path):
    dump = shared_data / "wikipedia_xml" / ENGLISH
    assert len(plan_chunks(dump, 1000)) == 1
    xml = tmp_path / "d.xml.gz"
    xml.write_bytes(gzip.compress(bz2.decompress(dump.read_bytes())))
    assert [(c.start, c.end) for c in plan_chunks(xml, 1000)] == [(0, xml.stat().st_size)]
    with pytest.raises(ValueError, match="at least 1 byte"):
        plan_chunks(dump, 0)


def test_bad_index_line_names_the_file_and_line(tmp_path):
    index = tmp_path / "x-index.txt.bz2"
    index.write_bytes(bz2.compress(b"600:10:A\nnot an index line\n"))
    with pytest.raises(ValueError, match=r"x-index\.txt\.bz2 line 2: expected 'offset:page_id:title'"):
        offsets_from_index(index)
