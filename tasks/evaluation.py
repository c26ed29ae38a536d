"""evaluate, word embeddings: analogies by section (3CosAdd, 3CosMul), similarity sets (Spearman), plots.

    from tasks.evaluation import read_analogies, evaluate_analogies
    rows = evaluate_analogies(embedding, read_analogies("questions-words.txt"))

The numbers follow gensim's KeyedVectors to the last question: words are matched case-insensitively
(the most frequent vocabulary word of each uppercase form), only the first ``restrict_vocab`` words
are searched, an analogy a:b :: c:? is answered by the nearest word to unit(b) + unit(c) - unit(a)
that is none of a, b, c (evaluate_word_analogies), and a pair's similarity is the cosine of its unit
vectors (evaluate_word_pairs). What gensim skips as out of vocabulary is counted here, never dropped:
every question and pair is either answered or counted as unseen. Models that build vectors for unseen
words (fastText, PHOC) answer more; those numbers are reported beside the in-vocabulary ones, which
are the ones that equal gensim's.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gensim import matutils
from scipy import stats

from models.vectors import WordEmbedding

RESTRICT_VOCAB = 300_000  # gensim's default: questions with a rarer word count as unseen
TOP_CANDIDATES = 5  # gensim looks at its 5 best candidates for one that is not a question word


# --- reading the sets ----------------------------------------------------------------------------


@dataclass
class AnalogySection:
    name: str
    questions: list[tuple[str, str, str, str]]


def read_analogies(path: str | Path) -> tuple[list[AnalogySection], int]:
    """Sections of a questions-words file (": section" headers, "a b c d" lines); and the invalid lines."""
    sections: list[AnalogySection] = []
    invalid = 0
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.startswith(": "):
                sections.append(AnalogySection(line[2:].strip(), []))
                continue
            words = line.split()
            if not words:
                continue
            if not sections:
                raise ValueError(f"{path}: line {number} comes before any ': section' header")
            if len(words) != 4:
                invalid += 1
                continue
            sections[-1].questions.append(tuple(words))
    return sections, invalid


def read_pairs(path: str | Path) -> tuple[list[tuple[str, str, float]], int]:
    """Word pairs with a human score, one "word<TAB>word<TAB>score" a line ('#' comments); and invalid lines."""
    pairs, invalid = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.rstrip("\r\n").split("\t")
            try:
                a, b, score = parts
                pairs.append((a, b, float(score)))
            except ValueError:
                invalid += 1
    return pairs, invalid


# --- lookups as gensim does them -----------------------------------------------------------------


class Lookup:
    """Question words to vocabulary rows, case-insensitively, within the first ``restrict`` words."""

    def __init__(
        self, embedding: WordEmbedding, restrict: int = RESTRICT_VOCAB, case_insensitive: bool = True
    ):
        self.embedding = embedding
        self.limit = min(restrict, len(embedding))
        self.case_insensitive = case_insensitive
        self.fold = str.upper if case_insensitive else (lambda w: w)
        # reversed: the most frequent of several words with one uppercase form wins
        self.rows = {self.fold(w): i for i, w in reversed(list(enumerate(embedding.words[: self.limit])))}
        self._unit: dict[str, np.ndarray | None] = {}

    def row(self, word: str) -> int | None:
        return self.rows.get(self.fold(word))

    def unit(self, word: str, build: bool) -> np.ndarray | None:
        """The unit vector of a question word: its row's, or a built one (lowercased) when allowed."""
        row = self.row(word)
        if row is not None:
            vector = self.embedding.vectors[row]
            return vector / self.embedding.norms[row] if self.embedding.norms[row] > 0 else vector
        if not build or not self.embedding.builds_unseen:
            return None
        key = word.lower() if self.case_insensitive else word
        if key not in self._unit:
            vectors, ok = self.embedding.build_unseen([key])
            self._unit[key] = vectors[0] / np.linalg.norm(vectors[0]) if ok[0] else None
        return self._unit[key]


# --- analogies -----------------------------------------------------------------------------------


def _answer(scores: np.ndarray, exclude: set[int], ignore: set[str], words: list[str], fold) -> str | None:
    """gensim's choice: among the best candidates that are not input rows, the first not a question word."""
    best = matutils.argsort(scores, topn=TOP_CANDIDATES + len(exclude), reverse=True)
    candidates = [int(k) for k in best if int(k) not in exclude][:TOP_CANDIDATES]
    predicted = None
    for k in candidates:
        predicted = fold(words[k])
        if predicted not in ignore:
            break
    return predicted


