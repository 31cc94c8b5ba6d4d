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
* ``T-UBM (BST)``: the sequence model on the task's own histories;
* ``Hybrid (BST + <name>)``: T-UBM plus that feature set's user vector (by
  default ``CLUE``, when given).

Users (items) without a feature vector are cold-start: they get a zero vector
and are counted in ``ResultsTable.info``. The table has models as columns and
metrics as rows: HR@1, NDCG@10, MRR (sampled, ties averaged, see
:mod:`clue_tfrs.metrics`) and top-10 accuracy over the full catalogue (TFRS
``FactorizedTopK`` with a ``BruteForce`` index).

The validation users give a per-epoch validation loss (reported, not used to
pick epochs).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

import clue_tfrs  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from clue_tfrs import metrics as metrics_lib
from clue_tfrs import models as models_lib
from clue_tfrs import tasks as tasks_lib

__all__ = [
    "TOPPOP",
    "T_UBM",
    "METRIC_ROWS",
    "umlp_column",
    "hybrid_column",
    "EvalConfig",
    "ResultsTable",
    "evaluate_task",
    "write_results",
    "blessing_decision",
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
    train_negatives: int = 4  # sampled negatives per training positive (sequence models)
    umlp_train_negatives: int = 16  # U-MLP is cheap per pair: more negatives, better ranking
    batch_size: int = 256
    learning_rate: float = 1e-3
    umlp_width: int = 64
    umlp_item_bias: bool = True  # learned per-item scalar (popularity), see models.UMLP
    umlp_learning_rate: float = 1e-2  # U-MLP is two linear maps: a larger step than the transformers'
    max_history: int = 20  # T
    min_history: int = 1
    seq_hidden_size: int = 128  # H
    seq_num_layers: int = 4  # L
    seq_num_heads: int = 4  # A
    seq_dropout: float = 0.1
    seq_pooling: str = "mean"
    run_sequence_models: bool = True
    hybrid_feature_set: Optional[str] = "CLUE"
    top_k: int = 10


@dataclasses.dataclass
class ResultsTable:
    """Models as columns, metrics as rows (paper Table 3).

    Attributes:
      columns: model names, in display order.
      rows: metric names.
      values: ``values[column][row]`` -> float.
      info: provenance: split sizes, cold-start counts, training losses,
        config, seed.
    """

    columns: List[str]
    rows: List[str]
    values: Dict[str, Dict[str, float]]
    info: Dict[str, object] = dataclasses.field(default_factory=dict)

    def value(self, column: str, row: str) -> float:
        if column not in self.values:
            raise KeyError(f"no column {column!r} in the results; columns: {self.columns}")
        if row not in self.values[column]:
            raise KeyError(f"no metric {row!r} in the results; rows: {self.rows}")
        return self.values[column][row]

    def to_dict(self) -> Dict[str, object]:
        return {
            "columns": list(self.columns),
            "rows": list(self.rows),
            "values": {c: dict(v) for c, v in self.values.items()},
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> "ResultsTable":
        return cls(
            columns=list(d["columns"]),
            rows=list(d["rows"]),
            values={c: {r: float(x) for r, x in v.items()} for c, v in d["values"].items()},
            info=dict(d.get("info", {})),
        )

    def to_markdown(self) -> str:
        """GitHub Markdown table; the best value of each row in bold."""
        lines = [
            "| Metric | " + " | ".join(self.columns) + " |",
            "|---|" + "---:|" * len(self.columns),
        ]
        for row in self.rows:
            vals = [self.values[c][row] for c in self.columns]
            best = max(vals) if vals else None
            cells = [f"**{v:.4f}**" if v == best else f"{v:.4f}" for v in vals]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        info = self.info
        if info:
            notes = []
            if "num_test_positives" in info:
                notes.append(
                    f"{info['num_test_positives']} test positives from "
                    f"{info.get('num_users', {}).get('test', '?')} test users, each ranked "
                    f"among {info.get('num_negatives', '?')} sampled negatives (ties averaged)."
                )
            for name, counts in info.get("cold_start_users", {}).items():
                notes.append(
                    f"Feature set {name!r}: cold-start users (zero vector) "
                    + ", ".join(f"{k} {v}" for k, v in counts.items())
                    + f"; cold items {info.get('cold_items', {}).get(name, 0)}."
                )
            if notes:
                lines.append("")
                lines.extend(notes)
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Feature plumbing
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


class _Inputs:
    """Builds model feature dicts from example / item indices (inside tf.data).

    Holds, for one split's examples, the per-example user feature row and
    history, and the per-item feature matrix; ``query(ex)`` and
    ``candidate(items)`` gather from them with ``tf.gather``.
    """

    def __init__(
        self,
        examples: tasks_lib.Examples,
        user_matrix: Optional[np.ndarray] = None,
        user_row: Optional[Mapping[str, int]] = None,
        item_matrix: Optional[np.ndarray] = None,
        use_sequence: bool = False,
    ) -> None:
        self.use_sequence = use_sequence
        self.user_features = None
        if user_matrix is not None:
            rows = np.array([user_row[u] for u in examples.user_ids], dtype=np.int64)
            self.user_features = tf.constant(user_matrix[rows])  # [N, dim_u]
        self.item_features = None if item_matrix is None else tf.constant(item_matrix)
        self.histories = tf.constant(examples.histories) if use_sequence else None

    def query(self, ex: tf.Tensor) -> Dict[str, tf.Tensor]:
        out = {}
        if self.user_features is not None:
            out["user_features"] = tf.gather(self.user_features, ex)
        if self.use_sequence:
            out["history"] = tf.gather(self.histories, ex)
        return out

    def candidate(self, items: tf.Tensor) -> Dict[str, tf.Tensor]:
        out = {"item": tf.cast(items, tf.int32)}
        if self.item_features is not None:
            out["item_features"] = tf.gather(self.item_features, items)
        return out


def _pair_dataset(
    inputs: _Inputs,
    examples: tasks_lib.Examples,
    positives: Mapping[str, np.ndarray],
    num_items: int,
    num_negatives: int,
    batch_size: int,
    rng: np.random.Generator,
    shuffle: bool,
) -> tf.data.Dataset:
    """(features, labels [B, 1 + K]): each example with its positive and K negatives.

    The candidates of one example share a row, so the (possibly expensive)
    query tower runs once per example; the BCE is over every (user, item) pair.
    ``batch_size`` counts pairs, as before: rows per batch = batch_size / (1 + K).
    """
    n = len(examples)
    negs = tasks_lib.sample_training_negatives(
        examples.user_ids, positives, num_items, num_negatives, rng
    )
    ex = np.arange(n, dtype=np.int64)
    items = np.concatenate([examples.targets[:, None], negs], axis=1).astype(np.int64)
    labels = np.tile(np.r_[1.0, np.zeros(num_negatives)], (n, 1)).astype(np.float32)
    if shuffle:
        order = rng.permutation(n)
        ex, items = ex[order], items[order]

    def to_features(e, i, y):
        return {**inputs.query(e), **inputs.candidate(i)}, y

    rows = max(1, batch_size // (1 + num_negatives))
    return (
        tf.data.Dataset.from_tensor_slices((ex, items, labels))
        .batch(rows)
        .map(to_features)
        .prefetch(tf.data.AUTOTUNE)
    )


def _train(
    model: models_lib.DownstreamModel,
    train_inputs: _Inputs,
    train_ex: tasks_lib.Examples,
    val_inputs: Optional[_Inputs],
    val_ex: Optional[tasks_lib.Examples],
    positives: Mapping[str, np.ndarray],
    num_items: int,
    epochs: int,
    cfg: EvalConfig,
    seed: int,
    learning_rate: Optional[float] = None,
    negatives: Optional[int] = None,
) -> Dict[str, List[float]]:
    """Fits ``model`` for ``epochs`` with fresh negatives each epoch.

    Returns {"loss": per-epoch mean train BCE, "auc": train AUC,
    "val_loss": per-epoch validation BCE (if val users exist)}.
    """
    rng = np.random.default_rng(seed)
    val_rng_seed = seed + 1
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate or cfg.learning_rate))
    history: Dict[str, List[float]] = {"loss": [], "auc": [], "val_loss": []}
    for _ in range(epochs):
        ds = _pair_dataset(
            train_inputs, train_ex, positives, num_items, negatives or cfg.train_negatives,
            cfg.batch_size, rng, shuffle=True,
        )
        logs = model.fit(ds, epochs=1, verbose=0).history
        history["loss"].append(float(logs["bce"][-1]))
        history["auc"].append(float(logs["auc"][-1]))
        if val_inputs is not None and val_ex is not None and len(val_ex):
            val_ds = _pair_dataset(
                val_inputs, val_ex, positives, num_items, negatives or cfg.train_negatives,
                cfg.batch_size, np.random.default_rng(val_rng_seed), shuffle=False,
            )
            history["val_loss"].append(float(model.evaluate(val_ds, verbose=0, return_dict=True)["bce"]))
    return history


def _embed(fn: Callable[[tf.Tensor], Dict[str, tf.Tensor]], tower, n: int, batch: int = 1024) -> np.ndarray:
    """Runs ``tower(fn(indices))`` over indices 0..n-1 in batches -> float32 [n, D]."""
    outs = []
    for start in range(0, n, batch):
        idx = tf.range(start, min(n, start + batch), dtype=tf.int64)
        outs.append(tower(fn(idx), training=False).numpy())
    return np.concatenate(outs, axis=0).astype(np.float32)


def _score_and_rank(
    queries: np.ndarray,
    candidates: np.ndarray,
    test_ex: tasks_lib.Examples,
    eval_negatives: np.ndarray,
    top_k: int,
    chunk: int = 512,
) -> Dict[str, float]:
    """Metrics from query vectors [N, D] and candidate vectors [C + 1, D]."""
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
    return out


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def evaluate_task(
    interactions: pd.DataFrame,
    catalogue: pd.DataFrame,
    feature_sets: FeatureSets,
    seed: int = 0,
    epochs: int = 3,
    num_negatives: int = 100,
    config: Optional[EvalConfig] = None,
    task_name: str = "task",
) -> ResultsTable:
    """Trains and scores every downstream model on one task.

    Args:
      interactions: columns ``user_id``, ``item_id``, ``timestamp`` (and
        optionally ``item_text``).
      catalogue: column ``item_id`` (every interacted item must be in it).
      feature_sets: ``{name: (user_features, item_features)}``; each maps id
        -> float vector ([dim_u] resp. [dim_i], same dim within a dict).
      seed: seeds the user split, all negative sampling and weight init.
      epochs: training epochs of every trained model.
      num_negatives: K sampled negatives per test positive (paper: 100).
      config: the rest of the settings (:class:`EvalConfig`).
      task_name: recorded in ``info``.

    Returns:
      :class:`ResultsTable` with columns TopPop, ``U-MLP (<name>)`` per
      feature set, T-UBM (BST), ``Hybrid (BST + <hybrid set>)``.
    """
    cfg = config or EvalConfig()
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if cfg.hybrid_feature_set is not None and cfg.run_sequence_models and feature_sets and (
        cfg.hybrid_feature_set not in feature_sets
    ):
        log.info("no feature set %r: skipping the Hybrid model", cfg.hybrid_feature_set)
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

    values: Dict[str, Dict[str, float]] = {}
    training: Dict[str, Dict[str, List[float]]] = {}
    cold_users: Dict[str, Dict[str, int]] = {}
    cold_items: Dict[str, int] = {}

    # TopPop: counts over all interactions of the train users.
    train_items = item_index.lookup(
        interactions.loc[interactions["user_id"].isin(set(split.train)), "item_id"]
    )
    toppop = models_lib.TopPop(num_items).fit(train_items)
    all_items = np.arange(num_items + 1)
    values[TOPPOP] = _score_and_rank(
        toppop.query_embeddings(len(test_ex)), toppop.candidate_embeddings(all_items),
        test_ex, eval_negatives, cfg.top_k,
    )

    # Frozen features -> matrices (rows: users in sorted order, items 0..C).
    all_users = sorted(interactions["user_id"].unique())
    user_row = {u: r for r, u in enumerate(all_users)}
    matrices: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    for name, (user_feats, item_feats) in feature_sets.items():
        user_matrix, _ = _feature_matrix(user_feats, all_users, "user", name)
        item_matrix, n_cold_items = _feature_matrix(
            item_feats, list(item_index.item_ids), "item", name
        )
        item_matrix = np.concatenate(  # row 0 = padding index, never scored
            [np.zeros_like(item_matrix[:1]), item_matrix], axis=0
        )
        have = {str(k) for k in user_feats}
        cold_users[name] = {
            part: int(sum(u not in have for u in users))
            for part, users in (("train", split.train), ("val", split.val), ("test", split.test))
        }
        cold_items[name] = n_cold_items
        matrices[name] = (user_matrix, item_matrix)
        if cold_users[name]["test"] or n_cold_items:
            log.warning(
                "feature set %r: %d test users and %d items without features (zero vectors)",
                name, cold_users[name]["test"], n_cold_items,
            )

    for k, (name, (user_matrix, item_matrix)) in enumerate(matrices.items()):
        column = umlp_column(name)
        tf.keras.utils.set_random_seed(seed + 100 + k)
        model = models_lib.UMLP(width=cfg.umlp_width, num_items=num_items,
                                item_bias=cfg.umlp_item_bias)
        mk = lambda ex: _Inputs(ex, user_matrix, user_row, item_matrix)  # noqa: E731
        train_in, val_in, test_in = mk(train_ex), mk(val_ex), mk(test_ex)
        training[column] = _train(
            model, train_in, train_ex, val_in, val_ex, positives, num_items, epochs, cfg, seed,
            learning_rate=cfg.umlp_learning_rate, negatives=cfg.umlp_train_negatives,
        )
        queries = _embed(test_in.query, model.query_tower, len(test_ex))
        candidates = _embed(test_in.candidate, model.candidate_tower, num_items + 1)
        values[column] = _score_and_rank(queries, candidates, test_ex, eval_negatives, cfg.top_k)
        log.info("%s: %s", column, values[column])

    if cfg.run_sequence_models:
        runs: List[Tuple[str, Optional[str]]] = [(T_UBM, None)]
        if cfg.hybrid_feature_set is not None and cfg.hybrid_feature_set in matrices:
            runs.append((hybrid_column(cfg.hybrid_feature_set), cfg.hybrid_feature_set))
        for column, set_name in runs:
            tf.keras.utils.set_random_seed(seed + 200)
            user_matrix = matrices[set_name][0] if set_name else None
            model = models_lib.SequenceModel(
                num_items=num_items,
                max_history=cfg.max_history,
                hidden_size=cfg.seq_hidden_size,
                num_layers=cfg.seq_num_layers,
                num_heads=cfg.seq_num_heads,
                dropout=cfg.seq_dropout,
                pooling=cfg.seq_pooling,
                user_feature_dim=None if user_matrix is None else user_matrix.shape[1],
            )
            mk = lambda ex: _Inputs(  # noqa: E731
                ex, user_matrix, user_row if set_name else None, None, use_sequence=True
            )
            train_in, val_in, test_in = mk(train_ex), mk(val_ex), mk(test_ex)
            training[column] = _train(
                model, train_in, train_ex, val_in, val_ex, positives, num_items, epochs, cfg, seed
            )
            queries = _embed(test_in.query, model.query_tower, len(test_ex))
            candidates = _embed(test_in.candidate, model.candidate_tower, num_items + 1)
            values[column] = _score_and_rank(queries, candidates, test_ex, eval_negatives, cfg.top_k)
            log.info("%s: %s", column, values[column])

    rows = list(next(iter(values.values())).keys())
    info = {
        "task": task_name,
        "seed": seed,
        "epochs": epochs,
        "num_negatives": num_negatives,
        "num_items": num_items,
        "num_users": {"train": len(split.train), "val": len(split.val), "test": len(split.test)},
        "num_train_positives": len(train_ex),
        "num_val_positives": len(val_ex),
        "num_test_positives": len(test_ex),
        "cold_start_users": cold_users,
        "cold_items": cold_items,
        "training": training,
        "config": dataclasses.asdict(cfg),
        "protocol": (
            "users split disjointly train/val/test; every interaction after the user's "
            f"first {cfg.min_history} is a positive whose history is the up to "
            f"{cfg.max_history} earlier ones; each test positive is ranked among "
            f"{num_negatives} catalogue items sampled uniformly without replacement from "
            "outside the user's positives; metrics are expectations under random tie-breaking"
        ),
    }
    return ResultsTable(columns=list(values), rows=rows, values=values, info=info)


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def _atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Calls ``write(tmp_path)`` then renames tmp_path to ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_text(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    _atomic_write(path, write)


def _plot(table: ResultsTable, path: str) -> None:
    """Grouped bar chart: one group per metric, one bar per model (Agg, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 1.6 * len(table.rows) * max(1, len(table.columns)) / 3), 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    n = max(1, len(table.columns))
    width = 0.8 / n
    x = np.arange(len(table.rows))
    for j, column in enumerate(table.columns):
        heights = [table.values[column][r] for r in table.rows]
        ax.bar(x + (j - (n - 1) / 2) * width, heights, width, label=column)
    ax.set_xticks(x)
    ax.set_xticklabels(table.rows, fontsize=8)
    ax.set_ylabel("score")
    ax.set_ylim(0, 1)
    ax.set_title(f"Downstream evaluation: {table.info.get('task', '')}")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def write_results(table: ResultsTable, out_dir: str) -> Dict[str, str]:
    """Writes results.json, results.md and results.png atomically.

    Returns {"json": path, "md": path, "png": path}.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "json": os.path.join(out_dir, "results.json"),
        "md": os.path.join(out_dir, "results.md"),
        "png": os.path.join(out_dir, "results.png"),
    }
    _write_text(paths["json"], json.dumps(table.to_dict(), indent=2, sort_keys=False) + "\n")
    _write_text(paths["md"], table.to_markdown())
    _plot(table, paths["png"])
    return paths


def blessing_decision(
    table: ResultsTable,
    feature_name: str = "U-MLP (CLUE)",
    margin_over_toppop: Optional[float] = 0.0,
    margin_over_untrained: Optional[float] = 0.0,
    untrained_name: str = "U-MLP (Untrained)",
    metric: str = "MRR",
) -> Tuple[bool, str]:
    """Blesses the model when its U-MLP beats the baselines on ``metric``.

    Blessed iff MRR(feature) > MRR(TopPop) + margin_over_toppop and
    MRR(feature) > MRR(untrained) + margin_over_untrained. A margin of None
    skips that comparison; a compared column missing from the table raises
    KeyError (a gate must not pass silently).

    Returns:
      (blessed, human-readable reason with the numbers).
    """
    score = table.value(feature_name, metric)
    checks = []
    for baseline, margin in ((TOPPOP, margin_over_toppop), (untrained_name, margin_over_untrained)):
        if margin is None:
            continue
        base = table.value(baseline, metric)
        ok = bool(score > base + margin) and math.isfinite(score)
        checks.append(
            (ok, f"{feature_name} {metric} {score:.4f} {'>' if ok else '<='} "
                 f"{baseline} {base:.4f} + margin {margin:.4f}")
        )
    if not checks:
        return True, f"no baseline comparison requested; {feature_name} {metric} = {score:.4f}"
    blessed = all(ok for ok, _ in checks)
    return blessed, ("blessed: " if blessed else "not blessed: ") + "; ".join(m for _, m in checks)
