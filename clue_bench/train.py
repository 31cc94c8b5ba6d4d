"""`clue bench train`: training throughput against a matmul measured in the same run.

Data: a synthetic batch with skewed lengths (:func:`synthetic_batch`), or real
preprocessed records (``records``: the output of BehaviorPreprocess / `clue
prepare`, read by the Trainer's reader). Modes: the encoder padded (every real
item on L tokens, every history on S items) and bucketed by length
(`clue_keras.buckets`); :func:`bench_train` times both in one process, with the
padding share each computes.
"""

from __future__ import annotations

import os
import time
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from clue_keras.config import ModelConfig, TrainConfig, get_preset, param_count
from clue_keras.encoder import DEFAULT_CHILD_BUCKETS, DEFAULT_PARENT_BUCKETS, auto_buckets
from clue_keras.precision import resolve_policy
from clue_keras.optimizer import make_optimizer
from clue_bench.flops import forward_flops  # noqa: F401  (re-exported: clue_bench.train.forward_flops)

#: Modes: the encoder padded (real items gathered, every slot of them computed),
#: bucketed by length, with static shapes (every item slot) compiled by XLA, or
#: packed: the child on one stream of real tokens compiled by XLA per length rung
#: (`clue_keras.packed`), the parent bucketed.
MODES = ("padded", "bucketed", "xla", "packed")
DEFAULT_MODES = ("padded", "bucketed")
LENGTHS = ("skewed", "uniform")

#: Skewed synthetic lengths (log-normal, clipped), close to `clue prepare` on
#: `clue synth` data (clue-4m: median 7 of 24 ids per item, 10 of 32 items per
#: non-empty history, 27% of (user, service) empty).
TOKEN_MEDIAN, TOKEN_SIGMA = 0.3, 0.45       # ids per item incl. service token, x L
ITEM_MEDIAN, ITEM_SIGMA = 0.3, 0.85         # items per non-empty history, x S
SERVICE_PRESENT = 0.75                      # P(a user has a service); >= 2 kept


def _skewed_user(rng, mc: ModelConfig, services: int, out: np.ndarray) -> None:
    s, l = mc.max_items, mc.max_tokens
    present = np.zeros(services, bool)
    while present.sum() < min(2, services):       # pre-training keeps users with >= 2
        present = rng.random(services) < SERVICE_PRESENT
    for p in np.flatnonzero(present):
        n_items = int(np.clip(np.ceil(rng.lognormal(np.log(ITEM_MEDIAN * s), ITEM_SIGMA)), 1, s))
        for i in range(n_items):
            n_tok = int(np.clip(np.round(rng.lognormal(np.log(TOKEN_MEDIAN * l), TOKEN_SIGMA)),
                                min(2, l), l))
            out[p, i, :n_tok] = rng.integers(3, mc.vocab_size, n_tok)


def synthetic_batch(mc: ModelConfig, batch: int, services: int = 3, fill: float = 0.5,
                    seed: int = 0, lengths: str = "skewed") -> np.ndarray:
    """int32 [B, P, S, L], items left-aligned, tokens left-aligned.

    ``skewed``: per user each service is present with probability
    ``SERVICE_PRESENT`` (drawn again until >= 2 are); a present history has
    ``clip(ceil(LogNormal(ln(0.3 S), 0.85)), 1, S)`` items, each with
    ``clip(round(LogNormal(ln(0.3 L), 0.45)), 2, L)`` ids (the first one the
    service token): many short items and histories, a few long, some cut at S or L.
    ``uniform``: per (user, service) a uniform 1..2*fill*S items, each with
    1..2*fill*L tokens (so about ``fill`` of the slots are real on average).
    """
    if lengths not in LENGTHS:
        raise ValueError(f"lengths must be one of {LENGTHS}, got {lengths!r}")
    rng = np.random.default_rng(seed)
    s, l = mc.max_items, mc.max_tokens
    ids = np.zeros((batch, services, s, l), np.int32)
    for u in range(batch):
        if lengths == "skewed":
            _skewed_user(rng, mc, services, ids[u])
            continue
        for p in range(services):
            n_items = int(rng.integers(1, max(2, int(2 * fill * s)) + 1))
            for i in range(min(n_items, s)):
                n_tok = int(min(l, rng.integers(1, max(2, int(2 * fill * l)) + 1)))
                ids[u, p, i, :n_tok] = rng.integers(3, mc.vocab_size, n_tok)
    return ids


