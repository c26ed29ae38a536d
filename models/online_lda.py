"""Latent Dirichlet allocation by online variational Bayes (Hoffman, Blei and Bach, 2010), on torch.

The E-step runs on a whole minibatch at once: a document's words are the non-zero entries of a sparse
row, and every document's variational Dirichlet (gamma) is updated together, with gathers and
index_add over the entries instead of a loop over documents. Documents that have converged leave the
active set. The M-step blends the minibatch's expected topic-word counts into lambda with the step
(offset + t) ** -decay. Defaults match gensim's LdaModel, so results compare: alpha = eta = 1/K,
decay 0.5, offset 1, 50 iterations, gamma threshold 0.001, batches of 2,000 documents.

    model = OnlineLDA(LdaConfig(topics=50), vocabulary_size=V)
    model.fit(lambda: iter_batches(), documents=D)     # batches: (indptr, indices, counts) CSR triples
    theta = model.transform(indptr, indices, counts)   # (D, K) topic proportions, rows sum to 1
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # CSR of one minibatch: indptr, word indices, counts


@dataclass
class LdaConfig:
    topics: int = 100  # K
    alpha: float | None = None  # document-topic Dirichlet prior, symmetric; None: 1/K
    eta: float | None = None  # topic-word Dirichlet prior, symmetric; None: 1/K
    passes: int = 1  # sweeps over the corpus
    batch_size: int = 2_000  # documents per M-step
    decay: float = 0.5  # kappa in (0.5, 1]: how fast old minibatches are forgotten
    offset: float = 1.0  # tau0 >= 0: slows down the first iterations
    iterations: int = 50  # E-step iterations at most, per minibatch
    gamma_threshold: float = 1e-3  # a document has converged when its gamma moves less than this on average
    seed: int = 0
    device: str | None = None  # None: cuda when there is one

    def __post_init__(self) -> None:
        if self.topics < 1 or self.passes < 1 or self.batch_size < 1 or self.iterations < 1:
            raise ValueError(f"topics, passes, batch_size and iterations must be >= 1: {self}")
        if not 0.5 <= self.decay <= 1.0:
            raise ValueError(f"decay must be in [0.5, 1], got {self.decay}")

    @property
    def prior(self) -> tuple[float, float]:
        return (self.alpha or 1.0 / self.topics, self.eta or 1.0 / self.topics)


def _dirichlet_expectation(x: torch.Tensor) -> torch.Tensor:
    """E[log p] under Dirichlet(x), row-wise."""
    return torch.digamma(x) - torch.digamma(x.sum(-1, keepdim=True))


def _segments(lengths: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The (D, E) sparse matrix that sums consecutive runs of `lengths` entries, weighted by `values`."""
    rows = torch.zeros(len(lengths) + 1, dtype=torch.int64, device=values.device)
    torch.cumsum(lengths, 0, out=rows[1:])
    columns = torch.arange(len(values), device=values.device)
    with warnings.catch_warnings():
        # torch calls sparse CSR "beta"; the product used here has been stable since torch 1.13
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            rows, columns, values, size=(len(lengths), len(values)), check_invariants=False
        )


