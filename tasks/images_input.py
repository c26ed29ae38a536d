"""Inputs of the image flow: a URL table, a folder of images, or a Wikipedia articles dataset.

source -> rows (row, source_row, url, caption, page_id, repeat_of) -> _input/part-NNNNN.parquet

- A table (Parquet, CSV, TSV, JSONL) of URLs and captions: columns ``url`` and ``caption`` by
  default; img2dataset's inputs (URL/TEXT and the like) are found case-insensitively, and
  ``url_col``/``caption_col`` name any others. A ``page_id`` column, if present, is carried along.
- A folder of images: every image file below it, in path order, captioned by the ``.txt`` file of
  the same stem beside it (webdataset's and img2dataset's layout); its rows have file:// URLs.
- A dataset of the store whose manifest kind is "wikipedia-articles": each reference of an article's
  ``images`` column is a row with the article's page_id and the Commons URL of the file.

A URL seen before in the same input is not fetched twice: its row records ``repeat_of``, the row of
the first occurrence, and takes that row's outcome when shards are planned.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from storage import Dataset, Store, file_fingerprint
from storage.manifest import digest
from tasks.common import InputError

if TYPE_CHECKING:
    import polars as pl

WIKIPEDIA_KIND = "wikipedia-articles"
TABLE_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
URL_NAMES = ("url", "image_url", "img_url", "link")
CAPTION_NAMES = ("caption", "text", "alt", "description", "title")

INPUT_DIR = "_input"

INPUT_ROWS = pa.schema(
    [
        pa.field("row", pa.int64(), nullable=False),  # position in the whole input, 0-based: the sample key
        pa.field("source_row", pa.int64(), nullable=False),  # row of the table, file number, or article row
        pa.field("url", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("page_id", pa.int64()),  # the article an image belongs to (Wikipedia sources)
        pa.field("repeat_of", pa.int64()),  # the row that first had this URL, when this one repeats it
    ]
)


def input_file(partition: int) -> str:
    return f"{INPUT_DIR}/part-{partition:05d}.parquet"


class Source:
    """What the user named as input, resolved: its kind, a fingerprint, and a default dataset name."""

    def __init__(self, text: str, store: Store) -> None:
        self.text = text
        path = Path(text).expanduser()
        if path.is_dir():
            self.kind, self.path = "folder", path.resolve()
            self.name = self.path.name
        elif path.is_file():
            suffix = path.suffix.lower()
            if suffix not in TABLE_SUFFIXES:
                raise InputError(
                    f"{text}: unknown table format {suffix!r}; give a .parquet, .csv, .tsv or .jsonl file of "
                    "image URLs and captions"
                )
            self.kind, self.path = TABLE_SUFFIXES[suffix], path.resolve()
            self.name = path.name.split(".")[0]
        else:
            dataset = store.dataset(text)
            if not dataset.is_complete():
                raise InputError(
                    f"{text} is neither a file, a folder, nor a finished dataset of the store {store.url}; "
                    "give a Parquet/CSV/TSV/JSONL table of url and caption columns, a folder of images with "
                    ".txt captions, or the name of a dataset made by ingest-wikipedia (e.g. wikipedia/enwiki)"
                )
            kind = dataset.manifest().kind
            if kind != WIKIPEDIA_KIND:
                raise InputError(
                    f"dataset {text} is a {kind!r}; image pairs come from {WIKIPEDIA_KIND!r} datasets"
                )
            self.kind, self.path, self.dataset = "wikipedia", None, dataset
            self.name = text.rstrip("/").split("/")[-1]

    def fingerprint(self) -> str:
        if self.kind == "wikipedia":
            return self.dataset.manifest().fingerprint
        if self.kind == "folder":
            listing = [
                (str(p.relative_to(self.path)), p.stat().st_size, p.stat().st_mtime_ns)
                for p in sorted(self.path.rglob("*"))
                if p.is_file()
            ]
            return "folder:" + digest([str(self.path), listing])
        return file_fingerprint(str(self.path))


# --- reading ----------------------------------------------------------------------------------------


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, flag: str) -> str:
    if wanted:
        if wanted not in columns:
            raise InputError(f"no column {wanted!r} for {what}; the input has {columns}; fix {flag}")
        return wanted
    by_lower = {c.lower(): c for c in columns}
    for candidate in candidates:
        if candidate in by_lower:
            return by_lower[candidate]
    raise InputError(f"found no {what} column among {columns}; name it with {flag}")


def read_table_pairs(path: Path, kind: str, url_col: str | None, caption_col: str | None) -> pl.DataFrame:
    """url, caption, page_id (null unless the table has one) and source_row, in table order."""
    import polars as pl

    try:
        if kind == "parquet":
            frame = pl.scan_parquet(path)
        elif kind in ("csv", "tsv"):
            frame = pl.scan_csv(
                path, separator="\t" if kind == "tsv" else ",", infer_schema=False, quote_char='"'
            )
        else:
            frame = pl.scan_ndjson(path, infer_schema_length=1000)
        columns = frame.collect_schema().names()
    except (pl.exceptions.PolarsError, OSError) as error:
        raise InputError(f"{path}: not a readable {kind} table ({error})") from None
    url = _pick(columns, url_col, URL_NAMES, "image URLs", "--url-col")
    caption = _pick(columns, caption_col, CAPTION_NAMES, "captions", "--caption-col")
    schema = frame.collect_schema()
    caption_expr = pl.col(caption)
    if isinstance(schema[caption], pl.List):
        caption_expr = caption_expr.list.first()  # several captions per image: the first one
    page_id = (
        pl.col("page_id").cast(pl.Int64, strict=False) if "page_id" in columns else pl.lit(None, pl.Int64)
    )
    try:
        return (
            frame.select(
                pl.col(url).cast(pl.String).str.strip_chars().alias("url"),
                caption_expr.cast(pl.String).fill_null("").alias("caption"),
                page_id.alias("page_id"),
            )
            .with_row_index("source_row")
            .with_columns(pl.col("source_row").cast(pl.Int64))
            .collect()
        )
    except pl.exceptions.PolarsError as error:
        raise InputError(f"{path}: could not read columns {url!r} and {caption!r} ({error})") from None


def read_folder_pairs(folder: Path) -> pl.DataFrame:
    """Every image file below ``folder`` as a file:// URL, captioned by its sibling .txt file."""
    import polars as pl

    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise InputError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) below it")
    captions = []
    for image in images:
        text_file = image.with_suffix(".txt")
        captions.append(text_file.read_text(errors="replace").strip() if text_file.is_file() else "")
    return pl.DataFrame(
        {
            "source_row": pl.Series(range(len(images)), dtype=pl.Int64),
            "url": [p.as_uri() for p in images],
            "caption": captions,
            "page_id": pl.Series([None] * len(images), dtype=pl.Int64),
        }
    )


