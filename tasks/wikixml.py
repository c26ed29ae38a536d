"""Reading MediaWiki XML exports: siteinfo, and pages streamed from any byte range of a dump.

Dumps come as .xml, .xml.gz, .xml.bz2 and multistream .xml.bz2 (many bz2 streams of 100 pages
each, so a byte range of whole streams decompresses on its own). Nothing here loads a whole dump:
bytes are decompressed block by block, pages are cut out of the running buffer one at a time and
each page is parsed alone, so one malformed page is rejected without stopping the rest.

    with open(path, "rb") as f:
        for page in iter_pages(decompressed_blocks(f, path, start, end), source=path):
            ...
"""

from __future__ import annotations

import bz2
import queue
import re
import threading
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import BinaryIO

from tasks.common import InputError

BLOCK_SIZE = 1 << 18  # compressed bytes a read: ~1 MB of XML, small enough for reading ahead
# a page bigger than this is rejected rather than buffered (the largest enwiki page is ~2-4 MB of text)
MAX_PAGE_BYTES = 64 << 20

# canonical namespace names MediaWiki accepts on every wiki, whatever its language
CANONICAL_NAMESPACES = {
    -2: "Media",
    -1: "Special",
    1: "Talk",
    2: "User",
    3: "User talk",
    4: "Project",
    5: "Project talk",
    6: "File",
    7: "File talk",
    8: "MediaWiki",
    9: "MediaWiki talk",
    10: "Template",
    11: "Template talk",
    12: "Help",
    13: "Help talk",
    14: "Category",
    15: "Category talk",
}
ALIASES = {6: ["Image"], 7: ["Image talk"]}


class DumpError(InputError):
    """A truncated or corrupt dump: the message names the file and where it broke."""


@dataclass
class SiteInfo:
    """What the <siteinfo> header says; defaults to English names where the dump has none."""

    dbname: str = ""
    lang: str = ""
    base: str = ""
    case: str = "first-letter"
    schema_version: str = ""
    namespaces: dict[int, str] = field(default_factory=dict)

    def names(self, key: int) -> list[str]:
        """Every name that refers to namespace ``key``: the local one, the canonical one, aliases."""
        names = [self.namespaces.get(key, ""), CANONICAL_NAMESPACES.get(key, ""), *ALIASES.get(key, [])]
        return [n for n in dict.fromkeys(names) if n]

    def prefixes(self) -> dict[str, int]:
        """Lower-cased namespace name -> key, for telling `[[File:x]]` from `[[x]]` in any language."""
        found: dict[str, int] = {}
        for key in set(self.namespaces) | set(CANONICAL_NAMESPACES):
            if key == 0:
                continue
            for name in self.names(key):
                found[name.lower()] = key
                found[name.lower().replace(" ", "_")] = key
        return found

    def to_dict(self) -> dict:
        return {
            "dbname": self.dbname,
            "lang": self.lang,
            "base": self.base,
            "case": self.case,
            "schema_version": self.schema_version,
            "namespaces": {str(k): v for k, v in self.namespaces.items()},
        }

    @classmethod
    def from_dict(cls, value: dict) -> SiteInfo:
        value = dict(value)
        value["namespaces"] = {int(k): v for k, v in value.get("namespaces", {}).items()}
        return cls(**value)


@dataclass
class RawPage:
    """One <page> as exported: wikitext and metadata, before cleaning."""

    page_id: int
    namespace: int
    title: str
    revision_id: int | None
    timestamp: datetime | None
    redirect: str | None
    text: str | None
    offset: int  # byte offset of the page in the decompressed range, for error messages


@dataclass
class BadPage:
    """A page that could not be read: kept to be written to the rejects table."""

    page_id: int | None
    title: str | None
    reason: str
    detail: str
    offset: int


# --- decompression ------------------------------------------------------------------------------


def compression_of(path: str) -> str:
    name = path.lower()
    for suffix, kind in ((".bz2", "bz2"), (".gz", "gzip"), (".xml", "none")):
        if name.endswith(suffix):
            return kind
    raise ValueError(f"{path}: expected a .xml, .xml.bz2 or .xml.gz MediaWiki export")


