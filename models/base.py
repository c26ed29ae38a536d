"""What every model shares: its config, the device and processes it runs on, its checkpoints and progress.

A model module (models/word2vec.py, ...) defines a ``ModelConfig`` subclass, a ``train(config, assets,
context)`` function and a ``load(run)`` function, and registers them in models/registry.py. This module
gives them:

- ``ModelConfig``: a dataclass whose fields are the model's settings, validated on creation, set from
  ``--set key=value`` strings with ``from_overrides``;
- ``RunOptions`` and ``TrainContext``: how a run executes (device, threads, checkpoint and log intervals),
  none of which changes what it computes, so none of it is part of the run's fingerprint;
- ``Distributed``: the process group under torchrun (one process per GPU), a no-op at world size 1;
- ``save_checkpoint``/``load_checkpoint``: safetensors files plus a JSON state written last, so a killed
  run resumes from the last one it finished;
- ``Meter``: loss and throughput in the log at a steady, time-throttled interval.

Nothing here imports Prefect: flows bridge the ``embedpipe.models`` logger to the run logger.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import posixpath
import random
import time
import types
import typing
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from storage import Dataset

log = logging.getLogger("embedpipe.models")

CHECKPOINT_DIR = "checkpoints"


class ConfigError(ValueError):
    """A model setting out of its range or of the wrong type: the message names it and what it accepts."""


class TrainingInterrupted(RuntimeError):
    """Raised when RunOptions.stop_after_steps is reached: the run stopped after writing a checkpoint."""


# --- config --------------------------------------------------------------------------------------


def require(condition: bool, name: str, value: Any, expected: str) -> None:
    """Raise ConfigError("name must be <expected>, got value") unless condition holds."""
    if not condition:
        raise ConfigError(f"{name} must be {expected}, got {value!r}")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        # 1e6 and 2_000_000 are how people write sizes
        number = float(text)
        if not number.is_integer():
            raise ValueError(f"expected a whole number, got {text!r}") from None
        return int(number)


def _convert(text: Any, annotation: Any) -> Any:
    """Turn a --set string into a value of the field's annotated type."""
    if not isinstance(text, str):
        return text
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if text.strip().lower() in ("none", "null", "") and len(options) < len(typing.get_args(annotation)):
            return None
        return _convert(text, options[0])
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        if text not in allowed:
            raise ValueError(f"expected one of {', '.join(map(str, allowed))}, got {text!r}")
        return text
    if origin is tuple:
        item = typing.get_args(annotation)[0]
        return tuple(_convert(part.strip(), item) for part in text.split(",") if part.strip())
    if annotation is bool:
        return _parse_bool(text)
    if annotation is int:
        return _parse_int(text)
    if annotation is float:
        return float(text)
    return text


def parse_overrides(pairs: list[str] | None) -> dict[str, str]:
    """``["dim=100", "mode=cbow"]`` -> ``{"dim": "100", "mode": "cbow"}``."""
    overrides = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes key=value, got {pair!r} (for example --set dim=100)")
        overrides[key.strip()] = value.strip()
    return overrides


@dataclass
class ModelConfig:
    """Base of every model's settings; subclasses add fields with their units and ranges commented."""

    seed: int = 1  # every random draw derives from it: same seed, same assets, same settings -> same model

    # the model's registry name, set on each subclass
    model: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; subclasses extend this and call super().validate()."""
        require(isinstance(self.seed, int) and self.seed >= 0, "seed", self.seed, "an integer >= 0")

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any] | None = None) -> Self:
        """The defaults with ``overrides`` applied; values may be strings as typed on the command line."""
        types_by_name = cls.field_types()
        values = {}
        for key, raw in (overrides or {}).items():
            if key not in types_by_name:
                raise ConfigError(
                    f"{cls.model or cls.__name__} has no setting {key!r}; "
                    f"its settings are: {', '.join(sorted(types_by_name))}"
                )
            try:
                values[key] = _convert(raw, types_by_name[key])
            except ValueError as error:
                raise ConfigError(f"{key}: {error}") from None
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        known = {f.name for f in dataclasses.fields(cls)}
        # JSON gives lists where the config holds tuples
        return cls.from_overrides(
            {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known}
        )

    def resolved(self, device: torch.device) -> Self:
        """The config with settings left to 'auto' (0) made concrete for this device; default: unchanged."""
        return self

    def describe(self) -> str:
        """A few words that tell runs of the same model apart in tables (e.g. 'skipgram d100')."""
        return ""

    def cpu_threads(self) -> int | None:
        """Threads this model trains fastest with on the CPU when none are asked for; None = every core."""
        return None


# --- device and processes ------------------------------------------------------------------------


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def select_device(name: str = "auto") -> torch.device:
    """'auto' picks this process's GPU (LOCAL_RANK under torchrun) when CUDA is present, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but this machine has no CUDA device; use --device cpu")
    return device


