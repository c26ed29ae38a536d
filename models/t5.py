"""T5 (Raffel et al. 2020): an encoder-decoder pretrained by span corruption, from scratch.

    embedpipe train t5 --store work/store --set size=small --set steps=2000
    embedpipe train t5 --store work/store --set size=base --set batch_size=128 --nproc 8

Trained on the corpus sentences with the Unigram tokenizer of build-text-assets (<pad> </s> <unk> are
ids 0-2, the sentinels <extra_id_0..> the last ids): documents joined by </s>, cut into chunks whose
corrupted inputs are max_length tokens long; 15% of each chunk, in spans of 3 tokens on average, is
replaced by sentinels and the decoder writes the spans back (models/pretraining.py). The paper's
feed-forward (ReLU, not the gated one of T5 v1.1) and AdamW in place of Adafactor.

Exports model/ from T5ForConditionalGeneration (decoder start = <pad>, as in T5):
AutoModelForSeq2SeqLM loads it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models import registry, transformer
from models.base import TrainContext, require
from models.pretraining import T5Examples
from storage import Dataset


@dataclass
class T5Config(transformer.TransformerConfig):
    """T5 settings; size "base" is T5-base (d_model 768, 12 + 12 layers, 12 heads, d_ff 3,072, inputs
    of 512). Size "small" is a CPU size, not the paper's T5-small."""

    model = "t5"
    max_length: int = 0  # input tokens per example after corruption, 0 = from size (128, 512); 8..4096
    noise_density: float = 0.15  # share of each chunk's tokens hidden in spans, (0, 0.5]
    mean_span_length: float = 3.0  # mean tokens per hidden span, [1, 20]

    PRESETS = {
        "small": transformer.preset(128, 2, 2, 512, length=128, lr=1e-3),
        "base": transformer.preset(768, 12, 12, 3072, length=512, lr=3e-4),
    }

    def validate(self) -> None:
        require(
            self.max_length == 0 or 8 <= self.max_length <= 4096,
            "max_length",
            self.max_length,
            "0 (from size) or between 8 and 4096",
        )
        super().validate()
        require(0.0 < self.noise_density <= 0.5, "noise_density", self.noise_density, "in (0, 0.5]")
        require(1.0 <= self.mean_span_length <= 20.0, "mean_span_length", self.mean_span_length, "in [1, 20]")


def outputs(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(B, L, V) logits of the targets, the decoder reading them shifted right (teacher forcing)."""
    labels = batch["labels"]
    return model(
        input_ids=batch["input_ids"],
        decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels=labels),
        use_cache=False,
    ).logits


class Objective(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        logits = outputs(self.model, batch)
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten())


class T5(transformer.Family):
    name = "t5"
    auto_class = "AutoModelForSeq2SeqLM"
    config_class = T5Config

    def build(self, config: T5Config, tokenizer: Any) -> nn.Module:
        from transformers import T5Config as HFT5Config
        from transformers import T5ForConditionalGeneration

        sizes = config.architecture()
        settings = HFT5Config(
            vocab_size=len(tokenizer),
            d_model=sizes["hidden_size"],
            d_kv=sizes["hidden_size"] // sizes["heads"],
            d_ff=sizes["intermediate_size"],
            num_layers=sizes["layers"],
            num_decoder_layers=sizes["layers"],
            num_heads=sizes["heads"],
            dropout_rate=config.dropout,
            feed_forward_proj="relu",
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
        return T5ForConditionalGeneration(settings)

    def examples(self, config: T5Config, tokenizer: Any) -> T5Examples:
        return T5Examples(
            tokenizer,
            config.architecture()["length"],
            noise_density=config.noise_density,
            mean_span_length=config.mean_span_length,
        )

    def objective(self, model: nn.Module) -> nn.Module:
        return Objective(model)

    def score(self, model: nn.Module, batches: Iterator[dict[str, torch.Tensor]]) -> dict[str, float]:
        device = next(model.parameters()).device
        totals = torch.zeros(2, dtype=torch.float64, device=device)
        examples = targets = 0
        for batch in batches:
            logits = outputs(model, batch)
            labels = batch["labels"]
            totals += torch.stack(
                [
                    F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="sum").double(),
                    (logits.argmax(-1) == labels).sum().double(),
                ]
            )
            examples += len(labels)
            targets += labels.numel()
        loss, correct = totals.tolist()
        mean = loss / targets if targets else float("nan")
        return {
            "span_accuracy": correct / targets if targets else float("nan"),
            "loss": mean,
            "perplexity": float(torch.tensor(mean).exp()),
            "examples": examples,
            "tokens": targets,
        }

    def states(self, model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return model.encoder(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).last_hidden_state


FAMILY = T5()


def train(config: T5Config, assets: Mapping[str, Dataset], ctx: TrainContext) -> dict[str, Any]:
    """Pretrain T5 on the corpus with the Unigram tokenizer; export model/ and return the metrics."""
    return transformer.train(FAMILY, config, assets, ctx)


def load(run: Dataset) -> transformer.TransformerModel:
    return transformer.load(FAMILY, run)


SPEC = registry.ModelSpec(
    name="t5",
    family="contextual",
    summary="T5 from scratch: encoder-decoder trained by span corruption (--set size=small|base)",
    config=T5Config,
    needs=(registry.CORPUS, registry.UNIGRAM),
    train=train,
    load=load,
    evaluations=("contextual",),
    distributed=True,
    modules=transformer.SPEC_MODULES,
)
