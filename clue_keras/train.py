"""Training: optimiser, schedule, checkpoints, resume, TensorBoard, progress.

``train(...)`` is what the TFX Trainer's ``run_fn``, ``clue train`` and the
benchmarks call. A killed run resumes from the newest checkpoint in
``model_dir/checkpoints`` with the same step count and learning-rate schedule
(the optimizer's iteration counter is part of the checkpoint). The input
pipeline is re-shuffled on resume rather than replayed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import threading
import time
from typing import List, Optional, Sequence, Union

import keras
import numpy as np
import tensorflow as tf

from clue_keras import config as cfg_lib
from clue_keras.atomic import write_json_atomic
from clue_keras.config import ModelConfig, TrainConfig
from clue_keras.encoder import CLUEEncoder
from clue_keras.precision import resolve_policy
from clue_keras.pretrainer import CLUEPretrainer

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    final_loss: float
    steps: int
    num_params: int
    precision: str
    replicas: int
    history: List[dict]
    eval_loss: Optional[float] = None
    resumed_from_step: int = 0
    strategy: str = ""  # class name of the tf.distribute strategy that trained


def make_schedule(tc: TrainConfig) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up over ``warmup_fraction`` of the steps to ``learning_rate``, then
    cosine decay to ``final_lr_fraction * learning_rate`` at ``train_steps``."""
    warmup = max(1, int(round(tc.warmup_fraction * tc.train_steps)))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(1, tc.train_steps - warmup),
        alpha=tc.final_lr_fraction,
        warmup_target=tc.learning_rate,
        warmup_steps=warmup,
    )


def make_optimizer(tc: TrainConfig, policy: str) -> keras.optimizers.Optimizer:
    """AdamW with decoupled weight decay on every weight but the logit scale, global-norm
    clipping, and dynamic loss scaling under ``mixed_float16``."""
    opt = keras.optimizers.AdamW(
        learning_rate=make_schedule(tc), weight_decay=tc.weight_decay,
        global_clipnorm=tc.clipnorm,
    )
    opt.exclude_from_weight_decay(var_names=["log_logit_scale"])
    if policy == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def build_pretrainer(mc: ModelConfig, policy: str = "float32") -> CLUEPretrainer:
    encoder = CLUEEncoder.from_config_dataclass(mc, dtype=policy)
    model = CLUEPretrainer(encoder, projection_dim=mc.projection_dim,
                           logit_scale_init=mc.logit_scale_init,
                           logit_scale_max=mc.logit_scale_max, dtype=policy)
    model.build(encoder.input_shape_for_build())
    return model


class _CheckpointEvery(keras.callbacks.Callback):
    """Saves a tf.train checkpoint every N optimizer steps and at the end.

    CheckpointManager writes the data files first and the ``checkpoint`` index
    last, so a reader never sees a half-written checkpoint as the newest one.
    """

    def __init__(self, manager: tf.train.CheckpointManager, every: int):
        super().__init__()
        self.manager, self.every = manager, every

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        step = self._step()
        if self.every and step % self.every == 0:
            self.manager.save(checkpoint_number=step)

    def on_train_end(self, logs=None):
        step = self._step()
        latest = self.manager.latest_checkpoint
        if not latest or not latest.endswith(f"-{step}"):
            self.manager.save(checkpoint_number=step)


