"""Ranking metrics for the downstream evaluation (paper section 3.2.2).

Sampled metrics (``uni100`` protocol): every test positive is ranked among
``K`` sampled negatives (K = 100 in the paper). Given the model's score of the
positive and of its negatives:

* ``greater`` = number of negatives scored strictly higher than the positive,
* ``ties``    = number of negatives scored exactly equal to the positive.

**Ties.** A model that gives many items the same score (TopPop on rarely seen
items, a constant model) must not be rewarded or punished by the order in
which ties happen to be broken. We therefore report the *expected* value of
each metric under uniformly random tie-breaking: the positive's rank is then
uniform on ``{greater + 1, ..., greater + ties + 1}`` and

    E[f(rank)] = mean of f(r) for r in that range.

With no ties this is the usual definition; :func:`expected_rank` is
``1 + greater + ties / 2`` ("ties count as half"). A constant model gets
exactly the random-ranking value (e.g. HR@1 = 1 / (K + 1)).

Per-positive metrics (rank r, 1 = best):

* HR@k    = 1 if r <= k else 0,
* NDCG@k  = 1 / log2(r + 1) if r <= k else 0 (one relevant item, so IDCG = 1),
* MRR     = 1 / r.

Averages are over test positives. All of this is plain NumPy.

Per-positive values can be recomputed exactly from the two rank counts
(:func:`metric_from_counts`), which is what a results file keeps. Two models
scored on the same positives and candidates are compared with
:func:`paired_bootstrap`: a bootstrap over test users of the difference of
their mean metric, with percentile confidence bounds.

Full-catalogue retrieval: :func:`factorized_top_k_accuracy` runs TFRS's
``FactorizedTopK`` metric over a ``BruteForce`` index of the whole catalogue
(no sampling, no filtering of the user's other positives).
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence, Tuple

import numpy as np

__all__ = [
    "rank_counts",
    "expected_rank",
    "hit_rate_at_k",
    "ndcg_at_k",
    "reciprocal_rank",
    "ranking_metrics",
    "metric_from_counts",
    "paired_bootstrap",
    "factorized_top_k_accuracy",
]


def _as_score_arrays(
    positive_scores, negative_scores
) -> Tuple[np.ndarray, np.ndarray]:
    pos = np.asarray(positive_scores, dtype=np.float64)
    neg = np.asarray(negative_scores, dtype=np.float64)
    if pos.ndim != 1:
        raise ValueError(
            f"positive_scores must have shape [N], got shape {pos.shape}"
        )
    if neg.ndim != 2 or neg.shape[0] != pos.shape[0]:
        raise ValueError(
            "negative_scores must have shape [N, K] with N = len(positive_scores) "
            f"= {pos.shape[0]}, got shape {neg.shape}"
        )
    if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(neg))):
        raise ValueError("scores contain NaN or infinite values")
    return pos, neg


def rank_counts(positive_scores, negative_scores) -> Tuple[np.ndarray, np.ndarray]:
    """Counts negatives above and tied with each positive.

    Args:
      positive_scores: float [N], score of each test positive.
      negative_scores: float [N, K], scores of its K sampled negatives.

    Returns:
      ``(greater, ties)``: int64 [N] each, the number of negatives with a
      strictly higher score and with exactly the same score as the positive.
    """
    pos, neg = _as_score_arrays(positive_scores, negative_scores)
    greater = np.sum(neg > pos[:, None], axis=1).astype(np.int64)
    ties = np.sum(neg == pos[:, None], axis=1).astype(np.int64)
    return greater, ties


def _expected_from_counts(
    greater: np.ndarray, ties: np.ndarray, num_negatives: int,
    f: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """E[f(rank)] per positive from its rank counts (rank uniform over the tied block)."""
    greater = np.asarray(greater, dtype=np.int64)
    ties = np.asarray(ties, dtype=np.int64)
    if greater.shape != ties.shape or greater.ndim != 1:
        raise ValueError(f"greater and ties must be [N] arrays, got {greater.shape}, {ties.shape}")
    if greater.size and (greater.min() < 0 or ties.min() < 0
                         or (greater + ties).max() > num_negatives):
        raise ValueError(f"rank counts out of range for {num_negatives} negatives")
    ranks = np.arange(1, num_negatives + 2, dtype=np.float64)  # 1 .. K+1
    # prefix[r] = f(1) + ... + f(r), prefix[0] = 0.
    prefix = np.concatenate([[0.0], np.cumsum(f(ranks))])
    return (prefix[greater + ties + 1] - prefix[greater]) / (ties + 1)


def _expected_over_ties(
    positive_scores, negative_scores, f: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """E[f(rank)] per positive, rank uniform over the tied block. float64 [N]."""
    greater, ties = rank_counts(positive_scores, negative_scores)
    return _expected_from_counts(greater, ties, np.asarray(negative_scores).shape[1], f)


#: Per-positive metric functions f(rank) by table row name (see ``metric_from_counts``).
def _metric_function(name: str) -> Callable[[np.ndarray], np.ndarray]:
    if name == "MRR":
        return lambda r: 1.0 / r
    if name.startswith("HR@") and name[3:].isdigit():
        k = int(name[3:])
        return lambda r: (r <= k).astype(np.float64)
    if name.startswith("NDCG@") and name[5:].isdigit():
        k = int(name[5:])
        return lambda r: np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0)
    raise ValueError(f"unknown per-positive metric {name!r}; use MRR, HR@k or NDCG@k")


def metric_from_counts(name: str, greater, ties, num_negatives: int) -> np.ndarray:
    """Per-positive ``name`` ("MRR", "HR@k", "NDCG@k") from :func:`rank_counts`. float64 [N].

    Exactly what :func:`reciprocal_rank`, :func:`hit_rate_at_k` and
    :func:`ndcg_at_k` give from the scores, so the rank counts (two small
    integers per positive) are all a results file needs to keep.
    """
    return _expected_from_counts(greater, ties, num_negatives, _metric_function(name))


def expected_rank(positive_scores, negative_scores) -> np.ndarray:
    """Expected 1-based rank of each positive, ties broken at random.

    Returns float64 [N]: ``1 + greater + ties / 2``.
    """
    greater, ties = rank_counts(positive_scores, negative_scores)
    return 1.0 + greater + 0.5 * ties


def hit_rate_at_k(positive_scores, negative_scores, k: int) -> np.ndarray:
    """Per-positive HR@k (expected under random tie-breaking). float64 [N]."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return _expected_over_ties(
        positive_scores, negative_scores, lambda r: (r <= k).astype(np.float64)
    )