class OnlineLDA:
    """LDA topic-word variational parameters (lambda, K x V) and the updates that fit them."""

    def __init__(self, config: LdaConfig, vocabulary_size: int, lam: np.ndarray | None = None) -> None:
        self.config = config
        self.vocabulary_size = vocabulary_size
        self.device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.alpha, self.eta = config.prior
        if lam is None:
            # random start, as gensim's: Gamma(100, 1/100) expected counts
            rng = np.random.default_rng(config.seed)
            lam = self.eta + rng.gamma(100.0, 0.01, (config.topics, vocabulary_size))
        self.lam = torch.as_tensor(np.asarray(lam, np.float32), device=self.device)
        self.updates = 0
        self.documents_seen = 0

    def _exp_elog_beta(self) -> torch.Tensor:
        return torch.exp(_dirichlet_expectation(self.lam))  # (K, V)

    def e_step(
        self, batch: Batch, exp_elog_beta: torch.Tensor, statistics: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """Variational gamma (D, K) of a minibatch; and its expected topic-word counts (K, V) when asked."""
        indptr, indices, counts = batch
        documents, K = len(indptr) - 1, self.config.topics
        lengths = torch.as_tensor(np.diff(indptr), device=self.device)  # (D,) entries per document
        doc = torch.repeat_interleave(torch.arange(documents, device=self.device), lengths)  # (E,)
        word = torch.as_tensor(indices.astype(np.int64), device=self.device)  # (E,)
        count = torch.as_tensor(counts.astype(np.float32), device=self.device)  # (E,)
        # deterministic start: alpha plus an even share of the document's words (as lda-c does)
        size = torch.zeros(documents, device=self.device).index_add_(0, doc, count)
        gamma = (self.alpha + size / K)[:, None].repeat(1, K)  # (D, K)
        beta = exp_elog_beta[:, word].T.contiguous()  # (E, K): the entries' columns of exp E[log beta]
        active = torch.arange(documents, device=self.device)
        local, a_beta, a_count, a_lengths = doc, beta, count, lengths  # the active documents' entries
        iterations = 0
        for iterations in range(1, self.config.iterations + 1):  # noqa: B007  (returned)
            theta = torch.exp(_dirichlet_expectation(gamma[active]))  # (A, K)
            phinorm = torch.einsum("ek,ek->e", theta[local], a_beta) + 1e-30  # (E_active,)
            # sum over each document's entries as a sparse (A, E_active) product: 10x an index_add on CPU
            new = _segments(a_lengths, a_count / phinorm) @ a_beta  # (A, K)
            new = self.alpha + theta * new
            converged = (new - gamma[active]).abs().mean(1) < self.config.gamma_threshold
            gamma[active] = new
            if bool(converged.all()):
                break
            # drop converged documents only when it saves work: the gather costs about one iteration
            if int(converged.sum()) > 0.3 * len(active):
                keep = ~converged[local]
                local = torch.cumsum(~converged, 0)[local[keep]] - 1
                a_beta, a_count = a_beta[keep], a_count[keep]
                active, a_lengths = active[~converged], a_lengths[~converged]
        if not statistics:
            return gamma, None, iterations
        theta = torch.exp(_dirichlet_expectation(gamma))
        phinorm = torch.einsum("ek,ek->e", theta[doc], beta) + 1e-30
        weights = theta[doc] * (count / phinorm)[:, None]  # (E, K)
        sstats = torch.zeros(self.vocabulary_size, K, device=self.device).index_add_(0, word, weights).T
        return gamma, sstats * exp_elog_beta, iterations

    def update(self, batch: Batch, documents: int, sweep: int = 0) -> int:
        """One online step on a minibatch; `documents` is the size of the whole corpus."""
        rho = (self.config.offset + sweep + self.updates) ** -self.config.decay
        _, sstats, iterations = self.e_step(batch, self._exp_elog_beta(), statistics=True)
        batch_documents = len(batch[0]) - 1
        self.lam.mul_(1 - rho).add_(rho * (self.eta + sstats * (documents / max(batch_documents, 1))))
        self.updates += 1
        self.documents_seen += batch_documents
        return iterations

    def fit(
        self,
        batches: Callable[[], Iterable[Batch]],
        documents: int,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        """`passes` sweeps over the minibatches that batches() yields afresh for each pass."""
        for sweep in range(self.config.passes):
            for batch in batches():
                self.update(batch, documents, sweep)
                if on_batch is not None:
                    on_batch(sweep, len(batch[0]) - 1)

    @torch.no_grad()
    def transform(self, batch: Batch) -> np.ndarray:
        """Topic proportions (D, K) of documents; a document without words gets the prior (uniform)."""
        gamma, _, _ = self.e_step(batch, self._exp_elog_beta(), statistics=False)
        return (gamma / gamma.sum(1, keepdim=True)).cpu().numpy()

    def topic_word(self) -> np.ndarray:
        """p(word | topic), (K, V), rows sum to 1."""
        lam = self.lam.double()
        return (lam / lam.sum(1, keepdim=True)).cpu().numpy()

    def to_json(self) -> str:
        return json.dumps(
            {
                "config": asdict(self.config),
                "vocabulary_size": self.vocabulary_size,
                "updates": self.updates,
                "documents_seen": self.documents_seen,
            }
        )

    @classmethod
    def from_saved(cls, settings: str, lam: np.ndarray, device: str | None = None) -> OnlineLDA:
        value = json.loads(settings)
        config = LdaConfig(**{**value["config"], "device": device})
        model = cls(config, value["vocabulary_size"], lam)
        model.updates, model.documents_seen = value["updates"], value["documents_seen"]
        return model


def rows(indptr: np.ndarray, indices: np.ndarray, counts: np.ndarray, start: int, stop: int) -> Batch:
    """Rows [start, stop) of a CSR matrix as a batch of its own."""
    first, last = indptr[start], indptr[stop]
    return indptr[start : stop + 1] - first, indices[first:last], counts[first:last]


def batches_of(indptr: np.ndarray, indices: np.ndarray, counts: np.ndarray, size: int):
    for start in range(0, len(indptr) - 1, size):
        yield rows(indptr, indices, counts, start, min(start + size, len(indptr) - 1))
