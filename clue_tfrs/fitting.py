"""Fits any downstream model on a prepared task and scores it: one helper for every column.

A :class:`ModelRun` says what to train (a model factory, its initialisation
seed, the frozen feature matrices it reads, whether it reads the histories,
its learning rate and training negatives); :func:`fit_and_score` builds the
model under that seed, trains it with early stopping (:func:`fit`), embeds the
test queries and the whole catalogue with its two towers and ranks them with
:func:`clue_tfrs.protocol.rank_test_positives`.

Training (:func:`fit`): every epoch draws fresh negatives for every training
positive (binary cross-entropy over (user, item) pairs, the candidates of one
positive in one row so the query tower runs once per positive). After every
epoch the validation loss (the same BCE) is computed on the validation users
with negatives drawn once (the same every epoch), from the towers' outputs
(:func:`validation_loss`). Training stops when it has not improved by
more than ``EvalConfig.min_delta`` for ``EvalConfig.patience`` epochs, or
after the epoch cap, and the weights of the best epoch are restored.

Speed: a batch holds ``EvalConfig.batch_size`` (user, item) pairs, i.e.
``batch_size // (1 + n)`` positives with their n negatives. For the sequence
models, positives are grouped into batches of similar history length
(:func:`batch_order`) and every batch is cut to its longest history
(histories are right-aligned and padding is masked, so a positive's score
does not change, only the work). The training step is traced once per model
(shapes ``[None, None]``); validation and test positives and the catalogue
are embedded eagerly in a few large batches (no second traced function), and
every test positive is scored against its 1 + 100 candidates in one product
(:func:`clue_tfrs.protocol.rank_test_positives`).

Progress (``progress=`` a stream, off by default): one
`clue_keras.progress_bar.ProgressBar` per model, epochs as units, the epoch's
train and validation loss as its postfix: a bar on a terminal, else a line per
epoch (``U-MLP (CLUE): epoch 2/10  loss 0.4123  val_loss 0.4310 (best)``), a
line when early stopping ends the fit and a last line with the kept epoch.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Dict, List, Mapping, Optional, TextIO

import numpy as np

import clue_tfrs  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from clue_keras.progress_bar import ProgressBar
from clue_tfrs import models as models_lib
from clue_tfrs import tasks as tasks_lib
from clue_tfrs.protocol import EvalConfig, PreparedTask, RankedTest, rank_test_positives

__all__ = ["ModelRun", "ModelInputs", "FitResult", "fit_and_score", "fit", "batch_order",
           "validation_loss", "epoch_postfix"]


class ModelInputs:
    """Builds model feature dicts from example / item indices (inside tf.data).

    Holds, for one split's examples, the per-example user feature row and
    history, and the per-item feature matrix; ``query(ex)`` and
    ``candidate(items)`` gather from them with ``tf.gather``. Gathered
    histories are cut to the longest one in the batch (leading all-padding
    columns dropped).
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
        self.lengths = history_lengths(examples.histories)

    def query(self, ex: tf.Tensor) -> Dict[str, tf.Tensor]:
        out = {}
        if self.user_features is not None:
            out["user_features"] = tf.gather(self.user_features, ex)
        if self.use_sequence:
            history = tf.gather(self.histories, ex)  # [B, T], right-aligned
            longest = tf.reduce_max(tf.reduce_sum(tf.cast(history > 0, tf.int32), axis=1))
            width = tf.shape(history)[1]
            out["history"] = history[:, width - tf.maximum(longest, 1):]
        return out

    def candidate(self, items: tf.Tensor) -> Dict[str, tf.Tensor]:
        out = {"item": tf.cast(items, tf.int32)}
        if self.item_features is not None:
            out["item_features"] = tf.gather(self.item_features, items)
        return out


def history_lengths(histories: np.ndarray) -> np.ndarray:
    """int [N] number of real (non-zero) items of each right-aligned history."""
    return np.count_nonzero(histories, axis=1) if histories.size else np.zeros(len(histories), int)


