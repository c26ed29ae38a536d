"""Reading MediaWiki exports: every sample dump, every compression, and broken files."""

from __future__ import annotations

import bz2
import gzip
import io
import re

import pytest

from tasks import wikixml
from tasks.wikixml import BadPage, DumpError, RawPage, decompressed_blocks, iter_pages, read_siteinfo

# pages in each sample, as ../shared/data/README.md lists them
SAMPLES = {
    "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2": 206,
    "enwiki-table-markup.xml.bz2": 5,
    "zulko-wiki_dump_extractor-tiny_dump-enwiki-export-0.11.xml.bz2": 70,
    "wikipedia2vec-enwiki-pages-articles-sample.xml.bz2": 3,
    "dumpster-dive-ltgwiki-smallwiki-pages-articles.xml.bz2": 2004,
}
ENGLISH = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def read_all(path) -> list:
    with open(path, "rb") as f:
        return list(iter_pages(decompressed_blocks(f, str(path)), str(path)))


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_sample_dump_reads_whole(shared_data, name):
    pages = read_all(shared_data / "wikipedia_xml" / name)
    assert len(pages) == SAMPLES[name]
    assert all(isinstance(p, RawPage) for p in pages)
    assert len({p.page_id for p in pages}) == len(pages)
    assert all(p.title and p.text is not None for p in pages)


def test_siteinfo_gives_language_and_localized_namespaces(shared_data):
    path = shared_data / "wikipedia_xml" / "dumpster-dive-ltgwiki-smallwiki-pages-articles.xml.bz2"
    with open(path, "rb") as f:
        info, _ = read_siteinfo(decompressed_blocks(f, str(path)))
    assert (info.dbname, info.lang, info.schema_version) == ("ltgwiki", "ltg", "0.10")
    assert info.namespaces[6] == "Fails" and info.namespaces[14] == "Kategoreja"
    prefixes = info.prefixes()
    # the local name, the canonical English one and the old alias all mean File:
    assert prefixes["fails"] == prefixes["file"] == prefixes["image"] == 6
    assert prefixes["kategoreja"] == 14


def test_schema_0_11_without_siteinfo(shared_data):
    path = shared_data / "wikipedia_xml" / "zulko-wiki_dump_extractor-tiny_dump-enwiki-export-0.11.xml.bz2"
    with open(path, "rb") as f:
        info, _ = read_siteinfo(decompressed_blocks(f, str(path)))
    assert info.schema_version == "0.11" and info.dbname == "" and info.namespaces == {}
    pages = read_all(path)
    redirects = [p for p in pages if p.redirect]
    assert len(redirects) == 64 and len(pages) - len(redirects) == 6


def test_xml_gz_and_bz2_give_the_same_pages(shared_data, tmp_path):
    source = shared_data / "wikipedia_xml" / ENGLISH
    xml = bz2.decompress(source.read_bytes())
    (tmp_path / "d.xml").write_bytes(xml)
    (tmp_path / "d.xml.gz").write_bytes(gzip.compress(xml))
    expected = [(p.page_id, p.title, p.text) for p in read_all(source)]
    for name in ("d.xml", "d.xml.gz"):
        assert [(p.page_id, p.title, p.text) for p in read_all(tmp_path / name)] == expected


def test_multistream_bz2_reads_across_streams(shared_data, tmp_path):
    from tests.tasks.wikidumps import write_multistream

    xml = bz2.decompress((shared_data / "wikipedia_xml" / ENGLISH).read_bytes())
    dump, _ = write_multistream(xml, tmp_path / "x-multistream.xml.bz2", pages_per_stream=7)
    assert [p.page_id for p in read_all(dump)] == [
        p.page_id for p in read_all(shared_data / "wikipedia_xml" / ENGLISH)
    ]


def test_truncated_bz2_names_the_file_and_the_stream(shared_data, tmp_path):
    data = (shared_data / "wikipedia_xml" / ENGLISH).read_bytes()
    cut = tmp_path / "cut.xml.bz2"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DumpError, match=r"cut\.xml\.bz2 is truncated: the bz2 stream starting at byte 0"):
        read_all(cut)


def test_corrupt_bz2_names_the_file(shared_data, tmp_path):
    data = bytearray((shared_data / "wikipedia_xml" / ENGLISH).read_bytes())
    data[5000:5200] = bytes(200)
    bad = tmp_path / "bad.xml.bz2"
    bad.write_bytes(bytes(data))
    with pytest.raises(DumpError, match=r"bad\.xml\.bz2 is corrupt: invalid bz2 data"):
        read_all(bad)


def test_page_cut_short_in_plain_xml_is_a_truncated_file(tmp_path):
    xml = tmp_path / "short.xml"
    xml.write_bytes(b"<mediawiki><page><title>A</title><id>1</id><revision><text>abc")
    with pytest.raises(DumpError, match=r"short\.xml ends in the middle of a page .* title 'A'"):
        read_all(xml)


