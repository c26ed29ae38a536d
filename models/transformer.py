"""What BERT, GPT and T5 share: the network from a config, the training loop, the export and loading.

    metrics = train(BERT, config, assets, context)   # what models/bert.py's train() runs
    model = load(BERT, run)                          # a models.contextual.ContextualModel

Each model module defines a ``TransformerConfig`` subclass and a ``Family`` (models/bert.py, gpt.py,
t5.py): which transformers class it trains, its examples (models/pretraining.py), its loss and its
held-out scores. Everything else is here:

- the network is built from its config class (BertConfig, GPT2Config, T5Config) with the vocabulary
  of the tokenizer asset, initialized from the run's seed: no weights are ever downloaded;
- AdamW (no weight decay on biases and norms), linear warmup then linear or cosine decay, gradient
  accumulation and clipping, bf16 autocast on CUDA (fp16 with a gradient scaler where bf16 is missing);
- several processes under torchrun: DistributedDataParallel, each process its share of the files
  (models/pretraining.py), rank 0 writes;
- checkpoints of the model, optimizer, schedule, scaler and every process's position in its stream:
  a killed run resumes and computes what the uninterrupted one would have;
- the export: ``model/`` in the run folder holds save_pretrained's files and the tokenizer, so that
  AutoModelForMaskedLM / AutoModelForCausalLM / AutoModelForSeq2SeqLM, AutoTokenizer and
  transformers.pipeline load it offline from that folder.
"""

from __future__ import annotations

import math
import os
import posixpath
import tempfile
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from models.base import (
    CheckpointClock,
    Distributed,
    Meter,
    ModelConfig,
    TrainContext,
    TrainingInterrupted,
    autocast,
    clear_checkpoints,
    load_checkpoint,
    require,
    save_checkpoint,
    seed_everything,
    select_device,
)
from models.contextual import ContextualModel
from models.pretraining import HELDOUT_SEED, Builder, ExampleStream, Item, Position, prefetch
from storage import Dataset

# the modules whose source defines a run of any of the three, beside the model's own
SPEC_MODULES = (
    "models.base",
    "models.data",
    "models.vectors",
    "models.contextual",
    "models.pretraining",
    "models.transformer",
)
EXPORT_DIR = "model"
TOKENIZER_DIR = "tokenizer"  # where a tokenizer dataset keeps its files (tasks/subword.py writes them)
SETTINGS_FILE = "pretraining.json"  # the run's config, beside model/, for load() to rebuild the examples
WARMUP_FRACTION = 0.05  # warmup_steps = -1: this share of the steps
CLOCK_EVERY = 16  # steps between asking the checkpoint clock under torchrun


# --- config --------------------------------------------------------------------------------------


def preset(
    hidden_size: int,
    layers: int,
    heads: int,
    intermediate_size: int,
    *,
    length: int,
    lr: float,
    positions: int = 0,
) -> dict[str, float]:
    """The sizes of one ``size`` of a model; positions 0 = as many as the sequence length."""
    return {
        "hidden_size": hidden_size,
        "layers": layers,
        "heads": heads,
        "intermediate_size": intermediate_size,
        "length": length,
        "positions": positions,
        "lr": lr,
    }