@dataclasses.dataclass
class ModelRun:
    """One trained column of the results table.

    Attributes:
      column: the table column (e.g. ``U-MLP (CLUE)``).
      build: makes the untrained model (called right after seeding).
      init_seed: ``tf.keras.utils.set_random_seed`` before ``build``.
      user_matrix: float32 [U, dim_u] frozen user features (rows by
        ``user_row``), or None.
      item_matrix: float32 [C + 1, dim_i] frozen item features, or None.
      use_sequence: the model reads the example histories.
      learning_rate: Adam step (None: ``EvalConfig.learning_rate``).
      negatives: sampled training negatives per positive (None:
        ``EvalConfig.train_negatives``).
    """

    column: str
    build: Callable[[], models_lib.DownstreamModel]
    init_seed: int
    user_matrix: Optional[np.ndarray] = None
    item_matrix: Optional[np.ndarray] = None
    use_sequence: bool = False
    learning_rate: Optional[float] = None
    negatives: Optional[int] = None


@dataclasses.dataclass
class FitResult:
    """What :func:`fit_and_score` returns for one column.

    Attributes:
      ranked: metrics and per-positive rank counts on the test positives.
      history: per-epoch ``loss`` (train BCE), ``auc`` (train) and
        ``val_loss`` (validation BCE; empty without validation users).
      epochs: epochs trained.
      best_epoch: the (1-based) epoch whose weights were kept (the last one
        without validation users).
      seconds: wall time of training and scoring.
      best_val_loss: the validation loss of the kept weights (None without
        validation users).
    """

    ranked: RankedTest
    history: Dict[str, List[float]]
    epochs: int
    best_epoch: int
    seconds: float
    best_val_loss: Optional[float] = None


