"""Ranking metrics vs hand-computed values and a brute-force tie enumeration."""

import itertools
import math

import numpy as np
import pytest

from clue_tfrs import metrics


# --------------------------------------------------------------------------
# Brute-force reference: every tie-breaking order, equally likely.
# --------------------------------------------------------------------------


def _brute_force(pos, negs, f):
    """E[f(rank)] with ties broken uniformly at random, by enumeration.

    Every permutation of the K+1 items is an equally likely tie-breaking
    order: sort the permuted list by score (stable, descending) and read off
    the positive's 1-based position. Averaging over all (K+1)! permutations
    gives each order of tied items equal weight.
    """
    scores = [pos] + list(negs)
    total, count = 0.0, 0
    for perm in itertools.permutations(range(len(scores))):
        order = sorted(perm, key=lambda i: -scores[i])  # stable on ties
        total += f(order.index(0) + 1)
        count += 1
    return total / count


REFERENCE_METRICS = {
    "HR@1": lambda r: float(r <= 1),
    "HR@3": lambda r: float(r <= 3),
    "NDCG@3": lambda r: 1.0 / math.log2(r + 1) if r <= 3 else 0.0,
    "NDCG@10": lambda r: 1.0 / math.log2(r + 1) if r <= 10 else 0.0,
    "MRR": lambda r: 1.0 / r,
}


def _ours(name, pos, neg):
    if name.startswith("HR@"):
        return metrics.hit_rate_at_k(pos, neg, int(name[3:]))
    if name.startswith("NDCG@"):
        return metrics.ndcg_at_k(pos, neg, int(name[5:]))
    return metrics.reciprocal_rank(pos, neg)


HAND_MADE = [
    # (positive, negatives): strict winner, strict loser, ties of every size.
    (0.9, [0.1, 0.2, 0.3, 0.4]),
    (0.0, [0.1, 0.2, 0.3, 0.4]),
    (0.5, [0.9, 0.5, 0.1, 0.7]),
    (0.5, [0.5, 0.5, 0.1, 0.9]),
    (0.5, [0.5, 0.5, 0.5, 0.5]),
    (0.2, [0.2, 0.9, 0.9, 0.2]),
]


@pytest.mark.parametrize("name", sorted(REFERENCE_METRICS))
def test_metrics_match_brute_force_tie_enumeration(name):
    pos = np.array([p for p, _ in HAND_MADE])
    neg = np.array([n for _, n in HAND_MADE])
    expected = [_brute_force(p, n, REFERENCE_METRICS[name]) for p, n in HAND_MADE]
    np.testing.assert_allclose(_ours(name, pos, neg), expected, rtol=0, atol=1e-12)


def test_random_integer_scores_match_brute_force():
    # Small integer scores make ties frequent.
    rng = np.random.default_rng(0)
    pos = rng.integers(0, 3, size=20).astype(float)
    neg = rng.integers(0, 3, size=(20, 5)).astype(float)
    for name, f in REFERENCE_METRICS.items():
        expected = [_brute_force(p, n, f) for p, n in zip(pos, neg)]
        np.testing.assert_allclose(_ours(name, pos, neg), expected, atol=1e-12, err_msg=name)


def test_hand_computed_values():
    # One negative above, one tied: rank is 2 or 3 with probability 1/2 each.
    pos, neg = np.array([0.5]), np.array([[0.9, 0.5, 0.1]])
    assert metrics.expected_rank(pos, neg)[0] == 2.5
    assert metrics.hit_rate_at_k(pos, neg, 1)[0] == 0.0
    assert metrics.hit_rate_at_k(pos, neg, 2)[0] == 0.5
    assert metrics.reciprocal_rank(pos, neg)[0] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert metrics.ndcg_at_k(pos, neg, 10)[0] == pytest.approx((1 / math.log2(3) + 1 / 2) / 2)

    # A constant model: rank uniform on 1..4.
    pos, neg = np.zeros(1), np.zeros((1, 3))
    assert metrics.hit_rate_at_k(pos, neg, 1)[0] == pytest.approx(1 / 4)
    assert metrics.reciprocal_rank(pos, neg)[0] == pytest.approx(25 / 48)

    # Rank 13 is past the NDCG@10 cut-off.
    pos, neg = np.zeros(1), np.ones((1, 12))
    assert metrics.ndcg_at_k(pos, neg, 10)[0] == 0.0
    assert metrics.reciprocal_rank(pos, neg)[0] == pytest.approx(1 / 13)


def test_ranking_metrics_averages_over_positives():
    pos = np.array([1.0, 0.0])
    neg = np.array([[0.0, 0.0], [1.0, 2.0]])  # ranks 1 and 3
    out = metrics.ranking_metrics(pos, neg)
    assert set(out) == {"HR@1", "NDCG@10", "MRR"}
    assert out["HR@1"] == pytest.approx(0.5)
    assert out["MRR"] == pytest.approx((1 + 1 / 3) / 2)
    assert out["NDCG@10"] == pytest.approx((1 + 1 / 2) / 2)


def test_constant_scores_give_the_random_baseline():
    k = 100
    out = metrics.ranking_metrics(np.zeros(3), np.zeros((3, k)))
    assert out["HR@1"] == pytest.approx(1 / (k + 1))
    assert out["MRR"] == pytest.approx(sum(1 / r for r in range(1, k + 2)) / (k + 1))


@pytest.mark.parametrize(
    "pos, neg, match",
    [
        (np.zeros((2, 1)), np.zeros((2, 3)), "positive_scores"),
        (np.zeros(2), np.zeros((3, 3)), "negative_scores"),
        (np.array([np.nan]), np.zeros((1, 3)), "NaN"),
        (np.zeros(0), np.zeros((0, 3)), "no positives"),
    ],
)
def test_bad_input_is_rejected(pos, neg, match):
    with pytest.raises(ValueError, match=match):
        metrics.ranking_metrics(pos, neg)


def test_factorized_top_k_hand_example():
    queries = np.array([[1.0, 0.0], [0.0, 1.0]])
    candidates = np.array([[3.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 5.0]])
    # Query 0 scores candidates 3, 2, 1, 0 -> its positive (2) is third.
    # Query 1 scores 0, 0, 0, 5 -> its positive (3) is first.
    acc = metrics.factorized_top_k_accuracy(queries, candidates, np.array([2, 3]), ks=(1, 2, 3))
    assert acc == {1: 0.5, 2: 0.5, 3: 1.0}


def test_factorized_top_k_matches_numpy_reference():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((50, 8)).astype(np.float32)
    c = rng.standard_normal((40, 8)).astype(np.float32)
    true = rng.integers(0, 40, size=50)
    scores = q @ c.T
    # Continuous random scores: no ties, rank = 1 + number of higher scores.
    rank = 1 + np.sum(scores > scores[np.arange(50), true][:, None], axis=1)
    acc = metrics.factorized_top_k_accuracy(q, c, true, ks=(1, 5, 10), batch_size=16)
    for k in (1, 5, 10):
        assert acc[k] == pytest.approx(np.mean(rank <= k), abs=1e-6)


def test_factorized_top_k_rejects_k_above_catalogue():
    with pytest.raises(ValueError, match="catalogue size"):
        metrics.factorized_top_k_accuracy(np.ones((1, 2)), np.ones((3, 2)), np.array([0]), ks=(10,))