def records_dataset(records: str, mc: ModelConfig, batch_size: int,
                    seed: int = 0) -> Tuple[tf.data.Dataset, ModelConfig]:
    """The Trainer's own endless stream over real records (``{"token_ids"}`` global
    batches: parsed, shuffled with ``seed``, users with >= 2 services), and ``mc``
    with the records' S, L (and a vocabulary at least theirs).

    ``records``: a `clue prepare` output directory (``vocab/``, ``Split-train/``).
    """
    from clue_keras.data.input import make_dataset
    from clue_keras.tokenizer import load_vocab_info

    vocab_dir, train_dir = os.path.join(records, "vocab"), os.path.join(records, "Split-train")
    if not (tf.io.gfile.isdir(vocab_dir) and tf.io.gfile.isdir(train_dir)):
        raise FileNotFoundError(f"{records}: expected vocab/ and Split-train/ "
                                "(the output of `clue prepare --out DIR`)")
    vi = load_vocab_info(vocab_dir)
    mc = mc.replace(max_items=vi.max_items, max_tokens=vi.max_tokens,
                    vocab_size=max(mc.vocab_size, vi.vocab_size))
    ds = make_dataset(os.path.join(train_dir, "*"), vi, batch_size, shuffle=True, repeat=True,
                      seed=seed, min_services=2)
    return ds.map(lambda x: {"token_ids": x["token_ids"]}), mc


def records_batches(records: str, mc: ModelConfig, batch_size: int, batches: int,
                    seed: int = 0) -> Tuple[np.ndarray, ModelConfig]:
    """``batches`` global batches of :func:`records_dataset`, concatenated
    (int32 [batches*B, P, S, L]), and the records' ``mc``."""
    ds, mc = records_dataset(records, mc, batch_size, seed)
    ids = [b["token_ids"] for b in ds.take(batches).as_numpy_iterator()]
    return np.concatenate(ids).astype(np.int32), mc


def matmul_flops_per_s(dtype: tf.DType, n: int = 2048, repeats: int = 10) -> float:
    a = tf.random.normal((n, n), dtype=tf.float32)
    a = tf.cast(a, dtype)
    f = tf.function(lambda x: tf.matmul(x, x), autograph=False)
    f(a).numpy()
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = f(a)
    out.numpy()
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0)


def bench_data(preset: str, batch_size: int, fill: float = 0.5, lengths: str = "skewed",
               records: Optional[str] = None, batches: int = 1,
               seed: int = 0) -> Tuple[np.ndarray, ModelConfig]:
    """(ids, mc): ``batches`` GLOBAL batches concatenated (synthetic: one), the preset."""
    mc = get_preset(preset)
    if records:
        return records_batches(records, mc, batch_size, batches, seed)
    return synthetic_batch(mc, batch_size, fill=fill, seed=seed, lengths=lengths), mc


def bench_model(mc: ModelConfig, policy: str, batch_size: int, steps: int,
                strategy: tf.distribute.Strategy, child_buckets: int, parent_buckets: int,
                xla: bool = False, packed: bool = False):
    """A compiled pre-trainer under ``strategy``: no XLA, as the Trainer compiles it,
    or with ``xla`` the encoder with static shapes and ``jit_compile=True``, or
    with ``packed`` the child packed (an XLA island in the training step)."""
    from clue_keras.distribute import adapt_keras_model
    from clue_keras.encoder import CLUEEncoder
    from clue_keras.pretrainer import CLUEPretrainer

    tc = TrainConfig(batch_size=batch_size, train_steps=10 * steps)
    with strategy.scope():
        # clue_keras.train.build_pretrainer, with the bucket counts given.
        encoder = CLUEEncoder.from_config_dataclass(mc, dtype=policy, child_buckets=child_buckets,
                                                    parent_buckets=parent_buckets,
                                                    static_shapes=xla, packed_child=packed)
        model = CLUEPretrainer(encoder, projection_dim=mc.projection_dim,
                               logit_scale_init=mc.logit_scale_init,
                               logit_scale_max=mc.logit_scale_max, dtype=policy)
        model.build(encoder.input_shape_for_build())
        model.compile(optimizer=make_optimizer(tc, policy), jit_compile=xla)
    adapt_keras_model(model, strategy)
    return model


