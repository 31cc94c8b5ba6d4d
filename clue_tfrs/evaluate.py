"""Runs every downstream model on one task and builds the paper's Table 3.

``evaluate_task`` takes a task's interactions and catalogue (see
:mod:`clue_tfrs.tasks` for the protocol) and any number of named *feature
sets* ``{name: (user_features, item_features)}``, e.g. ``{"CLUE": ...,
"Untrained": ...}`` where ``user_features`` maps user id -> float vector
[dim_u] and ``item_features`` maps item id -> float vector [dim_i]. It trains
and scores, on the same test positives and the same ``uni100`` negatives:

* ``TopPop``: popularity in the train split;
* ``U-MLP (<name>)`` for every feature set (the untrained-encoder baseline is
  simply a feature set computed with a randomly initialised encoder);
* ``T-UBM (BST)``: the sequence model on the task's own histories (causal by
  default, trained in one pass per user window: ``EvalConfig.seq_causal``);
* ``Hybrid (BST + <name>)``: T-UBM plus that feature set's user vector (by
  default ``CLUE``, when given), as a zero-initialised residual on the T-UBM's
  user vector; it starts as exactly the trained T-UBM (its kept weights, the
  feature weight zero) and trains only the feature weight, a linear map, at
  the U-MLP's learning rate (``EvalConfig.hybrid_warm_start``; else it trains everything from the
  T-UBM's initialisation). It is reported only when it beats the T-UBM on the
  validation users, otherwise the column is the T-UBM (``info["hybrid"]``
  says which; see :func:`_select_hybrid`).

Users (items) without a feature vector are cold-start: they get a zero vector
and are counted in ``ResultsTable.info``. The table has models as columns and
metrics as rows: HR@1, NDCG@10, MRR (sampled, ties averaged, see
:mod:`clue_tfrs.metrics`) and top-10 accuracy over the full catalogue (TFRS
``FactorizedTopK`` with a ``BruteForce`` index).

Every trained model stops early on its validation users' loss (patience
``EvalConfig.patience``, at most ``epochs`` epochs, best epoch's weights kept;
:mod:`clue_tfrs.fitting`); ``info`` records the epochs each used and its
seconds. The table keeps every model's rank of every test positive and the
paired comparisons of every two models (bootstrap over test users,
``info["paired"]``; :mod:`clue_tfrs.reporting`).

The parts: :mod:`clue_tfrs.protocol` (splits, candidates, feature matrices,
metrics), :mod:`clue_tfrs.fitting` (training and scoring any downstream model)
and :mod:`clue_tfrs.reporting` (the table and its files). Whether a model is
good enough to push (the blessing) is the pipeline's decision:
``components.clue_evaluator.blessing``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Dict, List, Optional, TextIO, Tuple

import pandas as pd

import clue_tfrs  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)

from clue_tfrs import models as models_lib
from clue_tfrs.sequence_model import SequenceModel
from clue_tfrs.fitting import FitResult, ModelRun, fit_and_score
from clue_tfrs import protocol
from clue_tfrs.protocol import (T_UBM, TOPPOP, EvalConfig, FeatureMatrices, FeatureSets,
                                hybrid_column, umlp_column)
from clue_tfrs.reporting import PerExample, ResultsTable

__all__ = ["evaluate_task", "model_runs"]

log = logging.getLogger(__name__)


def model_runs(features: FeatureMatrices, num_items: int, cfg: EvalConfig, seed: int
               ) -> List[ModelRun]:
    """The trained columns, in table order: a U-MLP per feature set, then T-UBM and Hybrid
    (the same seed: the residual Hybrid starts as exactly that T-UBM)."""
    runs: List[ModelRun] = []
    for k, (name, (user_matrix, item_matrix)) in enumerate(features.matrices.items()):
        runs.append(ModelRun(
            column=umlp_column(name),
            build=lambda: models_lib.UMLP(width=cfg.umlp_width, num_items=num_items,
                                          item_bias=cfg.umlp_item_bias),
            init_seed=seed + 100 + k, user_matrix=user_matrix, item_matrix=item_matrix,
            learning_rate=cfg.umlp_learning_rate, negatives=cfg.umlp_train_negatives,
            batch_size=cfg.umlp_batch_size))
    if not cfg.run_sequence_models:
        return runs
    sequence_runs: List[Tuple[str, Optional[str]]] = [(T_UBM, None)]
    if _hybrid_set(features, cfg):
        sequence_runs.append((hybrid_column(cfg.hybrid_feature_set), cfg.hybrid_feature_set))
    for column, set_name in sequence_runs:
        user_matrix = features.matrices[set_name][0] if set_name else None

        def build(user_matrix=user_matrix):
            return SequenceModel(
                num_items=num_items,
                max_history=cfg.max_history,
                hidden_size=cfg.seq_hidden_size,
                num_layers=cfg.seq_num_layers,
                num_heads=cfg.seq_num_heads,
                dropout=cfg.seq_dropout,
                pooling=cfg.seq_pooling,
                user_feature_dim=None if user_matrix is None else user_matrix.shape[1],
                fusion=cfg.hybrid_fusion,
                causal=cfg.seq_causal,
            )

        runs.append(ModelRun(column=column, build=build, init_seed=seed + 200,
                             user_matrix=user_matrix, use_sequence=True))
    return runs


def _hybrid_set(features: FeatureMatrices, cfg: EvalConfig) -> Optional[str]:
    """The feature set of the Hybrid column, or None when there is none to run."""
    name = cfg.hybrid_feature_set
    return name if cfg.run_sequence_models and name in features.matrices else None


def _warm_starts(column: str, cfg: EvalConfig) -> bool:
    """Whether ``column`` is the residual Hybrid that starts from the trained T-UBM."""
    return (cfg.hybrid_warm_start and cfg.hybrid_fusion == "residual" and
            column == hybrid_column(cfg.hybrid_feature_set or ""))


def _select_hybrid(results: Dict[str, FitResult], hybrid_set: Optional[str], cfg: EvalConfig
                   ) -> Optional[Dict[str, object]]:
    """Model selection on the validation users: the trained Hybrid, or its T-UBM.

    The Hybrid with a zero feature weight *is* the T-UBM of the same seed, so
    both are candidates of the Hybrid column; the trained Hybrid is kept only
    when its best validation loss beats the T-UBM's by ``cfg.hybrid_min_gain``
    (same validation positives and negatives). A feature that carries nothing
    for the task thus cannot pull the Hybrid below its sequence part.
    """
    column = hybrid_column(hybrid_set) if hybrid_set else None
    if cfg.hybrid_fusion != "residual" or column not in results or T_UBM not in results:
        return None
    mine, base = results[column].best_val_loss, results[T_UBM].best_val_loss
    keep = mine is None or base is None or mine < base - cfg.hybrid_min_gain
    if not keep:
        log.info("%s: validation loss %.4f not below T-UBM's %.4f - %g: reporting the T-UBM",
                 column, mine, base, cfg.hybrid_min_gain)
    return {"column": column, "selected": column if keep else T_UBM,
            "val_loss": mine, "t_ubm_val_loss": base}


def evaluate_task(
    interactions: pd.DataFrame,
    catalogue: pd.DataFrame,
    feature_sets: FeatureSets,
    seed: int = 0,
    epochs: Optional[int] = None,
    num_negatives: int = 100,
    config: Optional[EvalConfig] = None,
    task_name: str = "task",
    progress: Optional[TextIO] = None,
) -> ResultsTable:
    """Trains and scores every downstream model on one task.

    Args:
      interactions: columns ``user_id``, ``item_id``, ``timestamp`` (and
        optionally ``item_text``).
      catalogue: column ``item_id`` (every interacted item must be in it).
      feature_sets: ``{name: (user_features, item_features)}``; each maps id
        -> float vector ([dim_u] resp. [dim_i], same dim within a dict).
      seed: seeds the user split, all negative sampling and weight init.
      epochs: the most epochs any model trains (early stopping on the
        validation loss usually stops it sooner); None: ``config.max_epochs``.
      num_negatives: K sampled negatives per test positive (paper: 100).
      config: the rest of the settings (:class:`EvalConfig`).
      task_name: recorded in ``info``.
      progress: stream for every model's fitting progress (a bar on a
        terminal, a line per epoch elsewhere; :mod:`clue_tfrs.fitting`); None: none.

    Returns:
      :class:`ResultsTable` with columns TopPop, ``U-MLP (<name>)`` per
      feature set, T-UBM (BST), ``Hybrid (BST + <hybrid set>)``; its
      ``per_example`` ranks and ``info["paired"]`` comparisons.
    """
    cfg = config or EvalConfig()
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if cfg.hybrid_fusion not in ("residual", "concat"):
        raise ValueError(f"hybrid_fusion must be 'residual' or 'concat', got {cfg.hybrid_fusion!r}")
    if cfg.hybrid_feature_set is not None and cfg.run_sequence_models and feature_sets and (
        cfg.hybrid_feature_set not in feature_sets
    ):
        log.info("no feature set %r: skipping the Hybrid model", cfg.hybrid_feature_set)
    start = time.perf_counter()
    task = protocol.prepare_task(interactions, catalogue, cfg, seed, num_negatives, task_name)
    ranked = {TOPPOP: protocol.score_toppop(task, cfg.top_k)}
    seconds: Dict[str, float] = {TOPPOP: time.perf_counter() - start}
    training: Dict[str, Dict[str, List[float]]] = {}
    epochs_used: Dict[str, int] = {}
    best_epoch: Dict[str, int] = {}

    features = protocol.feature_matrices(task, feature_sets)
    results: Dict[str, FitResult] = {}
    for run in model_runs(features, task.num_items, cfg, seed):
        start_weights = None
        if _warm_starts(run.column, cfg) and T_UBM in results:
            start_weights = results[T_UBM].weights
            run = dataclasses.replace(run, trainable=("user_feature_projection",),
                                      learning_rate=cfg.umlp_learning_rate)
        cap = epochs if epochs is not None else cfg.max_epochs
        result = fit_and_score(run, task, features.user_row, cap, cfg, seed, progress,
                               start_weights=start_weights)
        results[run.column] = result
        ranked[run.column], training[run.column] = result.ranked, result.history
        epochs_used[run.column], best_epoch[run.column] = result.epochs, result.best_epoch
        seconds[run.column] = result.seconds
        log.info("%s: %s (%d epochs, best %d, %.1f s)", run.column, result.ranked.metrics,
                 result.epochs, result.best_epoch, result.seconds)
    hybrid = _select_hybrid(results, _hybrid_set(features, cfg), cfg)
    if hybrid and hybrid["selected"] == T_UBM:
        ranked[hybrid["column"]] = ranked[T_UBM]

    values = {column: r.metrics for column, r in ranked.items()}
    split = task.split
    rows = list(next(iter(values.values())).keys())
    info = {
        "task": task_name,
        "seed": seed,
        "epochs": cfg.max_epochs if epochs is None else epochs,
        "epochs_used": epochs_used,
        "best_epoch": best_epoch,
        "seconds": seconds,
        "num_negatives": num_negatives,
        "num_items": task.num_items,
        "num_users": {"train": len(split.train), "val": len(split.val), "test": len(split.test)},
        "num_train_positives": len(task.train),
        "num_val_positives": len(task.val),
        "num_test_positives": len(task.test),
        "cold_start_users": features.cold_users,
        "cold_items": features.cold_items,
        "training": training,
        "hybrid": hybrid,
        "config": dataclasses.asdict(cfg),
        "protocol": protocol.protocol_description(cfg, num_negatives),
    }
    per_example = PerExample(
        users=protocol.test_user_index(task),
        greater={c: r.greater for c, r in ranked.items()},
        ties={c: r.ties for c, r in ranked.items()},
        num_negatives=num_negatives,
    )
    table = ResultsTable(columns=list(values), rows=rows, values=values, info=info,
                         per_example=per_example)
    info["paired"] = table.paired_comparisons(cfg.confidence, cfg.bootstrap_resamples,
                                              cfg.bootstrap_seed)
    info["seconds"]["total"] = time.perf_counter() - start
    return table
