"""One-hot: every word its own axis. The floor every word task is measured against.

    embedpipe train onehot --store work/store --set max_words=2000

Any two different words have cosine 0, so the similarity sets get a constant model score (Spearman
undefined, shown as NaN) and an analogy is answered by chance among the tied words. Needs no training;
the run writes the identity matrix as vectors.txt so that every tool reads it like any other run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from models import registry
from models.base import ModelConfig, TrainContext, require
from models.data import Vocabulary
from models.vectors import export_word_vectors, load_embedding
from storage import Dataset


@dataclass
class OneHotConfig(ModelConfig):
    """Which words get an axis: the most frequent ``max_words`` of those seen ``min_count`` times."""

    model = "onehot"
    min_count: int = 5  # >= 1
    # 1..20,000: the text format stores every zero, max_words^2 numbers (2,000 words: 8 MB of text)
    max_words: int = 2_000

    def validate(self) -> None:
        super().validate()
        require(self.min_count >= 1, "min_count", self.min_count, ">= 1")
        require(1 <= self.max_words <= 20_000, "max_words", self.max_words, "between 1 and 20,000")

    def describe(self) -> str:
        return f"{self.max_words} words"


def train(config: OneHotConfig, assets: Mapping[str, Dataset], ctx: TrainContext) -> dict[str, Any]:
    """Write the identity matrix of the most frequent words as the run's vectors."""
    vocab, _ = Vocabulary.from_dataset(assets["vocabulary"]).prune(config.min_count)
    words = vocab.tokens[: config.max_words]
    if not words:
        raise ValueError(f"no word is seen {config.min_count}+ times; lower min_count")
    export_word_vectors(ctx.run, words, np.eye(len(words), dtype=np.float32))
    return {"vocabulary": len(words), "words_left_out": len(vocab) - len(words), "seconds": 0.0}


def load(run: Dataset):
    return load_embedding(run)


SPEC = registry.ModelSpec(
    name="onehot",
    family="baseline",
    summary="one-hot vectors of the most frequent words: the floor of every word task",
    config=OneHotConfig,
    needs=(registry.VOCABULARY,),
    train=train,
    load=load,
    evaluations=("word",),
)
