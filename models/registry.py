"""Every model embedpipe trains, by name: its config class, the assets it needs, how it trains and loads.

The train and evaluate flows and the CLI read this table; nothing else knows the list of models.

    spec = registry.get("word2vec")
    config = spec.config.from_overrides({"mode": "cbow", "dim": "100"})
    metrics = spec.train(config, {"vocabulary": ds1, "tokens": ds2}, context)   # writes the run folder
    embedding = spec.load(run_dataset)                                        # for evaluation

A new model adds a module with ``SPEC = ModelSpec(...)`` and one line to ``MODULES`` below.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from models.base import ModelConfig, TrainContext
from models.data import (
    COOCCURRENCE_KIND,
    COOCCURRENCE_TABLE,
    CORPUS_KIND,
    CORPUS_TABLE,
    TOKENIZER_KIND,
    TOKENS_KIND,
    TOKENS_TABLE,
    VOCABULARY_KIND,
    VOCABULARY_TABLE,
)
from storage import Dataset


@dataclass(frozen=True)
class AssetNeed:
    """One input a model trains from: a dataset of the store found by its manifest kind."""

    name: str  # the key under which train() receives the dataset
    kind: str  # the manifest kind of datasets that provide it
    table: str  # the table of that dataset the model reads
    made_by: str  # the command that makes it, shown when the store has none
    # where several datasets share a kind (the three subword tokenizers), the one whose name ends so
    suffix: str | None = None

    def describe(self) -> str:
        named = f" named .../{self.suffix}" if self.suffix else ""
        return f"{self.name} (datasets of kind {self.kind!r}{named}, made by `{self.made_by}`)"

    def matches(self, dataset: Dataset, kind: str | None) -> bool:
        return kind == self.kind and (self.suffix is None or dataset.name.endswith("/" + self.suffix))


VOCABULARY = AssetNeed("vocabulary", VOCABULARY_KIND, VOCABULARY_TABLE, "embedpipe build-text-assets")
TOKENS = AssetNeed("tokens", TOKENS_KIND, TOKENS_TABLE, "embedpipe build-text-assets")
COOCCURRENCE = AssetNeed("cooccurrence", COOCCURRENCE_KIND, COOCCURRENCE_TABLE, "embedpipe build-text-assets")
# the corpus sentences (text with case kept) that the subword models tokenize, and their tokenizers
CORPUS = AssetNeed("corpus", CORPUS_KIND, CORPUS_TABLE, "embedpipe build-text-assets")
WORDPIECE = AssetNeed("tokenizer", TOKENIZER_KIND, "", "embedpipe build-text-assets", suffix="wordpiece")
BPE = AssetNeed("tokenizer", TOKENIZER_KIND, "", "embedpipe build-text-assets", suffix="bpe")
UNIGRAM = AssetNeed("tokenizer", TOKENIZER_KIND, "", "embedpipe build-text-assets", suffix="unigram")

TrainFunction = Callable[[ModelConfig, Mapping[str, Dataset], TrainContext], dict[str, Any]]


@dataclass(frozen=True)
class ModelSpec:
    """What the flows need to know about one model."""

    name: str  # registry name, used on the command line and in run names (runs/<name>-<fingerprint>)
    family: str  # baseline, lexical, static, contextual, multimodal, topic
    summary: str  # one line for `embedpipe train --help` and the leaderboard
    config: type[ModelConfig]
    needs: tuple[AssetNeed, ...]
    # train(config, assets by need name, context) writes checkpoints and exports into context.run and
    # returns the run's metrics (JSON values); it resumes from context.run's last checkpoint
    train: TrainFunction
    # load(run) gives what the evaluations work on (a models.vectors.WordEmbedding for word models)
    load: Callable[[Dataset], Any]
    # evaluation suites that apply (tasks/evaluation.py and later suites register them by name)
    evaluations: tuple[str, ...] = ()
    # whether train() spreads over torchrun processes (several GPUs) in a way that pays
    distributed: bool = False
    # modules whose source goes into the run's code version (the model's own module is always in)
    modules: tuple[str, ...] = ("models.base", "models.data", "models.vectors")


# name -> module defining SPEC; imported on first use so the CLI starts without loading every model
MODULES: dict[str, str] = {
    "onehot": "models.onehot",
    "phoc": "models.phoc",
    "word2vec": "models.word2vec",
    "glove": "models.glove",
    "fasttext": "models.fasttext",
    "elmo": "models.elmo",
    "bert": "models.bert",
    "gpt": "models.gpt",
    "t5": "models.t5",
}


def names() -> list[str]:
    return list(MODULES)


def get(name: str) -> ModelSpec:
    """The spec of a model by name; unknown names get the list of known ones."""
    if name not in MODULES:
        raise ValueError(f"unknown model {name!r}; embedpipe trains: {', '.join(MODULES)}")
    spec = importlib.import_module(MODULES[name]).SPEC
    if spec.name != name:
        raise RuntimeError(f"{MODULES[name]} registers {spec.name!r}, expected {name!r}")
    return spec


def code_modules(spec: ModelSpec) -> tuple[str, ...]:
    """The modules whose source defines a run of this model."""
    return tuple(sorted({MODULES[spec.name], *spec.modules}))
