"""WebDataset shards of image-text pairs: the writer the image flow uses, the reader training uses.

A shard is a tar of samples; a sample is the files sharing a key: ``KEY.jpg`` (RGB JPEG), ``KEY.txt``
(the caption, UTF-8) and ``KEY.json`` (url, caption, sizes before and after, sha256, phash, row,
source_row, and page_id for Wikipedia images). A dataset of ingest-images lists its shards in the
table ``shards`` (storage.schemas.IMAGE_SHARDS), so readers never glob.

    from storage import Store
    from storage.webdataset import image_text_loader

    shards = Store("work/store").dataset("images/coco")
    for images, texts, metas in image_text_loader(shards, batch_size=64, image_size=224, num_workers=4):
        ...                                  # images: (B, 3, 224, 224) uint8; texts: list[str]

Under DDP (torchrun), each rank reads its own shards (``split_by_node``) and each DataLoader worker
its own part of those (``split_by_worker``); ``steps_per_epoch`` gives the number of batches every
rank can produce, so all ranks stop together instead of one waiting forever in an all-reduce.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import fsspec
from PIL import Image

from storage.store import Dataset

if TYPE_CHECKING:
    import torch
    import webdataset as wds

# torch and webdataset are imported where they are used: the writer runs in every worker process of
# the image flow, where importing torch would add seconds to each start and nothing else

# fixed tar header fields: the same samples always give the same bytes
_MTIME = 0


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = _MTIME
    info.mode = 0o444
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


def write_shard(dataset: Dataset, relative: str, samples: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Write samples ({"__key__": key, "jpg": bytes, "txt": str, "json": dict}) to one tar.

    The tar is written under a temporary name and renamed when complete. Returns its samples,
    bytes, first and last key.
    """
    count, first, last = 0, None, None
    with dataset.open_atomic(relative) as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for sample in samples:
                key = sample["__key__"]
                for extension, value in sample.items():
                    if extension == "__key__":
                        continue
                    if extension == "json":
                        value = json.dumps(value, sort_keys=True, ensure_ascii=False)
                    if isinstance(value, str):
                        value = value.encode()
                    tar.addfile(*_member(f"{key}.{extension}", value))
                count += 1
                first = first or key
                last = key
    size = dataset.fs.size(dataset.file(relative))
    return {"samples": count, "bytes": int(size), "first_key": first, "last_key": last}


# --- reading --------------------------------------------------------------------------------------


def shard_files(dataset: Dataset) -> list[dict[str, Any]]:
    """The shard index of a finished dataset: file (full path or URL), samples, bytes, keys."""
    table = dataset.read_table("shards")
    rows = table.to_pylist()
    for row in rows:
        row["file"] = dataset.store.full_url(dataset.file(row["file"]))
    return rows


