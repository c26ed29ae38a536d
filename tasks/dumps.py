"""Getting a dump and cutting it into chunks: mirrors, resumable verified downloads, bz2 streams.

A source is a local file, an http(s) URL, or `WIKI:DATE` (`simplewiki:latest`, `enwiki:20240601`)
resolved against a dump mirror to its pages-articles multistream file, its index and its checksums.
Downloads resume after an interruption with HTTP Range requests and are verified against the
checksum the mirror publishes. A multistream dump is cut into chunks of whole bz2 streams, found from
its index file when there is one and by scanning for stream headers when there is not.
"""

from __future__ import annotations

import bz2
import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx

from tasks.common import InputError, run_logger

DEFAULT_MIRROR = os.environ.get("EMBEDPIPE_WIKI_MIRROR", "https://dumps.wikimedia.org")
WIKI_DATE = re.compile(r"^(?P<wiki>[a-z][a-z0-9_-]*wik[a-z]*):(?P<date>latest|\d{8})$")
# a bz2 stream starts byte-aligned with "BZh" + block size, then the first block's magic (pi in BCD)
STREAM_HEADER = re.compile(rb"BZh[1-9]\x31\x41\x59\x26\x53\x59")
SCAN_BLOCK = 16 << 20


class ChecksumError(InputError):
    """A downloaded file does not match its published checksum (the download is deleted)."""


@dataclass(frozen=True)
class RemoteDump:
    """Where a dump and its companions live on a mirror."""

    url: str
    index_url: str | None
    checksums_url: str | None


@dataclass(frozen=True)
class Chunk:
    """Bytes [start, end) of a dump file: whole compressed streams, or the whole file.

    ``digest`` identifies those bytes (their offsets, and a hash of their first and last 64 KB): a
    re-run keeps a finished chunk only while the file still holds the same bytes there, so a dump
    completed after a truncated copy resumes from the chunks it had, and a new dump under the same
    name (`simplewiki-latest-...`) starts over.
    """

    number: int
    start: int
    end: int
    digest: str = ""

    @property
    def size(self) -> int:
        return self.end - self.start


def resolve(source: str, mirror: str = DEFAULT_MIRROR) -> RemoteDump | Path:
    """A local path as is; a URL or WIKI:DATE as the remote files to download."""
    if (match := WIKI_DATE.match(source)) is not None:
        wiki, date = match["wiki"], match["date"]
        base = f"{mirror.rstrip('/')}/{wiki}/{date}/{wiki}-{date}"
        return RemoteDump(
            url=f"{base}-pages-articles-multistream.xml.bz2",
            index_url=f"{base}-pages-articles-multistream-index.txt.bz2",
            checksums_url=f"{base}-sha1sums.txt",
        )
    if urlparse(source).scheme in ("http", "https"):
        return RemoteDump(url=source, index_url=None, checksums_url=None)
    path = Path(source).expanduser()
    if not path.is_file():
        raise InputError(
            f"dump {source!r} not found: give a local .xml/.xml.bz2/.xml.gz file, an http(s) URL, "
            "or WIKI:DATE such as simplewiki:latest"
        )
    return path


def published_checksum(checksums_url: str, file_name: str, client: httpx.Client) -> tuple[str, str] | None:
    """(algorithm, hex digest) of a file from the mirror's sha1sums/md5sums listing, if it lists it."""
    response = client.get(checksums_url)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    algorithm = "md5" if "md5" in checksums_url.rsplit("/", 1)[-1] else "sha1"
    for line in response.text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == file_name:
            return algorithm, parts[0].lower()
    return None


def download(
    url: str,
    destination: Path,
    *,
    checksum: tuple[str, str] | None = None,
    client: httpx.Client | None = None,
    attempts: int = 8,
    backoff_s: float = 1.0,
) -> Path:
    """Download ``url`` to ``destination``, resuming a partial file, then verify its checksum.

    The bytes go to ``destination.part`` and are renamed when complete and verified. A dropped
    connection is retried with a Range request from where it stopped; a server that ignores Range
    makes the download start over. A checksum mismatch deletes the file and raises ChecksumError.
    """
    logger = run_logger()
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.exists() and (checksum is None or _file_digest(destination, checksum[0]) == checksum[1]):
        return destination
    partial = destination.with_name(destination.name + ".part")
    own_client = client is None
    client = client or httpx.Client(follow_redirects=True, timeout=httpx.Timeout(60.0, connect=15.0))
    try:
        for attempt in range(1, attempts + 1):
            have = partial.stat().st_size if partial.exists() else 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                with client.stream("GET", url, headers=headers) as response:
                    if response.status_code == 416:  # nothing left to send: the file is complete
                        break
                    response.raise_for_status()
                    if have and response.status_code != 206:
                        logger.warning("%s ignores Range requests: starting over", urlparse(url).netloc)
                        have = 0
                    total = _total_size(response, have)
                    with open(partial, "ab" if have else "wb") as f:
                        for block in response.iter_bytes():  # as it arrives: a drop loses nothing received
                            f.write(block)
                if total is not None and partial.stat().st_size < total:
                    raise httpx.RemoteProtocolError(
                        f"connection closed at {partial.stat().st_size:,}/{total:,} bytes"
                    )
                break
            except (httpx.TransportError, httpx.RemoteProtocolError) as e:
                if attempt == attempts:
                    raise
                wait = backoff_s * 2 ** (attempt - 1)
                got = partial.stat().st_size if partial.exists() else 0
                logger.warning(
                    "download of %s interrupted at %s bytes (%s); resuming in %.0f s",
                    url,
                    f"{got:,}",
                    e,
                    wait,
                )
                time.sleep(wait)
    finally:
        if own_client:
            client.close()
    if checksum is not None:
        algorithm, expected = checksum
        actual = _file_digest(partial, algorithm)
        if actual != expected:
            partial.unlink()
            raise ChecksumError(
                f"{url}: {algorithm} is {actual}, the mirror publishes {expected}; the partial file was deleted, "
                "run again to download it afresh"
            )
    partial.replace(destination)
    return destination


