"""GloVe: weighted least squares on the co-occurrence counts (Pennington et al. 2014), AdaGrad.

    embedpipe train glove --store work/store --set dim=100 --set epochs=15 --set x_max=100

For every non-zero count x(i, j) of the co-occurrence Parquet of build-text-assets, the loss is

    f(x) (w_i . c_j + b_i + b'_j - log x)^2,    f(x) = min(1, (x / x_max) ** alpha)

minimized with AdaGrad as Stanford's tool does (its updates: lr times the gradient, divided by the
root of the summed squares of those, which start at 1). Each epoch visits every pair once in an
order drawn from (seed, epoch). The exported vector of a word is w_i + c_i (the tool's -model 2).

Two backends (``backend``; auto: numba on the CPU, torch on a GPU): numba (models/native.py) updates
one pair at a time as the tool does, each thread taking its share of a step's ``batch`` pairs;
torch scores a step's ``batch`` pairs against the same parameters and adds their updates into the
rows, for GPUs; on the bench corpus (bench/static_embeddings.py, x_max 100) both score the same,
and on one CPU thread torch takes about 3 times as long.

The counts are read into memory once (16 bytes a pair): the co-occurrence of the English sample
dumps and WordNet glosses (window 10) is 9.6M pairs, 150 MB.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from models import native, registry
from models.base import (
    CheckpointClock,
    Meter,
    ModelConfig,
    TrainContext,
    TrainingInterrupted,
    clear_checkpoints,
    generator,
    host_tensor,
    load_checkpoint,
    require,
    save_checkpoint,
)
from models.data import CooccurrenceShards, Vocabulary
from models.vectors import export_word_vectors, load_embedding
from storage import Dataset


@dataclass
class GloVeConfig(ModelConfig):
    """GloVe settings, named as Stanford's tool names them."""

    model = "glove"
    dim: int = 100  # vector size, 2..4096 (the tool: -vector-size)
    x_max: float = (
        100.0  # counts at or above it get weight 1, > 0 (the paper's; 10 suits a few million words)
    )
    alpha: float = 0.75  # exponent of the weighting below x_max, 0..1
    epochs: int = 15  # passes over the counts (the tool: -iter), 1..1000
    lr: float = 0.05  # AdaGrad learning rate (the tool: -eta), (0, 10]
    min_count: int = 5  # words seen fewer times are dropped with their pairs, >= 1
    backend: Literal["auto", "numba", "torch"] = "auto"  # auto: numba on the CPU, torch on a GPU
    batch: int = (
        0  # pairs per step; 0 = auto (numba 1,048,576; torch 4,096 on the CPU, 65,536 on a GPU), 64..2^22
    )

    def validate(self) -> None:
        super().validate()
        require(2 <= self.dim <= 4096, "dim", self.dim, "between 2 and 4096")
        require(self.x_max > 0, "x_max", self.x_max, "> 0")
        require(0.0 <= self.alpha <= 1.0, "alpha", self.alpha, "between 0 and 1")
        require(1 <= self.epochs <= 1000, "epochs", self.epochs, "between 1 and 1000")
        require(0.0 < self.lr <= 10.0, "lr", self.lr, "in (0, 10]")
        require(self.min_count >= 1, "min_count", self.min_count, ">= 1")
        require(
            self.batch == 0 or 64 <= self.batch <= 2**22, "batch", self.batch, "0 (auto) or 64..4,194,304"
        )

    def resolved(self, device: torch.device) -> GloVeConfig:
        backend = native.resolve_backend(self.backend, device)
        # numba's step only sets how often progress is counted and a checkpoint may be taken
        batch = self.batch or (2**20 if backend == "numba" else 65_536 if device.type == "cuda" else 4_096)
        return GloVeConfig.from_dict(self.to_dict() | {"backend": backend, "batch": batch})

    def describe(self) -> str:
        return f"d{self.dim} x_max {self.x_max:g}"

    def cpu_threads(self) -> int | None:
        # a torch step of 4,096 pairs is too small to share: on 2 cores (2026-12), 570k pairs/s on 1
        # thread against 46k on 2 with one other busy process, the threads waiting on each other at
        # every op; numba's threads each take their own share of the pairs
        return 1 if self.backend == "torch" else None