def _dataset(ids: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Endless dataset cycling through the global batches of ``ids``."""
    from clue_keras.distribute import shard_by_data

    ds = tf.data.Dataset.from_tensor_slices({"token_ids": ids}).batch(batch_size).cache()
    return shard_by_data(ds.repeat())


def build_bench_model(preset: str, batch_size: int, fill: float = 0.5,
                      precision: str = "auto", steps: int = 20,
                      strategy: Optional[tf.distribute.Strategy] = None,
                      lengths: str = "skewed", child_buckets: Optional[int] = None,
                      parent_buckets: Optional[int] = None):
    """(model, dataset, ids, mc, policy) of the training bench: a compiled
    pre-trainer under ``strategy`` (the encoder's default bucketing unless given)
    and an endless dataset repeating one synthetic GLOBAL batch ``ids``. Under a
    multi-worker strategy every worker builds the same batch and keeps its
    replicas' rows of it (``shard_by_data``), so the global batch equals the
    single-process one."""
    strategy = strategy or tf.distribute.get_strategy()
    if batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f"global batch {batch_size} is not divisible by the "
                         f"{strategy.num_replicas_in_sync} replicas")
    ids, mc = bench_data(preset, batch_size, fill, lengths)
    policy = resolve_policy(precision, mc.hidden_dim)
    model = bench_model(mc, policy, batch_size, steps, strategy, child_buckets, parent_buckets)
    return model, _dataset(ids, batch_size), ids, mc, policy


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

    if warmup:
        model.fit(ds, steps_per_epoch=warmup, epochs=1, verbose=0)
    del ends[:]
    t0 = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[_Clock()])
    total = time.perf_counter() - t0
    return {"fit_s_per_step": total / steps, "step_s": (ends[-1] - ends[0]) / (steps - 1)}


def _buckets_of(mode: str, buckets: int, parent_buckets: Optional[int]) -> Tuple[int, int]:
    if mode not in ("bucketed", "packed"):
        return 0, 0
    return buckets, buckets if parent_buckets is None else parent_buckets


def bench_train(preset: str, steps: int = 20, batch_size: int = 32, fill: float = 0.5,
                precision: str = "auto", strategy: Optional[tf.distribute.Strategy] = None,
                lengths: str = "skewed", records: Optional[str] = None,
                modes: Sequence[str] = DEFAULT_MODES, buckets: int = DEFAULT_CHILD_BUCKETS,
                parent_buckets: Optional[int] = None, rounds: int = 1,
                warmup: int = 3, profile_dir: Optional[str] = None) -> Dict[str, object]:
    """Times each of ``modes`` (``padded``, ``bucketed`` with ``buckets`` length
    buckets for the child and ``parent_buckets``, default the same, for the
    parent; ``xla``: static shapes under XLA; ``packed``: the child packed,
    the parent bucketed) on the same data in this process, in ``rounds`` alternating rounds
    (the median per mode), then a matmul in the policy's compute dtype.

    With ``records`` the data are ``steps`` global batches of real records (each
    timed step a different one); else one synthetic batch (``lengths``).
    With ``records``, ``input_pipeline``: the last mode's step time fed by the
    Trainer's reader (parsing and shuffling the TFRecords while it trains),
    timed in each round right after the in-memory modes (the median of the
    rounds), over its step time on the same batches, in the same order, held
    in memory (``ratio``: 1.0 = the input pipeline costs nothing).
    With ``profile_dir``, ``profile``: ``steps`` more steps of the last mode
    under the TensorFlow profiler, its kernels ranked (:mod:`clue_bench.profile`).
    Per mode: ``step_time_s`` (steady state), ``real_tokens_per_s`` (non-zero
    token ids, as the Trainer's ``tokens``), the padding shares of computed
    positions (child tokens, parent items, both together), achieved FLOP/s
    (fwd + bwd = 3 x fwd, over what that mode computes) and its fraction of
    the matmul.
    """
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"modes must be among {MODES}, got {list(modes)}")
    if steps < 2 or rounds < 1:
        raise ValueError(f"need steps >= 2 and rounds >= 1, got {steps}, {rounds}")
    strategy = strategy or tf.distribute.get_strategy()
    if batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f"global batch {batch_size} is not divisible by the "
                         f"{strategy.num_replicas_in_sync} replicas")
    ids, mc = bench_data(preset, batch_size, fill, lengths, records,
                         batches=steps if records else 1)
    policy = resolve_policy(precision, mc.hidden_dim)
    ds = _dataset(ids, batch_size)
    models = {m: bench_model(mc, policy, batch_size, steps, strategy,
                             *_buckets_of(m, buckets, parent_buckets), xla=m == "xla",
                             packed=m == "packed")
              for m in modes}
    times: Dict[str, list] = {m: [] for m in modes}
    streamed = []
    for r in range(rounds):
        for m in modes:
            times[m].append(time_fit_steps(models[m], ds, steps,
                                           warmup=warmup if r == 0 else 0)["step_s"])
        if records:  # the last mode fed by the Trainer's reader: the same batches
            from clue_keras.distribute import shard_by_data

            # A new reader with the seed of ``ids`` yields exactly those batches in
            # that order, so only the feeding differs (the model is warm by now).
            reader = records_dataset(records, mc, batch_size, seed=0)[0].prefetch(2)
            streamed.append(time_fit_steps(models[modes[-1]], shard_by_data(reader), steps,
                                           warmup=0)["step_s"])
    compute_dtype = {"mixed_bfloat16": tf.bfloat16, "mixed_float16": tf.float16}.get(
        policy, tf.float32)
    mm = matmul_flops_per_s(compute_dtype)
    result: Dict[str, object] = {
        "preset": preset, "params": param_count(mc), "policy": policy,
        "replicas": strategy.num_replicas_in_sync, "global_batch": batch_size,
        "data": f"records {records}" if records else f"synthetic {lengths}",
        "batches": ids.shape[0] // batch_size, "S": mc.max_items, "L": mc.max_tokens,
        "buckets": f"child {buckets}, parent "
                   f"{buckets if parent_buckets is None else parent_buckets}",
        "encoder_default": "child {}, parent {} (width {})".format(
            auto_buckets(mc.hidden_dim, None, DEFAULT_CHILD_BUCKETS),
            auto_buckets(mc.hidden_dim, None, DEFAULT_PARENT_BUCKETS), mc.hidden_dim),
        "matmul_flop_per_s": mm,
    }
    for m in modes:
        step_s = float(np.median(times[m]))
        f = forward_flops(mc, ids, *_buckets_of(m, buckets, parent_buckets),
                          batch_size=batch_size, static_shapes=m == "xla",
                          packed_child=m == "packed")
        achieved = 3 * f["flops"] / step_s                               # fwd + bwd ~ 3x fwd
        result[m] = {
            "step_time_s": step_s,
            "real_tokens_per_s": f["child_tokens_real"] / step_s,
            "child_padding_share": 1 - f["child_tokens_real"] / max(f["child_tokens_computed"], 1),
            "parent_padding_share": 1 - f["parent_items_real"] / max(f["parent_items_computed"], 1),
            "padding_share_of_computed_tokens": 1 - f["real_tokens"] / max(f["computed_tokens"], 1),
            "achieved_flop_per_s": achieved,
            "fraction_of_matmul": achieved / mm,
        }
    if records:
        last = modes[-1]
        result["input_pipeline"] = {"mode": last, "streamed_step_s": float(np.median(streamed)),
                                    "in_memory_step_s": result[last]["step_time_s"],
                                    "rounds": rounds, "streamed_rounds_s": streamed,
                                    "in_memory_rounds_s": times[last]}
        result["input_pipeline"]["ratio"] = (result["input_pipeline"]["streamed_step_s"]
                                             / result[last]["step_time_s"])
    if profile_dir:
        from clue_bench.profile import profile_fit, rank_ops

        trace = profile_fit(models[modes[-1]], ds, steps, profile_dir)
        result["profile"] = {"mode": modes[-1], **rank_ops(trace, steps)}
    for m in ("bucketed", "xla", "packed"):
        if "padded" in models and m in models:
            result[f"speedup_{m}_vs_padded"] = (result["padded"]["step_time_s"]
                                                / result[m]["step_time_s"])
    return result
