"""Training: optimiser, schedule, checkpoints, resume, TensorBoard, progress.

``train(...)`` is what the TFX Trainer's ``run_fn``, ``clue train`` and the
benchmarks call. A killed run resumes from the newest checkpoint in
``model_dir/checkpoints`` with the same step count and learning-rate schedule
(the optimizer's iteration counter is part of the checkpoint). The input
pipeline is replayed, not re-shuffled: its shuffle order is fixed by the seed,
and the batches already trained on are skipped (``Dataset.skip``), so a resumed
run sees exactly the batches an uninterrupted run would.
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
from clue_keras.distribute import (adapt_keras_model, is_chief, is_multi_worker,
                                   raise_peer_lost, shard_by_data, worker_dir)
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


@keras.saving.register_keras_serializable(package="clue")
class GlobalClipAdamW(keras.optimizers.AdamW):
    """AdamW whose global-norm clipping applies to the gradient of the GLOBAL batch.

    Keras' own ``global_clipnorm`` clips each replica's gradient before the
    cross-replica sum, so under a strategy the update is the sum of N separately
    clipped gradients, not the single-device update on the same global batch. Here
    the clip follows the sum (the TensorFlow backend's ``_all_reduce_sum_gradients``,
    which every update step calls; with one replica the sum is the identity).
    """

    def __init__(self, clip_global_norm: Optional[float] = None, **kwargs):
        super().__init__(**kwargs)
        self.clip_global_norm = clip_global_norm

    def _all_reduce_sum_gradients(self, grads_and_vars):
        grads_and_vars = list(super()._all_reduce_sum_gradients(grads_and_vars))
        if not self.clip_global_norm:
            return grads_and_vars
        present = [i for i, (g, _) in enumerate(grads_and_vars) if g is not None]
        # Dense first: the norm of IndexedSlices (embedding gradients) would count
        # each of a row's repeated lookups separately.
        clipped, _ = tf.clip_by_global_norm(
            [tf.convert_to_tensor(grads_and_vars[i][0]) for i in present],
            self.clip_global_norm)
        for i, g in zip(present, clipped):
            grads_and_vars[i] = (g, grads_and_vars[i][1])
        return grads_and_vars

    def get_config(self):
        return {**super().get_config(), "clip_global_norm": self.clip_global_norm}


def make_optimizer(tc: TrainConfig, policy: str) -> keras.optimizers.Optimizer:
    """AdamW with decoupled weight decay on every weight but the logit scale, global-norm
    clipping of the global batch's gradient, and dynamic loss scaling under
    ``mixed_float16``."""
    opt = GlobalClipAdamW(
        learning_rate=make_schedule(tc), weight_decay=tc.weight_decay,
        clip_global_norm=tc.clipnorm,
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
    Whether to save depends on the step only, never on what a directory holds:
    every worker of a multi-worker job takes the same (collective) saves.
    """

    def __init__(self, manager: tf.train.CheckpointManager, every: int):
        super().__init__()
        self.manager, self.every = manager, every
        self._saved_at = None

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def _save(self, step: int) -> None:
        self.manager.save(checkpoint_number=step)
        self._saved_at = step

    def on_train_batch_end(self, batch, logs=None):
        step = self._step()
        if self.every and step % self.every == 0:
            self._save(step)

    def on_train_end(self, logs=None):
        step = self._step()
        if step != self._saved_at:
            self._save(step)


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

    Under a multi-worker ``strategy`` every worker calls this with the same
    arguments (``model_dir`` on storage they share). Each global batch is the one a
    single process would train on (see ``distribute.shard_by_data``). Every worker
    runs every save, since saving reads variables collectively, but only the chief
    writes ``model_dir``; the others write to ``distribute.worker_dir`` and delete
    it when done. All resume from the chief's newest checkpoint. A lost worker
    makes the others raise ``distribute.PeerLostError``.
    """
    from clue_keras.data.input import make_dataset
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
    chief, multi_worker = is_chief(strategy), is_multi_worker(strategy)
    out_dir = worker_dir(model_dir, strategy)   # model_dir on the chief, scratch elsewhere
    if not chief and tf.io.gfile.exists(out_dir):
        tf.io.gfile.rmtree(out_dir)             # left by a killed run
    tf.io.gfile.makedirs(out_dir)

    ds = make_dataset(train_files, vocab_info, tc.batch_size, shuffle=True, repeat=True,
                      seed=tc.seed)
    ds = shard_by_data(ds.map(lambda x: {"token_ids": x["token_ids"]}))
    with strategy.scope():
        model = build_pretrainer(model_config, policy)
        model.compile(optimizer=make_optimizer(tc, policy), jit_compile=False)
        model.optimizer.build(model.trainable_variables)
        ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    adapt_keras_model(model, strategy)
    manager = tf.train.CheckpointManager(ckpt, os.path.join(out_dir, "checkpoints"),
                                         max_to_keep=3)
    resumed = 0
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))  # the chief's
    if latest:
        ckpt.restore(latest).expect_partial()
        resumed = int(model.optimizer.iterations.numpy())
        printer(f"resumed from {latest} at step {resumed}")
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
            with _sigterm_as_interrupt(), raise_peer_lost(strategy, "training"):
                model.fit(
                    ds, epochs=epochs, steps_per_epoch=steps_per_epoch,
                    initial_epoch=resumed // steps_per_epoch, verbose=0,
                    callbacks=[_NonFinite(), progress,
                               _CheckpointEvery(manager, tc.checkpoint_every),
                               keras.callbacks.TensorBoard(os.path.join(out_dir, "logs"),
                                                           update_freq=tc.log_every),
                               *callbacks],
                )
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM (e.g. a pre-empted pod): keep what was trained. A crash
            # or a non-finite loss saves nothing; the run resumes from the last periodic
            # checkpoint. So does a multi-worker job: a save needs every worker, and
            # the others were not interrupted with this one.
            step = int(model.optimizer.iterations.numpy())
            if multi_worker:
                printer(f"interrupted at step {step}; re-run every worker to resume from "
                        "the last periodic checkpoint")
                raise
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
        eval_ds = shard_by_data(
            eval_ds.map(lambda x: {"token_ids": x["token_ids"]}).take(eval_steps))
        with raise_peer_lost(strategy, "evaluation"):
            metrics = model.evaluate(eval_ds, verbose=0, return_dict=True)
        if "loss" in metrics:
            eval_loss = float(metrics["loss"])
            printer(f"held-out contrastive loss {eval_loss:.4f}")
        else:  # fewer held-out users than one global batch (batches drop the remainder)
            printer(f"held-out loss skipped: fewer eval users than one batch of {tc.batch_size}")
    with raise_peer_lost(strategy, "saving"):
        save_keras_atomic(model, os.path.join(out_dir, "pretrainer.keras"))
    result = TrainResult(final_loss=final_loss, steps=int(model.optimizer.iterations.numpy()),
                         num_params=num_params, precision=policy, replicas=replicas,
                         strategy=type(strategy).__name__,
                         history=progress.history, eval_loss=eval_loss,
                         resumed_from_step=resumed)
    if chief:
        write_json_atomic(os.path.join(model_dir, "train_result.json"), {
            **dataclasses.asdict(result),
            "model_config": cfg_lib.to_dict(model_config),
            "train_config": cfg_lib.to_dict(train_config),
            "vocab_dir": vocab_dir,
        })
    else:
        tf.io.gfile.rmtree(out_dir)
    return result


def save_keras_atomic(model: keras.Model, path: str) -> None:
    tmp = path + ".tmp.keras"
    model.save(tmp)
    os.replace(tmp, path)


def load_pretrainer(path: str) -> CLUEPretrainer:
    return keras.saving.load_model(path, compile=False)
