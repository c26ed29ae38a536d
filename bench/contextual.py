"""Benchmark: BERT and GPT training throughput, this project's loop against transformers' Trainer, in one run.

    python -m bench.contextual [--models bert gpt] [--sizes small base] [--steps 30] [--base-steps 3]
                               [--batch-size 32] [--base-batch-size N] [--threads 2] [--store DIR]

The corpus is Don Quijote (../shared/data, the whole book, documents of 12 lines) through
build-text-assets' corpus step and a WordPiece and a byte-level BPE tokenizer of 16,000 pieces.

For each model and size both sides train the same network (models/bert.py, gpt.py build it from the
same config and the same seed, so the initial weights are equal) on the same examples in the same
order with the same batch, accumulation, AdamW settings, warmup and linear decay, clipping and, on
CUDA, bf16 autocast:
- ours: ``models.transformer.train``, as `embedpipe train` runs it, its examples built while it
  trains (the first file's are waited for, inside the timed loop);
- Trainer: ``transformers.Trainer`` on the first batches of that same example stream, built before it
  starts (one pre-collated batch per dataloader item), the model computing its own loss.

tokens/s counts the tokens the model reads (BERT: without padding), over each side's training time
(ours: its loop, from its first batch to its last step; Trainer: train_runtime). The BERT difference
is mostly the masked-token head: ours projects only the 15% of positions that are predicted, the
model's own forward all of them. On CUDA, MFU = model FLOPs/s over the chip's bf16 dense peak, with
model FLOPs per token = 6 x parameters + 12 x layers x hidden x sequence length (the full head, on
both sides, so the two MFUs compare as the tokens/s do).

Base sizes on a CPU: a handful of steps (--base-steps) at a small batch (--base-batch-size: BERT 8
pairs of 128, GPT 1 block of 1,024), enough for a rate, not for a loss curve.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import tempfile
import time
from pathlib import Path

import flows  # noqa: F401  (Prefect defaults before Prefect is imported)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
BOOK = DATA / "text_corpora" / "pg2000-don-quijote-es.txt"
LINES_PER_DOCUMENT = 12
VOCABULARY = 16_000
TOKENIZERS = {"bert": "wordpiece", "gpt": "bpe"}
# bf16 dense tensor peaks (FLOP/s) by device name, from the vendors' data sheets
PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}
BASE_BATCH = {"cpu": {"bert": 8, "gpt": 1}, "cuda": {"bert": 64, "gpt": 16}}


def prepare(store_url: str) -> dict[str, object]:
    """The corpus and the two tokenizers of the whole book, in the store (made once)."""
    from storage import Store
    from tasks import corpus as cp
    from tasks import subword as sw

    store = Store(store_url)
    text = Path(store.root) / "quijote-documents.txt"
    if not text.exists():
        lines = [line for line in BOOK.read_text(encoding="utf-8").splitlines() if line.strip()]
        groups = [lines[k : k + LINES_PER_DOCUMENT] for k in range(0, len(lines), LINES_PER_DOCUMENT)]
        text.write_text("\n\n".join("\n".join(group) for group in groups), encoding="utf-8")
    corpus, _, _ = cp.build_in_process(
        store, [str(text)], "bench-quijote", cp.CorpusOptions(text_documents="paragraph")
    )
    assets = {"corpus": corpus}
    for model, kind in TOKENIZERS.items():
        dataset = store.dataset(f"text/bench-quijote/tokenizers/{kind}")
        options = sw.SubwordOptions(kind, VOCABULARY)
        sw.train_tokenizer.fn(dataset, sw.tokenizer_recipe(corpus, options), corpus, options)
        assets[model] = dataset
    return assets


def settings(model: str, size: str, args: argparse.Namespace, device) -> dict[str, str]:
    steps = args.steps if size == "small" else args.base_steps
    batch = args.batch_size
    if size == "base":
        batch = args.base_batch_size or BASE_BATCH[device.type][model]
    return {
        "size": size,
        "steps": str(steps),
        "batch_size": str(batch),
        "heldout_examples": "0",
        "dropout": "0.1",
    }


def ours(store, assets, model: str, overrides: dict[str, str], args: argparse.Namespace) -> dict:
    from models import registry
    from models.base import RunOptions, TrainContext

    spec = registry.get(model)
    run = store.dataset(f"runs/bench-{model}-{overrides['size']}-{time.time_ns()}")
    options = RunOptions(device=args.device, threads=args.threads, checkpoint_every_s=1e9, log_every_s=30.0)
    context = TrainContext.create(run, options)
    config = spec.config.from_overrides(overrides).resolved(context.device)
    metrics = spec.train(config, {"corpus": assets["corpus"], "tokenizer": assets[model]}, context)
    return {
        "seconds": metrics["seconds"],
        "tokens": metrics["tokens"],
        "tokens_per_s": metrics["tokens_per_s"],
        "mean_loss": mean_loss(metrics["history"]),
        "parameters": metrics["parameters"],
        "config": config,
        "device": context.device,
    }


class Batches:
    """Pre-collated batches as a dataset of one item each (the Trainer's batch size is 1 item)."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict:
        return self.batches[index]


def trainer(assets, model: str, config, device, args: argparse.Namespace) -> dict:
    import torch
    from transformers import Trainer, TrainingArguments

    from models import registry, transformer
    from models.base import seed_everything
    from models.pretraining import ExampleStream

    family = importlib.import_module(registry.MODULES[model]).FAMILY
    tokenizer = transformer.load_tokenizer(assets[model])
    stream = ExampleStream(
        assets["corpus"],
        tokenizer,
        family.examples(config, tokenizer),
        seed=config.seed,
        batch_size=config.batch_size,
    )
    items = stream.items()
    batches, tokens = [], 0
    for _ in range(config.steps * config.grad_accumulation):
        item = next(items)
        batch = dict(item.batch)
        if model == "gpt":
            batch["labels"] = batch["input_ids"]
        for extra in ("mlm_positions", "mlm_labels"):  # ours only; the model takes the rest
            batch.pop(extra, None)
        batches.append(batch)
        tokens += item.tokens
    items.close()

    seed_everything(config.seed)
    network = family.build(config, tokenizer)
    cuda = device.type == "cuda"
    warmup = max(1, round(transformer.WARMUP_FRACTION * config.steps))
    with tempfile.TemporaryDirectory() as output:
        arguments = TrainingArguments(
            output_dir=output,
            max_steps=config.steps,
            per_device_train_batch_size=1,
            gradient_accumulation_steps=config.grad_accumulation,
            learning_rate=config.lr,
            lr_scheduler_type="linear",
            warmup_steps=warmup,
            weight_decay=config.weight_decay,
            adam_beta2=config.adam_beta2,
            adam_epsilon=1e-6,
            max_grad_norm=config.max_grad_norm,
            optim="adamw_torch_fused" if cuda else "adamw_torch",
            bf16=cuda and torch.cuda.is_bf16_supported(),
            use_cpu=not cuda,
            train_sampling_strategy="sequential",
            dataloader_num_workers=0,
            dataloader_pin_memory=cuda,
            logging_steps=max(1, config.steps),
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=config.seed,
        )
        run = Trainer(
            model=network,
            args=arguments,
            train_dataset=Batches(batches),
            data_collator=lambda items: items[0],
        )
        output_metrics = run.train().metrics
    seconds = output_metrics["train_runtime"]
    return {
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "mean_loss": output_metrics.get("train_loss"),  # the mean over every step
    }


def mean_loss(history: list[dict]) -> float:
    """The mean loss over every step, from the logged windows (each the mean of its steps)."""
    total, previous = 0.0, 0
    for point in history:
        total += point["loss"] * (point["step"] - previous)
        previous = point["step"]
    return total / max(previous, 1)


def model_flops_per_token(parameters: int, config) -> float:
    sizes = config.architecture()
    return 6.0 * parameters + 12.0 * sizes["layers"] * sizes["hidden_size"] * sizes["length"]


def peak_flops(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAKS.items() if key in name), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.contextual", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bert", "gpt"], choices=["bert", "gpt"])
    parser.add_argument("--sizes", nargs="+", default=["small", "base"], choices=["small", "base"])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps at the small size")
    parser.add_argument("--base-steps", type=int, default=3, help="optimizer steps at the base size")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per step at the small size")
    parser.add_argument("--base-batch-size", type=int, default=0, help="at the base size (0: per device)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for both (0: every core)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--store", help="store folder (default: a temporary one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("httpx", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import torch

    from models.base import configure_threads, select_device
    from storage import Store

    device = select_device(args.device)
    threads = configure_threads(device, args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        store_url = args.store or str(Path(scratch) / "store")
        started = time.perf_counter()
        assets = prepare(store_url)
        corpus = assets["corpus"].manifest().counts
        print(
            f"corpus: {corpus['documents']:,} documents, {corpus['sentences']:,} sentences, "
            f"{corpus['words']:,} words ({time.perf_counter() - started:.0f} s); {device}, {threads} thread(s)",
            flush=True,
        )
        store = Store(store_url)
        peak = peak_flops(device)
        rows = []
        for model in args.models:
            for size in args.sizes:
                mine = ours(store, assets, model, settings(model, size, args, device), args)
                torch.set_num_threads(threads)
                theirs = trainer(assets, model, mine["config"], device, args)
                flops = model_flops_per_token(mine["parameters"], mine["config"])
                rows.append((model, mine["config"], mine, theirs, flops))
                print(format_rows(rows[-1:], peak), flush=True)
    print(f"\n{device}, {threads} thread(s); bf16 autocast on CUDA for both")
    print(format_rows(rows, peak))
    return 0


def format_rows(rows, peak: float | None) -> str:
    lines = [
        f"{'model':5} {'config':22} {'params':>7} {'batch':>5} {'steps':>5} "
        f"{'ours tok/s':>11} {'Trainer tok/s':>13} {'ratio':>6} {'ours loss':>9} {'Trainer loss':>12}"
        + (f" {'MFU ours':>8} {'MFU Trainer':>11}" if peak else "")
    ]
    for model, config, mine, theirs, flops in rows:
        line = (
            f"{model:5} {config.describe():22} {mine['parameters'] / 1e6:6.1f}M {config.batch_size:5} "
            f"{config.steps:5} {mine['tokens_per_s']:11,.0f} {theirs['tokens_per_s']:13,.0f} "
            f"{mine['tokens_per_s'] / theirs['tokens_per_s']:6.2f} {mine['mean_loss']:9.3f} "
            f"{theirs['mean_loss'] or float('nan'):12.3f}"
        )
        if peak:
            line += (
                f" {mine['tokens_per_s'] * flops / peak:8.1%} {theirs['tokens_per_s'] * flops / peak:11.1%}"
            )
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