class GloVe:
    """Word and context vectors and biases, with AdaGrad's running sums of squared gradients."""

    def __init__(self, words: int, dim: int, device: torch.device, seed: int) -> None:
        gen = generator(torch.device("cpu"), seed, 0)
        # as the tool: uniform in (-0.5/dim, 0.5/dim), biases too; squared gradients start at 1
        cpu = torch.device("cpu")
        # the draws of torch.rand, in this order, into NumPy-backed (huge-page) memory
        self.w, self.c, self.bw, self.bc = (
            host_tensor(*shape, device=cpu).uniform_(generator=gen).sub_(0.5).div_(dim).to(device)
            for shape in ((words, dim), (words, dim), (words,), (words,))
        )
        self.gw, self.gc, self.gbw, self.gbc = (
            host_tensor(*shape, device=device).fill_(1.0)
            for shape in ((words, dim), (words, dim), (words,), (words,))
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in ("w", "c", "bw", "bc", "gw", "gc", "gbw", "gbc")}

    def load(self, tensors: Mapping[str, torch.Tensor]) -> None:
        for name, tensor in self.tensors().items():
            tensor.copy_(tensors[name])

    def step(self, i: torch.Tensor, j: torch.Tensor, log_x: torch.Tensor, weight: torch.Tensor, lr: float):
        """One AdaGrad step on a batch of pairs; returns the summed weighted squared error."""
        wi, cj = self.w[i], self.c[j]  # (B, d)
        diff = (wi * cj).sum(1) + self.bw[i] + self.bc[j] - log_x  # (B,)
        loss = (weight * diff * diff).sum()
        # as the tool, the learning rate is inside the gradient that AdaGrad accumulates
        fdiff = lr * weight * diff
        # a NaN (an overflow on a broken corpus) would poison every row it touches
        fdiff = torch.nan_to_num(fdiff, nan=0.0, posinf=0.0, neginf=0.0)
        grad_w = fdiff[:, None] * cj
        grad_c = fdiff[:, None] * wi
        self.w.index_add_(0, i, -grad_w / self.gw[i].sqrt())
        self.c.index_add_(0, j, -grad_c / self.gc[j].sqrt())
        self.bw.index_add_(0, i, -fdiff / self.gbw[i].sqrt())
        self.bc.index_add_(0, j, -fdiff / self.gbc[j].sqrt())
        self.gw.index_add_(0, i, grad_w * grad_w)
        self.gc.index_add_(0, j, grad_c * grad_c)
        self.gbw.index_add_(0, i, fdiff * fdiff)
        self.gbc.index_add_(0, j, fdiff * fdiff)
        return loss

    def native_step(self, pool: native.Threads, arrays: tuple[np.ndarray, ...], order: np.ndarray, lr: float):
        """The pairs ``order`` one at a time, split among the pool's threads; returns (loss, skipped)."""
        parameters = tuple(tensor.numpy() for tensor in self.tensors().values())
        parts = np.array_split(order, pool.count)
        results = pool.map(native.glove_pairs, [(*parameters, *arrays, part, lr) for part in parts])
        return sum(r[0] for r in results), sum(r[1] for r in results)


