"""Image work of the image flow: fetch a partition of URLs, check, decode, resize and re-encode them.

input partition (row, url, caption, ...) -> fragment Parquet (one row per input row: its outcome,
hashes, sizes, and the re-encoded JPEG when it passed). Fragments are packed into WebDataset shards
by tasks/images_shards.py once the collection-wide deduplication has seen them in input order.

Run through the flow: ``embedpipe ingest-images urls.parquet --store work/store``.

Only real images pass: the bytes must decode with Pillow; the pixel count is checked from the header
before any decoding, so a small file claiming huge dimensions (a decompression bomb) is refused
without allocating it; EXIF orientation is applied and the result converted to RGB (transparency is
flattened onto white), resized as img2dataset's modes do, and encoded as JPEG.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
import warnings
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps, UnidentifiedImageError
from prefect import task
from prefect.cache_policies import NO_CACHE

from storage import Dataset
from tasks.common import Progress, run_logger
from tasks.images_fetch import Fetched, Fetcher, FetchOptions
from tasks.images_input import input_file

RESIZE_MODES = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")
# Pillow refuses images past twice its MAX_IMAGE_PIXELS whatever we ask; our own limit must stay below
PILLOW_HARD_LIMIT = 2 * Image.MAX_IMAGE_PIXELS
# we check the pixel count ourselves before decoding; Pillow's warning for the same thing is noise
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

FRAGMENT_DIR = "_fragments"

# one row per input row, in the order results arrive; `image` is set only when outcome is "ok"
FRAGMENT = pa.schema(
    [
        pa.field("row", pa.int64(), nullable=False),
        pa.field("source_row", pa.int64()),
        pa.field("page_id", pa.int64()),
        pa.field("url", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("repeat_of", pa.int64()),
        pa.field("outcome", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("http_status", pa.int32()),
        pa.field("download_bytes", pa.int64()),
        pa.field("sha256", pa.string()),
        pa.field("phash", pa.string()),
        pa.field("original_width", pa.int32()),
        pa.field("original_height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("image", pa.binary()),
    ]
)
FRAGMENT_META = [f.name for f in FRAGMENT if f.name != "image"]


def fragment_file(partition: int) -> str:
    return f"{FRAGMENT_DIR}/part-{partition:05d}.parquet"


# --- one image: bytes -> checked, resized JPEG ----------------------------------------------------


@dataclass(frozen=True)
class ImageOptions:
    """What a written image looks like; img2dataset's option names where it has one."""

    image_size: int = 256  # pixels: the side resize_mode fits to
    resize_mode: str = "keep_ratio"  # one of RESIZE_MODES
    resize_only_if_bigger: bool = False  # leave images smaller than image_size as they are
    encode_quality: int = 95  # JPEG quality, 1-100
    max_image_pixels: int = Image.MAX_IMAGE_PIXELS  # width x height past this is a decompression bomb
    min_image_size: int = 0  # pixels: images whose smaller side is below this are refused

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(
                f"resize_mode must be one of {', '.join(RESIZE_MODES)}; got {self.resize_mode!r}"
            )
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1 pixel, got {self.image_size}")
        if not 1 <= self.encode_quality <= 100:
            raise ValueError(f"encode_quality must be between 1 and 100, got {self.encode_quality}")
        if not 1 <= self.max_image_pixels <= PILLOW_HARD_LIMIT:
            raise ValueError(
                f"max_image_pixels must be between 1 and {PILLOW_HARD_LIMIT:,} (Pillow's own limit), "
                f"got {self.max_image_pixels:,}"
            )
        if self.min_image_size < 0:
            raise ValueError(f"min_image_size must be >= 0, got {self.min_image_size}")


class ImageRejected(Exception):
    """Bytes that are not a usable image; ``outcome`` is the status code recorded for the row."""

    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail


@dataclass
class ProcessedImage:
    jpeg: bytes
    sha256: str  # of the bytes as downloaded: what exact deduplication compares
    phash: str  # 64-bit DCT perceptual hash (imagehash.phash) of the written image, hex
    original_width: int  # as displayed: after EXIF orientation, before resizing
    original_height: int
    width: int
    height: int


