"""One process of `clue bench train --workers N` (library: clue_bench.train_multiworker).

    [TF_CONFIG=...] python -m clue_bench.train_worker SPEC_JSON

SPEC_JSON: {"preset", "batch_size" (GLOBAL), "fill", "precision", "steps",
"warmup", "collective_timeout_s"}. Without TF_CONFIG the process trains alone
(the single-process reference); with a multi-worker TF_CONFIG it is one task of
a MultiWorkerMirroredStrategy job. Either way it runs the same code as
`clue bench train` (``clue_bench.train.build_bench_model`` / ``time_fit``).

Under several workers it then times, alone and in the same processes, the
collectives one training step issues, with the step's own tensor sizes
(:func:`time_step_collectives`). Prints ``RESULT {json}`` last; exits 1 on an
error (the traceback on stderr).
"""

from __future__ import annotations

import json
import sys
import time


def _grad_parts(model, batch):
    """The real gradients of one step on this replica, flattened for strategy.run:
    per variable ("dense", g) or ("sparse", values, indices, dense_shape)."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss, _ = model.compute_contrastive_loss(batch, training=True)
    grads = tape.gradient(loss, model.trainable_variables)
    parts = []
    for g in grads:
        if g is None:
            continue
        if isinstance(g, tf.IndexedSlices):
            parts.append((g.values, g.indices, g.dense_shape))
        else:
            parts.append((g,))
    return parts


def time_step_collectives(strategy, model, ds, mc, global_batch: int, services: int,
                          repeats: int, warmup: int = 2) -> dict:
    """Seconds per repetition of the collectives one training step issues, run
    without the step's computation, in lockstep on every worker:

    * forward, ``clip_loss``: all-gather of the local projections [b, P, E]
      float32 and of the service mask [b, P]; all-reduce of the pair count;
    * backward of that all-gather: all-reduce of the gathered gradient [B, P, E]
      and all-gather of the row counts (TensorFlow's ``all_gather`` gradient);
    * the optimizer's all-reduce SUM of this step's real gradients (dense, and
      the embedding tables' IndexedSlices, which TensorFlow all-gathers);
    * the step report's all-reduce of loss and tokens, and Keras' cross-replica
      MEAN of the four logged scalars.

    Also returns the bytes this worker contributes per step.
    """
    import numpy as np
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync
    batch = next(iter(strategy.experimental_distribute_dataset(ds)))
    grad_parts = strategy.experimental_local_results(
        strategy.run(tf.function(lambda b: _grad_parts(model, b)), args=(batch,)))[0]
    grad_parts = [tuple(tf.identity(t) for t in p) for p in grad_parts]
    local_b = global_batch // replicas
    q = tf.random.normal((local_b, services, mc.projection_dim))
    mask = tf.ones((local_b, services), tf.int32)

    def replica_fn():
        ctx = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            tape.watch(q)
            keys = ctx.all_gather(q, axis=0)
            key_mask = ctx.all_gather(mask, axis=0)
            count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.constant(1.0))
            total = tf.reduce_sum(keys) + tf.cast(tf.reduce_sum(key_mask), tf.float32)
        dq = tape.gradient(total, q)
        grads = []
        for p in grad_parts:
            grads.append(tf.IndexedSlices(*p) if len(p) == 3 else p[0])
        reduced = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        scalars = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [count, tf.constant(2.0)])
        logs = [tf.reshape(v, [1]) for v in (count, scalars[0], scalars[1], dq[0, 0, 0])]
        first = [(r.values if isinstance(r, tf.IndexedSlices) else tf.reshape(r, [-1]))[:1]
                 for r in reduced]                    # small outputs; no densifying
        return logs, first

    @tf.function
    def comm_step():
        logs, first = strategy.run(replica_fn)
        means = [strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=0) for v in logs]
        return means, strategy.experimental_local_results(first)

    for _ in range(warmup):
        tf.nest.map_structure(lambda t: t.numpy(), comm_step())
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = comm_step()
    tf.nest.map_structure(lambda t: t.numpy(), out)
    seconds = (time.perf_counter() - t0) / repeats

    def nbytes(t):
        return int(np.prod(t.shape)) * t.dtype.size

    grad_bytes = sum(nbytes(p[0]) + (nbytes(p[1]) if len(p) == 3 else 0) for p in grad_parts)
    gather_bytes = nbytes(q) + nbytes(mask)
    return {"comm_time_per_step_s": seconds,
            "gradient_bytes_per_worker": grad_bytes,
            "sparse_gradients": sum(len(p) == 3 for p in grad_parts),
            "dense_gradients": sum(len(p) == 1 for p in grad_parts),
            "gathered_bytes_per_worker": gather_bytes,
            "gathered_grad_bytes": nbytes(q) * replicas}


def run(spec: dict) -> dict:
    """Builds the strategy from TF_CONFIG, then the bench model; times the steps
    (and, with several workers, the collectives)."""
    from clue_keras.distribute import get_strategy, is_chief, raise_peer_lost

    strategy = get_strategy(collective_timeout_s=spec.get("collective_timeout_s"))
    import tensorflow as tf

    from clue_bench.train import build_bench_model, forward_flops, time_fit_steps
    from clue_keras.config import param_count

    with raise_peer_lost(strategy, "the training bench"):
        model, ds, ids, mc, policy = build_bench_model(
            spec["preset"], spec["batch_size"], spec["fill"], spec["precision"],
            spec["steps"], strategy)
        timed = time_fit_steps(model, ds, spec["steps"], warmup=spec["warmup"])
        comm = {}
        if strategy.num_replicas_in_sync > 1:
            comm = time_step_collectives(strategy, model, ds, mc, int(ids.shape[0]),
                                         int(ids.shape[1]), repeats=spec["steps"])
    f = forward_flops(mc, ids)
    return {"preset": spec["preset"], "params": param_count(mc), "policy": policy,
            "strategy": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync,
            "chief": is_chief(strategy), "global_batch": int(ids.shape[0]),
            "global_batch_non_padding_tokens": f["real_tokens"],
            "step_time_s": timed["step_s"], "fit_time_per_step_s": timed["fit_s_per_step"],
            "non_padding_tokens_per_s": f["real_tokens"] / timed["step_s"],
            "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            **comm}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    result = run(json.loads(argv[0]))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