def read_pairs(dataset: Dataset, remap: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Every pair of the co-occurrence files between kept words, renumbered; and the pairs dropped."""
    shards = CooccurrenceShards(dataset)
    parts, dropped = [], 0
    for index in range(len(shards)):
        i, j, x = shards.read(index)
        i, j = remap[i], remap[j]
        kept = (i >= 0) & (j >= 0) & (x > 0)
        dropped += int(len(kept) - kept.sum())
        parts.append((i[kept], j[kept], x[kept]))
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), 0
    return (*(np.concatenate([p[k] for p in parts]) for k in range(3)), dropped)


def train(config: GloVeConfig, assets: Mapping[str, Dataset], ctx: TrainContext) -> dict[str, Any]:
    """Fit GloVe on the co-occurrence counts, export vectors.txt (w + c), and return the run's metrics."""
    device, options = ctx.device, ctx.options
    if ctx.dist.world_size > 1:
        raise NotImplementedError("GloVe trains in one process; run it without torchrun")
    vocab, remap = Vocabulary.from_dataset(assets["cooccurrence"]).prune(config.min_count)
    if len(vocab) < 2:
        raise ValueError(f"only {len(vocab)} words are seen {config.min_count}+ times; lower min_count")
    i_np, j_np, x_np, dropped = read_pairs(assets["cooccurrence"], remap)
    if len(i_np) == 0:
        raise ValueError(f"{assets['cooccurrence'].name} has no pair between words kept by min_count")
    i_all = torch.from_numpy(i_np).to(device)
    j_all = torch.from_numpy(j_np).to(device)
    x_all = torch.from_numpy(x_np).to(device)
    log_x = torch.log(x_all)
    weight = torch.clamp(x_all / config.x_max, max=1.0) ** config.alpha
    pairs = len(i_np)
    steps_per_epoch = -(-pairs // config.batch)
    total_steps = steps_per_epoch * config.epochs

    net = GloVe(len(vocab), config.dim, device, config.seed)
    first_step, state = 0, {"pairs": 0, "totals": {}, "history": []}
    checkpoint = load_checkpoint(ctx.run, device)
    if checkpoint is not None:
        net.load(checkpoint.tensors)
        first_step, state = checkpoint.step, checkpoint.state
        ctx.logger.info(f"glove: resuming at step {first_step:,} of {total_steps:,} from its checkpoint")
    meter = Meter(
        ctx.logger,
        "glove",
        unit="pairs",
        total=pairs * config.epochs,
        every_s=options.log_every_s,
        done=state["pairs"],
        totals=state["totals"],
        history=state["history"],
    )
    clock = CheckpointClock(options)
    pool = native.Threads(torch.get_num_threads() if config.backend == "numba" else 1)
    arrays = tuple(t.numpy() for t in (i_all, j_all, log_x, weight)) if config.backend == "numba" else ()
    order, skipped = None, 0
    try:
        for step_index in range(first_step, total_steps):
            epoch, position = divmod(step_index, steps_per_epoch)
            if order is None or position == 0:
                # the epoch's order depends only on (seed, epoch): a resumed run visits what the first would have
                order = torch.randperm(
                    pairs, generator=generator(device, config.seed, epoch + 1), device=device
                )
            batch = order[position * config.batch : (position + 1) * config.batch]
            if config.backend == "numba":
                loss, skips = net.native_step(pool, arrays, batch.numpy(), config.lr)
                skipped += skips
            else:
                loss = net.step(i_all[batch], j_all[batch], log_x[batch], weight[batch], config.lr)
            meter.update(len(batch), loss, len(batch))
            meter.maybe_log(epoch=epoch + 1)
            epoch_end = position == steps_per_epoch - 1
            if clock.due(step_index + 1, epoch_end):
                state = {"pairs": meter.done, "totals": meter.totals, "history": meter.history}
                save_checkpoint(ctx.run, step_index + 1, net.tensors(), state, keep=options.keep_checkpoints)
                clock.mark()
                if clock.stop_requested(step_index + 1) and step_index + 1 < total_steps:
                    raise TrainingInterrupted(f"glove: stopped after step {step_index + 1} as asked")
    finally:
        pool.close()
    meter.maybe_log(force=True, epoch=config.epochs)
    if skipped:
        ctx.logger.warning(f"glove: {skipped:,} pair updates skipped: their error overflowed")

    export_word_vectors(ctx.run, vocab.tokens, net.w + net.c)
    clear_checkpoints(ctx.run, keep_last=options.keep_final_checkpoint)
    return {
        "steps": total_steps,
        "epochs": config.epochs,
        "vocabulary": len(vocab),
        "pairs": pairs,
        "pairs_dropped_min_count": dropped,
        "seconds": round(meter.elapsed, 3),
        "pairs_per_s": round(meter.rate(), 1),
        "final_loss": meter.history[-1]["loss"] if meter.history else None,
        "history": meter.history,
        "processes": 1,
        "threads": pool.count,
        "backend": config.backend,
        "pairs_skipped_overflow": skipped,
        "device": str(device),
    }


def load(run: Dataset):
    return load_embedding(run)


SPEC = registry.ModelSpec(
    name="glove",
    family="static",
    summary="GloVe: weighted least squares on the co-occurrence counts with AdaGrad",
    config=GloVeConfig,
    needs=(registry.COOCCURRENCE,),
    train=train,
    load=load,
    evaluations=("word",),
    modules=("models.base", "models.data", "models.native", "models.vectors"),
)
