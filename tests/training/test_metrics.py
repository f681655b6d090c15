"""Tests of training/metrics.py against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.metrics import (
    RetrievalMetrics,
    average_metrics,
    chance_metrics,
    median_rank,
    recall_at_k,
    success_rate,
    target_ranks,
    turn_metrics,
)

RANK_CASES = [
    # scores (Q, N), targets, expected 1-based ranks
    ([[0.9, 0.1, 0.5]], [0], [1]),
    ([[0.9, 0.1, 0.5]], [1], [3]),
    ([[0.9, 0.1, 0.5]], [2], [2]),
    ([[0.5, 0.5, 0.1]], [0], [2]),  # a tie with another track counts against the target
    ([[0.3, 0.3, 0.3, 0.3]], [2], [4]),  # a constant scorer ranks every target last
    ([[0.1, 0.2], [0.4, 0.3]], [1, 1], [1, 2]),
]


@pytest.mark.parametrize(("scores", "targets", "expected"), RANK_CASES)
def test_target_ranks(scores: list, targets: list, expected: list) -> None:
    ranks = target_ranks(torch.tensor(scores), torch.tensor(targets))
    assert ranks.tolist() == expected
    assert ranks.dtype == torch.long


def test_target_ranks_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        target_ranks(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError):
        target_ranks(torch.zeros(2, 3), torch.zeros(3))


def test_recall_median_success_by_hand() -> None:
    ranks = np.array([1, 3, 7, 12, 2])
    assert recall_at_k(ranks, 1) == pytest.approx(20.0)
    assert recall_at_k(ranks, 5) == pytest.approx(60.0)
    assert recall_at_k(ranks, 10) == pytest.approx(80.0)
    assert median_rank(ranks) == 3.0
    assert median_rank(np.array([1, 2, 4, 10])) == 3.0  # mean of the middle two
    # conversation 0: first at turn 1; 2: first at turn 2; 1 and 3: never first
    assert success_rate(np.array([1, 4, 2, 9]), np.array([5, 2, 1, 9])) == pytest.approx(50.0)


def test_turn_metrics_row() -> None:
    t1 = np.array([1, 4, 2, 9])
    t2 = np.array([5, 2, 1, 11])
    m = turn_metrics(t2, pool_size=20, turn1_ranks=t1)
    assert (m.median_rank, m.r1, m.r5, m.r10, m.success_rate) == (3.5, 25.0, 75.0, 75.0, 50.0)
    assert (m.n_queries, m.pool_size) == (4, 20)
    assert turn_metrics(t1, pool_size=20).success_rate is None


def test_average_across_pools_by_hand() -> None:
    """Paper 5: each metric, MR included, is averaged across pools (not pooled over all queries)."""
    # pool A (size 10): turn-1 ranks [1, 6, 2, 9], turn-2 ranks [2, 1, 7, 3]
    #   MR median(2, 1, 7, 3) = 2.5; R@1 1/4 = 25 %; R@5 3/4 = 75 %; R@10 100 %; SR (1|2, 6|1, 2|7, 9|3) = 2/4 = 50 %
    # pool B (size 10): turn-1 ranks [4, 8], turn-2 ranks [9, 10]
    #   MR 9.5; R@1 0; R@5 0; R@10 100 %; SR 0
    a = turn_metrics(np.array([2, 1, 7, 3]), 10, turn1_ranks=np.array([1, 6, 2, 9]))
    b = turn_metrics(np.array([9, 10]), 10, turn1_ranks=np.array([4, 8]))
    assert (a.median_rank, a.r1, a.r5, a.r10, a.success_rate) == (2.5, 25.0, 75.0, 100.0, 50.0)
    assert (b.median_rank, b.r1, b.r5, b.r10, b.success_rate) == (9.5, 0.0, 0.0, 100.0, 0.0)
    avg = average_metrics([a, b])
    assert avg == RetrievalMetrics(median_rank=6.0, r1=12.5, r5=37.5, r10=100.0, success_rate=25.0, n_queries=6, pool_size=10)
    # not the metrics of all six queries at once (MR 5.0, R@1 16.67, SR 33.3)
    everyone = turn_metrics(np.array([2, 1, 7, 3, 9, 10]), 10, turn1_ranks=np.array([1, 6, 2, 9, 4, 8]))
    assert everyone.median_rank == 5.0 and avg.median_rank != everyone.median_rank
    # turn-1 rows have no SR; pools of different sizes or mixed SR are refused
    assert average_metrics([turn_metrics(np.array([1, 3]), 10), turn_metrics(np.array([5]), 10)]).success_rate is None
    with pytest.raises(ValueError, match="different sizes"):
        average_metrics([a, turn_metrics(np.array([1]), 20, turn1_ranks=np.array([1]))])
    with pytest.raises(ValueError, match="success rate"):
        average_metrics([a, turn_metrics(np.array([1]), 10)])
    with pytest.raises(ValueError, match="no pools"):
        average_metrics([])


def test_chance_matches_the_papers_random_row() -> None:
    m = chance_metrics(500)
    assert m.median_rank == 250
    assert m.r1 == pytest.approx(0.20)
    assert m.r5 == pytest.approx(1.00)
    assert m.r10 == pytest.approx(2.00)
    assert m.success_rate == pytest.approx(0.40, abs=0.001)  # 1 - (499/500)^2 = 0.3996 %


def test_chance_agrees_with_random_rankings() -> None:
    g = torch.Generator().manual_seed(0)
    n, q = 50, 20000
    ranks = target_ranks(torch.rand(q, n, generator=g), torch.zeros(q, dtype=torch.long)).numpy()
    ch = chance_metrics(n)
    assert recall_at_k(ranks, 5) == pytest.approx(ch.r5, abs=0.6)
    assert recall_at_k(ranks, 10) == pytest.approx(ch.r10, abs=0.8)
    assert median_rank(ranks) == pytest.approx(ch.median_rank, abs=1.0)
