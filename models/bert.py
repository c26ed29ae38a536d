"""BERT (Devlin et al. 2019): masked language modelling and next sentence prediction, from scratch.

    embedpipe train bert --store work/store --set size=small --set steps=2000
    embedpipe train bert --store work/store --set size=base --set batch_size=256 --nproc 8

Trained on the corpus sentences with the WordPiece tokenizer of build-text-assets ([PAD] [UNK] [CLS]
[SEP] [MASK] are ids 0-4). Each example is [CLS] A [SEP] B [SEP] with token types 0 then 1, B the
real continuation of A or (half the time) text of another document, and 15% of the tokens of A and B
chosen for prediction (models/pretraining.py). The loss is the sum of the two, as in the paper; the
masked-token head runs on the chosen positions only, which saves most of its vocabulary projection.

Exports model/ from BertForPreTraining: AutoModelForPreTraining loads both heads,
AutoModelForMaskedLM and pipeline("fill-mask") the masked-token one.
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
from models.pretraining import IGNORE, BertExamples
from storage import Dataset


@dataclass
class BertConfig(transformer.TransformerConfig):
    """BERT settings; size "base" is BERT-base (768 wide, 12 layers, 12 heads, 3,072 feed-forward)."""

    model = "bert"
    max_length: int = 0  # tokens per pair with [CLS] and both [SEP], 0 = from size (128); 8..4096
    mlm_probability: float = 0.15  # share of the tokens of A and B chosen for prediction, (0, 1)
    short_seq_prob: float = 0.1  # documents that aim at a random shorter pair length, [0, 1]
    random_next_prob: float = 0.5  # pairs whose B comes from another document, [0, 1]

    # positions: 512 at base (the paper's, so longer pairs can follow), the pair length at small
    PRESETS = {
        "small": transformer.preset(128, 2, 2, 512, length=128, lr=1e-3),
        "base": transformer.preset(768, 12, 12, 3072, length=128, positions=512, lr=1e-4),
    }

    def validate(self) -> None:
        require(
            self.max_length == 0 or 8 <= self.max_length <= 4096,
            "max_length",
            self.max_length,
            "0 (from size) or between 8 and 4096",
        )
        super().validate()
        require(0.0 < self.mlm_probability < 1.0, "mlm_probability", self.mlm_probability, "in (0, 1)")
        require(0.0 <= self.short_seq_prob <= 1.0, "short_seq_prob", self.short_seq_prob, "in [0, 1]")
        require(0.0 <= self.random_next_prob <= 1.0, "random_next_prob", self.random_next_prob, "in [0, 1]")


def outputs(
    model: nn.Module, batch: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(masked-token logits (M, V) at the chosen positions, their labels (M,), NSP logits (B, 2))."""
    states = model.bert(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
    )
    if "mlm_positions" in batch:  # found by the collate, flat in (B x T)
        positions, labels = batch["mlm_positions"], batch["mlm_labels"]
    else:
        flat = batch["labels"].reshape(-1)
        positions = (flat != IGNORE).nonzero().squeeze(1)
        labels = flat[positions]
    hidden = states.last_hidden_state.flatten(0, 1).index_select(0, positions)  # (M, H)
    return model.cls.predictions(hidden), labels, model.cls.seq_relationship(states.pooler_output)


class Objective(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        logits, labels, nsp = outputs(self.model, batch)
        return F.cross_entropy(logits.float(), labels) + F.cross_entropy(
            nsp.float(), batch["next_sentence_label"]
        )


class Bert(transformer.Family):
    name = "bert"
    auto_class = "AutoModelForPreTraining"
    config_class = BertConfig

    def build(self, config: BertConfig, tokenizer: Any) -> nn.Module:
        from transformers import BertConfig as HFBertConfig
        from transformers import BertForPreTraining

        sizes = config.architecture()
        settings = HFBertConfig(
            vocab_size=len(tokenizer),
            hidden_size=sizes["hidden_size"],
            num_hidden_layers=sizes["layers"],
            num_attention_heads=sizes["heads"],
            intermediate_size=sizes["intermediate_size"],
            hidden_dropout_prob=config.dropout,
            attention_probs_dropout_prob=config.dropout,
            max_position_embeddings=sizes["positions"],
            type_vocab_size=2,
            pad_token_id=tokenizer.pad_token_id,
        )
        return BertForPreTraining(settings)

    def examples(self, config: BertConfig, tokenizer: Any) -> BertExamples:
        return BertExamples(
            tokenizer,
            config.architecture()["length"],
            mlm_probability=config.mlm_probability,
            short_seq_prob=config.short_seq_prob,
            random_next_prob=config.random_next_prob,
        )

    def objective(self, model: nn.Module) -> nn.Module:
        return Objective(model)

    def score(self, model: nn.Module, batches: Iterator[dict[str, torch.Tensor]]) -> dict[str, float]:
        device = next(model.parameters()).device
        totals = torch.zeros(6, dtype=torch.float64, device=device)
        for batch in batches:
            logits, labels, nsp = outputs(model, batch)
            totals += torch.stack(
                [
                    F.cross_entropy(logits.float(), labels, reduction="sum").double(),
                    (logits.argmax(-1) == labels).sum().double(),
                    torch.tensor(labels.numel(), dtype=torch.float64, device=device),
                    (nsp.argmax(-1) == batch["next_sentence_label"]).sum().double(),
                    torch.tensor(len(nsp), dtype=torch.float64, device=device),
                    batch["attention_mask"].sum().double(),
                ]
            )
        loss, correct, masked, nsp_correct, examples, tokens = totals.tolist()
        return {
            "mlm_accuracy": correct / masked if masked else float("nan"),
            "mlm_loss": loss / masked if masked else float("nan"),
            "nsp_accuracy": nsp_correct / examples if examples else float("nan"),
            "masked_tokens": int(masked),
            "examples": int(examples),
            "tokens": int(tokens),
        }

    def states(self, model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return model.bert(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            token_type_ids=inputs.get("token_type_ids"),
        ).last_hidden_state


FAMILY = Bert()


def train(config: BertConfig, assets: Mapping[str, Dataset], ctx: TrainContext) -> dict[str, Any]:
    """Pretrain BERT on the corpus with the WordPiece tokenizer; export model/ and return the metrics."""
    return transformer.train(FAMILY, config, assets, ctx)


def load(run: Dataset) -> transformer.TransformerModel:
    return transformer.load(FAMILY, run)


SPEC = registry.ModelSpec(
    name="bert",
    family="contextual",
    summary="BERT from scratch: masked tokens and next sentence prediction (--set size=small|base)",
    config=BertConfig,
    needs=(registry.CORPUS, registry.WORDPIECE),
    train=train,
    load=load,
    evaluations=("contextual",),
    distributed=True,
    modules=transformer.SPEC_MODULES,
)