@dataclass
class TransformerConfig(ModelConfig):
    """Settings the three transformers share; 0 in a size field means "from the size preset"."""

    size: Literal["small", "base"] = "small"  # small: a CPU size that trains in a minute; base: the paper's
    hidden_size: int = 0  # width of the hidden states, 0 = from size; 1..8192, a multiple of heads
    layers: int = 0  # transformer blocks (T5: encoder and decoder each), 0 = from size; 1..96
    heads: int = 0  # attention heads, 0 = from size; 1..128
    intermediate_size: int = 0  # feed-forward width, 0 = from size; 1..65,536
    dropout: float = 0.1  # on hidden states and attention probabilities, 0..0.9
    batch_size: int = 32  # sequences per micro-batch of each process, 1..65,536
    grad_accumulation: int = 1  # micro-batches per optimizer step, 1..1024
    lr: float = 0.0  # peak learning rate, 0 = from size; (0, 1]
    warmup_steps: int = -1  # steps of linear warmup from 0 to lr, >= 0; -1 = 5% of the steps
    schedule: Literal["linear", "cosine"] = "linear"  # after warmup: linear to 0, or cosine to lr/10
    steps: int = 0  # optimizer steps, >= 0; 0 = epochs x examples of one pass / examples per step
    epochs: float = 1.0  # passes over the training articles when steps is 0, (0, 1000]
    weight_decay: float = 0.01  # AdamW's decoupled decay, 0..1 (none on biases and norm weights)
    adam_beta2: float = 0.999  # AdamW's second-moment decay, [0.9, 1)
    max_grad_norm: float = 1.0  # gradients clipped to this global norm, 0 = no clipping
    mixed_precision: bool = True  # bf16 autocast on CUDA (fp16 with a scaler where bf16 is missing)
    heldout_examples: int = 512  # held-out sequences scored at the end of training, 0..1,000,000

    # size -> hidden_size, layers, heads, intermediate_size, length, positions, lr (set by each model)
    PRESETS: ClassVar[dict[str, dict[str, float]]] = {}
    LENGTH: ClassVar[str] = "max_length"  # the name of the model's sequence length field

    def validate(self) -> None:
        super().validate()
        require(self.size in self.PRESETS, "size", self.size, f"one of {', '.join(self.PRESETS)}")
        for name, high in (
            ("hidden_size", 8192),
            ("layers", 96),
            ("heads", 128),
            ("intermediate_size", 65536),
        ):
            value = getattr(self, name)
            require(
                isinstance(value, int) and (value == 0 or 1 <= value <= high),
                name,
                value,
                f"0 (from size) or between 1 and {high:,}",
            )
        sizes = self.architecture()
        require(
            sizes["hidden_size"] % sizes["heads"] == 0,
            "hidden_size",
            sizes["hidden_size"],
            f"a multiple of heads ({sizes['heads']})",
        )
        require(0.0 <= self.dropout <= 0.9, "dropout", self.dropout, "between 0 and 0.9")
        require(1 <= self.batch_size <= 65536, "batch_size", self.batch_size, "between 1 and 65,536")
        require(
            1 <= self.grad_accumulation <= 1024,
            "grad_accumulation",
            self.grad_accumulation,
            "between 1 and 1024",
        )
        require(0.0 <= self.lr <= 1.0, "lr", self.lr, "0 (from size) or in (0, 1]")
        require(self.warmup_steps >= -1, "warmup_steps", self.warmup_steps, ">= 0, or -1 for 5% of the steps")
        require(self.steps >= 0, "steps", self.steps, ">= 0 (0: from epochs)")
        require(0.0 < self.epochs <= 1000.0, "epochs", self.epochs, "in (0, 1000]")
        require(0.0 <= self.weight_decay <= 1.0, "weight_decay", self.weight_decay, "between 0 and 1")
        require(0.9 <= self.adam_beta2 < 1.0, "adam_beta2", self.adam_beta2, "in [0.9, 1)")
        require(self.max_grad_norm >= 0.0, "max_grad_norm", self.max_grad_norm, ">= 0 (0: no clipping)")
        require(
            0 <= self.heldout_examples <= 1_000_000,
            "heldout_examples",
            self.heldout_examples,
            "between 0 and 1,000,000",
        )

    def architecture(self) -> dict[str, Any]:
        """Every size setting made concrete: the field where set, else the preset of ``size``."""
        preset = self.PRESETS.get(self.size) or next(iter(self.PRESETS.values()))
        length = getattr(self, self.LENGTH) or int(preset["length"])
        return {
            "hidden_size": self.hidden_size or int(preset["hidden_size"]),
            "layers": self.layers or int(preset["layers"]),
            "heads": self.heads or int(preset["heads"]),
            "intermediate_size": self.intermediate_size or int(preset["intermediate_size"]),
            "length": length,
            "positions": max(length, int(preset["positions"])),
            "lr": self.lr or float(preset["lr"]),
        }

    def resolved(self, device: torch.device):
        sizes = self.architecture()
        values = self.to_dict() | {
            "hidden_size": sizes["hidden_size"],
            "layers": sizes["layers"],
            "heads": sizes["heads"],
            "intermediate_size": sizes["intermediate_size"],
            "lr": sizes["lr"],
            self.LENGTH: sizes["length"],
        }
        return type(self).from_dict(values)

    def describe(self) -> str:
        sizes = self.architecture()
        return f"{self.size} h{sizes['hidden_size']} L{sizes['layers']} T{sizes['length']}"


