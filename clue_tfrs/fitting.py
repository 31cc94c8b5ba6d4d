"""Fits any downstream model on a prepared task and scores it: one helper for every column.

A :class:`ModelRun` says what to train (a model factory, its initialisation
seed, the frozen feature matrices it reads, whether it reads the histories,
its learning rate and training negatives); :func:`fit_and_score` builds the
model under that seed, trains it with early stopping (:func:`fit`), embeds the
test queries and the whole catalogue with its two towers and ranks them with
:func:`clue_tfrs.protocol.rank_test_positives`.

Training (:func:`fit`): a sampled softmax. Every batch holds
``EvalConfig.batch_size`` positives and draws ``EvalConfig.train_negatives``
items uniformly, shared by all of them; the query tower runs once per
positive (:func:`clue_tfrs.losses.sampled_softmax_loss`). After every epoch
the validation loss (the softmax over each validation positive and its own
negatives, drawn once) is computed from the towers' outputs
(:func:`validation_loss`). Training stops when it has not improved by more
than ``EvalConfig.min_delta`` for ``EvalConfig.patience`` epochs, or after the
epoch cap, and the weights of the best epoch are restored. A model may start
from another's trained weights (``start_weights``: the Hybrid from the T-UBM).

A causal sequence model trains on windows instead (:mod:`clue_tfrs.windows`,
``EvalConfig.seq_window_batch`` per batch): one pass over a user's window gives
the query of every positive in it. Validation and scoring embed each positive's
own history, exactly, but a causal model reads them off shared passes too: a
user's histories shorter than T are prefixes of one another
(:func:`clue_tfrs.windows.query_windows`).

Speed: sequence-model batches hold histories of similar length
(:func:`batch_order`), each cut to its longest (right-aligned, padding masked:
same scores, less work). The training step is traced once per model; queries
and catalogue are embedded eagerly in large batches, and every test positive
is scored against its 1 + 100 candidates in one product
(:func:`clue_tfrs.protocol.rank_test_positives`).

Progress (``progress=`` a stream, off by default): a
`clue_keras.progress_bar.ProgressBar` per model, one unit per epoch, the
epoch's losses as postfix (``U-MLP (CLUE): epoch 2/10  loss 0.4123  val_loss
0.4310 (best)`` per line off a terminal), a line at an early stop and one with the kept epoch.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Dict, List, Mapping, Optional, TextIO, Tuple

import numpy as np

import clue_tfrs  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from clue_keras.progress_bar import ProgressBar
from clue_tfrs import models as models_lib
from clue_tfrs.losses import softmax_loss
from clue_tfrs.model_inputs import ModelInputs, batch_order, history_lengths
from clue_tfrs import tasks as tasks_lib
from clue_tfrs.protocol import EvalConfig, PreparedTask, RankedTest, rank_test_positives
from clue_tfrs.windows import WindowInputs, build_windows, causal_queries

__all__ = ["ModelRun", "ModelInputs", "FitResult", "fit_and_score", "fit", "batch_order",
           "validation_loss", "epoch_postfix", "history_lengths", "shared_negatives",
           "named_weights", "prepare_train_step", "load_matching_weights"]


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
      negatives: uniform training negatives shared by each batch (None:
        ``EvalConfig.train_negatives``).
      trainable: names of the model's layers that train (None: all).
      batch_size: training positives per batch (None: ``EvalConfig.batch_size``; a causal
        sequence model trains on ``EvalConfig.seq_window_batch`` windows instead).
    """

    column: str
    build: Callable[[], models_lib.DownstreamModel]
    init_seed: int
    user_matrix: Optional[np.ndarray] = None
    item_matrix: Optional[np.ndarray] = None
    use_sequence: bool = False
    learning_rate: Optional[float] = None
    negatives: Optional[int] = None
    trainable: Optional[Tuple[str, ...]] = None
    batch_size: Optional[int] = None


@dataclasses.dataclass
class FitResult:
    """What :func:`fit_and_score` returns for one column.

    Attributes:
      ranked: metrics and per-positive rank counts on the test positives.
      history: per-epoch ``loss`` (train sampled softmax) and ``val_loss``
        (validation softmax; empty without validation users).
      epochs: epochs trained.
      best_epoch: the (1-based) epoch whose weights were kept (the last one
        without validation users).
      seconds: wall time of training and scoring.
      best_val_loss: the validation loss of the kept weights (None without
        validation users).
      weights: the kept weights by variable name without the model's name
        (:func:`named_weights`), for a model that starts from them.
    """

    ranked: RankedTest
    history: Dict[str, List[float]]
    epochs: int
    best_epoch: int
    seconds: float
    best_val_loss: Optional[float] = None
    weights: Optional[Dict[str, np.ndarray]] = None


