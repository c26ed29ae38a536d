"""Planning shards: collection-wide deduplication in input order, fixed-size shards, the status table."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import Recipe
from storage.schemas import IMAGE_STATUS
from tasks.images import FRAGMENT, FRAGMENT_META
from tasks.images_input import INPUT_ROWS, input_file
from tasks.images_shards import ShardPlanner, commit, key_width, outcome_rows


def row(n, outcome="ok", sha=None, repeat_of=None, url=None):
    return {
        "row": n,
        "source_row": n,
        "page_id": None,
        "url": url or f"http://h/{n}.jpg",
        "caption": f"c{n}",
        "repeat_of": repeat_of,
        "outcome": outcome,
        "detail": None if outcome == "ok" else f"why {n}",
        "http_status": 200 if outcome == "ok" else None,
        "download_bytes": 10,
        "sha256": sha if outcome == "ok" else None,
        "phash": "0" * 16 if outcome == "ok" else None,
        "original_width": 10,
        "original_height": 10,
        "width": 10,
        "height": 10,
        "image": b"jpeg" if outcome == "ok" else None,
    }


# partition 0: rows 0-3, partition 1: rows 4-7, partition 2: rows 8-9
PARTITIONS = [
    [row(0, sha="a"), row(1, "http_404"), row(2, sha="b"), row(3, sha="a")],  # 3 has row 0's bytes
    [row(4, "url_repeat", repeat_of=2), row(5, "url_repeat", repeat_of=1), row(6, sha="c"), row(7, sha="d")],
    [row(8, "timeout"), row(9, sha="e")],
]


@pytest.fixture
def planned(store):
    dataset = store.dataset("images/plan")
    dataset.begin(Recipe("image-shards", {}, {}, "1"))
    for number, rows in enumerate(PARTITIONS):
        inputs = [{k: r[k] for k in INPUT_ROWS.names} for r in rows]
        dataset.write_table(input_file(number), pa.Table.from_pylist(inputs, schema=INPUT_ROWS))
    planner = ShardPlanner(dataset, rows=10, samples_per_shard=2)
    plans = []
    for number, rows in enumerate(PARTITIONS):
        # fragments hold rows in the order their fetches finished
        meta = pa.Table.from_pylist(list(reversed(rows)), schema=FRAGMENT).select(FRAGMENT_META)
        plans.append([(p.shard, p.rows) for p in planner.add(number, meta)])
    plans.append([(p.shard, p.rows) for p in planner.finish()])
    return dataset, planner, plans


def test_shards_are_cut_in_row_order_as_soon_as_they_are_full(planned):
    _, planner, plans = planned
    assert plans == [
        [(0, {0: [0, 2]})],
        [(1, {1: [6, 7]})],
        [],
        [(2, {2: [9]})],  # the last, short shard comes with finish()
    ]
    assert planner.written == 5


def test_every_row_gets_its_final_outcome(planned):
    dataset, planner, _ = planned
    table = pa.concat_tables([pq.read_table(dataset.file(f)) for f in planner.status.files])
    assert table.schema.equals(IMAGE_STATUS)
    status = {r["row"]: r for r in table.to_pylist()}
    assert [status[n]["outcome"] for n in range(10)] == [
        "written", "http_404", "written", "duplicate", "duplicate", "http_404", "written", "written", "timeout",
        "written",
    ]  # fmt: skip
    assert status[3]["duplicate_of"] == "000000000" and "same bytes" in status[3]["detail"]
    assert status[4]["duplicate_of"] == "000000002" and status[4]["detail"] == "same URL as row 2"
    assert status[5]["detail"] == "same URL as row 1: why 1" and status[5]["key"] is None
    assert [status[n]["shard"] for n in (0, 2, 6, 7, 9)] == [0, 0, 1, 1, 2]
    assert status[9]["key"] == "000000009"
    assert dict(planner.counts) == {"written": 5, "duplicate": 2, "http_404": 2, "timeout": 1}


def test_commit_refuses_counts_that_do_not_add_up(planned):
    dataset, planner, _ = planned
    shards = [{"shard": 0, "file": "shards/shard-00000.tar", "samples": 2, "bytes": 1, "first_key": "0",
               "last_key": "2"}]  # fmt: skip
    with pytest.raises(AssertionError, match="shards hold 2 samples, 5 written"):
        commit(dataset, Recipe("image-shards", {}, {}, "1"), planner, [], shards, 0.0)
    planner.counts["written"] -= 1
    with pytest.raises(AssertionError, match="9 rows accounted for out of 10"):
        commit(dataset, Recipe("image-shards", {}, {}, "1"), planner, [], shards, 0.0)
    assert not dataset.is_complete()


def test_keys_and_the_summary_table():
    assert key_width(10) == 9 and key_width(2_000_000_000) == 10
    rows = list(outcome_rows({"rows_in": 4, "written": 3, "http_404": 1}))
    assert rows == [
        {"outcome": "written", "rows": 3, "share": "75.0%"},
        {"outcome": "http_404", "rows": 1, "share": "25.0%"},
        {"outcome": "total", "rows": 4, "share": "100.0%"},
    ]
