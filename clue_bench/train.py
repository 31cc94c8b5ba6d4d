"""`clue bench train`: training throughput against a matmul measured in the same run."""

from __future__ import annotations

import time
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from clue_keras.config import ModelConfig, TrainConfig, get_preset, param_count
from clue_keras.precision import resolve_policy
from clue_keras.optimizer import make_optimizer
from clue_keras.train import build_pretrainer


def synthetic_batch(mc: ModelConfig, batch: int, services: int = 3, fill: float = 0.5,
                    seed: int = 0) -> np.ndarray:
    """int32 [B, P, S, L]: per (user, service) a uniform 1..2*fill*S items, each with
    1..2*fill*L tokens (so about ``fill`` of the slots are real on average)."""
    rng = np.random.default_rng(seed)
    s, l = mc.max_items, mc.max_tokens
    ids = np.zeros((batch, services, s, l), np.int32)
    for u in range(batch):
        for p in range(services):
            n_items = int(rng.integers(1, max(2, int(2 * fill * s)) + 1))
            for i in range(min(n_items, s)):
                n_tok = int(min(l, rng.integers(1, max(2, int(2 * fill * l)) + 1)))
                ids[u, p, i, :n_tok] = rng.integers(3, mc.vocab_size, n_tok)
    return ids


def forward_flops(mc: ModelConfig, ids: np.ndarray) -> Dict[str, float]:
    """Multiply-adds x 2 of one forward pass over what the encoder actually computes.

    The child transformer runs on real items only (all L slots of each, padding
    tokens included); the parent on all S slots of every (user, service).
    """
    d, ff = mc.hidden_dim, mc.intermediate_dim
    real_items = int(np.any(ids != 0, axis=-1).sum())
    b, p, s, l = ids.shape

    def block(seq_len, n_seqs):
        per_token = 2 * (4 * d * d + 2 * d * ff) + 2 * 2 * seq_len * d
        return n_seqs * seq_len * per_token

    child = mc.child_layers * block(l, real_items)
    parent = mc.parent_layers * block(s, b * p)
    computed_tokens = real_items * l + b * p * s
    real_tokens = int((ids != 0).sum()) + real_items
    return {"flops": float(child + parent), "computed_tokens": computed_tokens,
            "real_tokens": real_tokens}


def matmul_flops_per_s(dtype: tf.DType, n: int = 2048, repeats: int = 10) -> float:
    a = tf.random.normal((n, n), dtype=tf.float32)
    a = tf.cast(a, dtype)
    f = tf.function(lambda x: tf.matmul(x, x))
    f(a).numpy()
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = f(a)
    out.numpy()
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0)


def build_bench_model(preset: str, batch_size: int, fill: float = 0.5,
                      precision: str = "auto", steps: int = 20,
                      strategy: Optional[tf.distribute.Strategy] = None):
    """(model, dataset, ids, mc, policy) of the training bench: a compiled
    pre-trainer under ``strategy`` and an endless dataset repeating one synthetic
    GLOBAL batch ``ids``. Under a multi-worker strategy every worker builds the
    same batch and keeps its replicas' rows of it (``shard_by_data``), so the
    global batch equals the single-process one."""
    from clue_keras.distribute import adapt_keras_model, shard_by_data

    mc = get_preset(preset)
    policy = resolve_policy(precision)
    strategy = strategy or tf.distribute.get_strategy()
    if batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f"global batch {batch_size} is not divisible by the "
                         f"{strategy.num_replicas_in_sync} replicas")
    ids = synthetic_batch(mc, batch_size, fill=fill)
    ds = shard_by_data(tf.data.Dataset.from_tensors({"token_ids": ids}).repeat())
    tc = TrainConfig(batch_size=batch_size, train_steps=10 * steps)
    with strategy.scope():
        model = build_pretrainer(mc, policy)
        model.compile(optimizer=make_optimizer(tc, policy))
    adapt_keras_model(model, strategy)
    return model, ds, ids, mc, policy


def time_fit(model, ds, steps: int, warmup: int = 3) -> float:
    """Seconds per optimizer step of ``model.fit`` over ``steps`` steps, after
    ``warmup`` steps that trace and warm up."""
    model.fit(ds, steps_per_epoch=warmup, epochs=1, verbose=0)
    t0 = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    return (time.perf_counter() - t0) / steps


def time_fit_steps(model, ds, steps: int, warmup: int = 3) -> Dict[str, float]:
    """Like :func:`time_fit`, two ways: ``fit_s_per_step`` is the whole timed
    ``fit`` call over ``steps`` (its per-call set-up included, as in
    :func:`time_fit`); ``step_s`` is the steady state, from the end of the
    first timed step to the end of the last (``steps - 1`` steps; each step's
    logs are fetched, so the clock waits for the step). Under a multi-worker
    strategy the steady state also leaves out the workers' different start
    times, which the first step's collectives absorb."""
    import keras

    if steps < 2:
        raise ValueError(f"need at least 2 timed steps, got {steps}")
    ends = []

    class _Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            tf.nest.map_structure(np.asarray, logs)
            ends.append(time.perf_counter())

    model.fit(ds, steps_per_epoch=warmup, epochs=1, verbose=0)
    del ends[:]
    t0 = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[_Clock()])
    total = time.perf_counter() - t0
    return {"fit_s_per_step": total / steps, "step_s": (ends[-1] - ends[0]) / (steps - 1)}


def bench_train(preset: str, steps: int = 20, batch_size: int = 32, fill: float = 0.5,
                precision: str = "auto", strategy: Optional[tf.distribute.Strategy] = None
                ) -> Dict[str, object]:
    strategy = strategy or tf.distribute.get_strategy()
    model, ds, ids, mc, policy = build_bench_model(preset, batch_size, fill, precision,
                                                   steps, strategy)
    step_s = time_fit(model, ds, steps)
    compute_dtype = {"mixed_bfloat16": tf.bfloat16, "mixed_float16": tf.float16}.get(
        policy, tf.float32)
    mm = matmul_flops_per_s(compute_dtype)
    f = forward_flops(mc, ids)
    achieved = 3 * f["flops"] / step_s                                   # fwd + bwd ~ 3x fwd
    return {
        "preset": preset, "params": param_count(mc), "policy": policy,
        "replicas": strategy.num_replicas_in_sync, "global_batch": batch_size,
        "step_time_s": step_s,
        "non_padding_tokens_per_s": f["real_tokens"] / step_s,
        "padding_share_of_computed_tokens": 1 - f["real_tokens"] / f["computed_tokens"],
        "achieved_flop_per_s": achieved,
        "matmul_flop_per_s": mm,
        "fraction_of_matmul": achieved / mm,
    }