def _target_size(width: int, height: int, options: ImageOptions) -> tuple[int, int] | None:
    """The size resize_mode scales to before any crop or border; None when the image stays as is."""
    size = options.image_size
    if options.resize_mode == "no":
        return None
    side = min(width, height) if options.resize_mode in ("keep_ratio", "center_crop") else max(width, height)
    if options.resize_only_if_bigger and side <= size:
        return None
    scale = size / side
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize(image: Image.Image, options: ImageOptions, original: tuple[int, int] | None = None) -> Image.Image:
    """Apply resize_mode: keep_ratio fits the smaller side to image_size, keep_ratio_largest the larger;
    center_crop fits the smaller side then crops the middle square; border fits the larger side then
    pads to a black square.

    ``original`` is the size before a JPEG draft reduced the image: the target comes from it, since
    the draft rounds each side up on its own and would shift the aspect ratio by a pixel.
    """
    target = _target_size(*(original or image.size), options)
    if target is None:
        return image
    if target != image.size:
        # reducing_gap: a fast box reduction first, then bicubic over the last factor of 3 (Pillow docs)
        image = image.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)
    size = options.image_size
    if options.resize_mode == "center_crop":
        left, top = (image.width - size) // 2, (image.height - size) // 2
        image = image.crop((left, top, left + size, top + size))
    elif options.resize_mode == "border":
        canvas = Image.new("RGB", (size, size))
        canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
        image = canvas
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def perceptual_hash(image: Image.Image) -> str:
    # phash looks at a 32x32 grey copy; a box reduction to about 64 px first costs far less than
    # letting it resample a full-size image, and changes the hash of a photo very little
    factor = min(image.size) // 64
    small = image.reduce(factor) if factor > 1 else image
    import imagehash  # imported on first use: 0.2 s off the start of every worker process

    return str(imagehash.phash(small))


def process_image(data: bytes, options: ImageOptions) -> ProcessedImage:
    """Decode, check, orient, convert, resize and re-encode one image; raises ImageRejected."""
    digest = hashlib.sha256(data).hexdigest()
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejected("not_an_image", f"Pillow does not recognise these {len(data):,} bytes") from None
    except Image.DecompressionBombError as error:
        raise ImageRejected("decompression_bomb", str(error)) from None
    except Exception as error:  # malformed headers raise anything from SyntaxError to struct.error
        raise ImageRejected("corrupt_image", f"{type(error).__name__}: {error}"[:300]) from None

    width, height = image.size
    if width * height > options.max_image_pixels:
        raise ImageRejected(
            "decompression_bomb",
            f"{width}x{height} = {width * height:,} pixels > {options.max_image_pixels:,}",
        )
    try:
        # PNG keeps EXIF after the pixels, so reading it decodes the image: a broken one fails here
        orientation = image.getexif().get(0x0112, 1)
    except Exception as error:
        raise ImageRejected("corrupt_image", f"{type(error).__name__}: {error}"[:300]) from None
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: displayed with width and height swapped
        width, height = height, width
    if min(width, height) < options.min_image_size:
        raise ImageRejected("too_small", f"{width}x{height} < min_image_size {options.min_image_size}")

    try:
        if image.format == "JPEG":
            # decode at 1/2, 1/4 or 1/8 scale in the DCT when the target is that much smaller
            target = _target_size(width, height, options)
            if target is not None:
                image.draft("RGB", target if orientation not in (5, 6, 7, 8) else target[::-1])
        image.load()
        image = _to_rgb(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError as error:
        raise ImageRejected("decompression_bomb", str(error)) from None
    except Exception as error:  # truncated data, broken chunks, bad EXIF
        raise ImageRejected("corrupt_image", f"{type(error).__name__}: {error}"[:300]) from None

    image = resize(image, options, original=(width, height))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=options.encode_quality)
    return ProcessedImage(
        jpeg=out.getvalue(),
        sha256=digest,
        phash=perceptual_hash(image),
        original_width=width,
        original_height=height,
        width=image.width,
        height=image.height,
    )


# --- one partition: rows -> results ----------------------------------------------------------------


@dataclass(frozen=True)
class PartitionSettings:
    """Everything a partition needs besides its rows; picklable, so it travels to worker processes."""

    fetch: FetchOptions = field(default_factory=FetchOptions)
    image: ImageOptions = field(default_factory=ImageOptions)
    cpu_threads: int = 2  # decode/resize/encode threads per process (Pillow releases the GIL)
    local_files: bool = False  # file:// URLs are read from disk (folder sources only)


def _read_local(url: str, max_bytes: int) -> Fetched:
    path = unquote(urlsplit(url).path)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as error:
        return Fetched("file_error", detail=str(error)[:300])
    if len(data) > max_bytes:
        return Fetched("too_large", detail=f"file past {max_bytes:,} bytes")
    return Fetched("ok", body=data)


def _result(row: dict[str, Any], outcome: str, **values: Any) -> dict[str, Any]:
    return {**row, "outcome": outcome, **values}