def _fsspec_open(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> Any:
    return fsspec.open(url, mode).open()


def shard_urls(shards: Dataset | str | list[str]) -> list[str]:
    """Shard URLs webdataset can open: from a dataset's index, a brace pattern, or a list."""
    import webdataset as wds

    if isinstance(shards, Dataset):
        urls = [row["file"] for row in shard_files(shards)]
        protocol = shards.store.protocol
        if not shards.store.is_local and protocol not in wds.gopen_schemes:
            # object stores (s3, gcs, az) open through fsspec, with the credentials it finds
            wds.gopen_schemes[protocol] = _fsspec_open
        return urls
    if isinstance(shards, str):
        return list(wds.shardlists.expand_urls(shards))
    return list(shards)


def to_sample(sample: dict[str, Any], transform: Callable[[Image.Image], torch.Tensor]) -> dict[str, Any]:
    """A decoded sample as the training code wants it: image tensor, caption, metadata."""
    meta = json.loads(sample["json"])
    image = Image.open(io.BytesIO(sample["jpg"]))
    return {
        "key": sample["__key__"],
        "image": transform(image.convert("RGB")),
        "text": sample["txt"].decode("utf-8"),
        "meta": meta,
    }


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) uint8: normalisation belongs to each model, on the GPU."""
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def resize_center_crop(size: int) -> Callable[[Image.Image], torch.Tensor]:
    """Fit the smaller side to ``size``, crop the middle square: equal shapes, so samples batch."""

    def transform(image: Image.Image) -> torch.Tensor:
        scale = size / min(image.size)
        if scale != 1:
            new = (max(size, round(image.width * scale)), max(size, round(image.height * scale)))
            image = image.resize(new, Image.Resampling.BICUBIC, reducing_gap=3.0)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        return pil_to_tensor(image.crop((left, top, left + size, top + size)))

    return transform


def image_text_dataset(
    shards: Dataset | str | list[str],
    *,
    image_size: int | None = None,
    transform: Callable[[Image.Image], torch.Tensor] | None = None,
    shardshuffle: int | bool = False,
    shuffle: int = 0,
    seed: int = 0,
    handler: Callable[[Exception], bool] | None = None,
) -> wds.WebDataset:
    """Samples {"key", "image", "text", "meta"} from shards, split by rank and by DataLoader worker.

    ``image_size`` resizes and center-crops every image to a square (so samples batch); without it
    images keep their stored size. ``shardshuffle`` shuffles shards within a buffer of that many
    (False: in order); ``shuffle`` shuffles samples within a buffer of that many (0: in order).
    """
    import webdataset as wds

    handler = handler or wds.reraise_exception
    if transform is None:
        transform = resize_center_crop(image_size) if image_size else pil_to_tensor
    dataset = wds.WebDataset(
        shard_urls(shards),
        shardshuffle=shardshuffle,
        nodesplitter=wds.split_by_node,
        workersplitter=wds.split_by_worker,
        seed=seed,
        empty_check=False,  # with more ranks x workers than shards, some readers rightly get none
        handler=handler,
    )
    if shuffle:
        dataset = dataset.shuffle(shuffle, seed=seed)
    return dataset.map(lambda sample: to_sample(sample, transform), handler=handler)


def _collate(batch: list[dict[str, Any]]) -> tuple[torch.Tensor, list[str], list[dict[str, Any]]]:
    import torch

    return torch.stack([s["image"] for s in batch]), [s["text"] for s in batch], [s["meta"] for s in batch]


def image_text_loader(
    shards: Dataset | str | list[str],
    *,
    batch_size: int,
    image_size: int,
    num_workers: int = 4,
    epoch_steps: int | None = None,
    **dataset_options: Any,
) -> wds.WebLoader:
    """Batches (images (B, 3, S, S) uint8, texts, metas) through a DataLoader with worker processes.

    Batches are formed in the workers and every partial batch is dropped, so each batch is full.
    ``epoch_steps`` caps the batches per epoch (see steps_per_epoch, for DDP).
    """
    import webdataset as wds

    dataset = image_text_dataset(shards, image_size=image_size, **dataset_options)
    dataset = dataset.batched(batch_size, collation_fn=_collate, partial=False)
    loader = wds.WebLoader(
        dataset, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0
    )
    return loader.with_epoch(epoch_steps) if epoch_steps else loader


def steps_per_epoch(dataset: Dataset, *, world_size: int, num_workers: int, batch_size: int) -> int:
    """Full batches the slowest rank gets: shards go to ranks by rank::world_size and, within a rank,
    to workers by worker::num_workers, and each worker drops its partial batch."""
    samples = [row["samples"] for row in shard_files(dataset)]
    workers = max(1, num_workers)
    per_rank = []
    for rank in range(world_size):
        mine = samples[rank::world_size]
        per_rank.append(sum(sum(mine[w::workers]) // batch_size for w in range(workers)))
    return min(per_rank) if per_rank else 0


def iter_samples(shards: Dataset | str | list[str]) -> Iterator[dict[str, Any]]:
    """Every raw sample in shard order, in this process (no splitting): for checks and tools."""
    import webdataset as wds

    dataset = wds.WebDataset(shard_urls(shards), shardshuffle=False, nodesplitter=None, workersplitter=None)
    yield from dataset
