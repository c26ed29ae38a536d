"""The artifact store: every dataset is a folder whose manifest.json is written last.

A store is one root, a local folder by default or any fsspec URL (``s3://bucket/embedpipe``). A
dataset is a folder under it. Its data files are written under temporary names and renamed when
complete; its manifest, written last and atomically, says what it was made from, its schema and its
counts. A folder without a manifest is unfinished and no reader takes it.

    store = Store("work/store")
    ds = store.dataset("wikipedia/simplewiki-20240601")
    if ds.is_current(recipe):
        ...                                    # nothing to do
    ds.begin(recipe)                           # keeps finished parts of an interrupted run
    ds.write_table("articles/part-00000.parquet", table)
    ds.commit(Manifest.from_recipe(recipe, counts=..., tables=...))
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import uuid
from collections.abc import Iterator
from typing import IO, Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from storage.manifest import MANIFEST_NAME, Manifest, Recipe

STAGING_NAME = "_staging.json"
PARTS_DIR = "_parts"


class IncompleteDatasetError(FileNotFoundError):
    """A dataset folder without a manifest: a step is still writing it, or died before finishing."""


class Store:
    """One root of datasets: a local path or an fsspec URL, with optional fsspec storage options."""

    def __init__(self, url: str | os.PathLike[str], **storage_options: Any) -> None:
        url = os.fspath(url)
        if not url:
            raise ValueError(
                "store URL is empty: pass a folder such as work/store or a URL such as s3://bucket/x"
            )
        self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self.protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.is_local = self.protocol in ("file", "local")
        if self.is_local:
            root = os.path.abspath(root)
        self.root = root.rstrip("/")
        self.url = self.root if self.is_local else f"{self.protocol}://{self.root}"
        self.storage_options = storage_options
        self.fs.makedirs(self.root, exist_ok=True)

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def __reduce__(self):
        # tasks receive the store by value on remote workers: rebuild it from its URL there
        return (
            (Store, (self.url,), None, None, None)
            if not self.storage_options
            else (
                _store_with_options,
                (self.url, self.storage_options),
            )
        )

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def full_url(self, path: str) -> str:
        """The URL of a path of this store, usable by any fsspec or pyarrow reader."""
        return path if self.is_local else f"{self.protocol}://{path}"

    def dataset(self, name: str) -> Dataset:
        name = name.strip("/")
        if not name or ".." in name.split("/"):
            raise ValueError(
                f"dataset name must be a relative folder name like 'wikipedia/enwiki', got {name!r}"
            )
        return Dataset(self, name)

    def datasets(self, prefix: str = "") -> list[Dataset]:
        """Every finished dataset under ``prefix``, found by its manifest."""
        base = self.path(prefix) if prefix else self.root
        found = self.fs.glob(posixpath.join(base, "**", MANIFEST_NAME)) if self.fs.exists(base) else []
        names = sorted(posixpath.relpath(posixpath.dirname(p.rstrip("/")), self.root) for p in found)
        return [Dataset(self, n) for n in names if "/_parts/" not in f"/{n}/"]


def _store_with_options(url: str, options: dict[str, Any]) -> Store:
    return Store(url, **options)


class Dataset:
    """A folder of the store: data files, a staging marker while being written, a manifest when done."""

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = name
        self.path = store.path(name)

    def __repr__(self) -> str:
        return f"Dataset({self.store.url!r}, {self.name!r})"

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self.store.fs

    def file(self, relative: str) -> str:
        return posixpath.join(self.path, relative)

    # reading

    def manifest(self) -> Manifest:
        """The manifest of this dataset; raises IncompleteDatasetError when it has none."""
        path = self.file(MANIFEST_NAME)
        try:
            with self.fs.open(path, "r") as f:
                return Manifest.from_json(f.read())
        except FileNotFoundError:
            raise IncompleteDatasetError(
                f"{self.store.full_url(self.path)} has no {MANIFEST_NAME}: it is unfinished or was never made; "
                "run the step that makes it (a re-run resumes from its finished parts)"
            ) from None

    def is_complete(self) -> bool:
        return self.fs.exists(self.file(MANIFEST_NAME))

    def is_current(self, recipe: Recipe) -> bool:
        """True when this dataset is finished and was made from exactly this recipe."""
        try:
            return self.manifest().fingerprint == recipe.fingerprint
        except IncompleteDatasetError:
            return False

    def files(self, pattern: str) -> list[str]:
        """Finished files of the dataset matching a glob relative to its folder, sorted."""
        return sorted(p for p in self.fs.glob(self.file(pattern)) if ".tmp-" not in posixpath.basename(p))

    def read_table(self, table: str, columns: list[str] | None = None) -> pa.Table:
        """One table of a finished dataset, all its Parquet files concatenated."""
        manifest = self.manifest()
        if table not in manifest.tables:
            raise KeyError(f"{self.name} has no table {table!r}; it has {sorted(manifest.tables)}")
        files = [self.file(f) for f in manifest.tables[table]["files"]]
        schema = manifest.arrow_schema(table)
        if not files:
            return schema.empty_table() if columns is None else schema.empty_table().select(columns)
        parts = [pq.read_table(f, columns=columns, filesystem=self.fs, schema=schema) for f in files]
        return pa.concat_tables(parts)

    def table_files(self, table: str) -> list[str]:
        """Full paths of a finished dataset's table files, for readers that stream them one by one."""
        return [self.file(f) for f in self.manifest().tables[table]["files"]]

    # writing

    def begin(self, recipe: Recipe) -> None:
        """Prepare the folder for writing this recipe.

        Parts finished by an interrupted run of the same recipe are kept, so the run resumes; anything
        made from another recipe (other inputs, parameters or code) is removed first.
        """
        staging = self.file(STAGING_NAME)
        if self.fs.exists(self.path):
            previous = None
            if self.fs.exists(staging):
                with self.fs.open(staging, "r") as f:
                    previous = json.load(f).get("fingerprint")
            if previous != recipe.fingerprint:
                self.fs.rm(self.path, recursive=True)
        self.fs.makedirs(self.path, exist_ok=True)
        if self.fs.exists(self.file(MANIFEST_NAME)):
            # the same recipe was finished before and is being rebuilt on purpose
            self.fs.rm(self.file(MANIFEST_NAME))
        self.write_bytes(STAGING_NAME, json.dumps({"fingerprint": recipe.fingerprint}).encode())

    @contextlib.contextmanager
    def open_atomic(self, relative: str, mode: str = "wb") -> Iterator[IO[Any]]:
        """Open a file for writing under a temporary name; it gets its real name only when closed cleanly."""
        final = self.file(relative)
        tmp = posixpath.join(
            posixpath.dirname(final), f".tmp-{uuid.uuid4().hex[:12]}-{posixpath.basename(final)}"
        )
        self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
        try:
            with self.fs.open(tmp, mode) as f:
                yield f
            self.fs.mv(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(tmp)
            raise

    def write_bytes(self, relative: str, data: bytes) -> str:
        with self.open_atomic(relative) as f:
            f.write(data)
        return self.file(relative)

    def write_json(self, relative: str, value: Any) -> str:
        return self.write_bytes(relative, json.dumps(value, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, relative: str) -> Any:
        with self.fs.open(self.file(relative), "r") as f:
            return json.load(f)

    def write_table(self, relative: str, table: pa.Table, *, compression: str = "zstd") -> str:
        with self.open_atomic(relative) as f:
            pq.write_table(table, f, compression=compression)
        return self.file(relative)

    # parts: units of work (chunks, shards) finished independently, so an interrupted run resumes

    def part_done(self, part: str, info: dict[str, Any]) -> None:
        """Record that one part is finished, with its counts and files; written after its files."""
        self.write_json(f"{PARTS_DIR}/{part}.json", info)

    def finished_part(self, part: str) -> dict[str, Any] | None:
        path = self.file(f"{PARTS_DIR}/{part}.json")
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "r") as f:
            return json.load(f)

    def finished_parts(self) -> dict[str, dict[str, Any]]:
        found = {}
        for path in self.files(f"{PARTS_DIR}/*.json"):
            with self.fs.open(path, "r") as f:
                found[posixpath.basename(path)[: -len(".json")]] = json.load(f)
        return dict(sorted(found.items()))

    def commit(self, manifest: Manifest) -> Manifest:
        """Finish the dataset: write its manifest last, atomically, and drop the staging marker."""
        self.write_bytes(MANIFEST_NAME, manifest.to_json().encode())
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.file(STAGING_NAME))
        return manifest
