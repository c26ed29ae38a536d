"""Word vectors: the word2vec text format every run exports, and what word evaluation asks of a model.

Every word model's run folder holds:

    vectors.txt           word2vec text format: "<count> <dim>" then "<word> <v1> ... <vdim>" per line;
                          gensim.models.KeyedVectors.load_word2vec_format(path) loads it
    vectors.safetensors   the same matrix, float32, exact ("vectors"), with words.json beside it
    words.json            the words in row order, most frequent first

``WordEmbedding`` is the interface evaluation works through: unit rows for known words, vectors built
for unseen ones where the model can (fastText from n-grams, PHOC from characters), and scores of query
vectors against the vocabulary.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from storage import Dataset

VECTORS_TEXT = "vectors.txt"
VECTORS_TENSORS = "vectors.safetensors"
WORDS_JSON = "words.json"

_WHITESPACE = re.compile(r"\s")


class WordEmbedding:
    """Vectors for a vocabulary (row 0 the most frequent word) and, where the model can, for unseen words."""

    builds_unseen = False  # True when build_unseen() can embed words outside the vocabulary

    def __init__(self, words: list[str], vectors: np.ndarray) -> None:
        if vectors.ndim != 2 or len(words) != vectors.shape[0]:
            raise ValueError(f"{len(words)} words for a matrix of shape {vectors.shape}")
        self.words = list(words)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.norms = np.linalg.norm(self.vectors, axis=1)
        self._index: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.words)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    @property
    def dense(self) -> bool:
        """Whether ``vectors`` holds the matrix (plots and projections need it)."""
        return True

    def index(self) -> dict[str, int]:
        if self._index is None:
            self._index = {word: i for i, word in enumerate(self.words)}
        return self._index

    def unit_rows(self, rows: np.ndarray) -> np.ndarray:
        """Unit-length vectors of vocabulary rows, (n, dim); a zero vector stays zero."""
        rows = np.asarray(rows, dtype=np.int64)
        return self.vectors[rows] / np.maximum(self.norms[rows], 1e-30)[:, None]

    def build_unseen(self, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors for words outside the vocabulary, (n, dim), and which of them could be built."""
        return np.zeros((len(words), self.dim), np.float32), np.zeros(len(words), bool)

    def unit_words(self, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Unit vectors of any words: vocabulary rows where known, built ones where the model can."""
        index = self.index()
        out = np.zeros((len(words), self.dim), np.float32)
        found = np.zeros(len(words), bool)
        known = [(k, index[w]) for k, w in enumerate(words) if w in index]
        if known:
            positions, rows = map(np.asarray, zip(*known, strict=True))
            out[positions] = self.unit_rows(rows)
            found[positions] = True
        unseen = [k for k, w in enumerate(words) if w not in index]
        if unseen and self.builds_unseen:
            vectors, ok = self.build_unseen([words[k] for k in unseen])
            norms = np.linalg.norm(vectors, axis=1)
            ok &= norms > 0
            positions = np.asarray(unseen)[ok]
            out[positions] = vectors[ok] / norms[ok][:, None]
            found[positions] = True
        return out, found

    def scores(self, queries: np.ndarray, limit: int | None = None) -> np.ndarray:
        """Cosine of each unit query (n, dim) with the first ``limit`` vocabulary words: (n, limit).

        Computed as gensim's most_similar does, dot with the raw rows divided by their norms, so
        rankings agree with it to the last bit where the vectors do.
        """
        limit = len(self.words) if limit is None else min(limit, len(self.words))
        dots = queries.astype(np.float32, copy=False) @ self.vectors[:limit].T
        # a zero row (a PHOC word with no character of the alphabet) scores 0, not NaN
        norms = np.where(self.norms[:limit] > 0, self.norms[:limit], 1.0)
        return dots / norms[None, :]


def _clean(word: str) -> str:
    # the text format separates fields by spaces: a token holding whitespace would shift every field
    return _WHITESPACE.sub("_", word) if _WHITESPACE.search(word) else word


def export_word_vectors(run: Dataset, words: list[str], vectors: np.ndarray | torch.Tensor) -> list[str]:
    """Write vectors.txt, vectors.safetensors and words.json into a run folder; returns their names."""
    matrix = vectors.detach().to("cpu").float().numpy() if isinstance(vectors, torch.Tensor) else vectors
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if matrix.shape[0] != len(words):
        raise ValueError(f"{len(words)} words for {matrix.shape[0]} vectors")
    with run.open_atomic(VECTORS_TEXT) as f:
        f.write(f"{matrix.shape[0]} {matrix.shape[1]}\n".encode())
        for start in range(0, len(words), 20_000):
            block = matrix[start : start + 20_000]
            buffer = io.StringIO()
            np.savetxt(buffer, block, fmt="%.6g", delimiter=" ")
            lines = buffer.getvalue().splitlines()
            names = words[start : start + len(block)]
            f.write("".join(f"{_clean(w)} {line}\n" for w, line in zip(names, lines, strict=True)).encode())
    run.write_bytes(VECTORS_TENSORS, save_safetensors({"vectors": torch.from_numpy(matrix)}))
    run.write_bytes(WORDS_JSON, json.dumps(words, ensure_ascii=False).encode())
    return [VECTORS_TEXT, VECTORS_TENSORS, WORDS_JSON]


def read_word2vec_text(text: str) -> tuple[list[str], np.ndarray]:
    """Parse the word2vec text format (what vectors.txt holds)."""
    lines = text.splitlines()
    if not lines:
        raise ValueError("empty word2vec file")
    count, dim = (int(x) for x in lines[0].split())
    words, rows = [], []
    for number, line in enumerate(lines[1 : count + 1], start=2):
        parts = line.rstrip().split(" ")
        if len(parts) != dim + 1:
            raise ValueError(f"line {number}: expected a word and {dim} numbers, got {len(parts)} fields")
        words.append(parts[0])
        rows.append(np.asarray(parts[1:], dtype=np.float32))
    return words, np.vstack(rows) if rows else np.zeros((0, dim), np.float32)


def load_word_vectors(run: Dataset) -> tuple[list[str], np.ndarray]:
    """The exported words and vectors of a run: the exact safetensors copy, or vectors.txt without it."""
    if run.fs.exists(run.file(VECTORS_TENSORS)) and run.fs.exists(run.file(WORDS_JSON)):
        vectors = load_safetensors(run.fs.cat_file(run.file(VECTORS_TENSORS)))["vectors"].numpy()
        words = json.loads(run.fs.cat_file(run.file(WORDS_JSON)).decode())
        return words, vectors
    if run.fs.exists(run.file(VECTORS_TEXT)):
        return read_word2vec_text(run.fs.cat_file(run.file(VECTORS_TEXT)).decode())
    raise FileNotFoundError(
        f"{run.name} has no exported vectors ({VECTORS_TEXT}); train it again to export them"
    )


def load_embedding(run: Dataset) -> WordEmbedding:
    """A WordEmbedding over a run's exported vectors (models with more to load define their own)."""
    return WordEmbedding(*load_word_vectors(run))
