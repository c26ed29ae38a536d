"""GPT (the GPT-2 architecture, Radford et al. 2019): left-to-right language modelling, from scratch.

    embedpipe train gpt --store work/store --set size=small --set steps=2000
    embedpipe train gpt --store work/store --set size=base --set batch_size=16 \
        --set grad_accumulation=4 --nproc 8

Trained on the corpus sentences with the byte-level BPE tokenizer of build-text-assets
(<|endoftext|> is id 0): documents joined by <|endoftext|> and cut into blocks of block_size tokens
(models/pretraining.py); every position predicts the next token. AdamW with beta2 0.95 and weight
decay 0.1, as GPT-2 reproductions train it.

Exports model/ from GPT2LMHeadModel: AutoModelForCausalLM and pipeline("text-generation") load it.
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
from models.pretraining import IGNORE, GptExamples
from storage import Dataset


@dataclass
class GptConfig(transformer.TransformerConfig):
    """GPT settings; size "base" is GPT-2's 124M model (768 wide, 12 layers, 12 heads, blocks of 1,024)."""

    model = "gpt"
    block_size: int = 0  # tokens per training block (and positions), 0 = from size (128, 1,024); 8..8192
    weight_decay: float = 0.1  # AdamW's decoupled decay, 0..1 (none on biases and norm weights)
    adam_beta2: float = 0.95  # AdamW's second-moment decay, [0.9, 1)

    LENGTH = "block_size"
    PRESETS = {
        "small": transformer.preset(128, 2, 2, 512, length=128, lr=1e-3),
        "base": transformer.preset(768, 12, 12, 3072, length=1024, lr=6e-4),
    }

    def validate(self) -> None:
        require(
            self.block_size == 0 or 8 <= self.block_size <= 8192,
            "block_size",
            self.block_size,
            "0 (from size) or between 8 and 8192",
        )
        super().validate()


def next_token_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    reduction: str = "mean",
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of each next token; the last position has none."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # (B, T, V)
    # the targets move left, not the logits: a slice of the logits would copy all B x T x V of them
    targets = F.pad(input_ids[:, 1:], (0, 1), value=IGNORE)  # (B, T)
    return F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction=reduction
    )


class Objective(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return next_token_loss(self.model, batch["input_ids"])


class Gpt(transformer.Family):
    name = "gpt"
    auto_class = "AutoModelForCausalLM"
    config_class = GptConfig

    def build(self, config: GptConfig, tokenizer: Any) -> nn.Module:
        from transformers import GPT2Config, GPT2LMHeadModel

        sizes = config.architecture()
        end = tokenizer.eos_token_id
        settings = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=sizes["positions"],
            n_embd=sizes["hidden_size"],
            n_layer=sizes["layers"],
            n_head=sizes["heads"],
            n_inner=sizes["intermediate_size"],
            resid_pdrop=config.dropout,
            embd_pdrop=config.dropout,
            attn_pdrop=config.dropout,
            # <|endoftext|> begins and ends, as in GPT-2; generation stops at it. It pads too, but only
            # from the export on: with a pad id, every forward without a mask checks the inputs for
            # it, which waits for the GPU
            bos_token_id=end,
            eos_token_id=end,
        )
        return GPT2LMHeadModel(settings)

    def prepare_export(self, model: nn.Module) -> nn.Module:
        end = model.config.eos_token_id
        model.config.pad_token_id = end
        model.generation_config.pad_token_id = end
        return model

    def examples(self, config: GptConfig, tokenizer: Any) -> GptExamples:
        return GptExamples(tokenizer, config.architecture()["length"])

    def objective(self, model: nn.Module) -> nn.Module:
        return Objective(model)

    def score(self, model: nn.Module, batches: Iterator[dict[str, torch.Tensor]]) -> dict[str, float]:
        device = next(model.parameters()).device
        loss = torch.zeros((), dtype=torch.float64, device=device)
        examples = predicted = 0
        for batch in batches:
            ids = batch["input_ids"]
            # blocks have no padding; the mask of ones tells an exported model (which has a pad id) so
            loss += next_token_loss(model, ids, "sum", torch.ones_like(ids)).double()
            examples += len(ids)
            predicted += ids[:, 1:].numel()
        mean = loss.item() / predicted if predicted else float("nan")
        return {
            "perplexity": float(torch.tensor(mean).exp()) if predicted else float("nan"),
            "loss": mean,
            "examples": examples,
            "tokens": predicted,
        }

    def states(self, model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return model.transformer(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False
        ).last_hidden_state

    def words(self, words: list[str]) -> list[str]:
        # byte-level BPE sees a word inside a text as " word": give each word after the first its space
        return words[:1] + [" " + w for w in words[1:]]


FAMILY = Gpt()


def train(config: GptConfig, assets: Mapping[str, Dataset], ctx: TrainContext) -> dict[str, Any]:
    """Pretrain GPT on the corpus with the byte-level BPE tokenizer; export model/ and return the metrics."""
    return transformer.train(FAMILY, config, assets, ctx)


def load(run: Dataset) -> transformer.TransformerModel:
    return transformer.load(FAMILY, run)


SPEC = registry.ModelSpec(
    name="gpt",
    family="contextual",
    summary="GPT-2 architecture from scratch: next-token language model (--set size=small|base)",
    config=GptConfig,
    needs=(registry.CORPUS, registry.BPE),
    train=train,
    load=load,
    evaluations=("contextual",),
    distributed=True,
    modules=transformer.SPEC_MODULES,
)
