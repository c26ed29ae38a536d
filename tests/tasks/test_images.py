"""One image from bytes to a checked, oriented, resized JPEG; one partition of rows to a fragment."""

from __future__ import annotations

import asyncio
import hashlib
import io
import struct
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from storage import Recipe
from tasks.images import (
    FRAGMENT,
    ImageOptions,
    ImageRejected,
    PartitionSettings,
    fetch_partition,
    fetch_rows,
    fragment_file,
    process_image,
)
from tasks.images_fetch import FetchOptions
from tasks.images_input import INPUT_ROWS, input_file


@pytest.fixture(scope="module")
def photo(shared_data) -> bytes:
    """A real COCO photo, 320 x 211."""
    return (shared_data / "image_text" / "coco_mini_cc_by" / "images" / "000000000790.jpg").read_bytes()


def encode(image: Image.Image, kind: str = "PNG", **options) -> bytes:
    out = io.BytesIO()
    image.save(out, kind, **options)
    return out.getvalue()


@pytest.mark.parametrize(
    "mode, size, expected",
    [
        ("no", 64, (320, 211)),
        ("keep_ratio", 128, (194, 128)),  # the smaller side fits
        ("keep_ratio_largest", 128, (128, 84)),  # the larger side fits
        ("center_crop", 128, (128, 128)),
        ("border", 128, (128, 128)),
    ],
)
def test_resize_modes(photo, mode, size, expected):
    result = process_image(photo, ImageOptions(image_size=size, resize_mode=mode))
    image = Image.open(io.BytesIO(result.jpeg))
    assert image.format == "JPEG" and image.mode == "RGB"
    assert image.size == expected == (result.width, result.height)
    assert (result.original_width, result.original_height) == (320, 211)
    assert result.sha256 == hashlib.sha256(photo).hexdigest()


def test_border_pads_with_black_and_keeps_the_photo_in_the_middle(photo):
    result = process_image(photo, ImageOptions(image_size=128, resize_mode="border"))
    image = Image.open(io.BytesIO(result.jpeg))
    assert max(image.getpixel((64, 2))) < 12  # the band above the 128 x 84 photo
    assert image.getpixel((64, 64)) != image.getpixel((64, 2))


def test_resize_only_if_bigger_leaves_small_images_alone(photo):
    result = process_image(photo, ImageOptions(image_size=512, resize_only_if_bigger=True))
    assert (result.width, result.height) == (320, 211)
    result = process_image(photo, ImageOptions(image_size=512))
    assert (result.width, result.height) == (776, 512)  # keep_ratio scales up as img2dataset does


def test_exif_orientation_is_applied(photo):
    base = Image.open(io.BytesIO(photo))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: displayed rotated 90 degrees clockwise
    rotated = encode(base, "JPEG", exif=exif.tobytes(), quality=95)
    result = process_image(rotated, ImageOptions(resize_mode="no"))
    assert (result.original_width, result.original_height) == (211, 320)
    assert (result.width, result.height) == (211, 320)
    result = process_image(rotated, ImageOptions(image_size=100, resize_mode="keep_ratio"))
    assert (result.width, result.height) == (100, 152)


def test_transparency_is_flattened_onto_white_and_greys_become_rgb():
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    result = process_image(encode(rgba), ImageOptions(resize_mode="no"))
    image = Image.open(io.BytesIO(result.jpeg))
    assert image.mode == "RGB" and min(image.getpixel((20, 15))) > 240
    grey = process_image(encode(Image.new("L", (40, 30), 90)), ImageOptions(resize_mode="no"))
    assert Image.open(io.BytesIO(grey.jpeg)).mode == "RGB"


def test_perceptual_hash_survives_reencoding_but_tells_photos_apart(photo, shared_data):
    import imagehash

    options = ImageOptions(image_size=128)
    a = process_image(photo, options).phash
    b = process_image(encode(Image.open(io.BytesIO(photo)), "JPEG", quality=40), options).phash
    other = (shared_data / "image_text" / "coco_mini_cc_by" / "images" / "000000078499.jpg").read_bytes()
    c = process_image(other, options).phash
    distance = lambda x, y: imagehash.hex_to_hash(x) - imagehash.hex_to_hash(y)  # noqa: E731
    assert len(a) == 16 and distance(a, b) <= 4 < distance(a, c)