def evaluate_analogies(
    embedding: WordEmbedding,
    sections: list[AnalogySection],
    *,
    restrict_vocab: int = RESTRICT_VOCAB,
    case_insensitive: bool = True,
    batch: int = 512,
) -> list[dict[str, Any]]:
    """One row per section and a 'total' row: questions, answered, correct by 3CosAdd and 3CosMul.

    ``answered``/``correct_add``/``correct_mul`` take the questions whose four words are in the
    vocabulary (gensim's numbers); ``*_built`` add those whose a, b or c the model built.
    """
    lookup = Lookup(embedding, restrict_vocab, case_insensitive)
    limit, fold = lookup.limit, lookup.fold
    vectors, norms = embedding.vectors[:limit], embedding.norms[:limit]
    safe_norms = np.where(norms > 0, norms, 1.0).astype(np.float32)
    rows_out = []
    for section in sections:
        counts = dict.fromkeys(
            (
                "questions",
                "answered",
                "correct_add",
                "correct_mul",
                "answered_built",
                "correct_add_built",
                "correct_mul_built",
                "unseen",
            ),
            0,
        )
        counts["questions"] = len(section.questions)
        items = []  # (unit a, unit b, unit c, excluded rows, ignore, expected, built)
        for a, b, c, expected in section.questions:
            if lookup.row(expected) is None:
                counts["unseen"] += 1
                continue
            known = all(lookup.row(w) is not None for w in (a, b, c))
            units = [lookup.unit(w, build=not known) for w in (a, b, c)]
            if any(u is None for u in units):
                counts["unseen"] += 1
                continue
            exclude = {r for r in (lookup.row(w) for w in (a, b, c)) if r is not None}
            items.append((*units, exclude, {fold(a), fold(b), fold(c)}, fold(expected), not known))
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            # 3CosAdd: the mean of b, c and -a as gensim forms it (float32, in that order), made unit
            means = []
            for ua, ub, uc, *_ in chunk:
                mean = np.zeros(embedding.dim, np.float32)
                mean += ub
                mean += uc
                mean += -1.0 * ua
                means.append(matutils.unitvec(mean / 3).astype(np.float32))
            add_scores = (np.stack(means) @ vectors.T) / safe_norms
            # 3CosMul (Levy and Goldberg 2014), cosines shifted to [0, 1]
            cos = [
                (1 + (np.stack([item[k] for item in chunk]) @ vectors.T) / safe_norms) / 2 for k in range(3)
            ]
            mul_scores = cos[1] * cos[2] / (cos[0] + 0.000001)
            for k, (_, _, _, exclude, ignore, expected, built) in enumerate(chunk):
                suffix = "_built" if built else ""
                counts["answered" + suffix] += 1
                words = embedding.words
                if _answer(add_scores[k], exclude, ignore, words, fold) == expected:
                    counts["correct_add" + suffix] += 1
                if _answer(mul_scores[k], exclude, ignore, words, fold) == expected:
                    counts["correct_mul" + suffix] += 1
        rows_out.append({"section": section.name, **counts})
    total = (
        {"section": "total"}
        | {key: sum(row[key] for row in rows_out) for key in rows_out[0] if key != "section"}
        if rows_out
        else {"section": "total"}
    )
    for row in [*rows_out, total]:
        row["accuracy_add"] = _ratio(row.get("correct_add", 0), row.get("answered", 0))
        row["accuracy_mul"] = _ratio(row.get("correct_mul", 0), row.get("answered", 0))
        answered_all = row.get("answered", 0) + row.get("answered_built", 0)
        row["accuracy_add_all"] = _ratio(
            row.get("correct_add", 0) + row.get("correct_add_built", 0), answered_all
        )
        row["coverage"] = _ratio(answered_all, row.get("questions", 0))
    return [*rows_out, total]


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else float("nan")


# --- similarity ----------------------------------------------------------------------------------


