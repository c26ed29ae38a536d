"""WebDataset shards: written under a temporary name, read back whole, by DataLoader workers and by rank."""

from __future__ import annotations

import io
import json
import tarfile

import pyarrow as pa
import pytest
import torch
from PIL import Image

from storage import Manifest, Recipe
from storage.schemas import IMAGE_SHARDS
from storage.webdataset import (
    image_text_dataset,
    image_text_loader,
    iter_samples,
    shard_files,
    steps_per_epoch,
    write_shard,
)

SHARD_SIZES = [6, 6, 6, 3]  # three full shards and a short last one: 21 samples


def jpeg(n: int, size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (n * 10 % 256, 100, 200)).save(out, "JPEG", quality=90)
    return out.getvalue()


def make_dataset(store, sizes=SHARD_SIZES):
    """A finished dataset of image-text shards as ingest-images lays it out, images of varied sizes."""
    dataset = store.dataset("images/tiny")
    recipe = Recipe("image-shards", {}, {}, "test")
    dataset.begin(recipe)
    rows, row = [], 0
    for shard, count in enumerate(sizes):
        samples = []
        for _ in range(count):
            key = f"{row:09d}"
            size = (40 + row, 30 + 2 * row)
            meta = {"key": key, "url": f"http://example.org/{row}.jpg", "width": size[0], "height": size[1]}
            samples.append({"__key__": key, "jpg": jpeg(row, size), "txt": f"caption {row} é", "json": meta})
            row += 1
        info = write_shard(dataset, f"shards/shard-{shard:05d}.tar", samples)
        rows.append({"shard": shard, "file": f"shards/shard-{shard:05d}.tar", **info})
    index = pa.Table.from_pylist(rows, schema=IMAGE_SHARDS)
    dataset.write_table("shards.parquet", index)
    dataset.commit(
        Manifest.from_recipe(recipe, tables={"shards": (IMAGE_SHARDS, ["shards.parquet"], len(rows))})
    )
    return dataset


def test_a_shard_is_a_plain_tar_of_key_files_and_reads_back_whole(store):
    dataset = make_dataset(store)
    shards = shard_files(dataset)
    assert [s["samples"] for s in shards] == SHARD_SIZES
    assert shards[1]["first_key"] == "000000006" and shards[1]["last_key"] == "000000011"
    with tarfile.open(shards[0]["file"]) as tar:
        names = tar.getnames()
        assert names[:3] == ["000000000.jpg", "000000000.txt", "000000000.json"]
        assert all(member.mtime == 0 for member in tar.getmembers())  # same samples, same bytes
    samples = list(iter_samples(dataset))
    assert [s["__key__"] for s in samples] == [f"{n:09d}" for n in range(21)]
    assert samples[4]["txt"].decode() == "caption 4 é"
    assert json.loads(samples[4]["json"])["width"] == 44


def test_the_same_samples_give_the_same_bytes(store):
    first = make_dataset(store)
    data = open(shard_files(first)[0]["file"], "rb").read()
    again = make_dataset(store)  # rebuilt from the same recipe
    assert open(shard_files(again)[0]["file"], "rb").read() == data


def test_a_shard_that_fails_half_way_leaves_no_file(store):
    dataset = store.dataset("images/broken")
    dataset.begin(Recipe("image-shards", {}, {}, "test"))

    def samples():
        yield {"__key__": "000000000", "jpg": jpeg(0, (8, 8)), "txt": "a", "json": {}}
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_shard(dataset, "shards/shard-00000.tar", samples())
    assert dataset.files("shards/*") == []
    assert not [p for p in dataset.fs.find(dataset.path) if p.endswith(".tar") or ".tmp-" in p]


def test_decoded_samples_and_full_batches_from_dataloader_workers(store):
    dataset = make_dataset(store)
    loader = image_text_loader(dataset, batch_size=4, image_size=24, num_workers=2)
    batches = list(loader)
    # each worker reads every other shard and drops its partial batch: 12 // 4 + 9 // 4 = 5 batches
    assert len(batches) == 5 == steps_per_epoch(dataset, world_size=1, num_workers=2, batch_size=4)
    images, texts, metas = batches[0]
    assert images.shape == (4, 3, 24, 24) and images.dtype == torch.uint8
    assert texts[0].startswith("caption ") and metas[0]["url"].startswith("http://example.org/")
    keys = [m["key"] for _, _, batch in batches for m in batch]
    assert len(keys) == len(set(keys)) == 20


def test_ranks_read_disjoint_shards_and_stop_together(store, monkeypatch):
    """As under torchrun: RANK and WORLD_SIZE split the shards, DataLoader workers split them further."""
    dataset = make_dataset(store)
    seen = {}
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        samples = list(image_text_dataset(dataset))
        seen[rank] = [s["key"] for s in samples]
        assert samples[0]["image"].shape[0] == 3  # stored size, (3, H, W)
    assert set(seen[0]).isdisjoint(seen[1])
    assert sorted(seen[0] + seen[1]) == [f"{n:09d}" for n in range(21)]
    assert len(seen[0]) == 12 and len(seen[1]) == 9  # shards 0 and 2; shards 1 and 3

    # every rank gets the same number of batches per epoch, so none waits in an all-reduce
    steps = steps_per_epoch(dataset, world_size=2, num_workers=1, batch_size=4)
    assert steps == 2
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        loader = image_text_loader(dataset, batch_size=4, image_size=16, num_workers=1, epoch_steps=steps)
        assert len(list(loader)) == steps


def test_shuffled_reading_keeps_every_sample(store):
    dataset = make_dataset(store)
    keys = [s["key"] for s in image_text_dataset(dataset, shardshuffle=10, shuffle=8, seed=3)]
    assert sorted(keys) == [f"{n:09d}" for n in range(21)]
    assert keys != sorted(keys)
