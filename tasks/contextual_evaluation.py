"""evaluate, contextual embeddings: does a word's vector follow its context, and how far apart are senses.

    from tasks.contextual_evaluation import SENSES, sense_rows, summarize_senses
    rows = sense_rows(model.encode_words, SENSES)        # one row per word with two senses
    summary = summarize_senses(rows)                      # {"sense_accuracy": ..., "context_cosine": ...}

Each item is a word with two sentences of one sense and one sentence of another. A model that reads
context gives the word different vectors in the three sentences (``context_cosine`` below 1: mean
cosine of the word's vector between two different sentences of the same sense), and puts the two
sentences of the same sense closer than the other one (``sense_accuracy``: the share of items where
cos(same1, same2) > cos(same1, other)). A static model gives the word one vector everywhere: cosine 1,
no item decided, accuracy 0. The same function scores both kinds, so they sit in one table.

The held-out objectives (masked-token and NSP accuracy, perplexity, span accuracy) are each model's
own (models.contextual.ContextualModel.heldout); this module turns them into rows and plots.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.vectors import WordEmbedding
from tasks.evaluation import figure_png

Encode = Callable[[list[list[str]]], list[np.ndarray]]


@dataclass(frozen=True)
class SenseItem:
    """A word, two sentences where it means one thing, and one where it means another."""

    word: str
    same: tuple[str, str]
    other: str


# plain English sentences, lowercased like the corpus words; each holds its word exactly once
SENSES: tuple[SenseItem, ...] = (
    SenseItem(
        "bank",
        ("he sat on the bank of the river", "the boat drifted toward the muddy bank of the stream"),
        "she put her money in the bank",
    ),
    SenseItem(
        "plant",
        ("she watered the plant in the garden", "the plant grew leaves and flowers in spring"),
        "the workers at the plant build cars",
    ),
    SenseItem(
        "bat",
        ("the bat flew out of the cave at night", "a bat is a small animal with wings"),
        "he hit the ball with a wooden bat",
    ),
    SenseItem(
        "spring",
        ("the snow melts in spring", "flowers bloom early in the spring of the year"),
        "water came out of a spring in the rocks",
    ),
    SenseItem(
        "light",
        ("the light of the sun filled the room", "she turned on the light in the kitchen"),
        "the box was light enough to carry",
    ),
    SenseItem(
        "match",
        ("the team won the match in the final minute", "the football match was played in the city"),
        "he struck a match to light the fire",
    ),
    SenseItem(
        "ring",
        ("she wore a gold ring on her finger", "he gave her a diamond ring at the wedding"),
        "the boxers fought in the ring",
    ),
    SenseItem(
        "bark",
        ("the bark of the tree was rough and brown", "insects live under the bark of old trees"),
        "the dog began to bark at the stranger",
    ),
    SenseItem(
        "state",
        ("the state passed a new law on taxes", "the president of the state spoke to the army"),
        "water in a solid state is ice",
    ),
    SenseItem(
        "play",
        ("the children play in the park", "the boys like to play football after school"),
        "the play was performed in a theatre in london",
    ),
    SenseItem(
        "party",
        ("the party won the election with a large majority", "the leader of the party spoke in parliament"),
        "they danced all night at the birthday party",
    ),
    SenseItem(
        "capital",
        ("paris is the capital of france", "the capital of the country is a large city"),
        "the company raised capital from investors",
    ),
    SenseItem(
        "train",
        ("the train left the station at noon", "she took the train to the city"),
        "they train every day for the race",
    ),
    SenseItem(
        "fair",
        ("the judge gave a fair decision", "it is not fair to punish him for that"),
        "the farmers sold cattle at the county fair",
    ),
    SenseItem(
        "mouse",
        ("the cat caught a mouse in the barn", "a small grey mouse ran across the floor"),
        "click the button with the mouse of the computer",
    ),
    SenseItem(
        "current",
        ("the current of the river was strong", "the swimmers were carried away by the current"),
        "the current president of the country spoke today",
    ),
)


def static_encoder(embedding: WordEmbedding) -> Encode:
    """encode_words for a word embedding: the word's one vector wherever it stands (zero when unseen)."""
    index = embedding.index()

    def encode(sentences: list[list[str]]) -> list[np.ndarray]:
        out = []
        for words in sentences:
            vectors = np.zeros((len(words), embedding.dim), dtype=np.float32)
            for k, word in enumerate(words):
                if word in index:
                    vectors[k] = embedding.vectors[index[word]]
                elif embedding.builds_unseen:
                    built, ok = embedding.build_unseen([word])
                    if ok[0]:
                        vectors[k] = built[0]
            out.append(vectors)
        return out

    return encode


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / norms if norms > 0 else float("nan")


