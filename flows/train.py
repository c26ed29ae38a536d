"""train: one model of models/registry.py on the text assets of the store, into a run folder.

    embedpipe train word2vec --store work/store --set mode=cbow --set dim=100 --set epochs=5
    embedpipe train glove --store work/store --text enwiki-sample --set x_max=100
    embedpipe train fasttext --store work/store --nproc 8          # torchrun, one process per GPU
    embedpipe setup-gpu-limit 2                                    # at most 2 training tasks at once

The run goes to runs/MODEL-FINGERPRINT (or runs/NAME with --name): checkpoints while it trains (a
killed run resumes from its last one when started again with the same settings), then the exports
(vectors.txt, ...), config.json and a manifest with the run's metrics. The fingerprint covers the
assets, the settings and the model's code, so the same command on the same assets does nothing the
second time. Training tasks carry the tag `gpu`: a concurrency limit on it (setup-gpu-limit) keeps
several flows from sharing one GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact

from models import registry
from models.base import ConfigError, RunOptions, TrainContext, parse_overrides, write_run_config
from storage import Dataset, Manifest, Recipe, Store, code_version
from storage.store import IncompleteDatasetError
from tasks.common import STORE_CACHE, InputError, artifact_key, run_logger

RUN_KIND = "run"
GPU_TAG = "gpu"


# --- finding the assets --------------------------------------------------------------------------


def _kind(dataset: Dataset) -> str | None:
    try:
        return dataset.manifest().kind
    except (IncompleteDatasetError, ValueError):
        return None


def find_assets(store: Store, spec: registry.ModelSpec, text: str | None = None) -> dict[str, Dataset]:
    """The datasets a model trains from: those of text/NAME/ (``text``), or of the one text/NAME/ that has them all.

    Raises InputError naming the step that makes a missing asset, or the choices when several fit.
    """
    if text is not None:
        prefix = text if text.startswith("text/") else f"text/{text}"
        found = {}
        for need in spec.needs:
            candidates = [d for d in store.datasets(prefix) if need.matches(d, _kind(d))]
            if not candidates:
                raise InputError(
                    f"{store.url}/{prefix} has no finished {need.describe()}, which {spec.name} trains from; "
                    f"make it with `{need.made_by}` (name {prefix.removeprefix('text/')})"
                )
            found[need.name] = candidates[0]
        return found
    by_group: dict[str, dict[str, Dataset]] = {}
    for dataset in store.datasets("text") if store.fs.exists(store.path("text")) else []:
        kind = _kind(dataset)
        group = "/".join(dataset.name.split("/")[:2])
        for need in spec.needs:
            if need.matches(dataset, kind):
                by_group.setdefault(group, {}).setdefault(need.name, dataset)
    complete = {g: found for g, found in by_group.items() if len(found) == len(spec.needs)}
    if len(complete) == 1:
        return next(iter(complete.values()))
    if len(complete) > 1:
        names = ", ".join(g.removeprefix("text/") for g in sorted(complete))
        raise InputError(
            f"several text assets in {store.url} can train {spec.name}: {names}; choose one with --text NAME"
        )
    missing = "; ".join(need.describe() for need in spec.needs)
    raise InputError(f"{store.url} has no text assets that {spec.name} can train from; it needs {missing}")


def run_assets(run: Dataset, spec: registry.ModelSpec) -> dict[str, Dataset]:
    """The datasets a finished run was trained from, by need name, from the inputs of its manifest."""
    inputs = [run.store.dataset(name) for name in run.manifest().inputs]
    found = {}
    for need in spec.needs:
        match = next((d for d in inputs if need.matches(d, _kind(d))), None)
        if match is None:
            raise InputError(
                f"{run.name} was trained from datasets that are no longer in {run.store.url}: "
                f"its {need.describe()} is missing; rebuild it or train the model again"
            )
        found[need.name] = match
    return found


def run_recipe(
    spec: registry.ModelSpec, config_values: Mapping[str, Any], assets: Mapping[str, Dataset]
) -> Recipe:
    return Recipe(
        kind=f"{RUN_KIND}/{spec.name}",
        inputs={dataset.name: dataset.manifest().fingerprint for dataset in assets.values()},
        parameters={"model": spec.name, "config": dict(config_values)},
        code_version=code_version(*registry.code_modules(spec)),
    )


# --- the training task ---------------------------------------------------------------------------


@task(name="train-model", tags=[GPU_TAG], cache_policy=STORE_CACHE)
def train_model(
    dataset: Dataset,
    recipe: Recipe,
    model: str,
    config: dict[str, Any],
    assets: dict[str, Dataset],
    options: RunOptions,
    nproc: int = 1,
) -> dict[str, Any]:
    """Train (resuming from the last checkpoint), export, and write the run's manifest; returns its metrics."""
    spec = registry.get(model)
    dataset.begin(recipe)  # keeps the checkpoints of an interrupted run of this recipe
    write_run_config(dataset, model, spec.config.from_dict(config))
    if nproc > 1:
        metrics = _train_with_torchrun(dataset, model, config, assets, options, nproc)
    else:
        metrics = train_in_process(dataset, model, config, assets, options)
    dataset.commit(
        Manifest.from_recipe(
            recipe,
            counts={k: int(v) for k, v in metrics.items() if k in ("vocabulary", "words", "pairs", "steps")},
            metrics=metrics,
        )
    )
    return metrics


