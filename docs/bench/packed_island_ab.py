"""Microbenchmark behind docs/PERFORMANCE.md, "Packed child under XLA": forward +
backward of the clue-4m child transformer alone on one skewed batch of 32 users:
bucketed (the default), packed without XLA, packed compiled by XLA (one rung).

    TF_CPP_MIN_LOG_LEVEL=3 python docs/bench/packed_island_ab.py mixed_bfloat16
"""
import json, os, sys, time; os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np, tensorflow as tf, keras
from clue_keras.encoder import CLUEEncoder
from clue_keras.config import get_preset
from clue_keras.packed import packed_stack, pack_tokens, rung, packed_items
from clue_bench.train import synthetic_batch
pol = sys.argv[1]
mc = get_preset("clue-4m")
ids = synthetic_batch(mc, 32, seed=0)
enc = CLUEEncoder.from_config_dataclass(mc, dtype=pol, packed_child=True)
enc.build(enc.input_shape_for_build())
flat = tf.constant(ids.reshape(-1, mc.max_tokens))
mask = tf.reduce_any(flat != 0, -1)
emb = lambda i, p: enc.token_embedding(i) + enc.token_position(p)
def run(kind):
    with tf.GradientTape() as t:
        if kind == "bucketed":
            h = enc._items(flat, mask, False)
        else:
            h = packed_items(emb, packed_stack(enc, enc.child, mc.max_tokens, xla=kind == "xla"), enc.compute_dtype, flat, mc.max_tokens, True)
        loss = tf.reduce_sum(tf.cast(h, tf.float32) ** 2)
    g = t.gradient(loss, enc.trainable_variables)
    return loss, g
fns = {k: tf.function(lambda k=k: run(k)) for k in ("bucketed", "noxla", "xla")}
for k, f in fns.items():
    f(); f()
res = {k: [] for k in fns}
for r in range(3):
    for k, f in fns.items():
        t0 = time.perf_counter()
        for _ in range(3):
            l, g = f()
        float(l)
        res[k].append((time.perf_counter() - t0) / 3)
med = {k: float(np.median(v)) for k, v in res.items()}
print(pol, {k: round(v, 4) for k, v in med.items()})
json.dump({"policy": pol, "seconds": res, "median": med,
           "xla_flags": os.environ.get("XLA_FLAGS", "")},
          open(f"packed_island_ab_{pol}.json", "w"), indent=1)
