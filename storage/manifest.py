"""Recipes and manifests: what a dataset is made from, and what it turned out to be.

A Recipe names a dataset's inputs (by their fingerprints), its parameters and the version of the
code that makes it; its fingerprint is the hash of all three. The same fingerprint decides whether a
step has anything to do and is the key of Prefect's cache, so the store and the UI agree.

A Manifest is the recipe plus what the step produced: tables with their files and schema, and the
counts that account for every record that entered the step.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import importlib
import inspect
import json
import os
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

import fsspec
import pyarrow as pa

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def digest(value: Any, length: int = 20) -> str:
    return hashlib.sha256(_canonical(value).encode()).hexdigest()[:length]


@cache
def code_version(*modules: str) -> str:
    """The package version plus a hash of the named modules' source: editing a step's code changes it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("embedpipe")
    except PackageNotFoundError:
        package = "0+unknown"
    sources = []
    for name in sorted(modules):
        sources.append(inspect.getsource(importlib.import_module(name)))
    return f"{package}+{digest(sources, 12)}"


def file_fingerprint(url: str, **storage_options: Any) -> str:
    """A cheap identity for a raw input file: its location, size and modification time (as make does)."""
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    info = fs.info(path)
    modified = info.get("mtime") or info.get("LastModified") or info.get("updated") or ""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    location = os.path.abspath(path) if "file" in protocols else url
    return "file:" + digest([location, info.get("size"), str(modified)])


@dataclass(frozen=True)
class Recipe:
    """What a dataset is made from: inputs by fingerprint, parameters, and the code version."""

    kind: str
    inputs: dict[str, str]
    parameters: dict[str, Any]
    code_version: str

    @property
    def fingerprint(self) -> str:
        return digest([self.kind, self.inputs, self.parameters, self.code_version])

    def derive(self, part: str, **parameters: Any) -> Recipe:
        """The recipe of one part of this dataset (a chunk, a shard) with its own parameters."""
        return Recipe(
            kind=f"{self.kind}/{part}",
            inputs={"dataset": self.fingerprint},
            parameters=parameters,
            code_version=self.code_version,
        )


def schema_to_json(schema: pa.Schema) -> dict[str, Any]:
    """A readable list of the fields, plus the exact serialized schema for readers."""
    return {
        "fields": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema],
        "arrow": base64.b64encode(schema.serialize().to_pybytes()).decode(),
    }


def schema_from_json(value: dict[str, Any]) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(value["arrow"])))


@dataclass
class Manifest:
    """The last file written into a dataset folder; readers take nothing without it."""

    kind: str
    fingerprint: str
    inputs: dict[str, str]
    parameters: dict[str, Any]
    code_version: str
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_recipe(
        cls,
        recipe: Recipe,
        *,
        tables: dict[str, tuple[pa.Schema, list[str], int]] | None = None,
        counts: dict[str, int] | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> Manifest:
        """Build a manifest; ``tables`` maps a table name to (schema, files relative to the folder, rows)."""
        return cls(
            kind=recipe.kind,
            fingerprint=recipe.fingerprint,
            inputs=dict(recipe.inputs),
            parameters=dict(recipe.parameters),
            code_version=recipe.code_version,
            tables={
                name: {"schema": schema_to_json(schema), "files": list(files), "rows": int(rows)}
                for name, (schema, files, rows) in (tables or {}).items()
            },
            counts={k: int(v) for k, v in (counts or {}).items()},
            metrics=dict(metrics or {}),
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )

    def arrow_schema(self, table: str) -> pa.Schema:
        return schema_from_json(self.tables[table]["schema"])

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        value = json.loads(text)
        if value.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"manifest format {value['format_version']} is newer than this embedpipe reads "
                f"({FORMAT_VERSION}); upgrade embedpipe"
            )
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in value.items() if k in known})
