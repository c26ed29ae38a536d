"""Parquet files of bounded size: a writer that rolls to a new file by rows and by bytes."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from storage.store import Dataset


class RollingParquetWriter:
    """Append rows; every ``max_rows`` rows or ``max_bytes`` of input a file is finished and renamed.

    Files are named ``{prefix}-{index:05d}.parquet`` under the dataset folder, each written under a
    temporary name first. ``files`` lists the finished ones relative to the dataset, ``rows`` counts.
    """

    def __init__(
        self,
        dataset: Dataset,
        prefix: str,
        schema: pa.Schema,
        *,
        max_rows: int = 50_000,
        max_bytes: int = 128 * 2**20,
        batch_rows: int = 1_000,
        compression: str = "zstd",
    ) -> None:
        if max_rows < 1 or max_bytes < 1:
            raise ValueError(f"max_rows and max_bytes must be >= 1, got {max_rows} and {max_bytes}")
        self.dataset = dataset
        self.prefix = prefix
        self.schema = schema
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.batch_rows = min(batch_rows, max_rows)
        self.compression = compression
        self.files: list[str] = []
        self.rows = 0
        self._pending: list[dict[str, Any]] = []
        self._pending_bytes = 0
        self._context = None
        self._writer: pq.ParquetWriter | None = None
        self._file_rows = 0
        self._file_bytes = 0

    def write(self, row: dict[str, Any], size_hint: int = 0) -> None:
        """Add one row; ``size_hint`` is its approximate size in bytes (text length is enough)."""
        self._pending.append(row)
        self._pending_bytes += size_hint
        if len(self._pending) >= self.batch_rows or self._file_bytes + self._pending_bytes >= self.max_bytes:
            self._flush()

    def _flush(self) -> None:
        while self._pending:
            if self._writer is None:
                self._open()
            room = self.max_rows - self._file_rows
            batch, self._pending = self._pending[:room], self._pending[room:]
            share = self._pending_bytes * len(batch) // max(1, len(batch) + len(self._pending))
            self._writer.write_table(pa.Table.from_pylist(batch, schema=self.schema))
            self._file_rows += len(batch)
            self._file_bytes += share
            self._pending_bytes -= share
            self.rows += len(batch)
            if self._file_rows >= self.max_rows or self._file_bytes >= self.max_bytes:
                self._close_file()
        self._pending_bytes = 0

    def _open(self) -> None:
        name = f"{self.prefix}-{len(self.files):05d}.parquet"
        self._context = self.dataset.open_atomic(name)
        handle = self._context.__enter__()
        self._writer = pq.ParquetWriter(handle, self.schema, compression=self.compression)
        self._name = name
        self._file_rows = 0
        self._file_bytes = 0

    def _close_file(self) -> None:
        self._writer.close()
        self._context.__exit__(None, None, None)
        self.files.append(self._name)
        self._writer = None
        self._context = None

    def close(self) -> list[str]:
        """Finish the last file and return every file written, relative to the dataset folder."""
        self._flush()
        if self._writer is not None:
            self._close_file()
        return self.files

    def abort(self) -> None:
        """Drop the file in progress (its temporary name is removed); finished files stay."""
        if self._context is not None:
            try:
                self._writer.close()
            finally:
                self._context.__exit__(RuntimeError, RuntimeError("aborted"), None)
            self._writer = None
            self._context = None
        self._pending = []

    def __enter__(self) -> RollingParquetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
