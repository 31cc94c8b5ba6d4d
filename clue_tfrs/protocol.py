"""The downstream protocol of one task: splits, candidates, feature matrices, metrics.

``prepare_task`` validates a task (see :mod:`clue_tfrs.tasks`), splits its
users disjointly train/val/test, builds the positives (every interaction after
the user's first ``min_history``, with the up to ``max_history`` earlier ones as
its history) and samples the ``num_negatives`` evaluation negatives of every
test positive. ``feature_matrices`` turns named frozen feature sets into
matrices (users and items without a vector are cold-start: zero rows, counted),
and ``score_and_rank`` computes the table's metrics from any model's query and
candidate vectors: HR@1, NDCG@10, MRR over the sampled candidates (ties
averaged, :mod:`clue_tfrs.metrics`) and top-10 accuracy over the full catalogue.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

import clue_tfrs  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)

from clue_tfrs import metrics as metrics_lib
from clue_tfrs import models as models_lib
from clue_tfrs import tasks as tasks_lib

__all__ = [
    "TOPPOP",
    "T_UBM",
    "TOP_K_ROW",
    "METRIC_ROWS",
    "umlp_column",
    "hybrid_column",
    "EvalConfig",
    "PreparedTask",
    "FeatureMatrices",
    "prepare_task",
    "feature_matrices",
    "RankedTest",
    "rank_test_positives",
    "score_and_rank",
    "score_toppop",
    "protocol_description",
]

log = logging.getLogger(__name__)

TOPPOP = "TopPop"
T_UBM = "T-UBM (BST)"
TOP_K_ROW = "Top-10 accuracy (full catalogue)"
METRIC_ROWS = ("HR@1", "NDCG@10", "MRR", TOP_K_ROW)

FeatureDict = Mapping[object, np.ndarray]
FeatureSets = Mapping[str, Tuple[FeatureDict, FeatureDict]]


def umlp_column(feature_set: str) -> str:
    """Column name of the U-MLP trained on a feature set: ``U-MLP (<name>)``."""
    return f"U-MLP ({feature_set})"


def hybrid_column(feature_set: str) -> str:
    """Column name of the Hybrid model: ``Hybrid (BST + <name>)``."""
    return f"Hybrid (BST + {feature_set})"


@dataclasses.dataclass
class EvalConfig:
    """Everything ``evaluate_task`` trains and samples with.

    The sequence-model defaults follow the paper (L=4, H=128, A=4); tests use
    a tiny one.
    """

    fractions: Tuple[float, float, float] = (0.8, 0.1, 0.1)
    # Training (clue_tfrs.fitting, sampled softmax): a batch holds `batch_size` positives
    # (the U-MLP: `umlp_batch_size`; a causal sequence model: `seq_window_batch` windows,
    # below), each scored against its own item and `train_negatives` (`umlp_train_negatives`)
    # items drawn uniformly once per batch and shared by all of them; validation positives
    # get as many fixed negatives each.
    train_negatives: int = 128  # shared negatives per batch (sequence models)
    umlp_train_negatives: int = 32  # the U-MLP's
    batch_size: int = 64  # training positives per batch (a non-causal sequence model)
    # The U-MLP's positives per batch. On tests/test_evaluation_clue's task, 16 positives
    # against 32 negatives gave CLUE's MRR lead over the untrained encoder 0.042 / 0.030 /
    # 0.024 at seeds 0 / 1 / 2, the earlier pointwise BCE 0.042 / 0.028 / 0.033; 64 against
    # 128 gave 0.021 at seed 0 (fewer, larger steps per epoch).
    umlp_batch_size: int = 16
    learning_rate: float = 1e-3
    # Early stopping (clue_tfrs.fitting.fit): at most `max_epochs` epochs (or
    # evaluate_task's `epochs`), stop after `patience` epochs without a validation
    # loss below the best minus `min_delta`, keep the best epoch's weights.
    max_epochs: int = 20
    patience: int = 2
    min_delta: float = 1e-3
    # Paired comparisons (ResultsTable.compare): bootstrap over test users.
    confidence: float = 0.95  # one-sided bounds; the blessing needs lower bound > margin
    bootstrap_resamples: int = 2000
    bootstrap_seed: int = 0
    umlp_width: int = 64
    umlp_item_bias: bool = True  # learned per-item scalar (popularity), see models.UMLP
    umlp_learning_rate: float = 1e-2  # U-MLP is two linear maps: a larger step than the transformers'
    max_history: int = 20  # T
    min_history: int = 1
    seq_hidden_size: int = 128  # H
    seq_num_layers: int = 4  # L
    seq_num_heads: int = 4  # A
    seq_dropout: float = 0.1
    # "last" (SASRec): the query after a history is the transformer's output at its newest
    # item. With causal attention "mean" pooled every earlier output alike and lost the
    # recency the right-aligned positions gave the non-causal model (bench task: T-UBM MRR
    # 0.29 "mean" vs 0.32 "last").
    seq_pooling: str = "last"
    # Causal sequence models (sequence_model.SequenceModel, causal=True) train in one pass
    # per user window (clue_tfrs.windows): `seq_window_batch` windows per batch, each with
    # all its next-item positives, against the batch's `train_negatives` shared negatives.
    # The T-UBM's epoch is then ~10x cheaper than with a history per positive; False: the
    # earlier bidirectional model, trained one history per positive.
    seq_causal: bool = True
    seq_window_batch: int = 16
    run_sequence_models: bool = True
    hybrid_feature_set: Optional[str] = "CLUE"
    # Hybrid (sequence_model.SequenceModel): "residual" starts as the T-UBM of the same seed and
    # is kept only if it beats it on the validation loss (evaluate._select_hybrid);
    # "concat" is the earlier joint design.
    hybrid_fusion: str = "residual"
    # The residual Hybrid starts from the trained T-UBM's kept weights (feature weight zero)
    # and trains only the feature weight W_f (its sequence part is that T-UBM, frozen),
    # instead of training everything again from the T-UBM's initialisation.
    hybrid_warm_start: bool = True
    # The trained Hybrid is reported only if its validation loss is this far below the
    # T-UBM's (nats). A pure-noise feature, trained on the frozen T-UBM, was seen to gain
    # 0.003 by chance (tests/test_hybrid.py); CLUE's feature gained 0.26 on the bench task.
    hybrid_min_gain: float = 0.01
    top_k: int = 10


@dataclasses.dataclass
class PreparedTask:
    """One task split and sampled for evaluation (everything but the models).

    Attributes:
      interactions: the validated interactions.
      split: train / val / test user ids.
      item_index: item id <-> index (1..C; 0 is padding).
      positives: user id -> indices of every item the user interacted with.
      train, val, test: the positives (examples) of each user split.
      eval_negatives: int [len(test), num_negatives] sampled candidates.
    """

    interactions: pd.DataFrame
    split: tasks_lib.UserSplit
    item_index: tasks_lib.ItemIndex
    positives: Mapping[str, np.ndarray]
    train: tasks_lib.Examples
    val: tasks_lib.Examples
    test: tasks_lib.Examples
    eval_negatives: np.ndarray

    @property
    def num_items(self) -> int:
        return self.item_index.num_items


def prepare_task(interactions: pd.DataFrame, catalogue: pd.DataFrame, cfg: EvalConfig,
                 seed: int, num_negatives: int, task_name: str) -> PreparedTask:
    """Validates and splits a task, builds its positives and samples the test negatives.

    Raises:
      ValueError: a bad task, a catalogue smaller than ``top_k``, or no
        training / test positives.
    """
    interactions, catalogue = tasks_lib.validate_task(interactions, catalogue, source=task_name)
    split = tasks_lib.split_users(interactions["user_id"], seed, cfg.fractions)
    item_index = tasks_lib.ItemIndex(catalogue["item_id"])
    num_items = item_index.num_items
    if num_items < cfg.top_k:
        raise ValueError(f"{task_name}: catalogue has {num_items} items, fewer than top_k={cfg.top_k}")
    positives = tasks_lib.user_positive_items(interactions, item_index)

    def examples(users):
        return tasks_lib.build_examples(
            interactions, users, item_index, cfg.max_history, cfg.min_history
        )

    train_ex, val_ex, test_ex = examples(split.train), examples(split.val), examples(split.test)
    if len(train_ex) == 0 or len(test_ex) == 0:
        raise ValueError(
            f"{task_name}: no {'training' if len(train_ex) == 0 else 'test'} positives "
            f"(users with more than {cfg.min_history} interactions are needed; "
            f"split users train/val/test = {len(split.train)}/{len(split.val)}/{len(split.test)})"
        )
    eval_negatives = tasks_lib.sample_eval_negatives(
        test_ex.user_ids, positives, num_items, num_negatives, seed
    )
    return PreparedTask(interactions, split, item_index, positives, train_ex, val_ex, test_ex,
                        eval_negatives)


# --------------------------------------------------------------------------
# Frozen features
# --------------------------------------------------------------------------


def _feature_matrix(
    features: FeatureDict, keys: Sequence[str], what: str, set_name: str
) -> Tuple[np.ndarray, int]:
    """Stacks vectors for ``keys`` (str ids); missing keys get zeros.

    Returns (float32 [len(keys), dim], number of missing keys).
    """
    by_str = {str(k): v for k, v in features.items()}
    if not by_str:
        raise ValueError(f"feature set {set_name!r}: no {what} features given")
    first = np.asarray(next(iter(by_str.values())))
    if first.ndim != 1 or first.size == 0:
        raise ValueError(
            f"feature set {set_name!r}: {what} features must be 1-D vectors, got shape {first.shape}"
        )
    dim = first.shape[0]
    out = np.zeros((len(keys), dim), dtype=np.float32)
    missing = 0
    for row, key in enumerate(keys):
        vec = by_str.get(key)
        if vec is None:
            missing += 1
            continue
        vec = np.asarray(vec, dtype=np.float32)
        if vec.shape != (dim,):
            raise ValueError(
                f"feature set {set_name!r}: {what} {key!r} has shape {vec.shape}, expected ({dim},)"
            )
        out[row] = vec
    if not np.all(np.isfinite(out)):
        raise ValueError(f"feature set {set_name!r}: {what} features contain NaN or inf")
    return out, missing


@dataclasses.dataclass
class FeatureMatrices:
    """Frozen feature sets as matrices.

    Attributes:
      user_row: user id -> row of every user matrix (users in sorted order).
      matrices: set name -> (user float32 [U, dim_u], item float32 [C + 1, dim_i];
        item row 0 is the padding index, never scored).
      cold_users: set name -> {"train"|"val"|"test": users without a vector}.
      cold_items: set name -> items without a vector.
    """

    user_row: Dict[str, int]
    matrices: Dict[str, Tuple[np.ndarray, np.ndarray]]
    cold_users: Dict[str, Dict[str, int]]
    cold_items: Dict[str, int]


def feature_matrices(task: PreparedTask, feature_sets: FeatureSets) -> FeatureMatrices:
    """Stacks every feature set over the task's users and items (missing -> zeros, counted)."""
    all_users = sorted(task.interactions["user_id"].unique())
    user_row = {u: r for r, u in enumerate(all_users)}
    out = FeatureMatrices(user_row, {}, {}, {})
    split = task.split
    for name, (user_feats, item_feats) in feature_sets.items():
        user_matrix, _ = _feature_matrix(user_feats, all_users, "user", name)
        item_matrix, n_cold_items = _feature_matrix(
            item_feats, list(task.item_index.item_ids), "item", name
        )
        item_matrix = np.concatenate(  # row 0 = padding index, never scored
            [np.zeros_like(item_matrix[:1]), item_matrix], axis=0
        )
        have = {str(k) for k in user_feats}
        out.cold_users[name] = {
            part: int(sum(u not in have for u in users))
            for part, users in (("train", split.train), ("val", split.val), ("test", split.test))
        }
        out.cold_items[name] = n_cold_items
        out.matrices[name] = (user_matrix, item_matrix)
        if out.cold_users[name]["test"] or n_cold_items:
            log.warning(
                "feature set %r: %d test users and %d items without features (zero vectors)",
                name, out.cold_users[name]["test"], n_cold_items,
            )
    return out