class _Progress(keras.callbacks.Callback):
    """One line every ``every`` steps: step, loss, logit scale, non-padding tokens/s.

    Keras metrics are running means over the epoch; the loss printed (and kept in
    ``history``) is the mean over the steps since the previous line, recovered from
    the running means.
    """

    def __init__(self, every: int, total: int, printer=print):
        super().__init__()
        self.every, self.total, self.printer = every, total, printer
        self.history: List[dict] = []
        self._t0 = None

    def on_epoch_begin(self, epoch, logs=None):
        self._seen, self._loss_sum, self._tokens = 0, 0.0, 0.0  # metrics reset every epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        step = int(self.model.optimizer.iterations.numpy())
        if step % self.every and step != self.total:
            return
        now = time.perf_counter()
        n = batch + 1                                   # steps so far in this epoch
        loss_sum = float(logs.get("loss", float("nan"))) * n
        tokens = float(logs.get("tokens", 0.0))         # Sum metric: cumulative this epoch
        window = max(n - self._seen, 1)
        dt = max(now - self._t0, 1e-9)
        rec = {"step": step, "loss": (loss_sum - self._loss_sum) / window,
               "logit_scale": float(logs.get("logit_scale", float("nan"))),
               "tokens_per_s": (tokens - self._tokens) / dt}
        self._seen, self._loss_sum, self._tokens, self._t0 = n, loss_sum, tokens, now
        self.history.append(rec)
        self.printer(f"step {step:>6}/{self.total}  loss {rec['loss']:.4f}  "
                     f"logit_scale {rec['logit_scale']:.2f}  tokens/s {rec['tokens_per_s']:,.0f}")