def test_malformed_page_is_rejected_and_reading_goes_on():
    xml = (
        b"<mediawiki>"
        b"<page><title>Good</title><ns>0</ns><id>1</id><revision><id>5</id><text>x</text></revision></page>"
        b"<page><title>Bad</title><ns>0</ns><id>2</id><revision><text>a <b> c</text></revision></page>"
        b"<page><title>NoId</title><ns>0</ns><revision><text>y</text></revision></page>"
        b"<page><title>After</title><ns>0</ns><id>3</id><revision><text>z</text></revision></page>"
        b"</mediawiki>"
    )
    pages = list(iter_pages([xml[i : i + 7] for i in range(0, len(xml), 7)], "inline"))  # blocks split tags
    assert [type(p).__name__ for p in pages] == ["RawPage", "BadPage", "BadPage", "RawPage"]
    assert (pages[1].page_id, pages[1].title, pages[1].reason) == (2, "Bad", "malformed_xml")
    assert (pages[2].title, pages[2].reason) == ("NoId", "bad_metadata")
    assert pages[3].title == "After" and pages[3].text == "z"


def test_huge_page_is_skipped_without_buffering_it(monkeypatch):
    monkeypatch.setattr(wikixml, "MAX_PAGE_BYTES", 10_000)
    huge = b"<page><title>Huge</title><ns>0</ns><id>7</id><revision><text>" + b"w " * 50_000
    after = (
        b"</text></revision></page>"
        b"<page><title>Next</title><ns>0</ns><id>8</id><revision><text>ok</text></revision></page>"
    )
    stream = io.BytesIO(b"<mediawiki>" + huge + after + b"</mediawiki>")
    blocks = iter(lambda: stream.read(4096), b"")
    pages = list(iter_pages(blocks, "inline"))
    assert isinstance(pages[0], BadPage) and (pages[0].page_id, pages[0].reason) == (7, "too_large")
    assert isinstance(pages[1], RawPage) and pages[1].title == "Next"
    assert len(pages) == 2


def test_a_page_of_several_megabytes_is_read_whole(shared_data, tmp_path):
    from tests.tasks.wikidumps import split_dump

    xml = bz2.decompress((shared_data / "wikipedia_xml" / ENGLISH).read_bytes())
    header, pages, footer = split_dump(xml)
    anarchism = next(p for p in pages if b"<title>Anarchism</title>" in p)
    start = anarchism.index(b"<text")
    body_start, body_end = anarchism.index(b">", start) + 1, anarchism.index(b"</text>")
    body = anarchism[body_start:body_end]
    copies = 6_000_000 // len(body) + 1
    big = anarchism[:body_start] + b"\n".join([body] * copies) + anarchism[body_end:]
    path = tmp_path / "big.xml.bz2"
    path.write_bytes(bz2.compress(header + pages[0] + big + pages[1] + footer))
    original = next(p for p in read_all(shared_data / "wikipedia_xml" / ENGLISH) if p.title == "Anarchism")
    read = read_all(path)
    assert [p.page_id for p in read] == [
        int(re.search(rb"<id>(\d+)", p)[1]) for p in (pages[0], big, pages[1])
    ]
    assert read[1].text == "\n".join([original.text] * copies) and len(read[1].text) > 5_000_000


def test_unreadable_siteinfo_names_the_file(tmp_path):
    header = b'<mediawiki xml:lang="en"><siteinfo><dbname>x</dbname><namespaces><namespace key="six">'
    header += b"File</namespace></namespaces></siteinfo>"
    path = tmp_path / "broken.xml"
    path.write_bytes(header + b"<page><title>A</title><id>1</id></page></mediawiki>")
    with open(path, "rb") as f:
        with pytest.raises(DumpError, match=r"broken\.xml: its <siteinfo> header .* not readable"):
            read_siteinfo(decompressed_blocks(f, str(path)), str(path))


def test_reading_ahead_keeps_order_raises_errors_and_stops_when_left():
    blocks = [bytes([n]) * 10 for n in range(50)]
    assert list(wikixml.read_ahead(iter(blocks), depth=3)) == blocks

    def broken():
        yield b"first"
        raise DumpError("x.xml.bz2 is truncated")

    reader = wikixml.read_ahead(broken())
    assert next(reader) == b"first"
    with pytest.raises(DumpError, match="truncated"):
        next(reader)

    produced = []

    def endless():
        while True:
            produced.append(1)
            yield b"block"

    reader = wikixml.read_ahead(endless(), depth=2)
    next(reader)
    reader.close()  # the reader stops early: the thread stops too, a few blocks ahead at most
    stopped_at = len(produced)
    assert stopped_at <= 5
    assert len(produced) == stopped_at
