"""What the evaluate flow asks of a trained contextual model (ELMo, BERT, GPT, T5).

Each contextual model's ``load(run)`` returns a ``ContextualModel``:

    model = registry.get("bert").load(run)
    vectors = model.encode_words([["the", "bank", "of", "the", "river"]])   # one (5, dim) array
    static = model.static_embedding(["bank", "river"])                       # each word alone
    scores = model.heldout(assets, max_examples=2_000)                       # {"mlm_accuracy": ..., ...}

Word vectors in context are the model's final states (ELMo: its scalar mix of layers), one vector
per word: the mean over the word's subword pieces. The context-free vector of a word is what the
model gives the word encoded on its own, which puts every model into the common similarity table.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np

from models.vectors import WordEmbedding
from storage import Dataset

# how held-out articles are chosen: the same for every model, so they all score on the same text
HELDOUT_BUCKETS = 1_000


def is_heldout(article_id: int, source: str | int = "", fraction: float = 0.02) -> bool:
    """Whether an article belongs to the held-out split: a hash of (source, article id), stable everywhere."""
    import zlib

    bucket = zlib.crc32(f"{source}\x00{article_id}".encode()) % HELDOUT_BUCKETS
    return bucket < round(fraction * HELDOUT_BUCKETS)


class ContextualModel(ABC):
    """A trained contextual model, on the CPU or a GPU, as evaluation uses it."""

    name: str = ""  # the registry name

    @property
    @abstractmethod
    def dim(self) -> int:
        """Size of the word vectors encode_words returns."""

    @abstractmethod
    def encode_words(self, sentences: list[list[str]]) -> list[np.ndarray]:
        """A (len(words), dim) float32 array per sentence: each word's vector in that sentence."""

    def static_embedding(self, words: list[str]) -> WordEmbedding:
        """Context-free vectors: each word encoded as a sentence of its own."""
        words = list(dict.fromkeys(words))
        vectors = np.zeros((len(words), self.dim), dtype=np.float32)
        for start in range(0, len(words), 256):
            batch = [[w] for w in words[start : start + 256]]
            for offset, encoded in enumerate(self.encode_words(batch)):
                vectors[start + offset] = encoded.mean(axis=0)
        return WordEmbedding(words, vectors)

    @abstractmethod
    def heldout(self, assets: Mapping[str, Dataset], max_examples: int = 2_000) -> dict[str, float]:
        """The model's own objective on held-out articles (accuracies, perplexity), with the example count."""