# --- what each model brings ----------------------------------------------------------------------


class Family(ABC):
    """One transformer family: its network, examples, loss and held-out scores."""

    name: str = ""  # the registry name
    auto_class: str = ""  # the transformers Auto class that loads the export with its heads
    config_class: type[TransformerConfig] = TransformerConfig

    @abstractmethod
    def build(self, config: TransformerConfig, tokenizer: Any) -> nn.Module:
        """The transformers model, freshly initialized (from the global seed)."""

    @abstractmethod
    def examples(self, config: TransformerConfig, tokenizer: Any) -> Builder:
        """The builder of this family's pretraining examples."""

    @abstractmethod
    def objective(self, model: nn.Module) -> nn.Module:
        """A module around ``model`` whose forward(batch) returns the training loss (what DDP wraps)."""

    @abstractmethod
    def score(self, model: nn.Module, batches: Iterator[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Held-out metrics over batches already on the model's device, with "examples" and "tokens"."""

    @abstractmethod
    def states(self, model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, T, H) final hidden states of the tokenizer's inputs (the encoder's for T5)."""

    def words(self, words: list[str]) -> list[str]:
        """The words as the tokenizer takes them pre-split (GPT adds the spaces its BPE expects)."""
        return words

    def prepare_export(self, model: nn.Module) -> nn.Module:
        """Set what the exported model needs for transformers' pipelines but training does without."""
        return model


# --- optimizer, schedule, checkpoints -----------------------------------------------------------


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: matrices decay, biases and norm weights (every tensor of one dimension) do not."""
    decay, plain = [], []
    for parameter in model.parameters():  # each tied parameter once
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else plain).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak lr at ``step`` (0-based): up linearly over warmup, then down."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(0.0, 1.0 - progress)


def unique_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each tied tensor once (safetensors refuses shared memory)."""
    seen: set[tuple[int, tuple[int, ...]]] = set()
    found = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        found[name] = tensor
    return found


def _checkpoint_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    tensors = {f"model/{name}": value for name, value in unique_tensors(model).items()}
    for index, values in optimizer.state_dict()["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{key}"] = value
    return tensors


def _restore(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    tensors: Mapping[str, torch.Tensor],
    groups: list[dict[str, Any]],
) -> None:
    weights = {name[len("model/") :]: value for name, value in tensors.items() if name.startswith("model/")}
    result = model.load_state_dict(weights, strict=False)
    tied = set(model.state_dict()) - set(unique_tensors(model))
    if result.unexpected_keys or set(result.missing_keys) - tied:
        raise RuntimeError(
            f"the checkpoint does not fit this model (missing {sorted(set(result.missing_keys) - tied)[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}); it was written with other settings: remove the "
            "run folder's checkpoints/ to start over"
        )
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer/"):
            _, index, key = name.split("/", 2)
            state.setdefault(int(index), {})[key] = value
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def checkpoint_now(
    clock: CheckpointClock,
    step: int,
    total_steps: int,
    keep_final: bool,
    dist: Distributed,
    device: torch.device,
) -> bool:
    """Whether every process checkpoints after ``step``: at a requested stop, at the end when the final
    checkpoint is kept, and when rank 0's clock says so. Under torchrun the clock is asked every
    CLOCK_EVERY steps only: its answer is broadcast, which waits for the GPU."""
    if clock.stop_requested(step) or (keep_final and step == total_steps):
        return True
    if dist.world_size == 1:
        return clock.due(step)
    if step % CLOCK_EVERY:
        return False
    import torch.distributed as torch_dist

    value = torch.tensor([float(clock.due(step))], device=device)
    torch_dist.broadcast(value, src=0)
    return bool(value.item())


def _gather(value: Any, dist: Distributed) -> list[Any]:
    if dist.world_size == 1:
        return [value]
    import torch.distributed as torch_dist

    found: list[Any] = [None] * dist.world_size
    torch_dist.all_gather_object(found, value)
    return found


def heldout_batches(
    stream: ExampleStream, max_examples: int, device: torch.device
) -> Iterator[dict[str, torch.Tensor]]:
    """The first ``max_examples`` held-out examples in batches on ``device`` (the last one cut short)."""
    for item in stream.epoch_items(0, max_examples=max_examples):
        yield {name: tensor.to(device) for name, tensor in item.batch.items()}


def planned_steps(stream: ExampleStream, config: TransformerConfig, dist: Distributed) -> tuple[int, int]:
    """(optimizer steps, examples of one pass): ``steps``, or ``epochs`` passes over the training articles."""
    if config.steps:
        return config.steps, 0
    examples = stream.count_examples(0)
    per_step = config.batch_size * config.grad_accumulation * dist.world_size
    return max(1, math.ceil(config.epochs * examples / per_step)), examples


# --- training ------------------------------------------------------------------------------------


def train(
    family: Family, config: TransformerConfig, assets: Mapping[str, Dataset], ctx: TrainContext
) -> dict[str, Any]:
    """Pretrain from scratch on the corpus, resuming from the run's checkpoint; export into model/."""
    device, dist, options = ctx.device, ctx.dist, ctx.options
    config = config.resolved(device)
    corpus = assets["corpus"]
    tokenizer = load_tokenizer(assets["tokenizer"])
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    seed_everything(config.seed)  # the same initial weights in every process and every resumed run
    model = family.build(config, tokenizer).to(device)
    builder = family.examples(config, tokenizer)
    stream = ExampleStream(
        corpus,
        tokenizer,
        builder,
        seed=config.seed,
        batch_size=config.batch_size,
        rank=dist.rank,
        world_size=dist.world_size,
        pin_memory=device.type == "cuda",
    )
    what = f"{family.name} {config.describe()}"

    checkpoint = load_checkpoint(ctx.run, device)
    state = checkpoint.state if checkpoint is not None else {}
    if "total_steps" in state:
        total_steps, pass_examples = state["total_steps"], state["pass_examples"]
    else:
        total_steps, pass_examples = planned_steps(stream, config, dist)
    warmup = min(
        total_steps,
        config.warmup_steps if config.warmup_steps >= 0 else max(1, round(WARMUP_FRACTION * total_steps)),
    )

    optimizer = torch.optim.AdamW(
        parameter_groups(model, config.weight_decay),
        lr=config.architecture()["lr"],
        betas=(0.9, config.adam_beta2),
        eps=1e-6,
        fused=device.type == "cuda",
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, config.schedule)
    )
    half = config.mixed_precision and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=half)

    first_step, start = 0, Position()
    mine: dict[str, Any] = {"tokens": 0, "counts": {}}
    if checkpoint is not None:
        _restore(model, optimizer, checkpoint.tensors, state["optimizer_groups"])
        scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        processes = state["processes"]
        if len(processes) != dist.world_size:
            raise RuntimeError(
                f"{ctx.run.name}: the checkpoint was written by {len(processes)} process(es); resume it with "
                f"--nproc {len(processes)}, or remove its checkpoints/ to start over"
            )
        mine = processes[dist.rank]
        first_step, start = checkpoint.step, Position.from_list(mine["position"])
        ctx.logger.info(f"{what}: resuming at step {first_step:,} of {total_steps:,} from its checkpoint")
    else:
        ctx.logger.info(
            f"{what}: {sum(p.numel() for p in model.parameters()):,} parameters, {total_steps:,} steps of "
            f"{config.batch_size * config.grad_accumulation * dist.world_size} sequences on {device}"
            + (f" ({pass_examples:,} training sequences per pass)" if pass_examples else "")
        )

    objective = family.objective(model)
    if dist.world_size > 1:
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None
        )
    meter = Meter(
        ctx.logger,
        what,
        unit="tokens",
        every_s=options.log_every_s,
        done=mine["tokens"],
        history=state.get("history", []),
    )
    built: Counter[str] = Counter(mine["counts"])
    clock = CheckpointClock(options)
    position, logged = start, False
    items = prefetch(stream.items(start))
    try:
        for step in range(first_step, total_steps):
            objective.train()
            loss_sum = torch.zeros((), device=device)
            tokens = examples = 0
            for micro in range(config.grad_accumulation):
                item: Item = next(items)
                batch = {name: t.to(device, non_blocking=True) for name, t in item.batch.items()}
                last = micro == config.grad_accumulation - 1
                # gradients are averaged across processes once per step, on the last micro-batch
                sync = objective.no_sync() if dist.world_size > 1 and not last else nullcontext()
                with sync:
                    with autocast(device, config.mixed_precision):
                        loss = objective(batch)
                    scaler.scale(loss / config.grad_accumulation).backward()
                loss_sum += loss.detach()
                tokens += item.tokens
                examples += item.examples
                built.update(item.counts)
                position = item.position
            if config.max_grad_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            meter.update(tokens, loss_sum, config.grad_accumulation, sequences=examples)
            logged = dist.is_main and meter.maybe_log(step=step + 1, lr=scheduler.get_last_lr()[0])

            done = step + 1
            if checkpoint_now(clock, done, total_steps, options.keep_final_checkpoint, dist, device):
                processes = _gather(
                    {"position": position.to_list(), "tokens": meter.done, "counts": dict(built)}, dist
                )
                if dist.is_main:
                    saved = {
                        "total_steps": total_steps,
                        "pass_examples": pass_examples,
                        "processes": processes,
                        "history": meter.history,
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "optimizer_groups": optimizer.state_dict()["param_groups"],
                    }
                    save_checkpoint(
                        ctx.run,
                        done,
                        _checkpoint_tensors(model, optimizer),
                        saved,
                        keep=options.keep_checkpoints,
                    )
                dist.barrier()
                clock.mark()
                if clock.stop_requested(done) and done < total_steps:
                    raise TrainingInterrupted(f"{what}: stopped after step {done} as asked")
    finally:
        items.close()

    if dist.is_main and not logged and first_step < total_steps:
        meter.maybe_log(force=True, step=total_steps, lr=scheduler.get_last_lr()[0])
    processes = _gather({"tokens": meter.done, "counts": dict(built), "position": position.to_list()}, dist)
    counts: Counter[str] = Counter()
    for process in processes:
        counts.update(process["counts"])
    metrics: dict[str, Any] = {
        "steps": total_steps,
        "tokens": sum(p["tokens"] for p in processes),
        "seconds": round(meter.elapsed, 3),
        # this process's rate times the processes (each trains on its own share)
        "tokens_per_s": round(meter.rate() * dist.world_size, 1),
        "sequences_per_s": round(meter.rate("sequences") * dist.world_size, 1),
        "final_loss": meter.history[-1]["loss"] if meter.history else None,
        "history": meter.history,
        "device": str(device),
        "processes": dist.world_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocabulary": len(tokenizer),
        "epochs_started": max(p["position"][0] for p in processes) + 1,
        "built": dict(sorted(counts.items())),
    }
    if dist.is_main:
        if config.heldout_examples:
            heldout = heldout_stream(corpus, tokenizer, builder, config.batch_size)
            model.eval()
            with torch.no_grad(), autocast(device, config.mixed_precision):
                scores = family.score(model, heldout_batches(heldout, config.heldout_examples, device))
            ctx.logger.info(f"{what}: held out {_shown(scores)}")
            metrics.update({f"heldout_{key}": value for key, value in scores.items()})
        family.prepare_export(model)
        export(model, assets["tokenizer"], ctx.run, config)
        ctx.run.write_json(SETTINGS_FILE, {"model": family.name, "config": config.to_dict()})
        clear_checkpoints(ctx.run, keep_last=options.keep_final_checkpoint)
    dist.barrier()
    return metrics


