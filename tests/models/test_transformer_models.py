"""BERT, GPT and T5 from scratch on real text: they learn, export what transformers loads, resume, encode."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models import registry, transformer
from models.base import (
    ConfigError,
    RunOptions,
    TrainContext,
    TrainingInterrupted,
    checkpoint_steps,
    load_checkpoint,
)
from models.pretraining import ExampleStream
from models.transformer import load_tokenizer
from storage import Store
from tests.models.test_pretraining import contextual_assets

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every load below is from a local folder

REPOSITORY = Path(__file__).resolve().parents[2]
TINY = {
    "hidden_size": "64",
    "intermediate_size": "128",
    "heads": "2",
    "batch_size": "16",
    "lr": "2e-3",
    "heldout_examples": "64",
}
MODELS = {
    "bert": ("wordpiece", {"max_length": "64", "steps": "40"}),
    "gpt": (
        "bpe",
        {"block_size": "64", "steps": "0", "epochs": "0.4", "batch_size": "24"},
    ),  # steps from one pass
    "t5": ("unigram", {"max_length": "64", "steps": "40"}),
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory, shared_data):
    return contextual_assets(tmp_path_factory, shared_data)


def model_assets(assets, name: str) -> dict:
    kind = MODELS[name][0]
    return {"corpus": assets[1]["corpus"], "tokenizer": assets[1][kind]}


def train_run(run, name, overrides, assets, **options):
    spec = registry.get(name)
    context = TrainContext.create(run, RunOptions(device="cpu", threads=1, log_every_s=0.0, **options))
    config = spec.config.from_overrides(TINY | MODELS[name][1] | overrides).resolved(context.device)
    return spec.train(config, model_assets(assets, name), context)


@pytest.fixture(scope="module")
def trained(assets):
    """Each model trained once, its last checkpoint kept: the weights as they were before the export."""
    store = assets[0]
    runs = {}
    for name in MODELS:
        run = store.dataset(f"runs/{name}-tiny")
        runs[name] = (train_run(run, name, {}, assets, keep_final_checkpoint=True), run)
    return runs


def family(name: str) -> transformer.Family:
    return importlib.import_module(registry.MODULES[name]).FAMILY


def run_config(name: str, run) -> transformer.TransformerConfig:
    return family(name).config_class.from_dict(run.read_json(transformer.SETTINGS_FILE)["config"])


def before_export(name: str, run) -> torch.nn.Module:
    """The model rebuilt from the final checkpoint (the weights train() held when it exported)."""
    tokenizer = load_tokenizer(run.store.dataset(f"text/quijote/tokenizers/{MODELS[name][0]}"))
    model = family(name).build(run_config(name, run), tokenizer)
    tensors = load_checkpoint(run, torch.device("cpu"), restore_rng=False).tensors
    weights = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    assert not model.load_state_dict(weights, strict=False).unexpected_keys
    return model.eval()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_loss_falls_and_metrics_account_for_the_data(trained, name):
    metrics, run = trained[name]
    losses = [point["loss"] for point in metrics["history"]]
    assert len(losses) == metrics["steps"] and all(np.isfinite(losses))
    early, late = np.mean(losses[:3]), np.mean(losses[-3:])
    assert late < 0.93 * early, f"{name}: loss {early:.3f} -> {late:.3f}"
    assert metrics["tokens"] > 0 and metrics["tokens_per_s"] > 0 and metrics["processes"] == 1
    assert metrics["built"]["examples"] > 0 and metrics["built"]["sentences_other_split"] > 0
    assert 0 < metrics["heldout_examples"] <= 64 and metrics["heldout_tokens"] > 0
    assert checkpoint_steps(run) == [metrics["steps"]]  # the final one, kept as asked
    if name == "gpt":  # epochs=0.4: the steps come from the examples of one pass
        tokenizer = load_tokenizer(run.store.dataset("text/quijote/tokenizers/bpe"))
        builder = family("gpt").examples(run_config("gpt", run), tokenizer)
        stream = ExampleStream(
            run.store.dataset("text/quijote/corpus"), tokenizer, builder, seed=1, batch_size=24
        )
        assert metrics["steps"] == math.ceil(0.4 * stream.count_examples() / 24)


def test_bert_export_loads_with_auto_classes_and_fill_mask(trained):
    from transformers import AutoModelForMaskedLM, AutoModelForPreTraining, AutoTokenizer, pipeline

    _, run = trained["bert"]
    folder = run.file("model")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(
        ["El caballero de la Mancha.", "Sancho Panza, su escudero."], padding=True, return_tensors="pt"
    )
    reference = before_export("bert", run)(**inputs)
    with torch.no_grad():
        masked_lm = AutoModelForMaskedLM.from_pretrained(folder).eval()(**inputs).logits
        both = AutoModelForPreTraining.from_pretrained(folder).eval()(**inputs)
    torch.testing.assert_close(masked_lm, reference.prediction_logits)
    torch.testing.assert_close(both.seq_relationship_logits, reference.seq_relationship_logits)

    fill = pipeline("fill-mask", model=folder, device="cpu")
    found = fill(f"El caballero de la {tokenizer.mask_token}.", top_k=3)
    assert len(found) == 3 and all(tokenizer.mask_token not in f["sequence"] for f in found)
    assert found[0]["score"] >= found[1]["score"] >= found[2]["score"]


def test_gpt_export_loads_with_auto_classes_and_generates(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    _, run = trained["gpt"]
    folder = run.file("model")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(["Don Quijote de la Mancha"], return_tensors="pt")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        reference = before_export("gpt", run)(**inputs).logits
        logits = model(**inputs).logits
    torch.testing.assert_close(logits, reference)
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert (
        model.config.pad_token_id == model.generation_config.pad_token_id == model.config.eos_token_id == end
    )

    generate = pipeline("text-generation", model=folder, device="cpu")
    text = generate("Don Quijote", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text.startswith("Don Quijote") and len(text) > len("Don Quijote")


def test_t5_export_loads_with_auto_classes_and_fills_a_span(trained):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    _, run = trained["t5"]
    folder = run.file("model")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(["El caballero <extra_id_0> la Mancha."], return_tensors="pt")
    labels = tokenizer(["<extra_id_0> de"], return_tensors="pt").input_ids
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    with torch.no_grad():
        reference = before_export("t5", run)(**inputs, labels=labels).logits
        logits = model(**inputs, labels=labels).logits
        generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(logits, reference)
    assert model.config.decoder_start_token_id == tokenizer.pad_token_id == generated[0, 0] == 0


@pytest.mark.parametrize("name", sorted(MODELS))
def test_loaded_model_scores_heldout_and_encodes_words_in_context(trained, assets, name):
    metrics, run = trained[name]
    model = registry.get(name).load(run)
    scores = model.heldout(model_assets(assets, name), max_examples=64)
    expected = {
        "bert": {"mlm_accuracy", "nsp_accuracy", "mlm_loss"},
        "gpt": {"perplexity", "loss"},
        "t5": {"span_accuracy", "loss", "perplexity"},
    }[name]
    assert expected | {"examples", "tokens"} <= set(scores)
    assert all(np.isfinite(scores[key]) for key in expected)
    assert {k: scores[k] for k in expected} == pytest.approx({k: metrics[f"heldout_{k}"] for k in expected})

    sentences = [["El", "caballero", "bebió", "vino"], ["vino", "Sancho", "a", "caballo"], []]
    vectors = model.encode_words(sentences)
    assert [v.shape for v in vectors] == [(4, model.dim), (4, model.dim), (0, model.dim)] and model.dim == 64
    assert not np.allclose(vectors[0][3], vectors[1][0], atol=1e-3)  # "vino" in two contexts
    assert np.array_equal(model.encode_words(sentences[:1])[0], vectors[0])  # batching changes nothing
    again = model.heldout(model_assets(assets, name), max_examples=64)
    assert again == scores  # the same held-out examples, eval mode: the same numbers
    static = model.static_embedding(["caballero", "vino"])
    assert static.vectors.shape == (2, 64)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_resumed_run_equals_the_uninterrupted_one(assets, name):
    store = assets[0]
    overrides = {"steps": "6", "grad_accumulation": "2", "epochs": "1"}
    whole = store.dataset(f"runs/{name}-whole")
    expected = train_run(whole, name, overrides, assets)

    stopped = store.dataset(f"runs/{name}-stopped")
    with pytest.raises(TrainingInterrupted, match="after step 3"):
        train_run(stopped, name, overrides, assets, stop_after_steps=3)
    assert checkpoint_steps(stopped) == [3] and not stopped.files("model/*")
    resumed = train_run(stopped, name, overrides, assets)

    first, second = (
        load_file(whole.file("model/model.safetensors")),
        load_file(stopped.file("model/model.safetensors")),
    )
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(second[key], first[key], msg=key)
    assert [p["loss"] for p in resumed["history"]] == pytest.approx([p["loss"] for p in expected["history"]])
    assert resumed["tokens"] == expected["tokens"] and resumed["built"] == expected["built"]
    assert checkpoint_steps(stopped) == []


def test_run_folder_on_an_fsspec_store(assets):
    """Checkpoints and the export written through fsspec (memory://), loaded back from a local copy."""
    remote = Store("memory://contextual-runs").dataset("runs/gpt-remote")
    with pytest.raises(TrainingInterrupted):
        train_run(remote, "gpt", {"steps": "4", "epochs": "1"}, assets, stop_after_steps=2)
    metrics = train_run(remote, "gpt", {"steps": "4", "epochs": "1"}, assets)
    assert metrics["steps"] == 4 and remote.fs.exists(remote.file("model/model.safetensors"))
    model = registry.get("gpt").load(remote)
    assert model.encode_words([["Sancho"]])[0].shape == (1, 64)


def test_settings_are_checked_and_described():
    bert = registry.get("bert").config
    assert bert.from_overrides({}).describe() == "small h128 L2 T128"
    base = bert.from_overrides({"size": "base"}).resolved(torch.device("cpu"))
    assert (base.hidden_size, base.layers, base.heads, base.intermediate_size, base.max_length) == (
        768,
        12,
        12,
        3072,
        128,
    )
    assert base.architecture()["positions"] == 512
    gpt = registry.get("gpt").config.from_overrides({"size": "base"}).resolved(torch.device("cpu"))
    assert (gpt.hidden_size, gpt.layers, gpt.block_size, gpt.adam_beta2) == (768, 12, 1024, 0.95)
    t5 = registry.get("t5").config.from_overrides({"size": "base"}).resolved(torch.device("cpu"))
    assert (t5.hidden_size, t5.layers, t5.intermediate_size, t5.heads, t5.max_length) == (
        768,
        12,
        3072,
        12,
        512,
    )
    with pytest.raises(ConfigError, match="hidden_size must be a multiple of heads"):
        bert.from_overrides({"hidden_size": "100", "heads": "3"})
    with pytest.raises(ConfigError, match="block_size must be 0"):
        registry.get("gpt").config.from_overrides({"block_size": "4"})
    with pytest.raises(ConfigError, match="noise_density"):
        registry.get("t5").config.from_overrides({"noise_density": "0.9"})
    with pytest.raises(ConfigError, match="has no setting 'dim'"):
        bert.from_overrides({"dim": "64"})


def test_checkpoint_of_other_processes_is_refused(assets):
    store = assets[0]
    run = store.dataset("runs/bert-two-then-one")
    with pytest.raises(TrainingInterrupted):
        train_run(run, "bert", {"steps": "4"}, assets, stop_after_steps=1)
    name = f"checkpoints/step-{1:012d}.json"
    state = run.read_json(name)
    state["state"]["processes"] *= 2
    run.write_json(name, state)
    with pytest.raises(RuntimeError, match="written by 2 process"):
        train_run(run, "bert", {"steps": "4"}, assets)


@pytest.mark.slow
def test_two_processes_train_one_model_with_ddp(assets, tmp_path):
    """torchrun, 2 CPU processes over gloo: each trains on its own files, stops, resumes; rank 0 exports."""
    store, datasets = assets
    script = tmp_path / "ddp_train.py"
    overrides = TINY | MODELS["bert"][1] | {"steps": "4", "grad_accumulation": "2"}
    script.write_text(
        textwrap.dedent(
            f"""
            import json

            from models import bert
            from models.base import RunOptions, TrainContext, TrainingInterrupted
            from storage import Store

            store = Store({store.url!r})
            options = RunOptions(device="cpu", threads=1, log_every_s=0.0, stop_after_steps=2)
            context = TrainContext.create(store.dataset("runs/bert-ddp"), options)
            config = bert.BertConfig.from_overrides({overrides!r})
            assets = {{
                "corpus": store.dataset({datasets["corpus"].name!r}),
                "tokenizer": store.dataset({datasets["wordpiece"].name!r}),
            }}
            try:
                bert.train(config, assets, context)
                raise AssertionError("not stopped")
            except TrainingInterrupted:
                pass
            context.options = RunOptions(device="cpu", threads=1, log_every_s=0.0)
            metrics = bert.train(config, assets, context)  # resumes, each process at its own position
            if context.dist.rank == 0:
                json.dump(metrics, open({str(tmp_path / "metrics.json")!r}, "w"))
            context.dist.close()
            """
        )
    )
    environment = os.environ | {"PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
    ]
    result = subprocess.run(
        command, cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    single = train_run(
        store.dataset("runs/bert-one-process"), "bert", {"steps": "4", "grad_accumulation": "2"}, assets
    )
    assert metrics["processes"] == 2 and metrics["steps"] == 4 and len(metrics["history"]) == 4
    assert metrics["built"]["examples"] > single["built"]["examples"] / 2  # both processes' files counted
    model = registry.get("bert").load(store.dataset("runs/bert-ddp"))
    assert model.encode_words([["El", "caballero"]])[0].shape == (2, 64)