def _batch_dataset(inputs: ModelInputs, examples: Optional[tasks_lib.Examples],
                   negatives: np.ndarray, batches: List[np.ndarray]) -> tf.data.Dataset:
    """(features, negatives) per batch: the query and positive-candidate features of the
    batch's examples (windows, ``examples`` None: the query features, which hold the
    positives), and the candidate features of its shared negatives (``negatives``
    int [len(batches), M], one row per batch)."""
    targets = None if examples is None else tf.constant(examples.targets.astype(np.int64))
    ragged = tf.RaggedTensor.from_row_lengths(
        np.concatenate(batches).astype(np.int64), [len(b) for b in batches])

    def to_features(ex, negs):
        positives = {} if targets is None else inputs.candidate(tf.gather(targets, ex))
        return {**inputs.query(ex), **positives}, inputs.candidate(negs)

    return (tf.data.Dataset.from_tensor_slices((ragged, negatives.astype(np.int64)))
            .map(to_features, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))


def shared_negatives(num_batches: int, num_items: int, num_negatives: int,
                     rng: np.random.Generator) -> np.ndarray:
    """int [num_batches, M]: per batch, M distinct items drawn uniformly from 1..C
    (M = min(num_negatives, C))."""
    m = min(num_negatives, num_items)
    out = np.empty((num_batches, m), dtype=np.int64)
    for b in range(num_batches):
        out[b] = rng.choice(num_items, size=m, replace=False) + 1
    return out


def _epoch_dataset(inputs: ModelInputs, examples: Optional[tasks_lib.Examples], num_items: int,
                   num_negatives: int, batch_size: int, rng: np.random.Generator
                   ) -> tf.data.Dataset:
    batches = batch_order(len(inputs.lengths), batch_size, rng,
                          inputs.lengths if inputs.use_sequence else None)
    negs = shared_negatives(len(batches), num_items, num_negatives, rng)
    return _batch_dataset(inputs, examples, negs, batches)


def validation_loss(model: models_lib.DownstreamModel, inputs: ModelInputs,
                    examples: tasks_lib.Examples, items: np.ndarray, num_items: int) -> float:
    """Mean softmax cross-entropy of every positive against its row of ``items`` [N, 1 + K]
    (column 0 the positive), from the two towers in inference mode: exact, whatever the
    batching, and without a traced evaluation step."""
    queries = _embed_queries(model, inputs, len(examples))
    candidates = _embed_candidates(model, inputs, num_items + 1)
    return softmax_loss(np.einsum("nd,nkd->nk", queries, candidates[items]))


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
    batch_size: Optional[int] = None,
) -> Dict[str, object]:
    """Fits ``model`` with early stopping on the validation loss, at most ``epochs`` epochs.

    The validation positives get their negatives once (``seed + 1``), the same
    every epoch. ``progress`` advances one unit per epoch (`epoch_postfix`). Returns
    {"loss": per-epoch mean train softmax loss,
    "val_loss": per-epoch validation softmax loss (empty without val users),
    "best_epoch": the epoch whose weights the model now holds}.
    """
    rng = np.random.default_rng(seed)
    num_negatives = negatives or cfg.train_negatives
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate or cfg.learning_rate))
    prepare_train_step(model, train_inputs)
    history: Dict[str, List[float]] = {"loss": [], "val_loss": []}
    val_items = None
    if val_inputs is not None and len(task.val):
        negs = tasks_lib.sample_training_negatives(task.val.user_ids, task.positives,
                                                   task.num_items, num_negatives,
                                                   np.random.default_rng(seed + 1))
        val_items = np.concatenate([task.val.targets[:, None], negs], axis=1)
    best, best_epoch, best_weights, waited = math.inf, 0, None, 0
    for epoch in range(1, epochs + 1):
        if isinstance(train_inputs, WindowInputs):
            ds = _epoch_dataset(train_inputs, None, task.num_items, num_negatives,
                                cfg.seq_window_batch, rng)
        else:
            ds = _epoch_dataset(train_inputs, task.train, task.num_items, num_negatives,
                                batch_size or cfg.batch_size, rng)
        logs = model.fit(ds, epochs=1, verbose=0).history
        history["loss"].append(float(logs["softmax_loss"][-1]))
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


def prepare_train_step(model: models_lib.DownstreamModel, inputs: ModelInputs) -> None:
    """Creates the model's and its (compiled) optimizer's variables and keeps AutoGraph out
    of the train step, before the first ``model.fit``.

    Otherwise the first call traces the step twice (a tf.function whose first trace
    creates variables is traced again) and AutoGraph converts every layer call: the
    T-UBM's first epoch spent about 28 CPU-s tracing, now about 6. The step's graph is
    the same (nothing in it branches on a tensor) and the variables are created in the
    order the first step created them (query tower, then candidate tower), so the
    initial values and the training are the same."""
    if len(inputs.lengths):
        one = tf.constant([0], tf.int64)
        model.query_tower(inputs.query(one))
        model.candidate_tower(inputs.candidate(one))
        model.optimizer.build(model.trainable_variables)
    model.train_step = tf.autograph.experimental.do_not_convert(model.train_step)


def epoch_postfix(loss: float, val_loss: Optional[float] = None, best: bool = False) -> str:
    """``loss 0.4123  val_loss 0.4310 (best)``: what a fit's progress shows per epoch."""
    text = f"loss {loss:.4f}"
    if val_loss is not None:
        text += f"  val_loss {val_loss:.4f}" + (" (best)" if best else "")
    return text