def _shown(scores: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v:,}" for k, v in scores.items())


def heldout_stream(corpus: Dataset, tokenizer: Any, builder: Builder, batch_size: int) -> ExampleStream:
    """The held-out articles' examples in corpus order, drawn with the same seed for every run."""
    return ExampleStream(
        corpus, tokenizer, builder, seed=HELDOUT_SEED, batch_size=batch_size, split="heldout", shuffle=False
    )


# --- export and loading --------------------------------------------------------------------------


def export(
    model: nn.Module, tokenizer_dataset: Dataset, run: Dataset, config: TransformerConfig
) -> list[str]:
    """save_pretrained's files and the tokenizer's into the run's model/ folder (any fsspec store)."""
    import json

    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    written = []
    try:
        with tempfile.TemporaryDirectory(prefix="embedpipe-export-") as folder:
            model.save_pretrained(folder)
            for path in tokenizer_dataset.files(f"{TOKENIZER_DIR}/*"):
                name = posixpath.basename(path)
                data = tokenizer_dataset.fs.cat_file(path)
                if name == "tokenizer_config.json":
                    # a pipeline cuts long texts at the model's positions, not at the tokenizer's 512/1024
                    settings = json.loads(data)
                    settings["model_max_length"] = config.architecture()["positions"]
                    data = json.dumps(settings, indent=2, ensure_ascii=False).encode()
                with open(os.path.join(folder, name), "wb") as f:
                    f.write(data)
            for name in sorted(os.listdir(folder)):
                with open(os.path.join(folder, name), "rb") as f:
                    written.append(run.write_bytes(f"{EXPORT_DIR}/{name}", f.read()))
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return written