# --------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------


@dataclasses.dataclass
class RankedTest:
    """One model on the test positives.

    Attributes:
      metrics: the table's rows (HR@1, NDCG@10, MRR, top-k accuracy).
      greater / ties: int64 [N] per test positive, its sampled negatives
        scored above / equal to it (:func:`clue_tfrs.metrics.rank_counts`).
    """

    metrics: Dict[str, float]
    greater: np.ndarray
    ties: np.ndarray


def rank_test_positives(
    queries: np.ndarray,
    candidates: np.ndarray,
    test_ex: tasks_lib.Examples,
    eval_negatives: np.ndarray,
    top_k: int,
    chunk: int = 512,
) -> RankedTest:
    """Metrics and per-positive rank counts from queries [N, D] and candidates [C + 1, D].

    Every positive is scored with its own ``eval_negatives`` row in one
    product per chunk of positives (all 1 + K candidates at once).
    """
    pos = np.einsum("nd,nd->n", queries, candidates[test_ex.targets])
    neg = np.empty(eval_negatives.shape, dtype=np.float32)
    for s in range(0, len(queries), chunk):
        q = queries[s : s + chunk]
        neg[s : s + chunk] = np.einsum("nd,nkd->nk", q, candidates[eval_negatives[s : s + chunk]])
    out = metrics_lib.ranking_metrics(pos, neg, hr_ks=(1,), ndcg_ks=(10,))
    topk = metrics_lib.factorized_top_k_accuracy(
        queries, candidates[1:], test_ex.targets.astype(np.int64) - 1, ks=(top_k,)
    )
    out[TOP_K_ROW if top_k == 10 else f"Top-{top_k} accuracy (full catalogue)"] = topk[top_k]
    greater, ties = metrics_lib.rank_counts(pos, neg)
    return RankedTest(out, greater, ties)


