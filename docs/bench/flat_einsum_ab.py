"""Microbenchmark behind docs/PERFORMANCE.md, "Precision on an AMD EPYC with AVX512-BF16":
the attention projections as Keras' EinsumDense against the same weights run as
2-D matmuls (as FlatDense does for the feed-forward), the whole bucketed training
step, alternating rounds in one process; checks the embeddings are equal first.

    TF_CPP_MIN_LOG_LEVEL=3 python docs/bench/flat_einsum_ab.py clue-4m mixed_bfloat16 3
"""
import os, sys, json, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np, tensorflow as tf, keras
from keras import ops
from clue_bench.train import bench_data, bench_model, _dataset, time_fit_steps

class FlatEinsumDense(keras.layers.EinsumDense):
    def call(self, inputs, training=None):
        lhs, out = self.equation.split("->"); x_sub, k_sub = lhs.split(",")
        contract = [c for c in k_sub if c in x_sub]; free = [c for c in k_sub if c not in x_sub]
        batch = x_sub[: len(x_sub) - len(contract)]
        assert x_sub == batch + "".join(contract) and out == batch + "".join(free), self.equation
        kshape = self.kernel.shape; nc = len(contract)
        din = int(np.prod(kshape[:nc])); dout = int(np.prod(kshape[nc:]))
        xs = ops.shape(inputs)
        y = ops.matmul(ops.reshape(inputs, (-1, din)), ops.reshape(self.kernel, (din, dout)))
        if self.bias is not None:
            y = ops.add(y, ops.reshape(self.bias, (dout,)))
        return ops.reshape(y, (*xs[: len(batch)], *kshape[nc:]))

def flatten(model):
    n = 0
    for l in model._flatten_layers(include_self=True, recursive=True):
        if type(l) is keras.layers.EinsumDense:
            l.__class__ = FlatEinsumDense; n += 1
    return n

preset, policy, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
ids, mc = bench_data(preset, 32)
strategy = tf.distribute.get_strategy()
a = bench_model(mc, policy, 32, 10, strategy, 5, 5)
b = bench_model(mc, policy, 32, 10, strategy, 5, 5)
b.set_weights(a.get_weights())
print("flattened", flatten(b), flush=True)
ds = _dataset(ids, 32)
# same loss on the same batch
x = next(iter(ds))
oa, ob = a.encoder(x["token_ids"]), b.encoder(x["token_ids"])
for k in oa:
    if oa[k].dtype.is_floating:
        print(k, "max |diff|", float(tf.reduce_max(tf.abs(tf.cast(oa[k], tf.float32) - tf.cast(ob[k], tf.float32)))))
res = {"keras_einsum": [], "flat_matmul": []}
for r in range(rounds):
    for name, m in (("keras_einsum", a), ("flat_matmul", b)):
        res[name].append(time_fit_steps(m, ds, 4, warmup=2 if r == 0 else 1)["step_s"])
    print(r, {k: round(v[-1], 4) for k, v in res.items()}, flush=True)
med = {k: float(np.median(v)) for k, v in res.items()}
print("median", med, "speed-up", med["keras_einsum"] / med["flat_matmul"])
json.dump({"preset": preset, "policy": policy, "rounds": res, "median": med}, open(f"flat_einsum_ab_{preset}_{policy}.json", "w"), indent=1)