def local_folder(dataset: Dataset, relative: str = EXPORT_DIR) -> str:
    """A local path to a folder of a dataset: itself on a local store, else a temporary copy."""
    folder = dataset.file(relative)
    if dataset.store.is_local:
        return folder
    local = tempfile.mkdtemp(prefix="embedpipe-model-")
    dataset.fs.get(folder + "/", local, recursive=True)
    return local


def load_tokenizer(dataset: Dataset) -> Any:
    """transformers' AutoTokenizer of a finished tokenizer dataset (build-text-assets' subword step)."""
    from transformers import AutoTokenizer

    dataset.manifest()  # refuses an unfinished dataset
    return AutoTokenizer.from_pretrained(local_folder(dataset, TOKENIZER_DIR))


class TransformerModel(ContextualModel):
    """A trained BERT, GPT or T5 loaded from its export, for evaluation."""

    def __init__(
        self,
        family: Family,
        folder: str,
        config: TransformerConfig,
        device: torch.device | None = None,
    ) -> None:
        import transformers

        # a progress bar per load means nothing for weights read from a local folder in a second
        transformers.utils.logging.disable_progress_bar()
        self.family = family
        self.name = family.name
        self.config = config
        self.device = device or select_device("auto")
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        self.model = getattr(transformers, family.auto_class).from_pretrained(folder).to(self.device).eval()
        self.max_length = config.architecture()["positions"]

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def encode_words(self, sentences: list[list[str]], batch_size: int = 32) -> list[np.ndarray]:
        """Each word's vector: the mean of its pieces' final hidden states (words cut off past the
        model's positions get zeros)."""
        found: list[np.ndarray] = [np.zeros((0, self.dim), np.float32)] * len(sentences)
        rows = [k for k, words in enumerate(sentences) if words]
        # FIXME: a sentence longer than the model's positions in subword pieces (128 for the small
        # BERT) is cut there, and its words past the cut get zero vectors
        for start in range(0, len(rows), batch_size):
            chosen = rows[start : start + batch_size]
            inputs = self.tokenizer(
                [self.family.words(list(sentences[k])) for k in chosen],
                is_split_into_words=True,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            with torch.no_grad():
                states = self.family.states(self.model, inputs.to(self.device)).float()  # (B, T, H)
            for row, k in enumerate(chosen):
                words = np.asarray([-1 if w is None else w for w in inputs.word_ids(row)])
                index = torch.from_numpy(words).to(self.device)
                kept = index >= 0
                count = len(sentences[k])
                sums = torch.zeros(count, self.dim, device=self.device).index_add_(
                    0, index[kept], states[row][kept]
                )
                pieces = torch.bincount(index[kept], minlength=count).clamp_(min=1)
                found[k] = (sums / pieces[:, None]).cpu().numpy().astype(np.float32)
        return found

    def heldout(self, assets: Mapping[str, Dataset], max_examples: int = 2_000) -> dict[str, float]:
        builder = self.family.examples(self.config, self.tokenizer)
        stream = heldout_stream(assets["corpus"], self.tokenizer, builder, self.config.batch_size)
        with torch.no_grad(), autocast(self.device, self.config.mixed_precision):
            return self.family.score(self.model, heldout_batches(stream, max_examples, self.device))


def load(family: Family, run: Dataset, device: torch.device | None = None) -> TransformerModel:
    """The run's exported model, on ``device`` (a GPU when there is one)."""
    settings = run.read_json(SETTINGS_FILE)
    config = family.config_class.from_dict(settings["config"])
    return TransformerModel(family, local_folder(run), config, device)