def configure_threads(device: torch.device, threads: int = 0, world_size: int = 1) -> int:
    """Give torch every core (split among the processes of this machine) on the CPU; returns the count."""
    if device.type != "cpu":
        return torch.get_num_threads()
    count = threads or max(1, available_cpus() // max(1, world_size))
    torch.set_num_threads(count)
    return count


def autocast(device: torch.device, enabled: bool = True):
    """Mixed precision for the dense models: bf16 where the GPU has it, fp16 otherwise; off on the CPU.

    The static embeddings do not use it: their work is gathers and scatters of single rows, where
    half precision saves little and loses the small SGD updates to rounding.
    """
    if not enabled or device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


@dataclass
class Distributed:
    """This process's place among the training processes: torchrun sets RANK/WORLD_SIZE, else 1 process.

    Several GPUs: ``torchrun --nproc_per_node=8 -m models.worker ...`` (what ``embedpipe train --nproc 8``
    runs); each process takes one GPU (LOCAL_RANK), one share of the data, and rank 0 writes.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized: bool = False

    @classmethod
    def from_environment(cls, device: torch.device) -> Distributed:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend=backend)
        return cls(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            initialized=True,
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def average_(self, tensors: list[torch.Tensor]) -> None:
        """Average tensors across processes, in place (parameter averaging for the sparse models)."""
        if self.world_size == 1:
            return
        import torch.distributed as dist

        for tensor in tensors:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor.div_(self.world_size)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.initialized:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.initialized = False


@dataclass
class RunOptions:
    """How a run executes; none of it changes the trained model, so none of it is in the fingerprint."""

    device: str = "auto"  # auto, cpu, cuda, cuda:1
    threads: int = 0  # CPU threads; 0 = every core available to this process
    checkpoint_every_s: float = 600.0  # seconds between checkpoints
    checkpoint_epochs: bool = True  # also write one at each epoch end
    log_every_s: float = 10.0  # seconds between progress lines
    keep_checkpoints: int = 2  # older checkpoints are removed once a newer one is complete
    keep_final_checkpoint: bool = False  # keep the last checkpoint once the model is exported
    stop_after_steps: int | None = None  # checkpoint and raise TrainingInterrupted after this step


@dataclass
class TrainContext:
    """What a model's train() gets besides its config and assets."""

    run: Dataset  # the run's folder in the store: checkpoints and exports go here
    options: RunOptions = field(default_factory=RunOptions)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dist: Distributed = field(default_factory=Distributed)
    logger: logging.Logger | logging.LoggerAdapter = log

    @classmethod
    def create(cls, run: Dataset, options: RunOptions | None = None) -> TrainContext:
        options = options or RunOptions()
        device = select_device(options.device)
        dist = Distributed.from_environment(device)
        configure_threads(device, options.threads, int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size)))
        return cls(run=run, options=options, device=device, dist=dist)


# --- seeds and random state ----------------------------------------------------------------------