def _sequence_part_frozen(model: models_lib.DownstreamModel, run: ModelRun) -> bool:
    """A residual Hybrid whose layers other than the feature weight do not train."""
    return (run.use_sequence and run.trainable is not None
            and getattr(model, "fusion", None) == "residual"
            and getattr(model, "user_feature_projection", None) is not None
            and not any(layer.trainable for layer in model.layers
                        if layer is not model.user_feature_projection))


def _trains_on_windows(model: models_lib.DownstreamModel, run: ModelRun,
                       examples: tasks_lib.Examples) -> bool:
    """A causal sequence model whose every training example has a history: one pass per
    window (:mod:`clue_tfrs.windows`) gives every example's query."""
    return (run.use_sequence and getattr(model, "causal", False) and len(examples) > 0
            and bool(history_lengths(examples.histories).min() > 0))


def _embed_queries(model: models_lib.DownstreamModel, inputs: ModelInputs, n: int,
                   part: str = "query", batch: int = 1024) -> np.ndarray:
    """float32 [n, D] query vectors (``part="sequence"``: the sequence model's
    ``sequence_vector``) of examples 0..n-1, batched by history length; a causal model's
    from the fewest passes that give them exactly
    (:func:`clue_tfrs.windows.causal_queries`)."""
    if getattr(model, "causal", False) and inputs.use_sequence and n:
        return causal_queries(model, inputs, part, batch)
    tower = model.query_tower if part == "query" else model.sequence_vector
    batches = batch_order(n, batch, None, inputs.lengths if inputs.use_sequence else None)
    out: Optional[np.ndarray] = None
    for idx in batches:
        q = tower(inputs.query(tf.constant(idx, tf.int64)), training=False).numpy()
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
                  cfg: EvalConfig, seed: int, progress: Optional[TextIO] = None,
                  start_weights: Optional[Mapping[str, np.ndarray]] = None) -> FitResult:
    """Builds, trains (early stopping, at most ``epochs``) and scores one model.

    ``seed`` drives the training negatives (the same for every model);
    ``run.init_seed`` the weight initialisation and dropout. ``progress``: the
    stream the fit's progress goes to (None: none; see the module docstring).
    ``start_weights``: trained weights (:func:`named_weights` of another model) that the
    model starts from where its variables match (:func:`load_matching_weights`).
    """
    start = time.perf_counter()
    tf.keras.utils.set_random_seed(run.init_seed)
    model = run.build()

    def inputs_for(examples: tasks_lib.Examples) -> ModelInputs:
        return ModelInputs(examples, run.user_matrix, user_row, run.item_matrix,
                           use_sequence=run.use_sequence)

    train_in, val_in, test_in = inputs_for(task.train), inputs_for(task.val), inputs_for(task.test)
    if start_weights:
        load_matching_weights(model, train_in, start_weights)
    for layer in model.layers if run.trainable is not None else ():
        layer.trainable = layer.name in run.trainable
    if _sequence_part_frozen(model, run):  # its output per example, once, not every epoch
        train_in, val_in, test_in = (
            ModelInputs(ex, run.user_matrix, user_row, run.item_matrix,
                        sequence_vectors=_embed_queries(model, inp, len(ex), "sequence"))
            for ex, inp in ((task.train, train_in), (task.val, val_in), (task.test, test_in)))
    elif _trains_on_windows(model, run, task.train):
        train_in = WindowInputs(build_windows(task.train), run.user_matrix, user_row,
                                run.item_matrix)
    bar = (ProgressBar(epochs, desc=run.column, unit="epoch", stream=progress)
           if progress is not None else None)
    try:
        history = fit(model, train_in, val_in, task, epochs, cfg, seed,
                      learning_rate=run.learning_rate, negatives=run.negatives, progress=bar,
                      batch_size=run.batch_size)
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
                     best_val_loss=val[best_epoch - 1] if val else None,
                     weights=named_weights(model))


def named_weights(model: models_lib.DownstreamModel) -> Dict[str, np.ndarray]:
    """{variable name (less a leading model name): value} of every trainable weight."""
    return {_local_name(model, v): v.numpy() for v in model.trainable_weights}


def _local_name(model: tf.keras.Model, var: tf.Variable) -> str:
    return var.name[len(model.name) + 1:] if var.name.startswith(model.name + "/") else var.name


def load_matching_weights(model: models_lib.DownstreamModel, inputs: ModelInputs,
                          weights: Mapping[str, np.ndarray]) -> int:
    """Builds ``model`` (both towers on one example) and sets every variable that has a
    same-named, same-shaped entry in ``weights`` (:func:`named_weights`); returns how many."""
    one = tf.constant([0], tf.int64)
    model.query_tower(inputs.query(one))
    model.candidate_tower(inputs.candidate(one))
    done = 0
    for var in model.trainable_weights:
        value = weights.get(_local_name(model, var))
        if value is not None and tuple(value.shape) == tuple(var.shape):
            var.assign(value)
            done += 1
    return done