def bomb_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 8))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "data, options, outcome",
    [
        (b"GIF89a but not really", ImageOptions(), "not_an_image"),
        (b"<html>hello</html>", ImageOptions(), "not_an_image"),
        (bomb_png(20_000, 20_000), ImageOptions(), "decompression_bomb"),  # past Pillow's own limit
        (bomb_png(3_000, 3_000), ImageOptions(max_image_pixels=1_000_000), "decompression_bomb"),  # ours
        (bomb_png(300, 300), ImageOptions(), "corrupt_image"),  # a header with no pixels behind it
    ],
)
def test_what_is_not_a_usable_image_is_rejected_with_its_reason(data, options, outcome):
    with pytest.raises(ImageRejected) as rejected:
        process_image(data, options)
    assert rejected.value.outcome == outcome


def test_truncated_and_tiny_images_are_rejected(photo):
    with pytest.raises(ImageRejected) as rejected:
        process_image(photo[: len(photo) // 2], ImageOptions())
    assert rejected.value.outcome == "corrupt_image" and "truncated" in rejected.value.detail
    with pytest.raises(ImageRejected) as rejected:
        process_image(photo, ImageOptions(min_image_size=250))
    assert rejected.value.outcome == "too_small"


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(resize_mode="stretch"), "resize_mode must be one of"),
        (dict(image_size=0), "image_size must be >= 1"),
        (dict(encode_quality=101), "encode_quality must be between 1 and 100"),
        (dict(max_image_pixels=10**12), "max_image_pixels must be between"),
    ],
)
def test_bad_options_name_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        ImageOptions(**options)


def test_a_partition_of_local_files_becomes_a_fragment_row_per_input_row(store, shared_data, tmp_path):
    photos = sorted((shared_data / "image_text" / "coco_mini_cc_by" / "images").glob("*.jpg"))[:3]
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    urls = [p.as_uri() for p in photos] + [(tmp_path / "bad.jpg").as_uri(), (tmp_path / "gone.jpg").as_uri()]
    urls.append(photos[0].as_uri())
    rows = [
        {"row": n, "source_row": n, "url": u, "caption": f"c{n}", "page_id": None, "repeat_of": None}
        for n, u in enumerate(urls)
    ]
    rows[-1]["repeat_of"] = 0
    dataset = store.dataset("images/unit")
    dataset.begin(Recipe("test", {}, {}, "1"))
    dataset.write_table(input_file(0), pa.Table.from_pylist(rows, schema=INPUT_ROWS))
    settings = PartitionSettings(image=ImageOptions(image_size=32), local_files=True)
    info = fetch_partition.fn(dataset, 0, settings)
    assert info["rows"] == 6
    assert info["outcomes"] == {"ok": 3, "not_an_image": 1, "file_error": 1, "url_repeat": 1}
    table = pq.read_table(dataset.file(fragment_file(0)))
    assert table.schema.equals(FRAGMENT)
    fragment = sorted(table.to_pylist(), key=lambda r: r["row"])
    assert [r["row"] for r in fragment] == list(range(6))
    assert all(r["image"] is not None for r in fragment[:3]) and all(r["image"] is None for r in fragment[3:])
    assert fragment[0]["caption"] == "c0" and min(fragment[0]["width"], fragment[0]["height"]) == 32

    # finished parts are not fetched again
    assert fetch_partition.fn(dataset, 0, settings) == info


def test_file_urls_are_refused_unless_the_source_is_a_folder(tmp_path):
    path = tmp_path / "x.jpg"
    Image.new("RGB", (8, 8)).save(path)
    results = []
    rows = [
        {"row": 0, "source_row": 0, "url": path.as_uri(), "caption": "", "page_id": None, "repeat_of": None}
    ]
    asyncio.run(fetch_rows(rows, PartitionSettings(fetch=FetchOptions()), results.append))
    assert [r["outcome"] for r in results] == ["bad_url"]
