"""A misbehaving image server on 127.0.0.1 for the image tests, serving the shared COCO photos.

Each path prefix misbehaves in one way; ``/photos/NAME`` is the well-behaved one:

    /photos/NAME      the photo                        /mirror/NAME     the same bytes, another URL
    /missing/NAME     404                              /flaky/NAME      500 the first time, then the photo
    /busy/NAME        429 + Retry-After: 1, then ok    /slow/NAME       answers after SLOW_S seconds
    /truncated/NAME   the first 40% of the JPEG        /text/NAME       HTML served as image/jpeg
    /huge/NAME        a 1600 px noise PNG (~7.7 MB)    /stream/NAME     the same, chunked, no length
    /bomb/NAME        a PNG header claiming 60000^2    /noai/NAME       the photo, X-Robots-Tag: noai
    /otherbot/NAME    X-Robots-Tag for another bot     /private/NAME    disallowed by robots.txt
    /moved/NAME       301 to /photos/NAME              /to-private/NAME 302 to 127.0.0.2 (refused)
    /to-metadata/N    302 to 169.254.169.254           /to-localhost/N  302 to localhost on port 9
    /hold/NAME        the photo after 0.3 s, counting how many requests are in flight at once

The tests load this file by path (tests/ is not a package), so it imports nothing from them.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import threading
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path

from aiohttp import web

SLOW_S = 3.0


def bomb_png(width: int = 60_000, height: int = 60_000) -> bytes:
    """A valid PNG header (signature + IHDR with its CRC) claiming width x height, with one tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def noise_png(side: int = 1600) -> bytes:
    """Random RGB pixels: PNG cannot compress them, so the file is about side^2 x 3 bytes."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG", compress_level=1)
    return out.getvalue()


class ImageServer:
    """The server, running in a thread with its own event loop; ``url(path)`` gives full URLs."""

    def __init__(self, photos: Path, robots: str | int = "User-agent: *\nDisallow: /private/\n") -> None:
        """``robots`` is the text of /robots.txt, or the HTTP status it answers with instead."""
        self.photos = {p.name: p.read_bytes() for p in sorted((photos / "images").glob("*.jpg"))}
        self.captions = {}
        for line in (photos / "captions.jsonl").read_text().splitlines():
            record = json.loads(line)
            self.captions[Path(record["image"]).name] = record["captions"][0]
        self.robots = robots
        self.hits: Counter[str] = Counter()
        self.times: dict[str, list[float]] = defaultdict(list)
        self.user_agents: set[str] = set()
        self.in_flight = 0
        self.most_in_flight = 0
        self._huge = noise_png()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="image-server")
        self.port = 0

    # handlers

    def _photo(self, request: web.Request) -> bytes:
        name = request.match_info["name"]
        if name not in self.photos:
            raise web.HTTPNotFound()
        return self.photos[name]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path, kind, name = request.path, request.match_info["kind"], request.match_info["name"]
        self.hits[path] += 1
        self.times[path].append(time.monotonic())
        self.user_agents.add(request.headers.get("User-Agent", ""))
        first = self.hits[path] == 1
        jpeg = "image/jpeg"
        if kind in ("photos", "mirror", "private"):
            return web.Response(body=self._photo(request), content_type=jpeg)
        if kind == "hold":
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                await asyncio.sleep(0.3)
            finally:
                self.in_flight -= 1
            return web.Response(body=self._photo(request), content_type=jpeg)
        if kind == "missing":
            return web.Response(status=404, text="no such image")
        if kind == "flaky":
            if first:
                return web.Response(status=500, text="try again")
            return web.Response(body=self._photo(request), content_type=jpeg)
        if kind == "busy":
            if first:
                return web.Response(status=429, headers={"Retry-After": "1"}, text="slow down")
            return web.Response(body=self._photo(request), content_type=jpeg)
        if kind == "slow":
            await asyncio.sleep(SLOW_S)
            return web.Response(body=self._photo(request), content_type=jpeg)
        if kind == "truncated":
            body = self._photo(request)
            return web.Response(body=body[: len(body) * 2 // 5], content_type=jpeg)
        if kind == "text":
            return web.Response(body=b"<html><body>not an image</body></html>", content_type=jpeg)
        if kind == "huge":
            return web.Response(body=self._huge, content_type="image/png")
        if kind == "stream":
            response = web.StreamResponse(headers={"Content-Type": "image/png"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            try:
                for start in range(0, len(self._huge), 1 << 16):
                    await response.write(self._huge[start : start + (1 << 16)])
            except (ConnectionResetError, ConnectionError):
                pass  # the client stopped reading past its byte limit, as it should
            return response
        if kind == "bomb":
            return web.Response(body=bomb_png(), content_type="image/png")
        if kind == "noai":
            return web.Response(
                body=self._photo(request), content_type=jpeg, headers={"X-Robots-Tag": "noai"}
            )
        if kind == "otherbot":
            headers = {"X-Robots-Tag": "otherbot: noimageai, noindex"}
            return web.Response(body=self._photo(request), content_type=jpeg, headers=headers)
        if kind == "moved":
            raise web.HTTPMovedPermanently(f"/photos/{name}")
        if kind == "to-private":
            raise web.HTTPFound(f"http://127.0.0.2:{self.port}/photos/{name}")
        if kind == "to-metadata":
            raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")
        if kind == "to-localhost":
            raise web.HTTPFound(f"http://localhost:9/photos/{name}")
        raise web.HTTPNotFound()

    async def robots_txt(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        if isinstance(self.robots, int):
            return web.Response(status=self.robots, text="no robots.txt here")
        return web.Response(text=self.robots)

    # lifecycle

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/robots.txt", self.robots_txt)
        app.router.add_get("/{kind}/{name}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())

    def start(self) -> ImageServer:
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("the test image server did not start within 30 s")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def allow(self) -> list[str]:
        """The allow_private_addresses entry that lets this server, and nothing else, through."""
        return [f"127.0.0.1:{self.port}"]

    def url(self, path: str) -> str:
        return self.origin + path

    def reset(self) -> None:
        self.hits.clear()
        self.times.clear()
        self.most_in_flight = 0