def train_in_process(
    dataset: Dataset,
    model: str,
    config: Mapping[str, Any],
    assets: Mapping[str, Dataset],
    options: RunOptions,
) -> dict[str, Any]:
    """What every training process runs: the model's train() with this process's device and logger."""
    spec = registry.get(model)
    settings = spec.config.from_dict(config)
    if not options.threads and (preferred := settings.cpu_threads()):
        options = dataclasses.replace(options, threads=preferred)
    context = TrainContext.create(dataset, options)
    context.logger = run_logger()
    try:
        return spec.train(settings, assets, context)
    finally:
        context.dist.close()


def _train_with_torchrun(
    dataset: Dataset,
    model: str,
    config: Mapping[str, Any],
    assets: Mapping[str, Dataset],
    options: RunOptions,
    nproc: int,
) -> dict[str, Any]:
    """Run training under torchrun (one process per GPU); rank 0 writes the metrics beside the exports."""
    if not registry.get(model).distributed:
        raise InputError(f"{model} trains in one process; run it without --nproc")
    job = {
        "store": dataset.store.url,
        "run": dataset.name,
        "model": model,
        "config": dict(config),
        "assets": {k: v.name for k, v in assets.items()},
        "options": asdict(options),
    }
    dataset.write_json("torchrun-job.json", job)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "flows.train",
        "--worker",
        dataset.file("torchrun-job.json"),
    ]
    run_logger().info(f"torchrun: {' '.join(command)}")
    subprocess.run(command, check=True, env=os.environ.copy())
    return dataset.read_json("torchrun-metrics.json")


def _worker(job_file: str) -> int:
    """One torchrun process: read the job, train, and (rank 0) write the metrics."""
    with open(job_file, encoding="utf-8") as f:
        job = json.load(f)
    store = Store(job["store"])
    dataset = store.dataset(job["run"])
    assets = {k: store.dataset(v) for k, v in job["assets"].items()}
    metrics = train_in_process(dataset, job["model"], job["config"], assets, RunOptions(**job["options"]))
    if int(os.environ.get("RANK", "0")) == 0:
        dataset.write_json("torchrun-metrics.json", metrics)
    return 0


# --- the flow ------------------------------------------------------------------------------------