def read_wikipedia_pairs(dataset: Dataset) -> pl.DataFrame:
    """One row per image reference of every article, with the article's page_id; the caption falls
    back to the file's name when the reference has none."""
    import polars as pl

    frames = []
    offset = 0
    for path in dataset.table_files("articles"):
        table = pq.read_table(path, columns=["page_id", "images"], filesystem=dataset.fs)
        frames.append(pl.from_arrow(table).with_row_index("source_row", offset=offset))
        offset += table.num_rows
    if not frames:
        return pl.DataFrame(
            schema={"source_row": pl.Int64, "url": pl.String, "caption": pl.String, "page_id": pl.Int64}
        )
    images = pl.concat(frames).explode("images").drop_nulls("images").unnest("images")
    file_title = pl.col("file").str.replace(r"\.[A-Za-z0-9]+$", "").str.replace_all("_", " ")
    return images.select(
        pl.col("source_row").cast(pl.Int64),
        pl.col("url"),
        pl.when(pl.col("caption").fill_null("") == "")
        .then(file_title)
        .otherwise(pl.col("caption"))
        .alias("caption"),
        pl.col("page_id").cast(pl.Int64),
    )


def read_pairs(source: Source, url_col: str | None = None, caption_col: str | None = None) -> pl.DataFrame:
    """The source as rows of source_row, url, caption, page_id."""
    if source.kind == "wikipedia":
        return read_wikipedia_pairs(source.dataset)
    if source.kind == "folder":
        return read_folder_pairs(source.path)
    return read_table_pairs(source.path, source.kind, url_col, caption_col)


# --- splitting ----------------------------------------------------------------------------------


def split_input(
    dataset: Dataset,
    source: Source,
    *,
    partition_rows: int,
    url_col: str | None = None,
    caption_col: str | None = None,
) -> dict[str, Any]:
    """Write the input as partitions of ``partition_rows`` rows under _input/, once per recipe.

    Returns {"rows", "partitions", "url_repeats"}; a re-run of the same recipe reads it back.
    """
    import polars as pl

    done = dataset.finished_part("input")
    if done is not None:
        return done
    # TODO: the whole input is held in memory (polars, ~200 bytes a row): past some tens of millions of
    # rows, split the table into several inputs or stream it in batches here
    pairs = read_pairs(source, url_col, caption_col)
    rows = pairs.with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    first = pl.col("row").min().over("url")
    rows = rows.with_columns(
        pl.when(pl.col("url").is_not_null() & (first != pl.col("row")))
        .then(first)
        .otherwise(None)
        .alias("repeat_of")
    ).select(INPUT_ROWS.names)
    table = rows.to_arrow().cast(INPUT_ROWS)
    partitions = max(1, -(-table.num_rows // partition_rows))
    for number in range(partitions):
        dataset.write_table(input_file(number), table.slice(number * partition_rows, partition_rows))
    info = {
        "rows": table.num_rows,
        "partitions": partitions,
        "url_repeats": int(rows["repeat_of"].is_not_null().sum()),
    }
    dataset.part_done("input", info)
    return info