class _NonFinite(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise FloatingPointError(
                f"training loss became {loss} at step "
                f"{int(self.model.optimizer.iterations.numpy())}; no checkpoint was written "
                "for this step. Lower --learning-rate or check the input data."
            )


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Within the block, SIGTERM raises KeyboardInterrupt (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _count_params(model: keras.Model) -> int:
    return int(sum(np.prod(v.shape) for v in model.weights if v.trainable))


def train(
    train_files: Union[str, Sequence[str]],
    vocab_dir: str,
    model_config: ModelConfig,
    train_config: TrainConfig,
    model_dir: str,
    eval_files: Union[str, Sequence[str], None] = None,
    strategy: Optional[tf.distribute.Strategy] = None,
    precision: str = "auto",
    eval_steps: int = 10,
    printer=print,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> TrainResult:
    """Trains (or resumes) CLUE on per-user TFRecords; returns the result summary.

    Writes ``model_dir/checkpoints/``, ``model_dir/logs/`` (TensorBoard),
    ``model_dir/pretrainer.keras`` (the whole task, Keras format, written
    atomically) and ``model_dir/train_result.json``.
    """
    from clue_keras.data import make_dataset
    from clue_keras.tokenizer import load_vocab_info

    vocab_info = load_vocab_info(vocab_dir)
    if vocab_info.vocab_size > model_config.vocab_size:
        raise ValueError(
            f"vocabulary in {vocab_dir} has {vocab_info.vocab_size} ids but the model "
            f"config allows {model_config.vocab_size}; raise vocab_size")
    if (vocab_info.max_items, vocab_info.max_tokens) != (model_config.max_items,
                                                           model_config.max_tokens):
        raise ValueError(
            f"records in {vocab_dir} were built with S={vocab_info.max_items}, "
            f"L={vocab_info.max_tokens} but the model expects S={model_config.max_items}, "
            f"L={model_config.max_tokens}")
    if len(vocab_info.services) < 2:
        raise ValueError(f"contrastive training needs >= 2 services; {vocab_dir} has "
                         f"{list(vocab_info.services)}")
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    tc = train_config
    if tc.batch_size % replicas:
        raise ValueError(f"global batch {tc.batch_size} is not divisible by {replicas} replicas")
    policy = resolve_policy(precision)
    keras.utils.set_random_seed(tc.seed)
    os.makedirs(model_dir, exist_ok=True)

    ds = make_dataset(train_files, vocab_info, tc.batch_size, shuffle=True, repeat=True,
                      seed=tc.seed)
    ds = ds.map(lambda x: {"token_ids": x["token_ids"]})
    with strategy.scope():
        model = build_pretrainer(model_config, policy)
        model.compile(optimizer=make_optimizer(tc, policy), jit_compile=False)
        model.optimizer.build(model.trainable_variables)
        ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    manager = tf.train.CheckpointManager(ckpt, os.path.join(model_dir, "checkpoints"),
                                         max_to_keep=3)
    resumed = 0
    if manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).expect_partial()
        resumed = int(model.optimizer.iterations.numpy())
        printer(f"resumed from {manager.latest_checkpoint} at step {resumed}")
        # The shuffled stream is deterministic per seed: skip what was consumed so a
        # resumed run sees exactly the batches an uninterrupted run would.
        ds = ds.skip(resumed)
    steps_per_epoch = max(1, min(tc.checkpoint_every or tc.train_steps, tc.train_steps))
    epochs = math.ceil(tc.train_steps / steps_per_epoch)
    progress = _Progress(tc.log_every, tc.train_steps, printer)
    num_params = _count_params(model)
    printer(f"CLUE: {num_params:,} parameters, policy {policy}, {replicas} replica(s) "
            f"({type(strategy).__name__}), "
            f"global batch {tc.batch_size}")
    if resumed < tc.train_steps:
        if tc.train_steps % steps_per_epoch:
            raise ValueError(f"train_steps ({tc.train_steps}) must be a multiple of "
                             f"checkpoint_every ({steps_per_epoch})")
        try:
            with _sigterm_as_interrupt():
                model.fit(
                    ds, epochs=epochs, steps_per_epoch=steps_per_epoch,
                    initial_epoch=resumed // steps_per_epoch, verbose=0,
                    callbacks=[_NonFinite(), progress,
                               _CheckpointEvery(manager, tc.checkpoint_every),
                               keras.callbacks.TensorBoard(os.path.join(model_dir, "logs"),
                                                           update_freq=tc.log_every),
                               *callbacks],
                )
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM (e.g. a pre-empted pod): keep what was trained. A crash
            # or a non-finite loss saves nothing; the run resumes from the last periodic
            # checkpoint.
            step = int(model.optimizer.iterations.numpy())
            manager.save(checkpoint_number=step)
            printer(f"interrupted at step {step}; checkpoint saved, re-run to resume")
            raise
    final_loss = progress.history[-1]["loss"] if progress.history else float("nan")
    previous = os.path.join(model_dir, "train_result.json")
    if not progress.history and os.path.exists(previous):  # already finished earlier
        with open(previous) as f:
            final_loss = json.load(f).get("final_loss", final_loss)
    eval_loss = None
    if eval_files:
        eval_ds = make_dataset(eval_files, vocab_info, tc.batch_size, shuffle=False,
                               repeat=False)
        eval_ds = eval_ds.map(lambda x: {"token_ids": x["token_ids"]}).take(eval_steps)
        metrics = model.evaluate(eval_ds, verbose=0, return_dict=True)
        if "loss" in metrics:
            eval_loss = float(metrics["loss"])
            printer(f"held-out contrastive loss {eval_loss:.4f}")
        else:  # fewer held-out users than one global batch (batches drop the remainder)
            printer(f"held-out loss skipped: fewer eval users than one batch of {tc.batch_size}")
    save_keras_atomic(model, os.path.join(model_dir, "pretrainer.keras"))
    result = TrainResult(final_loss=final_loss, steps=int(model.optimizer.iterations.numpy()),
                         num_params=num_params, precision=policy, replicas=replicas,
                         strategy=type(strategy).__name__,
                         history=progress.history, eval_loss=eval_loss,
                         resumed_from_step=resumed)
    write_json_atomic(os.path.join(model_dir, "train_result.json"), {
        **dataclasses.asdict(result),
        "model_config": cfg_lib.to_dict(model_config),
        "train_config": cfg_lib.to_dict(train_config),
        "vocab_dir": vocab_dir,
    })
    return result


def save_keras_atomic(model: keras.Model, path: str) -> None:
    tmp = path + ".tmp.keras"
    model.save(tmp)
    os.replace(tmp, path)


def load_pretrainer(path: str) -> CLUEPretrainer:
    return keras.saving.load_model(path, compile=False)