def sense_rows(encode: Encode, items: tuple[SenseItem, ...] = SENSES) -> list[dict[str, Any]]:
    """One row per item: the word's cosines between its sentences, and whether its senses come apart.

    An item whose word has no vector (a static model that has not seen it) counts as unseen, with
    NaN cosines; it stays in the rows so every item is accounted for.
    """
    sentences = [s.split() for item in items for s in (*item.same, item.other)]
    for item, (a, b, c) in zip(items, zip(*[iter(sentences)] * 3, strict=True), strict=True):
        for words in (a, b, c):
            if words.count(item.word) != 1:
                raise ValueError(f"sense item {item.word!r}: each sentence must hold the word once: {words}")
    encoded = encode(sentences)
    rows = []
    for k, item in enumerate(items):
        same1, same2, other = (encoded[3 * k + j][sentences[3 * k + j].index(item.word)] for j in range(3))
        cos_same, cos_other = _cosine(same1, same2), _cosine(same1, other)
        seen = not (math.isnan(cos_same) or math.isnan(cos_other))
        rows.append(
            {
                "word": item.word,
                "cosine_same_sense": cos_same,
                "cosine_other_sense": cos_other,
                "seen": seen,
                "separated": bool(seen and cos_same > cos_other + 1e-6),
            }
        )
    return rows


def summarize_senses(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """sense_accuracy over all items (unseen ones count as wrong), context_cosine over the seen ones."""
    seen = [r for r in rows if r["seen"]]
    return {
        "sense_items": len(rows),
        "sense_items_unseen": len(rows) - len(seen),
        "sense_accuracy": sum(r["separated"] for r in rows) / len(rows) if rows else float("nan"),
        "context_cosine": float(np.mean([r["cosine_same_sense"] for r in seen])) if seen else float("nan"),
        "other_sense_cosine": float(np.mean([r["cosine_other_sense"] for r in seen]))
        if seen
        else float("nan"),
    }


def senses_plot(rows: list[dict[str, Any]], title: str) -> bytes | None:
    """Per word: the cosine between two sentences of one sense against that to the other sense."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seen = [r for r in rows if r["seen"]]
    if not seen:
        return None
    figure, ax = plt.subplots(figsize=(6, 5.5))
    same = [r["cosine_same_sense"] for r in seen]
    other = [r["cosine_other_sense"] for r in seen]
    ax.scatter(other, same, s=14, c=["tab:green" if r["separated"] else "tab:red" for r in seen])
    for r in seen:
        ax.annotate(r["word"], (r["cosine_other_sense"], r["cosine_same_sense"]), fontsize=8)
    low = min(min(same), min(other), 0.0)
    ax.plot([low, 1], [low, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("cosine to the other sense")
    ax.set_ylabel("cosine between two sentences of one sense")
    ax.set_title(title)
    return figure_png(figure)


def heldout_plot(history: list[dict[str, float]], title: str) -> bytes | None:
    """Training loss over the run (the points Meter logged), where a person sees whether it still falls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(p["done"], p["loss"]) for p in history if not math.isnan(p.get("loss", float("nan")))]
    if len(points) < 2:
        return None
    figure, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([x for x, _ in points], [y for _, y in points], marker=".")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    return figure_png(figure)
