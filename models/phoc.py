"""PHOC: the pyramidal histogram of characters of any string (Almazán et al. 2014). No training.

    embedpipe train phoc --store work/store --set levels=2,3,4,5 --set bigram_levels=2 --set bigrams=50

At level L the word is cut into L equal regions; the vector has one block of |alphabet| bits per region,
and the bit of character c is set when c sits in that region. Character k of an n-character word spans
[k/n, (k+1)/n] and sits in a region when at least half of its span lies inside it. The bigram level
does the same for the ``bigrams`` most frequent character bigrams of the vocabulary (counted over
word occurrences), a bigram at k spanning [k/n, (k+2)/n]. Characters outside the alphabet set no bit.

Size: |alphabet| * sum(levels) + bigrams * sum(bigram_levels); the defaults give 36 * 14 + 50 * 2 = 604.
The run exports vectors.txt for the vocabulary and phoc.json (alphabet, levels, bigrams), from which
any unseen word gets its vector; a word with no character of the alphabet gets none and is counted.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from models import registry
from models.base import ModelConfig, TrainContext, require
from models.data import Vocabulary
from models.vectors import WordEmbedding, export_word_vectors, load_word_vectors
from storage import Dataset

PHOC_JSON = "phoc.json"


@dataclass
class PHOCConfig(ModelConfig):
    """The levels, the alphabet and the bigrams of the histogram; which vocabulary words are exported."""

    model = "phoc"
    alphabet: str = "abcdefghijklmnopqrstuvwxyz0123456789"  # characters with a bit each, no repeats
    levels: tuple[int, ...] = (2, 3, 4, 5)  # regions per level, each 1..32
    bigram_levels: tuple[int, ...] = (2,)  # levels of the bigram histogram, each 1..32; empty = none
    bigrams: int = 50  # most frequent bigrams of the vocabulary with a bit each, 0..10,000
    lowercase: bool = True  # lowercase words before the histogram (the alphabet is lowercase)
    min_count: int = 5  # vocabulary words seen fewer times are not exported, >= 1
    max_words: int = 0  # export at most this many (most frequent first); 0 = every one

    def validate(self) -> None:
        super().validate()
        require(
            len(self.alphabet) > 0 and len(set(self.alphabet)) == len(self.alphabet),
            "alphabet",
            self.alphabet,
            "a non-empty string without repeated characters",
        )
        require(
            len(self.levels) > 0 and all(1 <= level <= 32 for level in self.levels),
            "levels",
            self.levels,
            "one or more levels, each 1..32 (for example 2,3,4,5)",
        )
        require(
            all(1 <= level <= 32 for level in self.bigram_levels),
            "bigram_levels",
            self.bigram_levels,
            "levels 1..32",
        )
        require(0 <= self.bigrams <= 10_000, "bigrams", self.bigrams, "between 0 and 10,000")
        require(self.min_count >= 1, "min_count", self.min_count, ">= 1")
        require(self.max_words >= 0, "max_words", self.max_words, ">= 0 (0 = every word)")

    def describe(self) -> str:
        return f"levels {','.join(map(str, self.levels))} +{self.bigrams} bigrams"


def _in_region(k: int, width: int, n: int, region: int, level: int) -> bool:
    """Whether at least half of [k/n, (k+width)/n] lies in [region/level, (region+1)/level].

    In integers (units of 1/(n level)), so a span exactly half inside counts the same on every machine.
    """
    overlap = min((k + width) * level, (region + 1) * n) - max(k * level, region * n)
    return 2 * overlap >= width * level


class PHOCEncoder:
    """Builds the PHOC of any word for one alphabet, set of levels and list of bigrams."""

    def __init__(
        self,
        alphabet: str,
        levels: tuple[int, ...],
        bigrams: list[str] = (),
        bigram_levels: tuple[int, ...] = (),
        lowercase: bool = True,
    ) -> None:
        self.alphabet, self.levels = alphabet, tuple(levels)
        self.bigrams = list(bigrams) if bigram_levels else []
        self.bigram_levels = tuple(bigram_levels) if self.bigrams else ()
        self.lowercase = lowercase
        self.char_index = {c: k for k, c in enumerate(alphabet)}
        self.bigram_index = {b: k for k, b in enumerate(self.bigrams)}
        self.unigram_size = len(alphabet) * sum(self.levels)
        self.dim = self.unigram_size + len(self.bigrams) * sum(self.bigram_levels)

    def settings(self) -> dict[str, Any]:
        return {
            "alphabet": self.alphabet,
            "levels": list(self.levels),
            "bigrams": self.bigrams,
            "bigram_levels": list(self.bigram_levels),
            "lowercase": self.lowercase,
        }

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> PHOCEncoder:
        return cls(
            settings["alphabet"],
            tuple(settings["levels"]),
            settings["bigrams"],
            tuple(settings["bigram_levels"]),
            settings["lowercase"],
        )

    def encode(self, word: str) -> np.ndarray:
        """The PHOC of one word, float32 zeros and ones."""
        word = word.lower() if self.lowercase else word
        vector = np.zeros(self.dim, np.float32)
        n = len(word)
        for k, char in enumerate(word):
            c = self.char_index.get(char)
            if c is None:
                continue
            base = 0
            for level in self.levels:
                for region in range(level):
                    if _in_region(k, 1, n, region, level):
                        vector[(base + region) * len(self.alphabet) + c] = 1.0
                base += level
        base = 0
        for level in self.bigram_levels:
            for k in range(n - 1):
                b = self.bigram_index.get(word[k : k + 2])
                if b is None:
                    continue
                for region in range(level):
                    if _in_region(k, 2, n, region, level):
                        vector[self.unigram_size + (base + region) * len(self.bigrams) + b] = 1.0
            base += level
        return vector

    def encode_many(self, words: list[str]) -> np.ndarray:
        return np.stack([self.encode(w) for w in words]) if words else np.zeros((0, self.dim), np.float32)


def frequent_bigrams(vocab: Vocabulary, alphabet: str, count: int, lowercase: bool = True) -> list[str]:
    """The ``count`` most frequent bigrams of alphabet characters, over word occurrences; ties by bigram."""
    allowed = set(alphabet)
    totals: Counter[str] = Counter()
    for word, occurrences in zip(vocab.tokens, vocab.counts.tolist(), strict=True):
        word = word.lower() if lowercase else word
        for k in range(len(word) - 1):
            pair = word[k : k + 2]
            if pair[0] in allowed and pair[1] in allowed:
                totals[pair] += occurrences
    return [b for b, _ in sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:count]]


class PHOCEmbedding(WordEmbedding):
    """PHOC vectors of the vocabulary, and of any other word on demand."""

    builds_unseen = True

    def __init__(self, words: list[str], vectors: np.ndarray, encoder: PHOCEncoder) -> None:
        super().__init__(words, vectors)
        self.encoder = encoder

    def build_unseen(self, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
        vectors = self.encoder.encode_many(words)
        return vectors, vectors.any(axis=1) if len(words) else np.zeros(0, bool)


def train(config: PHOCConfig, assets: Mapping[str, Dataset], ctx: TrainContext) -> dict[str, Any]:
    """Choose the bigrams, encode the vocabulary, export vectors.txt and phoc.json."""
    vocab, _ = Vocabulary.from_dataset(assets["vocabulary"]).prune(config.min_count)
    bigrams = (
        frequent_bigrams(vocab, config.alphabet, config.bigrams, config.lowercase)
        if config.bigram_levels
        else []
    )
    encoder = PHOCEncoder(config.alphabet, config.levels, bigrams, config.bigram_levels, config.lowercase)
    words = vocab.tokens[: config.max_words or None]
    vectors = encoder.encode_many(words)
    empty = int((~vectors.any(axis=1)).sum()) if len(words) else 0
    export_word_vectors(ctx.run, words, vectors)
    ctx.run.write_json(PHOC_JSON, encoder.settings())
    ctx.logger.info(
        f"phoc: {len(words):,} words, {encoder.dim} dimensions, {empty:,} with no character of the alphabet"
    )
    return {"vocabulary": len(words), "dim": encoder.dim, "words_without_alphabet": empty, "seconds": 0.0}


def load(run: Dataset) -> PHOCEmbedding:
    words, vectors = load_word_vectors(run)
    settings = json.loads(run.fs.cat_file(run.file(PHOC_JSON)).decode())
    return PHOCEmbedding(words, vectors, PHOCEncoder.from_settings(settings))


SPEC = registry.ModelSpec(
    name="phoc",
    family="lexical",
    summary="pyramidal histogram of characters: no training, vectors for any string",
    config=PHOCConfig,
    needs=(registry.VOCABULARY,),
    train=train,
    load=load,
    evaluations=("word",),
)
