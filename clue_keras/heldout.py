"""Held-out contrastive loss during training, the best step's weights, early stopping.

`HeldOut` is a callback of `clue_keras.train.train`. Every ``every`` optimizer
steps, and at the last step, it scores the same fixed held-out batches (users
with a pair of services, as in training) and keeps the weights of the step with
the lowest loss in ``<checkpoints>/best/ckpt-<step>``. After ``patience``
evaluations in a row without a lower loss it stops training (0: never); the
weights exported are the best step's, not the last.

Resumption: what a resumed run needs (best loss and step, evaluations since the
best, whether training stopped, the evaluation history) lives in the variables
of `HeldOutState`, which every periodic checkpoint saves with the model. A best
checkpoint is deleted (`HeldOut.prune`) only after a periodic checkpoint that
names a later best was written, so the one the newest periodic checkpoint names
always exists.

The held-out batches are counted before training and drawn from a repeated
dataset (``.take(batches)``), and the loop takes exactly that many: it never
runs a dataset to its end (which is what made Keras' ``evaluate`` warn "Your
input ran out of data").
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from typing import List, Optional, Tuple

import keras
import tensorflow as tf

#: ``<checkpoint dir>/BEST_DIRNAME/ckpt-<step>``: the best step's weights.
BEST_DIRNAME = "best"


class HeldOutState(tf.Module):
    """Early-stopping state, checkpointed with the model (plain variables, created
    outside any strategy scope)."""

    def __init__(self):
        super().__init__(name="heldout")
        self.best_loss = tf.Variable(math.inf, dtype=tf.float64, trainable=False)
        self.best_step = tf.Variable(-1, dtype=tf.int64, trainable=False)
        self.since_best = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.stopped = tf.Variable(False, trainable=False)
        self.history_json = tf.Variable("[]", dtype=tf.string, trainable=False)

    @property
    def history(self) -> List[dict]:
        """``[{"step", "eval_loss"}, ...]``, every evaluation so far."""
        return json.loads(self.history_json.numpy().decode("utf-8"))

    @property
    def best(self) -> Tuple[Optional[int], Optional[float]]:
        """(step, loss) of the best evaluation, (None, None) before any."""
        step = int(self.best_step.numpy())
        return (None, None) if step < 0 else (step, float(self.best_loss.numpy()))

    def record(self, step: int, loss: float) -> bool:
        """Adds an evaluation; True when it is the best so far (strictly lower)."""
        self.history_json.assign(json.dumps(
            self.history + [{"step": step, "eval_loss": loss}]))
        if loss < float(self.best_loss.numpy()):
            self.best_loss.assign(loss)
            self.best_step.assign(step)
            self.since_best.assign(0)
            return True
        self.since_best.assign_add(1)
        return False


def make_eval_step(model, strategy: tf.distribute.Strategy):
    """tf.function: one global batch -> (mean loss over its (user, A, B) terms, terms).

    Each replica scores its rows against the all-gathered keys (``clip_loss``);
    their ``local_sum / global_count`` values sum to the global mean.
    """

    def on_replica(batch):
        return model.compute_contrastive_loss(batch, training=False)

    @tf.function
    def step(batch):
        loss, terms = strategy.run(on_replica, args=(batch,))
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.MEAN, terms, axis=None))

    return step


class HeldOut(keras.callbacks.Callback):
    """Evaluates, keeps the best weights and stops early (see the module docstring).

    Args:
      dataset: global batches of ``{"token_ids"}``, at least ``batches`` of them
        (repeated); the first ``batches`` are scored every time.
      batches: held-out batches per evaluation.
      strategy: the training strategy (evaluation runs on every replica).
      state: the checkpointed `HeldOutState`.
      every: evaluate when the step is a multiple of it, and at ``total``.
      total: the last step.
      patience: evaluations without improvement before stopping; 0: never.
      write_dir: where this process writes best checkpoints.
      read_dir: where the chief wrote them (every worker restores from there).
    """

    def __init__(self, dataset: tf.data.Dataset, batches: int,
                 strategy: tf.distribute.Strategy, state: HeldOutState, every: int,
                 total: int, patience: int, write_dir: str, read_dir: str):
        super().__init__()
        self.batches, self.strategy, self.state = batches, strategy, state
        self.every, self.total, self.patience = max(1, every), total, patience
        self.write_dir, self.read_dir = write_dir, read_dir
        self._dist = strategy.experimental_distribute_dataset(dataset.take(batches))
        self._step_fn = None
        self._weights = None
        self.last: Optional[Tuple[int, float]] = None   # (step, loss) of the newest evaluation
        self.seconds = 0.0                              # spent evaluating, in total

    def set_model(self, model):
        if self._step_fn is None or model is not self.model:
            self._step_fn = make_eval_step(model, self.strategy)
            # The weights only: the model also tracks its optimizer (slots: 2x more).
            self._weights = tf.train.Checkpoint(weights=list(model.weights))
        super().set_model(model)

    def evaluate(self) -> float:
        """Mean loss over every (user, A, B) term of the held-out batches."""
        total = terms = 0.0
        iterator = iter(self._dist)
        for _ in range(self.batches):
            loss, n = self._step_fn(next(iterator))
            total += float(loss) * float(n)
            terms += float(n)
        return total / max(terms, 1.0)

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step % self.every and step != self.total:
            return
        t0 = time.perf_counter()
        loss = self.evaluate()
        self.last = (step, loss)
        if self.state.record(step, loss):
            self._weights.write(self._prefix(self.write_dir, step))
        elif self.patience and int(self.state.since_best.numpy()) >= self.patience:
            self.state.stopped.assign(True)
            self.model.stop_training = True
        self.seconds += time.perf_counter() - t0

    @staticmethod
    def _prefix(directory: str, step: int) -> str:
        return os.path.join(directory, f"ckpt-{step}")

    def prune(self) -> None:
        """Deletes this process's best checkpoints older than the recorded best; call
        after a periodic checkpoint (which records that best) was written."""
        best, _ = self.state.best
        if best is None or not tf.io.gfile.isdir(self.write_dir):
            return
        for name in tf.io.gfile.listdir(self.write_dir):
            m = re.match(r"ckpt-(\d+)\.", name)
            if m and int(m.group(1)) < best:
                tf.io.gfile.remove(os.path.join(self.write_dir, name))

    def restore_best(self, current_step: int) -> Optional[int]:
        """Loads the best step's weights into the model unless they are the current
        ones; returns that step (None: never evaluated)."""
        best, _ = self.state.best
        if best is not None and best != current_step:
            self._weights.read(self._prefix(self.read_dir, best)).expect_partial()
        return best