def _total_size(response: httpx.Response, have: int) -> int | None:
    if response.status_code == 206 and (content_range := response.headers.get("content-range")):
        total = content_range.rsplit("/", 1)[-1]
        return int(total) if total.isdigit() else None
    length = response.headers.get("content-length")
    return int(length) + (have if response.status_code == 206 else 0) if length else None


def _file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def fetch(source: str, download_dir: Path, mirror: str = DEFAULT_MIRROR) -> tuple[Path, Path | None]:
    """The local dump file for a source (downloading it if remote), and its index file if any."""
    resolved = resolve(source, mirror)
    if isinstance(resolved, Path):
        return resolved, find_index(resolved)
    with httpx.Client(follow_redirects=True, timeout=httpx.Timeout(60.0, connect=15.0)) as client:
        name = Path(urlparse(resolved.url).path).name
        checksum = None
        checksums_url = resolved.checksums_url or _sibling_checksums(resolved.url)
        if checksums_url:
            checksum = published_checksum(checksums_url, name, client)
        if checksum is None:
            run_logger().warning("no published checksum found for %s: the download is not verified", name)
        dump = download(resolved.url, download_dir / name, checksum=checksum, client=client)
        index = None
        if resolved.index_url:
            index_name = Path(urlparse(resolved.index_url).path).name
            index_checksum = published_checksum(checksums_url, index_name, client) if checksums_url else None
            index = download(
                resolved.index_url, download_dir / index_name, checksum=index_checksum, client=client
            )
    return dump, index


def _sibling_checksums(url: str) -> str | None:
    """For a URL like .../enwiki/20240601/enwiki-20240601-pages-articles.xml.bz2, its sha1sums file."""
    match = re.search(r"/(?P<wiki>[a-z0-9_-]+)-(?P<date>latest|\d{8})-[^/]+$", url)
    return f"{url.rsplit('/', 1)[0]}/{match['wiki']}-{match['date']}-sha1sums.txt" if match else None


# --- chunks -------------------------------------------------------------------------------------


def find_index(dump: Path) -> Path | None:
    """The multistream index next to a dump (…-multistream.xml.bz2 → …-multistream-index.txt.bz2)."""
    name = dump.name
    if "multistream" in name and name.endswith(".xml.bz2"):
        candidate = dump.with_name(name.replace(".xml.bz2", "-index.txt.bz2"))
        if candidate.exists():
            return candidate
    return None


def offsets_from_index(index: Path) -> list[int]:
    """Stream offsets from a multistream index (lines `offset:page_id:title`), in file order."""
    offsets: set[int] = set()
    opener = bz2.open if index.name.endswith(".bz2") else open
    with opener(index, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            head = line.split(":", 1)[0]
            if not head.isdigit():
                raise InputError(f"{index} line {number}: expected 'offset:page_id:title', got {line[:80]!r}")
            offsets.add(int(head))
    return sorted(offsets)


def offsets_by_scanning(dump: Path) -> list[int]:
    """Offsets of every bz2 stream in a file, found by their byte-aligned headers (~1 GB/s)."""
    offsets = []
    with open(dump, "rb") as f:
        position = 0
        tail = b""
        while block := f.read(SCAN_BLOCK):
            data = tail + block
            base = position - len(tail)
            offsets.extend(base + m.start() for m in STREAM_HEADER.finditer(data))
            tail = data[-9:]
            position += len(block)
    return sorted(set(offsets))


def _is_stream_start(f, offset: int) -> bool:
    """A header can appear inside compressed data by chance; a real stream decompresses."""
    f.seek(offset)
    try:
        bz2.BZ2Decompressor().decompress(f.read(1 << 16), max_length=64)
        return True
    except OSError:
        return False


def plan_chunks(dump: Path, chunk_bytes: int, index: Path | None = None) -> list[Chunk]:
    """Cut a dump into chunks of about ``chunk_bytes`` compressed bytes, each whole bz2 streams.

    Files that are not multistream bz2 (.xml, .xml.gz, single-stream .bz2) are one chunk.
    """
    if chunk_bytes < 1:
        raise InputError(f"chunk size must be at least 1 byte, got {chunk_bytes}")
    size = dump.stat().st_size
    bounds = [0, size]
    if dump.name.endswith(".bz2"):
        offsets = offsets_from_index(index) if index is not None else offsets_by_scanning(dump)
        offsets = sorted({0, *(o for o in offsets if 0 <= o < size)})
        bounds = [0]
        with open(dump, "rb") as f:
            for offset in offsets[1:]:
                if offset - bounds[-1] >= chunk_bytes and (index is not None or _is_stream_start(f, offset)):
                    bounds.append(offset)
        bounds.append(size)
    with open(dump, "rb") as f:
        return [
            Chunk(number, start, end, _range_digest(f, start, end))
            for number, (start, end) in enumerate(zip(bounds, bounds[1:], strict=False))
        ]


def _range_digest(f, start: int, end: int, sample: int = 1 << 16) -> str:
    digest = hashlib.blake2b(f"{start}-{end}".encode(), digest_size=12)
    f.seek(start)
    digest.update(f.read(min(sample, end - start)))
    f.seek(max(start, end - sample))
    digest.update(f.read(end - max(start, end - sample)))
    return digest.hexdigest()
