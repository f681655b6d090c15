"""Retrieval metrics of the MuseChat evaluation protocol (paper section 5, Table 1).

Within a pool of N tracks each query's target has a rank (1 = best). From the ranks:
- Recall@k: the percentage of queries whose target is within the top k;
- Median Rank (MR): the median of the ranks (lower is better);
- Success Rate (SR): the percentage of conversations whose target is ranked first at turn 1 or at
  turn 2 ("within two turns").
Ties: a target's rank is 1 + the number of tracks scored strictly higher, plus the number of
OTHER tracks with exactly the same score (pessimistic), so a constant scorer cannot look good.

Pools: the paper reports "the average performance for each of these metrics across all test music
pools", so every metric, the median rank included, is computed per pool and then averaged
(`average_metrics`); the MR of a table row is a mean of pool medians, not the median of all ranks.

Chance (the paper's "Random" row): a uniformly random ranking puts the target at each rank with
probability 1/N, so R@k = k/N, MR = N/2 (the paper's 250 for N = 500), and two independent tries
succeed with probability 1 - (1 - 1/N)^2 (~ 2/N: the paper's 0.40 %).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

RECALL_KS: tuple[int, ...] = (1, 5, 10)  # paper Table 1
PAPER_POOL_SIZE = 500  # tracks per test pool (paper section 5)


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based rank of each query's target among the pool: scores (Q, N), targets (Q,) -> (Q,) int64.

    Ties with other tracks count against the target (module docstring).
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be (Q, N), got {tuple(scores.shape)}")
    targets = targets.to(device=scores.device, dtype=torch.long)
    if targets.shape != (scores.shape[0],):
        raise ValueError(f"targets must be ({scores.shape[0]},), got {tuple(targets.shape)}")
    own = scores.gather(1, targets[:, None])  # (Q, 1)
    higher = (scores > own).sum(dim=1)
    ties = (scores == own).sum(dim=1) - 1  # other tracks with the same score
    return (1 + higher + ties).to(torch.long)


def recall_at_k(ranks: torch.Tensor | np.ndarray, k: int) -> float:
    """Percentage of ranks <= k."""
    r = np.asarray(ranks)
    if r.size == 0:
        raise ValueError("no ranks")
    return float(100.0 * (r <= k).mean())


def median_rank(ranks: torch.Tensor | np.ndarray) -> float:
    """Median of the ranks (numpy's median: the mean of the middle two for an even count)."""
    r = np.asarray(ranks)
    if r.size == 0:
        raise ValueError("no ranks")
    return float(np.median(r))


def success_rate(turn1_ranks: torch.Tensor | np.ndarray, turn2_ranks: torch.Tensor | np.ndarray) -> float:
    """Percentage of conversations with the target ranked first at turn 1 or turn 2 (paper 5, SR)."""
    a, b = np.asarray(turn1_ranks), np.asarray(turn2_ranks)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"turn ranks must be non-empty and alike, got {a.shape} and {b.shape}")
    return float(100.0 * ((a == 1) | (b == 1)).mean())


@dataclass
class RetrievalMetrics:
    """One row of Table 1: metrics of one turn (SR needs both turns and is None for a lone turn)."""

    median_rank: float
    r1: float  # percent
    r5: float
    r10: float
    success_rate: float | None  # percent
    n_queries: int
    pool_size: int

    def to_json(self) -> dict[str, float | int | None]:
        return asdict(self)


def turn_metrics(ranks: torch.Tensor | np.ndarray, pool_size: int, turn1_ranks: torch.Tensor | np.ndarray | None = None) -> RetrievalMetrics:
    """Metrics of a turn's ranks; pass turn 1's ranks (same queries) to get the success rate too."""
    r = np.asarray(ranks)
    return RetrievalMetrics(
        median_rank=median_rank(r),
        r1=recall_at_k(r, 1),
        r5=recall_at_k(r, 5),
        r10=recall_at_k(r, 10),
        success_rate=None if turn1_ranks is None else success_rate(turn1_ranks, r),
        n_queries=int(r.size),
        pool_size=pool_size,
    )


def chance_metrics(pool_size: int, n_queries: int = 0) -> RetrievalMetrics:
    """Expected metrics of a uniformly random ranking in a pool of `pool_size` (module docstring)."""
    if pool_size < 1:
        raise ValueError(f"pool_size must be >= 1, got {pool_size}")
    n = pool_size
    return RetrievalMetrics(
        median_rank=n / 2,
        r1=100.0 * min(1, n) / n,
        r5=100.0 * min(5, n) / n,
        r10=100.0 * min(10, n) / n,
        success_rate=100.0 * (1.0 - (1.0 - 1.0 / n) ** 2),
        n_queries=n_queries,
        pool_size=n,
    )


def average_metrics(per_pool: list[RetrievalMetrics]) -> RetrievalMetrics:
    """The mean of each metric across pools (paper 5: "the average performance ... across all test
    music pools"), median rank included; n_queries is the total. The pools must be of one size."""
    if not per_pool:
        raise ValueError("no pools to average")
    sizes = {m.pool_size for m in per_pool}
    if len(sizes) != 1:
        raise ValueError(f"pools of different sizes cannot be averaged: {sorted(sizes)}")
    has_sr = {m.success_rate is not None for m in per_pool}
    if len(has_sr) != 1:
        raise ValueError("either every pool has a success rate or none has")

    def mean(name: str) -> float:
        return float(np.mean([getattr(m, name) for m in per_pool]))

    return RetrievalMetrics(
        median_rank=mean("median_rank"),
        r1=mean("r1"),
        r5=mean("r5"),
        r10=mean("r10"),
        success_rate=mean("success_rate") if has_sr == {True} else None,
        n_queries=sum(m.n_queries for m in per_pool),
        pool_size=per_pool[0].pool_size,
    )
