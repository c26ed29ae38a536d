"""Text assets for the model tests, written with the schemas and manifests that build-text-assets uses.

The tests build them straight from real text of ../shared/data with a plain tokenizer, so the model
tests do not depend on the corpus flow and take a second to set up:

    names = write_text_assets(store, "glosses", sentences, shards=2, window=10)
    names["tokens"]  # "text/glosses/tokens"
"""

from __future__ import annotations

import bz2
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

from models.data import COOCCURRENCE_KIND, TOKENS_KIND, VOCABULARY_KIND
from storage import Manifest, Recipe, Store
from storage.schemas import COOCCURRENCE, TOKEN_SHARDS, VOCABULARY

WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


def gloss_sentences(shared_data: Path, limit: int | None = None) -> list[list[str]]:
    """WordNet glosses, one sentence per line, lowercased words."""
    path = shared_data / "text_corpora" / "wordnet30_glosses" / "wordnet30-glosses.txt.bz2"
    sentences = []
    with bz2.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            words = WORD.findall(line.lower())
            if words:
                sentences.append(words)
            if limit is not None and len(sentences) >= limit:
                break
    return sentences


def _vocabulary_table(sentences: list[list[str]], min_count: int) -> tuple[pa.Table, dict[str, int]]:
    counts = Counter(word for sentence in sentences for word in sentence)
    ordered = sorted(((w, c) for w, c in counts.items() if c >= min_count), key=lambda wc: (-wc[1], wc[0]))
    table = pa.table(
        {
            "id": pa.array(range(len(ordered)), pa.int32()),
            "token": [w for w, _ in ordered],
            "count": pa.array([c for _, c in ordered], pa.int64()),
        },
        schema=VOCABULARY,
    )
    return table, {w: i for i, (w, _) in enumerate(ordered)}


def cooccurrence_counts(sentences_ids: list[np.ndarray], size: int, window: int) -> pa.Table:
    """Symmetric, harmonic (1/distance) counts within ``window`` inside each sentence."""
    keys, weights = [], []
    for ids in sentences_ids:
        for d in range(1, min(window, len(ids) - 1) + 1):
            left, right = ids[:-d].astype(np.int64), ids[d:].astype(np.int64)
            keys += [left * size + right, right * size + left]
            weights += [np.full(len(left), 1.0 / d)] * 2
    if not keys:
        return COOCCURRENCE.empty_table()
    key = np.concatenate(keys)
    weight = np.concatenate(weights)
    unique, inverse = np.unique(key, return_inverse=True)
    x = np.bincount(inverse, weights=weight)
    return pa.table(
        {
            "i": pa.array(unique // size, pa.int32()),
            "j": pa.array(unique % size, pa.int32()),
            "x": pa.array(x, pa.float32()),
        },
        schema=COOCCURRENCE,
    )


def write_text_assets(
    store: Store,
    name: str,
    sentences: list[list[str]],
    *,
    shards: int = 2,
    min_count: int = 1,
    window: int = 10,
) -> dict[str, str]:
    """vocabulary, tokens (``shards`` files) and cooccurrence datasets under text/NAME/."""
    vocabulary, index = _vocabulary_table(sentences, min_count)
    encoded = [np.asarray([index[w] for w in s if w in index], np.int32) for s in sentences]

    vocab_ds = store.dataset(f"text/{name}/vocabulary")
    recipe = Recipe(VOCABULARY_KIND, {"test": name}, {"min_count": min_count}, "test")
    vocab_ds.begin(recipe)
    vocab_ds.write_table("vocabulary.parquet", vocabulary)
    vocab_ds.commit(
        Manifest.from_recipe(
            recipe, tables={"vocabulary": (VOCABULARY, ["vocabulary.parquet"], len(vocabulary))}
        )
    )

    tokens_ds = store.dataset(f"text/{name}/tokens")
    recipe = Recipe(TOKENS_KIND, {vocab_ds.name: vocab_ds.manifest().fingerprint}, {}, "test")
    tokens_ds.begin(recipe)
    files = []
    for shard, part in enumerate(np.array_split(np.arange(len(encoded)), shards)):
        table = pa.table(
            {
                "article_id": pa.array(part.astype(np.int64) + 1, pa.int64()),
                "sentence": pa.array(np.zeros(len(part), np.int32), pa.int32()),
                "tokens": pa.array([encoded[k] for k in part], pa.list_(pa.int32())),
                "doc": pa.array(part.astype(np.int64), pa.int64()),
            },
            schema=TOKEN_SHARDS,
        )
        files.append(f"tokens/part-{shard:05d}.parquet")
        tokens_ds.write_table(files[-1], table)
    tokens_ds.write_table("vocabulary.parquet", vocabulary)
    tokens_ds.commit(
        Manifest.from_recipe(
            recipe,
            tables={
                "tokens": (TOKEN_SHARDS, files, len(encoded)),
                "vocabulary": (VOCABULARY, ["vocabulary.parquet"], len(vocabulary)),
            },
            counts={"sentences": len(encoded), "tokens": sum(len(e) for e in encoded)},
        )
    )

    co_ds = store.dataset(f"text/{name}/cooccurrence")
    recipe = Recipe(
        COOCCURRENCE_KIND, {tokens_ds.name: tokens_ds.manifest().fingerprint}, {"window": window}, "test"
    )
    co_ds.begin(recipe)
    table = cooccurrence_counts(encoded, len(vocabulary), window)
    co_ds.write_table("cooccurrence/part-00000.parquet", table)
    co_ds.write_table("vocabulary.parquet", vocabulary)
    co_ds.commit(
        Manifest.from_recipe(
            recipe,
            tables={
                "cooccurrence": (COOCCURRENCE, ["cooccurrence/part-00000.parquet"], len(table)),
                "vocabulary": (VOCABULARY, ["vocabulary.parquet"], len(vocabulary)),
            },
            counts={"pairs": len(table)},
        )
    )
    return {"vocabulary": vocab_ds.name, "tokens": tokens_ds.name, "cooccurrence": co_ds.name}