def evaluate_pairs(
    embedding: WordEmbedding,
    pairs: list[tuple[str, str, float]],
    *,
    restrict_vocab: int = RESTRICT_VOCAB,
    case_insensitive: bool = True,
) -> dict[str, Any]:
    """Spearman (and Pearson) of the model's cosines against the human scores.

    ``spearman``/``pearson`` over the pairs with both words in the vocabulary (gensim's numbers),
    ``spearman_all`` adding the pairs with a built word; ``unseen`` the pairs left unanswered.
    """
    lookup = Lookup(embedding, restrict_vocab, case_insensitive)
    known_gold, known_model, all_gold, all_model = [], [], [], []
    for a, b, score in pairs:
        known = lookup.row(a) is not None and lookup.row(b) is not None
        if known:
            va, vb = embedding.vectors[lookup.row(a)], embedding.vectors[lookup.row(b)]
            similarity = float(np.dot(matutils.unitvec(va), matutils.unitvec(vb)))
        else:
            ua, ub = lookup.unit(a, build=True), lookup.unit(b, build=True)
            if ua is None or ub is None:
                continue
            similarity = float(np.dot(ua, ub))
        if known:
            known_gold.append(score)
            known_model.append(similarity)
        all_gold.append(score)
        all_model.append(similarity)
    return {
        "pairs": len(pairs),
        "answered": len(known_gold),
        "answered_built": len(all_gold) - len(known_gold),
        "unseen": len(pairs) - len(all_gold),
        "spearman": _correlation(stats.spearmanr, known_gold, known_model),
        "pearson": _correlation(stats.pearsonr, known_gold, known_model),
        "spearman_all": _correlation(stats.spearmanr, all_gold, all_model),
        "coverage": _ratio(len(all_gold), len(pairs)),
    }


def _correlation(function, gold: list[float], model: list[float]) -> float:
    # undefined (NaN) with fewer than 2 pairs or a constant side (one-hot: every cosine is 0)
    if len(gold) < 2 or len(set(model)) < 2 or len(set(gold)) < 2:
        return float("nan")
    return float(function(gold, model)[0])


# --- neighbours and plots ------------------------------------------------------------------------


def neighbours(embedding: WordEmbedding, word: str, count: int = 10) -> list[tuple[str, float]]:
    """The ``count`` nearest vocabulary words by cosine (the word itself left out); [] if it has no vector."""
    units, found = embedding.unit_words([word])
    if not found[0]:
        return []
    scores = embedding.scores(units)[0]
    own = embedding.index().get(word)
    best = matutils.argsort(scores, topn=count + 1, reverse=True)
    return [(embedding.words[k], float(scores[k])) for k in best if k != own][:count]


def figure_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return buffer.getvalue()


def analogy_plot(
    embedding: WordEmbedding, title: str, axes: tuple[tuple[str, str], tuple[str, str]], words: list[str]
) -> bytes | None:
    """Words placed by their projections on two difference directions (such as he-she and woman-queen)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    needed = [w for pair in axes for w in pair]
    units, found = embedding.unit_words(needed + words)
    if not found[: len(needed)].all():
        return None
    directions = [units[1] - units[0], units[3] - units[2]]
    directions = [d / max(np.linalg.norm(d), 1e-12) for d in directions]
    shown = [(w, units[len(needed) + k]) for k, w in enumerate(words) if found[len(needed) + k]]
    figure, ax = plt.subplots(figsize=(6, 5))
    for word, unit in shown:
        x, y = float(unit @ directions[0]), float(unit @ directions[1])
        ax.scatter([x], [y], s=12)
        ax.annotate(word, (x, y), fontsize=9)
    ax.set_xlabel(f"{axes[0][1]} - {axes[0][0]}")
    ax.set_ylabel(f"{axes[1][1]} - {axes[1][0]}")
    ax.set_title(title)
    return figure_png(figure)


def neighbours_plot(embedding: WordEmbedding, title: str, words: list[str], count: int = 8) -> bytes | None:
    """One panel per word: its nearest words as bars of cosine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = [(w, neighbours(embedding, w, count)) for w in words]
    found = [(w, n) for w, n in found if n]
    if not found:
        return None
    columns = min(3, len(found))
    rows = math.ceil(len(found) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.6 * rows), squeeze=False)
    for ax, (word, near) in zip(axes.flat, found, strict=False):
        ax.barh([w for w, _ in near][::-1], [s for _, s in near][::-1])
        ax.set_title(word, fontsize=10)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(found) :]:
        ax.axis("off")
    figure.suptitle(title)
    return figure_png(figure)


def projection_plot(embedding: WordEmbedding, title: str, count: int = 300) -> bytes | None:
    """The most frequent ``count`` words on their first two principal components."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(embedding) < 3:
        return None
    rows = np.arange(min(count, len(embedding)))
    units = embedding.unit_rows(rows)
    centered = units - units.mean(0)
    _, _, components = np.linalg.svd(centered, full_matrices=False)
    points = centered @ components[:2].T
    figure, ax = plt.subplots(figsize=(8, 7))
    ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.5)
    for k in rows[: min(120, len(rows))]:
        ax.annotate(embedding.words[k], points[k], fontsize=6)
    ax.set_title(title)
    return figure_png(figure)