def score_and_rank(
    queries: np.ndarray,
    candidates: np.ndarray,
    test_ex: tasks_lib.Examples,
    eval_negatives: np.ndarray,
    top_k: int,
    chunk: int = 512,
) -> Dict[str, float]:
    """The metrics of :func:`rank_test_positives` only."""
    return rank_test_positives(queries, candidates, test_ex, eval_negatives, top_k, chunk).metrics


def score_toppop(task: PreparedTask, top_k: int) -> RankedTest:
    """TopPop on the test positives: popularity counted over all interactions of the train users."""
    interactions = task.interactions
    train_items = task.item_index.lookup(
        interactions.loc[interactions["user_id"].isin(set(task.split.train)), "item_id"]
    )
    toppop = models_lib.TopPop(task.num_items).fit(train_items)
    all_items = np.arange(task.num_items + 1)
    return rank_test_positives(
        toppop.query_embeddings(len(task.test)), toppop.candidate_embeddings(all_items),
        task.test, task.eval_negatives, top_k,
    )


def test_user_index(task: PreparedTask) -> np.ndarray:
    """int64 [N] the test user of every test positive, as an index into the sorted test users."""
    return np.searchsorted(np.asarray(task.split.test, dtype=object).astype(str),
                           task.test.user_ids.astype(str)).astype(np.int64)


def protocol_description(cfg: EvalConfig, num_negatives: int) -> str:
    """The protocol in words, for ``ResultsTable.info["protocol"]``."""
    return (
        "users split disjointly train/val/test; every interaction after the user's "
        f"first {cfg.min_history} is a positive whose history is the up to "
        f"{cfg.max_history} earlier ones; each test positive is ranked among "
        f"{num_negatives} catalogue items sampled uniformly without replacement from "
        "outside the user's positives; metrics are expectations under random tie-breaking"
    )