def ndcg_at_k(positive_scores, negative_scores, k: int) -> np.ndarray:
    """Per-positive NDCG@k = 1/log2(rank+1) if rank <= k (expected). float64 [N]."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return _expected_over_ties(
        positive_scores,
        negative_scores,
        lambda r: np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0),
    )


def reciprocal_rank(positive_scores, negative_scores) -> np.ndarray:
    """Per-positive reciprocal rank 1/rank (expected). float64 [N]."""
    return _expected_over_ties(positive_scores, negative_scores, lambda r: 1.0 / r)


def ranking_metrics(
    positive_scores,
    negative_scores,
    hr_ks: Sequence[int] = (1,),
    ndcg_ks: Sequence[int] = (10,),
) -> Dict[str, float]:
    """Mean sampled ranking metrics over all positives.

    Args:
      positive_scores: float [N], score of each test positive.
      negative_scores: float [N, K], scores of its K sampled negatives.
      hr_ks: cut-offs for HR@k.
      ndcg_ks: cut-offs for NDCG@k.

    Returns:
      ``{"HR@1": ..., "NDCG@10": ..., "MRR": ...}`` (keys follow ``hr_ks`` and
      ``ndcg_ks``), each the mean over the N positives as a Python float.
    """
    pos, neg = _as_score_arrays(positive_scores, negative_scores)
    if pos.shape[0] == 0:
        raise ValueError("no positives to evaluate (N = 0)")
    out: Dict[str, float] = {}
    for k in hr_ks:
        out[f"HR@{k}"] = float(np.mean(hit_rate_at_k(pos, neg, k)))
    for k in ndcg_ks:
        out[f"NDCG@{k}"] = float(np.mean(ndcg_at_k(pos, neg, k)))
    out["MRR"] = float(np.mean(reciprocal_rank(pos, neg)))
    return out


def paired_bootstrap(
    model_values,
    baseline_values,
    groups,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    chunk: int = 250,
) -> Dict[str, float]:
    """Paired cluster bootstrap of ``mean(model) - mean(baseline)`` over groups (test users).

    Both models were scored on the same positives against the same candidates,
    so the comparison is paired: per positive n the difference
    ``d_n = model_values[n] - baseline_values[n]``. A user's positives are not
    independent, so the resampling unit is the *group* (the test user): each
    of ``resamples`` replicates draws G users with replacement
    (``np.random.default_rng(seed).integers(0, G, size=G)``, replicate after
    replicate) and takes the mean of ``d`` over all their positives,
    ``sum_g D_g / sum_g n_g``; the point estimate is the plain mean of ``d``
    (the difference of the table's two values).

    Percentile bounds: ``lower`` is the ``1 - confidence`` quantile of the
    replicates (a one-sided lower confidence bound: the difference exceeds it
    with probability ``confidence``), ``upper`` the ``confidence`` quantile.

    Args:
      model_values, baseline_values: float [N] per-positive metric values.
      groups: [N] the group (user) of each positive, any hashable values.
      confidence: in (0.5, 1).
      resamples: number of bootstrap replicates (>= 1).
      seed: the replicates are a deterministic function of the inputs and seed.
      chunk: replicates drawn per NumPy call (memory only; results do not depend on it).

    Returns:
      ``{"difference", "lower", "upper", "confidence", "resamples", "seed",
      "groups", "positives"}``.
    """
    a = np.asarray(model_values, dtype=np.float64)
    b = np.asarray(baseline_values, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(groups) != len(a):
        raise ValueError(f"need three [N] arrays of one length, got {a.shape}, {b.shape}, "
                         f"{np.shape(groups)}")
    if len(a) == 0:
        raise ValueError("no positives to compare (N = 0)")
    if not 0.5 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    _, group_of = np.unique(np.asarray(groups), return_inverse=True)
    num_groups = int(group_of.max()) + 1
    d = a - b
    sums = np.bincount(group_of, weights=d, minlength=num_groups)   # D_g
    sizes = np.bincount(group_of, minlength=num_groups).astype(np.float64)  # n_g
    rng = np.random.default_rng(seed)
    stats = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        picks = np.stack([rng.integers(0, num_groups, size=num_groups)
                          for _ in range(start, stop)])
        stats[start:stop] = sums[picks].sum(axis=1) / sizes[picks].sum(axis=1)
    return {
        "difference": float(d.mean()),
        "lower": float(np.quantile(stats, 1.0 - confidence)),
        "upper": float(np.quantile(stats, confidence)),
        "confidence": float(confidence),
        "resamples": int(resamples),
        "seed": int(seed),
        "groups": num_groups,
        "positives": int(len(d)),
    }


def factorized_top_k_accuracy(
    query_embeddings: np.ndarray,
    candidate_embeddings: np.ndarray,
    true_candidate_indices: np.ndarray,
    ks: Sequence[int] = (10,),
    batch_size: int = 1024,
) -> Dict[int, float]:
    """Top-k accuracy over the full catalogue with TFRS.

    Builds a ``tfrs.layers.factorized_top_k.BruteForce`` index over all
    candidates (identifier = row index) and feeds the queries through
    ``tfrs.metrics.FactorizedTopK`` with id-based matching: a query counts as
    a hit at k when its true candidate is among the k highest dot products.
    Exact score ties at the k-th place are broken by ``tf.math.top_k`` (lower
    row index first). The user's other positives are *not* filtered out.

    Args:
      query_embeddings: float [N, D], one query (user) vector per positive.
      candidate_embeddings: float [C, D], one vector per catalogue item.
      true_candidate_indices: int [N], row in ``candidate_embeddings`` of each
        query's positive.
      ks: cut-offs; each must be <= C.
      batch_size: queries per metric update.

    Returns:
      ``{k: accuracy}`` with accuracy in [0, 1].
    """
    # Imported here so that the NumPy metrics above stay importable and cheap.
    import tensorflow as tf
    import tensorflow_recommenders as tfrs

    queries = np.asarray(query_embeddings, dtype=np.float32)
    candidates = np.asarray(candidate_embeddings, dtype=np.float32)
    true_idx = np.asarray(true_candidate_indices, dtype=np.int64)
    if queries.ndim != 2 or candidates.ndim != 2 or queries.shape[1] != candidates.shape[1]:
        raise ValueError(
            "query_embeddings [N, D] and candidate_embeddings [C, D] must share D; got "
            f"{queries.shape} and {candidates.shape}"
        )
    if true_idx.shape != (queries.shape[0],):
        raise ValueError(
            f"true_candidate_indices must have shape [{queries.shape[0]}], got {true_idx.shape}"
        )
    num_candidates = candidates.shape[0]
    if len(ks) == 0 or min(ks) < 1 or max(ks) > num_candidates:
        raise ValueError(f"ks must be in [1, {num_candidates}] (catalogue size), got {list(ks)}")
    if true_idx.size and (true_idx.min() < 0 or true_idx.max() >= num_candidates):
        raise ValueError("true_candidate_indices out of range of the catalogue")

    index = tfrs.layers.factorized_top_k.BruteForce(k=max(ks))
    index.index(
        tf.constant(candidates), identifiers=tf.range(num_candidates, dtype=tf.int64)
    )
    metric = tfrs.metrics.FactorizedTopK(candidates=index, ks=tuple(ks))
    for start in range(0, queries.shape[0], batch_size):
        stop = start + batch_size
        metric.update_state(
            tf.constant(queries[start:stop]),
            tf.gather(candidates, true_idx[start:stop]),
            true_candidate_ids=tf.constant(true_idx[start:stop]),
        )
    return {int(k): float(v.numpy()) for k, v in zip(ks, metric.result())}