async def fetch_rows(
    rows: list[dict[str, Any]],
    settings: PartitionSettings,
    on_result: Callable[[dict[str, Any]], None],
) -> dict[str, int]:
    """Fetch and process every row, calling ``on_result`` with one FRAGMENT row each, in any order.

    At most 2 x concurrency rows are between fetch and write at any time (in flight, waiting for a
    retry, or being decoded), which bounds memory at about that many bodies of max_bytes each.
    Returns a few counters about the fetching itself.
    """
    loop = asyncio.get_running_loop()
    window = asyncio.Semaphore(2 * settings.fetch.concurrency)
    logger = run_logger()
    internal_errors = 0

    async def handle(row: dict[str, Any], fetcher: Fetcher, pool: ThreadPoolExecutor) -> dict[str, Any]:
        if row["repeat_of"] is not None:
            return _result(row, "url_repeat")  # resolved from its first occurrence when shards are planned
        url = row["url"]
        if not url:
            return _result(row, "bad_url", detail="empty URL")
        if settings.local_files and url.startswith("file:"):
            fetched = await loop.run_in_executor(pool, _read_local, url, settings.fetch.max_bytes)
        else:
            fetched = await fetcher.fetch(url)
        if fetched.outcome != "ok":
            return _result(
                row, fetched.outcome, detail=fetched.detail or None, http_status=fetched.http_status
            )
        try:
            image = await loop.run_in_executor(pool, process_image, fetched.body, settings.image)
        except ImageRejected as rejected:
            return _result(
                row,
                rejected.outcome,
                detail=rejected.detail,
                http_status=fetched.http_status,
                download_bytes=len(fetched.body),
                sha256=hashlib.sha256(fetched.body).hexdigest(),
            )
        return _result(
            row,
            "ok",
            http_status=fetched.http_status,
            download_bytes=len(fetched.body),
            sha256=image.sha256,
            phash=image.phash,
            original_width=image.original_width,
            original_height=image.original_height,
            width=image.width,
            height=image.height,
            image=image.jpeg,
        )

    async def one(row: dict[str, Any], fetcher: Fetcher, pool: ThreadPoolExecutor) -> None:
        nonlocal internal_errors
        try:
            result = await handle(row, fetcher, pool)
        except Exception as error:  # a bug of ours on one row must not stop the partition
            internal_errors += 1
            if internal_errors == 1 or internal_errors % 1000 == 0:
                logger.exception("row %s (%s): %s", row["row"], row["url"], error)
            result = _result(row, "internal_error", detail=f"{type(error).__name__}: {error}"[:300])
        finally:
            window.release()
        on_result(result)

    with ThreadPoolExecutor(settings.cpu_threads, thread_name_prefix="images-cpu") as pool:
        async with Fetcher(settings.fetch) as fetcher:
            running: set[asyncio.Task[None]] = set()
            for row in rows:
                await window.acquire()
                job = asyncio.create_task(one(row, fetcher, pool))
                running.add(job)
                job.add_done_callback(running.discard)
            if running:
                await asyncio.gather(*running)
            return {"robots_fetches": fetcher.robots_fetches, "internal_errors": internal_errors}


class FragmentWriter:
    """Writes FRAGMENT rows to one Parquet file under a temporary name, in row groups of ``batch``.

    Fragments keep every image until the manifest is written, so a run needs about twice the shards'
    size in the store at its end.
    """

    def __init__(self, dataset: Dataset, relative: str, *, batch: int = 256) -> None:
        self._context = dataset.open_atomic(relative)
        self._writer = pq.ParquetWriter(self._context.__enter__(), FRAGMENT, compression="zstd")
        self._rows: list[dict[str, Any]] = []
        self.batch = batch

    def write(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        if len(self._rows) >= self.batch:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=FRAGMENT))
            self._rows = []

    def close(self) -> None:
        self._flush()
        self._writer.close()
        self._context.__exit__(None, None, None)

    def abort(self, error: BaseException) -> None:
        try:
            self._writer.close()
        finally:
            self._context.__exit__(type(error), error, None)


@task(name="fetch-images", cache_policy=NO_CACHE)
def fetch_partition(dataset: Dataset, partition: int, settings: PartitionSettings) -> dict[str, Any]:
    """Fetch, check and re-encode the images of one input partition into a fragment of the dataset."""
    part = f"fetch-{partition:05d}"
    done = dataset.finished_part(part)
    if done is not None:
        return done

    rows = pq.read_table(dataset.file(input_file(partition)), filesystem=dataset.fs).to_pylist()
    progress = Progress(f"partition {partition}", total=len(rows), unit="images")
    outcomes: Counter[str] = Counter()
    writer = FragmentWriter(dataset, fragment_file(partition))

    def on_result(result: dict[str, Any]) -> None:
        writer.write(result)
        outcomes[result["outcome"]] += 1
        progress.advance()

    started = time.perf_counter()
    try:
        stats = asyncio.run(fetch_rows(rows, settings, on_result))
    except BaseException as error:
        writer.abort(error)
        raise
    writer.close()
    elapsed = progress.finish()
    info = {
        "partition": partition,
        "rows": len(rows),
        "outcomes": dict(sorted(outcomes.items())),
        "elapsed_s": round(time.perf_counter() - started, 3),
        "images_per_s": round(len(rows) / max(elapsed, 1e-9), 1),
        **stats,
    }
    dataset.part_done(part, info)
    return info
