"""Dumps made from the real samples for tests: multistream files with their index, and a mirror to serve them."""

from __future__ import annotations

import bz2
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PAGE = re.compile(rb"<page>.*?</page>\s*", re.DOTALL)


def split_dump(xml: bytes) -> tuple[bytes, list[bytes], bytes]:
    """(header up to the first page, the pages, the footer) of a decompressed export."""
    pages = [m.group() for m in PAGE.finditer(xml)]
    first = xml.find(b"<page>")
    last = xml.rfind(b"</page>") + len(b"</page>")
    return xml[:first], pages, xml[last:]


def write_multistream(xml: bytes, destination: Path, pages_per_stream: int = 10) -> tuple[Path, Path]:
    """Write ``xml`` as Wikipedia's multistream dumps are: header stream, then pages in streams, then footer.

    Returns the dump and its index (`offset:page_id:title` per page, bz2-compressed).
    """
    header, pages, footer = split_dump(xml)
    index_lines = []
    with open(destination, "wb") as f:
        f.write(bz2.compress(header))
        for start in range(0, len(pages), pages_per_stream):
            offset = f.tell()
            group = pages[start : start + pages_per_stream]
            for page in group:
                page_id = re.search(rb"<id>(\d+)</id>", page).group(1).decode()
                title = re.search(rb"<title>([^<]*)</title>", page).group(1).decode()
                index_lines.append(f"{offset}:{page_id}:{title}\n")
            f.write(bz2.compress(b"".join(group)))
        f.write(bz2.compress(footer))
    index = destination.with_name(destination.name.replace(".xml.bz2", "-index.txt.bz2"))
    index.write_bytes(bz2.compress("".join(index_lines).encode()))
    return destination, index


class Mirror:
    """A dump mirror on 127.0.0.1: files by path, Range support, and faults to order."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}  # path -> bytes sent before the connection drops, once
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                mirror.requests.append((self.path, self.headers.get("Range")))
                body = mirror.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if (wanted := self.headers.get("Range")) and not mirror.ignore_range:
                    start = int(wanted.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if (limit := mirror.drop_after.pop(self.path, None)) is not None:
                    self.wfile.write(payload[:limit])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
