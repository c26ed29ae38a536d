import json

import pyarrow as pa
import pytest

from storage import IncompleteDatasetError, Manifest, Recipe, Store
from storage.parquet import RollingParquetWriter

SCHEMA = pa.schema([("id", pa.int64()), ("text", pa.string())])


def recipe(**parameters):
    return Recipe(kind="test", inputs={"source": "file:abc"}, parameters=parameters, code_version="1")


def test_reader_refuses_a_folder_without_manifest(store):
    ds = store.dataset("things/a")
    ds.begin(recipe(n=1))
    ds.write_table("rows/part-00000.parquet", pa.table({"id": [1], "text": ["x"]}, schema=SCHEMA))
    with pytest.raises(IncompleteDatasetError, match="has no manifest.json"):
        ds.read_table("rows")
    assert not ds.is_complete()
    assert store.datasets() == []


def test_commit_round_trip_and_fingerprint(store):
    ds = store.dataset("things/a")
    r = recipe(n=1)
    ds.begin(r)
    ds.write_table("rows/part-00000.parquet", pa.table({"id": [1, 2], "text": ["x", "y"]}, schema=SCHEMA))
    ds.commit(
        Manifest.from_recipe(
            r, tables={"rows": (SCHEMA, ["rows/part-00000.parquet"], 2)}, counts={"rows_in": 2}
        )
    )
    assert ds.is_current(r)
    assert not ds.is_current(recipe(n=2))
    assert ds.read_table("rows").column("text").to_pylist() == ["x", "y"]
    manifest = json.loads(open(ds.file("manifest.json")).read())
    assert manifest["counts"] == {"rows_in": 2}
    assert [f["name"] for f in manifest["tables"]["rows"]["schema"]["fields"]] == ["id", "text"]
    assert [d.name for d in store.datasets()] == ["things/a"]
    assert not ds.fs.exists(ds.file("_staging.json"))


def test_begin_keeps_parts_of_the_same_recipe_and_drops_others(store):
    ds = store.dataset("things/b")
    ds.begin(recipe(n=1))
    ds.part_done("chunk-00000", {"rows": 3})
    ds.begin(recipe(n=1))
    assert ds.finished_parts() == {"chunk-00000": {"rows": 3}}
    ds.begin(recipe(n=2))
    assert ds.finished_parts() == {}


def test_interrupted_write_leaves_no_file(store):
    ds = store.dataset("things/c")
    ds.begin(recipe())
    with pytest.raises(RuntimeError), ds.open_atomic("half.bin") as f:
        f.write(b"partial")
        raise RuntimeError("killed")
    assert ds.fs.ls(ds.path, detail=False) == [ds.file("_staging.json")]


def test_rolling_writer_bounds_rows_and_bytes(store):
    ds = store.dataset("things/d")
    ds.begin(recipe())
    with RollingParquetWriter(ds, "rows/part", SCHEMA, max_rows=4, max_bytes=10_000, batch_rows=3) as w:
        for i in range(10):
            w.write({"id": i, "text": "x" * 3000}, size_hint=3000)
    assert w.rows == 10
    sizes = [pa.parquet.read_metadata(ds.file(f)).num_rows for f in w.files]
    assert sum(sizes) == 10 and max(sizes) <= 4 and len(sizes) >= 3


def test_bad_dataset_names_are_refused(store):
    with pytest.raises(ValueError, match="relative folder name"):
        store.dataset("../escape")


def test_store_on_an_fsspec_url(tmp_path):
    store = Store("memory://embedpipe-test")
    ds = store.dataset("m")
    r = recipe()
    ds.begin(r)
    ds.write_table("t/part-00000.parquet", pa.table({"id": [7], "text": ["m"]}, schema=SCHEMA))
    ds.commit(Manifest.from_recipe(r, tables={"t": (SCHEMA, ["t/part-00000.parquet"], 1)}))
    assert Store("memory://embedpipe-test").dataset("m").read_table("t").num_rows == 1
