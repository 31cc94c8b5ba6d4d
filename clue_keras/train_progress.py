"""What a person watching a training run sees: progress lines, a bar, TensorBoard.

`Progress` (a callback of `clue_keras.train.train`) prints one line per log
window, and at every held-out evaluation and the last step::

    step    200/2000  loss 2.4312  held-out 2.5120  logit_scale 15.02  tokens/s 41,210  padding 38%  ETA 6m12s

* loss: mean training loss over the window (the model's metrics are reset
  after each line, so they cover exactly the window);
* held-out: `clue_keras.heldout.HeldOut`'s loss when it evaluated at that step;
* tokens/s: non-padding tokens trained on per second, held-out time excluded;
* padding: share of the token positions the encoder computes that are padding:
  computed positions are what ``CLUEEncoder.computed_positions`` counts for each
  step (padded: ``items * L + B * P * S``; with length buckets each item and
  history at its bucket's width), real ones ``tokens + items``, as in
  ``clue bench train``;
* ETA: the remaining steps at this run's average pace since its first step
  (which traces the graph), held-out evaluations included; ``?`` after one step.

On a terminal (``bar=True``) a tqdm bar moves with every step and the lines
print above it (`clue_keras.progress_bar.ProgressBar`). TensorBoard
(``log_dir``) gets ``loss``, ``eval_loss``, ``logit_scale``, ``tokens_per_s``,
``padding_share`` and ``learning_rate``.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, List, Optional

import keras
import numpy as np
import tensorflow as tf

from clue_keras.progress_bar import ProgressBar, format_duration

__all__ = ["Progress", "report_items", "format_duration"]


def _scalar(value) -> float:
    return float(np.asarray(value).reshape(-1)[0])


def report_items(model) -> None:
    """Adds ``items`` (non-empty items of the global batch in this step) and
    ``computed`` (positions the encoder computes for it, summed over replicas,
    each of which buckets its own rows) to the train step's logs, for `Progress`'
    padding share. Call before `clue_keras.distribute.adapt_keras_model`."""
    step = model.train_step
    encoder = getattr(model, "encoder", None)

    def train_step(data):
        logs = dict(step(data))
        counts = {"items": tf.reduce_sum(
            tf.cast(tf.not_equal(data["token_ids"][..., 0], 0), tf.float32))}
        if encoder is not None and hasattr(encoder, "computed_positions"):
            counts["computed"] = encoder.computed_positions(data["token_ids"])
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            counts = {k: ctx.all_reduce(tf.distribute.ReduceOp.SUM, v) for k, v in counts.items()}
        logs.update(counts)
        return logs

    model.train_step = train_step


class Progress(keras.callbacks.Callback):
    """Progress lines, bar and TensorBoard scalars (see the module docstring).

    Args:
      every: a line at every multiple of this step.
      total: the last step.
      start: the step this run starts from (resumed runs).
      batch_positions: ``(B, P * S, L)``: global batch, item slots per user, item length.
      printer: where lines go when there is no bar.
      heldout: the `HeldOut` callback, whose evaluations the lines show.
      log_dir: TensorBoard directory (None: none).
      bar: show a tqdm bar on standard output.
    """

    def __init__(self, every: int, total: int, start: int, batch_positions,
                 printer: Callable[[str], None] = print, heldout=None,
                 log_dir: Optional[str] = None, bar: bool = False):
        super().__init__()
        self.every, self.total, self.start = max(1, every), total, start
        self.batch_size, self.item_slots, self.item_len = batch_positions
        self.printer, self.heldout, self.log_dir, self.use_bar = printer, heldout, log_dir, bar
        self.history: List[dict] = []
        self._bar = self._writer = None
        self._t_first = self._t_window = None

    def on_train_begin(self, logs=None):
        if self.log_dir:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        self._bar = ProgressBar(self.total, unit="step", stream=sys.stdout, bar=self.use_bar,
                                initial=self.start, printer=self.printer, line_every=0,
                                leave=False)
        self.model.reset_metrics()
        self._new_window()

    def _new_window(self):
        self._steps, self._items, self._computed = 0, 0.0, 0.0
        self._eval_seconds = self.heldout.seconds if self.heldout else 0.0
        self._t_window = None

    def on_train_batch_begin(self, batch, logs=None):
        if self._t_window is None:
            self._t_window = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        step = int(self.model.optimizer.iterations.numpy())
        self._steps += 1
        if self._t_first is None:
            self._t_first = time.perf_counter()
        self._items += _scalar(logs.get("items", 0.0))
        self._computed += _scalar(logs.get("computed", 0.0))
        if self._bar is not None:
            self._bar.update(1)
        last = self.heldout.last if self.heldout else None
        evaluated = last is not None and last[0] == step
        if step % self.every and step != self.total and not evaluated \
                and not self.model.stop_training:
            return
        now = time.perf_counter()
        eval_s = (self.heldout.seconds if self.heldout else 0.0) - self._eval_seconds
        seconds = max(now - self._t_window - eval_s, 1e-9)
        tokens = _scalar(logs.get("tokens", 0.0))      # Sum metric: this window
        computed = self._computed or (self._items * self.item_len
                                      + self._steps * self.batch_size * self.item_slots)
        rec = {"step": step, "loss": _scalar(logs.get("loss", float("nan"))),
               "logit_scale": _scalar(logs.get("logit_scale", float("nan"))),
               "tokens_per_s": tokens / seconds,
               "padding_share": 1.0 - (tokens + self._items) / max(computed, 1.0)}
        if evaluated:
            rec["eval_loss"] = last[1]
        self.history.append(rec)
        done = step - self.start - 1    # steps after the first (which traces the graph)
        self._emit(rec, eta=(self.total - step) * (now - self._t_first) / done if done else None)
        self.model.reset_metrics()
        self._new_window()

    def _emit(self, rec: dict, eta: Optional[float]) -> None:
        held = f"  held-out {rec['eval_loss']:.4f}" if "eval_loss" in rec else ""
        line = (f"step {rec['step']:>6}/{self.total}  loss {rec['loss']:.4f}{held}  "
                f"logit_scale {rec['logit_scale']:.2f}  tokens/s {rec['tokens_per_s']:,.0f}  "
                f"padding {rec['padding_share']:.0%}  ETA "
                + ("?" if eta is None else format_duration(eta)))
        if self._bar is not None:
            self._bar.write(line, postfix=f"loss {rec['loss']:.4f}{held}")
        else:
            self.printer(line)
        if self._writer is not None:
            with self._writer.as_default(step=rec["step"]):
                for name in ("loss", "eval_loss", "logit_scale", "tokens_per_s",
                             "padding_share"):
                    if name in rec:
                        tf.summary.scalar(name, rec[name])
                tf.summary.scalar("learning_rate",
                                  _scalar(self.model.optimizer.learning_rate))
            self._writer.flush()

    def on_train_end(self, logs=None):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