@flow(name="train", log_prints=True)
def train(
    model: str,
    store: str | None = None,
    overrides: dict[str, str] | None = None,
    text: str | None = None,
    name: str | None = None,
    device: str = "auto",
    threads: int = 0,
    nproc: int = 1,
    checkpoint_every_s: float = 600.0,
    checkpoint_epochs: bool = True,
    log_every_s: float = 10.0,
) -> str:
    """Train one model on the text assets of the store; returns the run's dataset name (runs/...)."""
    from flows.environment import default_store

    store_ = Store(store or default_store())
    try:
        spec = registry.get(model)
        base_config = spec.config.from_overrides(overrides or {})
    except (ConfigError, ValueError) as error:
        raise InputError(str(error)) from None
    options = RunOptions(
        device=device,
        threads=threads,
        checkpoint_every_s=checkpoint_every_s,
        checkpoint_epochs=checkpoint_epochs,
        log_every_s=log_every_s,
    )
    from models.base import select_device

    config = base_config.resolved(select_device(device))
    assets = find_assets(store_, spec, text)
    recipe = run_recipe(spec, config.to_dict(), assets)
    run = store_.dataset(f"runs/{name}" if name else f"runs/{spec.name}-{recipe.fingerprint[:10]}")
    logger = run_logger()
    if run.is_current(recipe):
        logger.info(f"{run.name} is already trained from these assets and settings; nothing to do")
        metrics = run.manifest().metrics
    else:
        logger.info(
            f"training {spec.name} ({config.describe()}) on {', '.join(d.name for d in assets.values())} "
            f"into {run.name}"
        )
        metrics = train_model(
            dataset=run,
            recipe=recipe,
            model=spec.name,
            config=config.to_dict(),
            assets=assets,
            options=options,
            nproc=nproc,
        )
    summary = {k: v for k, v in metrics.items() if not isinstance(v, list | dict)}
    create_table_artifact(
        key=artifact_key("train", run.name),
        table=[{"setting": k, "value": str(v)} for k, v in {**config.to_dict(), **summary}.items()],
        description=f"{spec.name} {config.describe()}: settings and metrics of {run.name}",
    )
    return run.name


# --- the concurrency limit on the gpu tag --------------------------------------------------------


async def _set_gpu_limit(limit: int) -> None:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        await client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=limit)


def setup_gpu_limit(limit: int) -> None:
    """Allow at most ``limit`` tasks tagged `gpu` to run at once (same as `prefect concurrency-limit create gpu N`)."""
    if limit < 1:
        raise InputError(f"the gpu limit must be >= 1 (the number of GPUs to share), got {limit}")
    asyncio.run(_set_gpu_limit(limit))


# --- command line --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    try:
        overrides = parse_overrides(args.set)
    except ConfigError as error:
        print(f"embedpipe train: {error}", file=sys.stderr)
        return 2
    try:
        name = train(
            model=args.model,
            store=args.store,
            overrides=overrides,
            text=args.text,
            name=args.name,
            device=args.device,
            threads=args.threads,
            nproc=args.nproc,
            checkpoint_every_s=args.checkpoint_every,
            checkpoint_epochs=not args.no_epoch_checkpoints,
            log_every_s=args.log_every,
        )
    except InputError as error:
        print(f"embedpipe train: {error}", file=sys.stderr)
        return 2
    print(name)
    return 0


def run_setup_gpu_limit(args: argparse.Namespace) -> int:
    try:
        setup_gpu_limit(args.limit)
    except InputError as error:
        print(f"embedpipe setup-gpu-limit: {error}", file=sys.stderr)
        return 2
    print(f"at most {args.limit} task(s) tagged {GPU_TAG!r} run at once")
    return 0


def add_command(subparsers: argparse._SubParsersAction) -> None:
    from flows.cli import store_argument

    parser = subparsers.add_parser(
        "train",
        help="train an embedding model on the text assets of the store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", choices=registry.names(), help="the model to train")
    store_argument(parser)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model setting, repeatable (word2vec: mode, dim, window, negative, sample, min_count, epochs, lr)",
    )
    parser.add_argument("--text", help="train on text/NAME/ (default: the only text assets in the store)")
    parser.add_argument("--name", help="run folder runs/NAME (default: runs/MODEL-FINGERPRINT)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: every core)")
    parser.add_argument("--nproc", type=int, default=1, help="processes under torchrun, one per GPU")
    parser.add_argument("--checkpoint-every", type=float, default=600.0, help="seconds between checkpoints")
    parser.add_argument(
        "--no-epoch-checkpoints",
        action="store_true",
        help="checkpoint by time only, not also at each epoch end (short epochs of large models)",
    )
    parser.add_argument("--log-every", type=float, default=10.0, help="seconds between progress lines")
    parser.set_defaults(run=run)

    limit = subparsers.add_parser(
        "setup-gpu-limit",
        help="limit how many training tasks (tag gpu) run at once",
        description="Create or update the Prefect concurrency limit on the tag `gpu` "
        "(the same as `prefect concurrency-limit create gpu N`).",
    )
    limit.add_argument("limit", type=int, help="tasks tagged gpu allowed at once (the number of GPUs)")
    limit.set_defaults(run=run_setup_gpu_limit)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker(sys.argv[2]))
    print("usage: embedpipe train MODEL --store DIR (python -m flows.train --worker JOB is for torchrun)")
    sys.exit(2)
