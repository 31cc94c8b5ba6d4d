"""Training: optimiser, schedule, checkpoints, resume, held-out loss, progress.

``train(...)`` is what the TFX Trainer's ``run_fn``, ``clue train`` and the
benchmarks call. Batches hold only users with at least ``min_services``
services (the users who contribute a loss term; ``make_dataset``). With
``epochs`` set the step budget is that many passes over them. Every
``eval_every`` steps the held-out loss is scored, the best step's weights are
kept and, after ``patience`` evaluations without improvement, training stops
(`clue_keras.heldout`); the weights exported are the best step's. Progress
lines, a bar on a terminal and TensorBoard scalars: `clue_keras.train_progress`.

A killed run resumes from the newest checkpoint in ``model_dir/checkpoints``
with the same step count, learning-rate schedule and early-stopping state (the
optimizer's iteration counter and `HeldOutState` are part of the checkpoint).
The input pipeline is replayed, not re-shuffled: its shuffle order is fixed by
the seed, and the batches already trained on are skipped (``Dataset.skip``),
so a resumed run sees exactly the batches an uninterrupted run would.

Keras' "Your input ran out of data; interrupting training" warning came from
``model.evaluate`` on the finite held-out dataset, whose length tf.data cannot
know (TFRecords): Keras iterated it to its end and reported every end as an
interruption. Now nothing here runs a dataset to its end: ``fit`` gets the
repeated training stream with ``steps_per_epoch`` = the steps left, and the
held-out loss takes a counted number of batches from a repeated dataset.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import threading
from typing import List, Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from clue_keras import config as cfg_lib
from clue_keras.atomic import write_json_atomic
from clue_keras.config import ModelConfig, TrainConfig
from clue_keras.distribute import (adapt_keras_model, is_chief, is_multi_worker,
                                   raise_peer_lost, shard_by_data, worker_dir)
from clue_keras.encoder import CLUEEncoder
from clue_keras.heldout import BEST_DIRNAME, HeldOut, HeldOutState
from clue_keras.optimizer import make_optimizer
from clue_keras.precision import choose_policy
from clue_keras.pretrainer import CLUEPretrainer
from clue_keras.train_progress import Progress, report_items
from clue_keras.uri import is_remote

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    """What a run did (also ``train_result.json``, with the configs).

    ``steps`` were trained (fewer than ``train_steps`` after an early stop);
    ``eval_loss`` is the held-out loss of the weights kept, those of
    ``best_step`` (None: no held-out loss, the last step's weights are kept);
    ``users_pretraining`` users of the train split have >= ``min_services``
    services, ``users_without_pair`` have fewer and are not trained on;
    ``eval_history`` is every evaluation, ``warnings`` what a person should know.
    """

    final_loss: float
    steps: int
    num_params: int
    precision: str
    replicas: int
    history: List[dict]
    eval_loss: Optional[float] = None
    resumed_from_step: int = 0
    strategy: str = ""  # class name of the tf.distribute strategy that trained
    train_steps: int = 0
    users_pretraining: int = 0
    users_without_pair: int = 0
    eval_users: int = 0
    best_step: Optional[int] = None
    best_eval_loss: Optional[float] = None
    evaluations: int = 0
    stopped_early: bool = False
    eval_history: List[dict] = dataclasses.field(default_factory=list)
    warnings: List[str] = dataclasses.field(default_factory=list)


def plan_steps(tc: TrainConfig, users_pretraining: int) -> Tuple[TrainConfig, List[str]]:
    """``tc`` with its step budget (``ceil(epochs * users / batch)`` when ``epochs`` is
    set) and warnings about it (less than one pass over the pre-training users)."""
    if tc.epochs is not None:
        if tc.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {tc.epochs}")
        tc = tc.replace(train_steps=max(1, math.ceil(
            tc.epochs * users_pretraining / tc.batch_size)))
    notes = []
    seen = tc.train_steps * tc.batch_size
    if seen < users_pretraining:
        notes.append(
            f"under-training: {tc.train_steps} steps of {tc.batch_size} users cover "
            f"{seen / users_pretraining:.0%} of one pass over the {users_pretraining:,} "
            f"pre-training users (users with >= {tc.min_services} services); use --epochs 1 "
            f"or more, or --train-steps {math.ceil(users_pretraining / tc.batch_size)} or more")
    return tc, notes


def build_pretrainer(mc: ModelConfig, policy: str = "float32") -> CLUEPretrainer:
    encoder = CLUEEncoder.from_config_dataclass(mc, dtype=policy)
    model = CLUEPretrainer(encoder, projection_dim=mc.projection_dim,
                           logit_scale_init=mc.logit_scale_init,
                           logit_scale_max=mc.logit_scale_max, dtype=policy)
    model.build(encoder.input_shape_for_build())
    return model
class _CheckpointEvery(keras.callbacks.Callback):
    """Saves a tf.train checkpoint every N optimizer steps and at the end (N=0: only
    at the end).

    CheckpointManager writes the data files first and the ``checkpoint`` index
    last, so a reader never sees a half-written checkpoint as the newest one.
    Whether to save depends on the step only, never on what a directory holds:
    every worker of a multi-worker job takes the same (collective) saves.
    """

    def __init__(self, save, every: int):
        super().__init__()
        self.save, self.every = save, every
        self._saved_at = None

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def _save(self, step: int) -> None:
        self.save(step)
        self._saved_at = step

    def on_train_batch_end(self, batch, logs=None):
        step = self._step()
        if self.every and step % self.every == 0:
            self._save(step)

    def on_train_end(self, logs=None):
        step = self._step()
        if step != self._saved_at:
            self._save(step)


class _NonFinite(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(np.asarray(loss).reshape(-1)[0])):
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


def _check_vocab(vocab_info, vocab_dir: str, mc: ModelConfig) -> None:
    if vocab_info.vocab_size > mc.vocab_size:
        raise ValueError(
            f"vocabulary in {vocab_dir} has {vocab_info.vocab_size} ids but the model "
            f"config allows {mc.vocab_size}; raise vocab_size")
    if (vocab_info.max_items, vocab_info.max_tokens) != (mc.max_items, mc.max_tokens):
        raise ValueError(
            f"records in {vocab_dir} were built with S={vocab_info.max_items}, "
            f"L={vocab_info.max_tokens} but the model expects S={mc.max_items}, "
            f"L={mc.max_tokens}")
    if len(vocab_info.services) < 2:
        raise ValueError(f"contrastive training needs >= 2 services; {vocab_dir} has "
                         f"{list(vocab_info.services)}")


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
    progress_bar: Optional[bool] = None,
) -> TrainResult:
    """Trains (or resumes) CLUE on per-user TFRecords; returns the result summary.

    Writes ``model_dir/checkpoints/`` (``best/``: the best held-out step's
    weights), ``model_dir/logs/`` (TensorBoard), ``model_dir/pretrainer.keras``
    (the whole task with the kept weights, Keras format, written atomically) and
    ``model_dir/train_result.json``. The held-out loss is the mean over the
    first ``eval_steps`` full batches of ``eval_files``' users with a pair of
    services; with fewer such users than one batch there is none (a warning).
    ``progress_bar``: a tqdm bar (None: when ``printer`` is ``print`` and
    standard output is a terminal).

    Under a multi-worker ``strategy`` every worker calls this with the same
    arguments (``model_dir`` on storage they share). Each global batch is the one a
    single process would train on (see ``distribute.shard_by_data``). Every worker
    runs every save, since saving reads variables collectively, but only the chief
    writes ``model_dir``; the others write to ``distribute.worker_dir`` and delete
    it when done. All resume from the chief's newest checkpoint. A lost worker
    makes the others raise ``distribute.PeerLostError``.
    """
    from clue_keras.data.input import count_users, make_dataset
    from clue_keras.tokenizer import load_vocab_info

    vocab_info = load_vocab_info(vocab_dir)
    _check_vocab(vocab_info, vocab_dir, model_config)
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if train_config.batch_size % replicas:
        raise ValueError(f"global batch {train_config.batch_size} is not divisible by "
                         f"{replicas} replicas")
    k = train_config.min_services
    users, users_all = count_users(train_files, vocab_info, k)
    if not users:
        raise ValueError(f"none of the {users_all} users in {train_files!r} has >= {k} "
                         "services: no pair to contrast, nothing to train on")
    tc, notes = plan_steps(train_config, users)
    eval_users, eval_batches = 0, 0
    if eval_files:
        eval_users = count_users(eval_files, vocab_info, k)[0]
        eval_batches = min(eval_steps, eval_users // tc.batch_size)
        if not eval_batches:
            notes.append(f"no held-out loss: {eval_users} held-out users have >= {k} "
                         f"services, fewer than one batch of {tc.batch_size}; no early "
                         "stopping, the last step's weights are kept")
    for note in notes:
        log.warning(note)
        printer(f"WARNING: {note}")
    policy, policy_reason = choose_policy(precision, model_config.hidden_dim)
    keras.utils.set_random_seed(tc.seed)
    chief, multi_worker = is_chief(strategy), is_multi_worker(strategy)
    out_dir = worker_dir(model_dir, strategy)   # model_dir on the chief, scratch elsewhere
    if not chief and tf.io.gfile.exists(out_dir):
        tf.io.gfile.rmtree(out_dir)             # left by a killed run
    tf.io.gfile.makedirs(out_dir)

    ds = make_dataset(train_files, vocab_info, tc.batch_size, shuffle=True, repeat=True,
                      seed=tc.seed, min_services=k)
    ds = shard_by_data(ds.map(lambda x: {"token_ids": x["token_ids"]}))
    state = HeldOutState()                      # plain variables, outside the strategy
    with strategy.scope():
        model = build_pretrainer(model_config, policy)
        model.compile(optimizer=make_optimizer(tc, policy), jit_compile=False)
        model.optimizer.build(model.trainable_variables)
        ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer, heldout=state)
    report_items(model)
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
    heldout = None
    if eval_batches:
        eval_ds = make_dataset(eval_files, vocab_info, tc.batch_size, shuffle=False,
                               repeat=True, min_services=k)
        heldout = HeldOut(shard_by_data(eval_ds.map(lambda x: {"token_ids": x["token_ids"]})),
                          eval_batches, strategy, state,
                          every=tc.eval_every or max(1, tc.train_steps // 10),
                          total=tc.train_steps, patience=tc.patience,
                          write_dir=os.path.join(out_dir, "checkpoints", BEST_DIRNAME),
                          read_dir=os.path.join(model_dir, "checkpoints", BEST_DIRNAME))
        heldout.set_model(model)

    def save(step: int) -> None:
        manager.save(checkpoint_number=step)
        if heldout is not None:
            heldout.prune()                     # the checkpoint just written names the best

    p, s, l = len(vocab_info.services), vocab_info.max_items, vocab_info.max_tokens
    progress = Progress(tc.log_every, tc.train_steps, resumed, (tc.batch_size, p * s, l),
                        printer=printer, heldout=heldout,
                        log_dir=os.path.join(out_dir, "logs", "train"),
                        bar=(printer is print and sys.stdout.isatty()) if progress_bar is None
                        else progress_bar)
    num_params = _count_params(model)
    printer(f"CLUE: {num_params:,} parameters, policy {policy} ({policy_reason}), "
            f"{replicas} replica(s) "
            f"({type(strategy).__name__}), global batch {tc.batch_size}, "
            f"{tc.train_steps} steps = {tc.train_steps * tc.batch_size / users:.2f} passes "
            f"over {users:,} pre-training users ({users_all - users:,} without a pair of "
            "services left out)"
            + (f", held-out loss on {eval_batches * tc.batch_size} users every "
               f"{heldout.every} steps" if heldout else ""))
    if resumed < tc.train_steps and not bool(state.stopped.numpy()):
        try:
            with _sigterm_as_interrupt(), raise_peer_lost(strategy, "training"):
                model.fit(
                    # An endless stream and exactly the steps left: fit never runs out.
                    ds, epochs=1, steps_per_epoch=tc.train_steps - resumed, verbose=0,
                    callbacks=[_NonFinite(), *([heldout] if heldout else []),
                               _CheckpointEvery(save, tc.checkpoint_every), progress,
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
            save(step)
            printer(f"interrupted at step {step}; checkpoint saved, re-run to resume")
            raise
    final_loss = progress.history[-1]["loss"] if progress.history else float("nan")
    previous = os.path.join(model_dir, "train_result.json")
    if not progress.history and tf.io.gfile.exists(previous):  # already finished earlier
        with tf.io.gfile.GFile(previous) as f:
            final_loss = json.load(f).get("final_loss", final_loss)
    steps = int(model.optimizer.iterations.numpy())
    best_step, best_loss = state.best
    history = state.history
    stopped = bool(state.stopped.numpy())
    if heldout is not None:
        with raise_peer_lost(strategy, "restoring the best step"):
            heldout.restore_best(steps)
        printer(f"kept step {best_step} (best held-out loss {best_loss:.4f} of "
                f"{len(history)} evaluations)"
                + (f"; stopped early at step {steps}: no better held-out loss in "
                   f"{tc.patience} evaluations" if stopped else ""))
    with raise_peer_lost(strategy, "saving"):
        save_keras_atomic(model, os.path.join(out_dir, "pretrainer.keras"))
    result = TrainResult(final_loss=final_loss, steps=steps, num_params=num_params,
                         precision=policy, replicas=replicas,
                         strategy=type(strategy).__name__, history=progress.history,
                         eval_loss=best_loss, resumed_from_step=resumed,
                         train_steps=tc.train_steps, users_pretraining=users,
                         users_without_pair=users_all - users, eval_users=eval_users,
                         best_step=best_step, best_eval_loss=best_loss,
                         evaluations=len(history), stopped_early=stopped,
                         eval_history=history, warnings=notes)
    if chief:
        write_json_atomic(os.path.join(model_dir, "train_result.json"), {
            **dataclasses.asdict(result),
            "model_config": cfg_lib.to_dict(model_config),
            "train_config": cfg_lib.to_dict(tc),
            "vocab_dir": vocab_dir,
        })
    else:
        tf.io.gfile.rmtree(out_dir)
    return result


def save_keras_atomic(model: keras.Model, path: str) -> None:
    """``model.save`` under a temporary name next to ``path``, then renamed
    (``tf.io.gfile.rename`` for a ``gs://`` path: an object appears only once uploaded)."""
    tmp = path + ".tmp.keras"
    model.save(tmp)
    if is_remote(path):
        tf.io.gfile.rename(tmp, path, overwrite=True)
    else:
        os.replace(tmp, path)


def load_pretrainer(path: str) -> CLUEPretrainer:
    return keras.saving.load_model(path, compile=False)