def batch_order(n: int, rows: int, rng: Optional[np.random.Generator],
                lengths: Optional[np.ndarray] = None, bucket_width: int = 4) -> List[np.ndarray]:
    """Indices (into 0..n-1) of every batch of at most ``rows``, in the order they are fed.

    With ``rng``: a random permutation; without: 0..n-1. With ``lengths``
    (history lengths), the examples are then stably grouped by
    ``ceil(length / bucket_width)`` and batches are cut within a group, so a
    batch holds histories of similar length; the batch order is shuffled
    with ``rng``. Every example appears in exactly one batch.
    """
    order = rng.permutation(n) if rng is not None else np.arange(n)
    if lengths is None:
        return [order[s:s + rows] for s in range(0, n, rows)]
    bucket = -(-np.asarray(lengths)[order] // bucket_width)
    by_bucket = np.argsort(bucket, kind="stable")
    order, bucket = order[by_bucket], bucket[by_bucket]
    batches: List[np.ndarray] = []
    for b in np.unique(bucket):
        members = order[bucket == b]
        batches.extend(members[s:s + rows] for s in range(0, len(members), rows))
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _pair_dataset(
    inputs: ModelInputs,
    examples: tasks_lib.Examples,
    negatives: np.ndarray,
    batches: List[np.ndarray],
) -> tf.data.Dataset:
    """(features, labels [B, 1 + K]): each example with its positive and K negatives.

    The candidates of one example share a row, so the (possibly expensive)
    query tower runs once per example; the BCE is over every (user, item) pair.
    """
    num_negatives = negatives.shape[1]
    items = tf.constant(np.concatenate([examples.targets[:, None], negatives], axis=1)
                        .astype(np.int64))
    label_row = tf.constant(np.r_[1.0, np.zeros(num_negatives)].astype(np.float32))[None]
    ragged = tf.RaggedTensor.from_row_lengths(
        np.concatenate(batches).astype(np.int64), [len(b) for b in batches])

    def to_features(ex):
        labels = tf.tile(label_row, [tf.shape(ex)[0], 1])
        return {**inputs.query(ex), **inputs.candidate(tf.gather(items, ex))}, labels

    return (tf.data.Dataset.from_tensor_slices(ragged)
            .map(to_features, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))


def _epoch_dataset(inputs: ModelInputs, examples: tasks_lib.Examples, task: PreparedTask,
                   num_negatives: int, cfg: EvalConfig, rng: np.random.Generator,
                   shuffle: bool) -> tf.data.Dataset:
    negs = tasks_lib.sample_training_negatives(
        examples.user_ids, task.positives, task.num_items, num_negatives, rng)
    rows = max(1, cfg.batch_size // (1 + num_negatives))
    batches = batch_order(len(examples), rows, rng if shuffle else None,
                          inputs.lengths if inputs.use_sequence else None)
    return _pair_dataset(inputs, examples, negs, batches)


def validation_loss(model: models_lib.DownstreamModel, inputs: ModelInputs,
                    examples: tasks_lib.Examples, items: np.ndarray, num_items: int) -> float:
    """Mean BCE over every (positive, candidate) pair of ``items`` [N, 1 + K] (column 0 the
    positive), from the two towers in inference mode: exact, whatever the batching, and
    without a traced evaluation step."""
    queries = _embed_queries(model, inputs, len(examples))
    candidates = _embed_candidates(model, inputs, num_items + 1)
    logits = np.einsum("nd,nkd->nk", queries, candidates[items]).astype(np.float64)
    labels = np.zeros_like(logits)
    labels[:, 0] = 1.0
    return float(np.mean(np.logaddexp(0.0, logits) - labels * logits))


def fit(
    model: models_lib.DownstreamModel,
    train_inputs: ModelInputs,
    val_inputs: Optional[ModelInputs],
    task: PreparedTask,
    epochs: int,
    cfg: EvalConfig,
    seed: int,
    learning_rate: Optional[float] = None,
    negatives: Optional[int] = None,
    progress: Optional[ProgressBar] = None,
) -> Dict[str, object]:
    """Fits ``model`` with early stopping on the validation loss, at most ``epochs`` epochs.

    The validation positives get their negatives once (``seed + 1``), the same
    every epoch. ``progress`` advances one unit per epoch (`epoch_postfix`). Returns {"loss": per-epoch mean train BCE, "auc": train AUC,
    "val_loss": per-epoch validation BCE (empty without val users),
    "best_epoch": the epoch whose weights the model now holds}.
    """
    rng = np.random.default_rng(seed)
    num_negatives = negatives or cfg.train_negatives
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate or cfg.learning_rate))
    history: Dict[str, List[float]] = {"loss": [], "auc": [], "val_loss": []}
    val_items = None
    if val_inputs is not None and len(task.val):
        negs = tasks_lib.sample_training_negatives(task.val.user_ids, task.positives,
                                                   task.num_items, num_negatives,
                                                   np.random.default_rng(seed + 1))
        val_items = np.concatenate([task.val.targets[:, None], negs], axis=1)
    best, best_epoch, best_weights, waited = math.inf, 0, None, 0
    for epoch in range(1, epochs + 1):
        ds = _epoch_dataset(train_inputs, task.train, task, num_negatives, cfg, rng, shuffle=True)
        logs = model.fit(ds, epochs=1, verbose=0).history
        history["loss"].append(float(logs["bce"][-1]))
        history["auc"].append(float(logs["auc"][-1]))
        if val_items is None:
            best_epoch = epoch
            if progress is not None:
                progress.update(1, epoch_postfix(history["loss"][-1]))
            continue
        val_loss = validation_loss(model, val_inputs, task.val, val_items, task.num_items)
        history["val_loss"].append(val_loss)
        improved = val_loss < best - cfg.min_delta
        if progress is not None:
            progress.update(1, epoch_postfix(history["loss"][-1], val_loss, improved))
        if improved:
            best, best_epoch, waited = val_loss, epoch, 0
            best_weights = model.get_weights() if epoch < epochs else None
        else:
            waited += 1
            if waited >= cfg.patience:
                if progress is not None and epoch < epochs:
                    progress.write(f"{progress.desc}: early stop after epoch {epoch}/{epochs}: "
                                   f"val_loss not below {best:.4f} for {waited} epochs")
                break
    if best_weights is not None and best_epoch < len(history["loss"]):
        model.set_weights(best_weights)
    return {**history, "best_epoch": best_epoch}