def derive_seed(seed: int, *position: int) -> int:
    """A 63-bit seed for one unit of work (epoch, shard, chunk): the same position always draws the same.

    Deriving each chunk's generator from its position makes the random state a function of the
    position in the data, so a resumed run draws exactly what the uninterrupted one would have.
    """
    state = np.random.SeedSequence([seed, *position])
    return int(state.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def host_tensor(*shape: int, device: torch.device) -> torch.Tensor:
    """A zero float32 tensor on ``device``; on the CPU backed by NumPy, which asks Linux for huge pages.

    Rows read at random from a matrix of millions of 4 KB pages miss the TLB on nearly every read;
    NumPy marks its large allocations for transparent huge pages (madvise) where torch does not.
    """
    if device.type == "cpu":
        return torch.from_numpy(np.zeros(shape, np.float32))
    return torch.zeros(*shape, device=device)


def generator(device: torch.device, seed: int, *position: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *position))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) for code that uses the global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The global generators' states: torch's as tensors (for safetensors), Python's and NumPy's as JSON."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda{index}"] = state
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    meta = {
        "python": [python_state[0], list(python_state[1]), python_state[2]],
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
    }
    return tensors, meta


def restore_rng_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    if "rng/torch" in tensors:
        torch.set_rng_state(tensors["rng/torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    if "python" in meta:
        version, state, gauss = meta["python"]
        random.setstate((version, tuple(state), gauss))
    if "numpy" in meta:
        name, keys, *rest = meta["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))


# --- checkpoints ---------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """Tensors (parameters, optimizer state, RNG) and a JSON state (step, position in the data, ...)."""

    step: int
    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]


def _checkpoint_name(step: int) -> str:
    return posixpath.join(CHECKPOINT_DIR, f"step-{step:012d}")


def checkpoint_steps(run: Dataset) -> list[int]:
    """Steps of the complete checkpoints in a run folder (their JSON is written after the tensors)."""
    steps = []
    for path in run.files(f"{CHECKPOINT_DIR}/step-*.json"):
        stem = posixpath.basename(path)[len("step-") : -len(".json")]
        if stem.isdigit():
            steps.append(int(stem))
    return sorted(steps)


def save_checkpoint(
    run: Dataset,
    step: int,
    tensors: Mapping[str, torch.Tensor],
    state: Mapping[str, Any],
    *,
    keep: int = 2,
) -> None:
    """Write tensors, then the state JSON (which marks the checkpoint complete), then prune old ones."""
    rng_tensors, rng_meta = capture_rng_state()
    payload = {name: t.detach().to("cpu").contiguous() for name, t in {**tensors, **rng_tensors}.items()}
    name = _checkpoint_name(step)
    run.write_bytes(f"{name}.safetensors", save_safetensors(payload))
    run.write_json(
        f"{name}.json", {"step": step, "state": dict(state), "rng": rng_meta, "saved": time.time()}
    )
    for old in checkpoint_steps(run)[:-keep] if keep > 0 else []:
        remove_checkpoint(run, old)


def remove_checkpoint(run: Dataset, step: int) -> None:
    name = _checkpoint_name(step)
    # the JSON goes first: a checkpoint without it is incomplete and never read
    for suffix in (".json", ".safetensors"):
        path = run.file(name + suffix)
        if run.fs.exists(path):
            run.fs.rm(path)


def load_checkpoint(run: Dataset, device: torch.device, *, restore_rng: bool = True) -> Checkpoint | None:
    """The latest complete checkpoint of a run, its tensors on ``device``; None when there is none."""
    steps = checkpoint_steps(run)
    if not steps:
        return None
    name = _checkpoint_name(steps[-1])
    with run.fs.open(run.file(f"{name}.safetensors"), "rb") as f:
        tensors = load_safetensors(f.read())
    meta = run.read_json(f"{name}.json")
    if restore_rng:
        restore_rng_state(tensors, meta.get("rng", {}))
    tensors = {k: v.to(device) for k, v in tensors.items() if not k.startswith("rng/")}
    return Checkpoint(step=meta["step"], tensors=tensors, state=meta["state"])


def clear_checkpoints(run: Dataset, keep_last: bool = False) -> None:
    steps = checkpoint_steps(run)
    for step in steps[:-1] if keep_last else steps:
        remove_checkpoint(run, step)


class CheckpointClock:
    """Decides when to checkpoint: every ``every_s`` seconds, at epoch ends, and at a requested stop."""

    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self.last = time.monotonic()

    def due(self, step: int, epoch_end: bool = False) -> bool:
        if (epoch_end and self.options.checkpoint_epochs) or self.stop_requested(step):
            return True
        return time.monotonic() - self.last >= self.options.checkpoint_every_s

    def stop_requested(self, step: int) -> bool:
        return self.options.stop_after_steps is not None and step >= self.options.stop_after_steps

    def mark(self) -> None:
        self.last = time.monotonic()


# --- progress ------------------------------------------------------------------------------------


class Meter:
    """Loss and throughput over the last interval, logged every ``every_s`` seconds.

        meter = Meter(logger, "word2vec", unit="words", total=epochs * corpus_words)
        meter.update(n, loss_sum=loss, loss_count=pairs, effective_words=m)  # per step
        meter.maybe_log(epoch=1, lr=0.02)

    ``loss_sum`` may be a tensor on the GPU: it is only read (synchronizing) when a line is logged.
    Extra counts (effective_words=...) are totalled and shown as rates.
    """

    def __init__(
        self,
        logger: logging.Logger | logging.LoggerAdapter,
        what: str,
        *,
        unit: str,
        total: int | None = None,
        every_s: float = 10.0,
        done: int = 0,
        totals: Mapping[str, int] | None = None,
        history: list[dict[str, float]] | None = None,
    ) -> None:
        self.logger = logger
        self.what = what
        self.unit = unit
        self.total = total
        self.every_s = every_s
        self.done = done
        self.totals: dict[str, int] = dict(totals or {})
        self.history: list[dict[str, float]] = list(history or [])
        self.started = time.perf_counter()
        self.counted = 0  # units counted by this process since it started (for the overall rate)
        self.counted_extra: dict[str, int] = {}
        self._last = self.started
        self._reset_window()

    def _reset_window(self) -> None:
        self._window_units = 0
        self._window_loss: float | torch.Tensor = 0.0
        self._window_count = 0
        self._window_extra: dict[str, int] = {}

    def update(
        self, units: int, loss_sum: float | torch.Tensor = 0.0, loss_count: int = 0, **counts: int
    ) -> None:
        self.done += units
        self.counted += units
        self._window_units += units
        self._window_loss = self._window_loss + loss_sum
        self._window_count += loss_count
        for key, value in counts.items():
            self.totals[key] = self.totals.get(key, 0) + value
            self.counted_extra[key] = self.counted_extra.get(key, 0) + value
            self._window_extra[key] = self._window_extra.get(key, 0) + value

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def rate(self, key: str | None = None) -> float:
        """Units (or an extra count) per second since this process started training."""
        counted = self.counted if key is None else self.counted_extra.get(key, 0)
        return counted / max(self.elapsed, 1e-9)

    def maybe_log(self, force: bool = False, **extra: float) -> bool:
        """Log a line if ``every_s`` has passed (or ``force``); returns whether it did."""
        now = time.perf_counter()
        if not force and now - self._last < self.every_s:
            return False
        seconds = max(now - self._last, 1e-9)
        loss = float(self._window_loss) / self._window_count if self._window_count else float("nan")
        rates = {f"{key}_per_s": value / seconds for key, value in self._window_extra.items()}
        point = {"done": self.done, "loss": loss, "seconds": round(self.elapsed, 3), **extra}
        point[f"{self.unit}_per_s"] = self._window_units / seconds
        point.update(rates)
        self.history.append(point)
        head = f"{self.what}: {self.done:,}"
        if self.total:
            head += f"/{self.total:,} ({100 * self.done / self.total:.1f}%)"
        shown = " ".join(f"{key.replace('_per_s', '/s')} {value:,.0f}" for key, value in rates.items())
        details = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in extra.items())
        self.logger.info(
            f"{head} {self.unit}, loss {loss:.4f}, {self._window_units / seconds:,.0f} {self.unit}/s {shown} {details}".rstrip()
        )
        self._last = now
        self._reset_window()
        return True


def batched(total: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) ranges that cover [0, total) in steps of ``size``."""
    for start in range(0, total, size):
        yield start, min(total, start + size)


def write_run_config(run: Dataset, model: str, config: ModelConfig) -> None:
    run.write_json("config.json", {"model": model, "config": config.to_dict()})


def read_run_config(run: Dataset) -> dict[str, Any]:
    return json.loads(run.fs.cat_file(run.file("config.json")).decode())