def decompressed_blocks(file: BinaryIO, path: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """Decompress bytes [start, end) of a dump, across as many concatenated streams as it holds.

    Raises DumpError naming the file and the offset of the stream that breaks, when the data is
    corrupt or ends before a stream's end marker.
    """
    kind = compression_of(path)
    file.seek(start)
    remaining = None if end is None else end - start
    position = start  # offset of the next compressed byte to read
    stream_start = start

    def new_decompressor():
        return bz2.BZ2Decompressor() if kind == "bz2" else zlib.decompressobj(wbits=47)

    decompressor = None if kind == "none" else new_decompressor()
    while True:
        size = BLOCK_SIZE if remaining is None else min(BLOCK_SIZE, remaining)
        data = file.read(size) if size else b""
        if remaining is not None:
            remaining -= len(data)
        if not data:
            break
        position += len(data)
        if decompressor is None:
            yield data
            continue
        while data:
            try:
                out = decompressor.decompress(data)
            except (OSError, zlib.error, EOFError) as e:
                raise DumpError(
                    f"{path} is corrupt: invalid {kind} data in the stream starting at byte {stream_start:,} "
                    f"({e}); download the file again"
                ) from None
            if out:
                yield out
            if decompressor.eof:
                data = decompressor.unused_data
                stream_start = position - len(data)
                decompressor = new_decompressor()
            else:
                data = b""
    if decompressor is not None and stream_start < position:
        # bytes of a stream were read but its end marker never came
        raise DumpError(
            f"{path} is truncated: the {kind} stream starting at byte {stream_start:,} ends at byte "
            f"{position:,} before its end marker; download the file again (finished chunks are kept)"
        )


def read_ahead(blocks: Iterator[bytes], depth: int = 4) -> Iterator[bytes]:
    """The same blocks, made by a thread up to ``depth`` blocks ahead of the reader.

    bz2 and zlib release the GIL while they decompress, so the thread's decompression overlaps the
    parsing of the blocks before: bz2 is about half the work of a page (21 MB/s of XML against ~3 ms
    a page to parse and clean on the English sample, 2-core x86_64, 2026-12). Memory stays bounded:
    at most ``depth`` blocks wait. An error in the thread (DumpError) is raised here, in order.
    """
    finished = object()
    waiting: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def hand_over(item) -> bool:
        while not stop.is_set():
            try:
                waiting.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for block in blocks:
                if not hand_over(block):
                    return
            hand_over(finished)
        except BaseException as error:  # handed to the reader, which raises it
            hand_over(error)

    thread = threading.Thread(target=produce, name="dump-reader", daemon=True)
    thread.start()
    try:
        while (item := waiting.get()) is not finished:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


# --- siteinfo -----------------------------------------------------------------------------------

_VERSION = re.compile(rb'export-(\d+\.\d+)/?"')
_LANG = re.compile(rb'xml:lang="([^"]+)"')


def read_siteinfo(
    blocks: Iterable[bytes], source: str = "the dump", limit: int = 4 << 20
) -> tuple[SiteInfo, int]:
    """Read the header of a dump up to its first <page>; returns the siteinfo and the header's size.

    A dump without <siteinfo> (Special:Export of a few pages) gives the defaults: English names.
    """
    head = b""
    for block in blocks:
        head += block
        if b"<page>" in head or b"</siteinfo>" in head or len(head) > limit:
            break
    first_page = head.find(b"<page>")
    header = head if first_page < 0 else head[:first_page]
    info = SiteInfo()
    if (match := _VERSION.search(header)) is not None:
        info.schema_version = match.group(1).decode()
    if (match := _LANG.search(header)) is not None:
        info.lang = match.group(1).decode()
    start, stop = header.find(b"<siteinfo>"), header.find(b"</siteinfo>")
    if start >= 0 and stop > start:
        try:
            element = ET.fromstring(header[start : stop + len(b"</siteinfo>")])
            for ns in element.iter("namespace"):
                info.namespaces[int(ns.get("key"))] = ns.text or ""
        except (ET.ParseError, TypeError, ValueError) as e:
            raise DumpError(
                f"{source}: its <siteinfo> header (byte {start:,} of the XML) is not readable ({e}); "
                "the file is corrupt: download it again"
            ) from None
        info.dbname = element.findtext("dbname") or ""
        info.base = element.findtext("base") or ""
        info.case = element.findtext("case") or info.case
    return info, len(header)


# --- pages --------------------------------------------------------------------------------------


def _parse_timestamp(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def parse_page(xml: bytes, offset: int) -> RawPage | BadPage:
    """Parse one <page>...</page> element."""
    try:
        element = ET.fromstring(xml)
    except ET.ParseError as e:
        title = re.search(rb"<title>([^<]*)</title>", xml)
        page_id = re.search(rb"<id>(\d+)</id>", xml)
        return BadPage(
            int(page_id.group(1)) if page_id else None,
            title.group(1).decode("utf-8", "replace") if title else None,
            "malformed_xml",
            str(e),
            offset,
        )
    title = element.findtext("title")
    page_id = element.findtext("id")
    try:
        if title is None or page_id is None:
            raise ValueError("the page has no <title> or no <id>")
        namespace = int(element.findtext("ns") or 0)
        revision = element.find("revision")
        text = revision_id = timestamp = None
        if revision is not None:
            revision_id = int(revision.findtext("id")) if revision.findtext("id") else None
            timestamp = _parse_timestamp(revision.findtext("timestamp"))
            text_element = revision.find("text")
            if text_element is not None and text_element.get("deleted") is None:
                text = text_element.text or ""
        redirect = element.find("redirect")
        return RawPage(
            page_id=int(page_id),
            namespace=namespace,
            title=title,
            revision_id=revision_id,
            timestamp=timestamp,
            redirect=redirect.get("title") if redirect is not None else None,
            text=text,
            offset=offset,
        )
    except ValueError as e:
        return BadPage(
            int(page_id) if page_id and page_id.isdigit() else None, title, "bad_metadata", str(e), offset
        )


def iter_pages(blocks: Iterable[bytes], source: str) -> Iterator[RawPage | BadPage]:
    """Cut <page> elements out of decompressed blocks and parse each alone.

    Bytes before the first <page> (the header) and after the last are ignored. A page larger than
    MAX_PAGE_BYTES is rejected and skipped without being buffered whole. An unfinished page at the
    end means the data stopped in the middle of a page: DumpError.
    """
    buffer = b""
    consumed = 0  # decompressed bytes dropped from the front of the buffer
    skipping: int | None = None  # offset of an oversized page being skipped
    for block in blocks:
        buffer += block
        position = 0
        while True:
            if skipping is not None:
                stop = buffer.find(b"</page>", position)
                if stop < 0:
                    position = max(position, len(buffer) - len(b"</page>"))
                    break
                position, skipping = stop + len(b"</page>"), None
                continue
            start = buffer.find(b"<page>", position)
            if start < 0:
                # keep a tail in case "<page>" is split across blocks
                position = max(position, len(buffer) - len(b"<page>"))
                break
            stop = buffer.find(b"</page>", start)
            if stop < 0:
                if len(buffer) - start > MAX_PAGE_BYTES:
                    yield BadPage(
                        _peek_id(buffer, start),
                        _peek_title(buffer, start),
                        "too_large",
                        f"page larger than {MAX_PAGE_BYTES:,} bytes of XML",
                        consumed + start,
                    )
                    skipping, position = consumed + start, start + len(b"<page>")
                    continue
                position = start
                break
            stop += len(b"</page>")
            yield parse_page(buffer[start:stop], consumed + start)
            position = stop
        consumed += position
        buffer = buffer[position:]
    unfinished = buffer.find(b"<page>")
    if unfinished >= 0 or skipping is not None:
        at = skipping if skipping is not None else consumed + unfinished
        title = _peek_title(buffer, unfinished) if unfinished >= 0 else None
        raise DumpError(
            f"{source} ends in the middle of a page (decompressed byte {at:,}, title {title!r}): "
            "the file is truncated; download it again (finished chunks are kept)"
        )


def _peek_id(buffer: bytes, start: int) -> int | None:
    match = re.search(rb"<id>(\d+)</id>", buffer[start : start + 4096])
    return int(match.group(1)) if match else None


def _peek_title(buffer: bytes, start: int) -> str | None:
    match = re.search(rb"<title>([^<]*)</title>", buffer[start : start + 4096])
    return match.group(1).decode("utf-8", "replace") if match else None