def epoch_postfix(loss: float, val_loss: Optional[float] = None, best: bool = False) -> str:
    """``loss 0.4123  val_loss 0.4310 (best)``: what a fit's progress shows per epoch."""
    text = f"loss {loss:.4f}"
    if val_loss is not None:
        text += f"  val_loss {val_loss:.4f}" + (" (best)" if best else "")
    return text


def _embed_queries(model: models_lib.DownstreamModel, inputs: ModelInputs, n: int,
                   batch: int = 1024) -> np.ndarray:
    """float32 [n, D] query vectors of examples 0..n-1, batched by history length."""
    batches = batch_order(n, batch, None, inputs.lengths if inputs.use_sequence else None)
    out: Optional[np.ndarray] = None
    for idx in batches:
        q = model.query_tower(inputs.query(tf.constant(idx, tf.int64)), training=False).numpy()
        if out is None:
            out = np.zeros((n, q.shape[1]), np.float32)
        out[idx] = q
    return out if out is not None else np.zeros((0, 1), np.float32)


def _embed_candidates(model: models_lib.DownstreamModel, inputs: ModelInputs, n: int,
                      batch: int = 8192) -> np.ndarray:
    """float32 [n, D] candidate vectors of items 0..n-1."""
    parts = []
    for start in range(0, n, batch):
        idx = tf.range(start, min(n, start + batch), dtype=tf.int64)
        parts.append(model.candidate_tower(inputs.candidate(idx), training=False).numpy())
    return np.concatenate(parts, axis=0).astype(np.float32)


def fit_and_score(run: ModelRun, task: PreparedTask, user_row: Mapping[str, int], epochs: int,
                  cfg: EvalConfig, seed: int, progress: Optional[TextIO] = None) -> FitResult:
    """Builds, trains (early stopping, at most ``epochs``) and scores one model.

    ``seed`` drives the training negatives (the same for every model);
    ``run.init_seed`` the weight initialisation and dropout. ``progress``: the
    stream the fit's progress goes to (None: none; see the module docstring).
    """
    start = time.perf_counter()
    tf.keras.utils.set_random_seed(run.init_seed)
    model = run.build()

    def inputs(examples: tasks_lib.Examples) -> ModelInputs:
        return ModelInputs(examples, run.user_matrix, user_row, run.item_matrix,
                           use_sequence=run.use_sequence)

    train_in, val_in, test_in = inputs(task.train), inputs(task.val), inputs(task.test)
    bar = (ProgressBar(epochs, desc=run.column, unit="epoch", stream=progress)
           if progress is not None else None)
    try:
        history = fit(model, train_in, val_in, task, epochs, cfg, seed,
                      learning_rate=run.learning_rate, negatives=run.negatives, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    best_epoch = int(history.pop("best_epoch"))
    queries = _embed_queries(model, test_in, len(task.test))
    candidates = _embed_candidates(model, test_in, task.num_items + 1)
    ranked = rank_test_positives(queries, candidates, task.test, task.eval_negatives, cfg.top_k)
    val = history["val_loss"]
    if progress is not None:
        kept = f" (val_loss {val[best_epoch - 1]:.4f})" if val else ""
        print(f"{run.column}: kept epoch {best_epoch} of {len(history['loss'])}{kept}; "
              f"test MRR {ranked.metrics.get('MRR', float('nan')):.4f}", file=progress,
              flush=True)
    return FitResult(ranked=ranked, history=history, epochs=len(history["loss"]),
                     best_epoch=best_epoch, seconds=time.perf_counter() - start,
                     best_val_loss=val[best_epoch - 1] if val else None)
