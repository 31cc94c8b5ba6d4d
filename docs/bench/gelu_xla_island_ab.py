# Microbenchmark behind docs/PERFORMANCE.md, "Elementwise work under mixed_bfloat16":
# GELU forward + backward as plain TF ops against an XLA-compiled island whose rows
# are padded to a ladder of sizes (so XLA compiles a bounded set of shapes).
# Run: TF_CPP_MIN_LOG_LEVEL=3 python docs/bench/gelu_xla_island_ab.py
import os, time
os.environ["TF_CPP_MIN_LOG_LEVEL"]="3"
import tensorflow as tf, keras, numpy as np
F = 512
@tf.function(jit_compile=True)
def _fwd(x):
    cdf = 0.5 * (1.0 + tf.math.erf(x * 0.7071067811865476))
    return x * cdf, cdf + x * tf.exp(-0.5 * x * x) * 0.3989422804014327
def ladder(r):
    r = tf.maximum(r, 1)
    e = tf.cast(tf.math.floor(tf.math.log(tf.cast(r, tf.float32)) / np.log(2.0)), tf.int32)
    step = tf.bitwise.left_shift(1, tf.maximum(e - 3, 0))
    return (r + step - 1) // step * step
@tf.custom_gradient
def gelu_island(x):
    r = tf.shape(x)[0]
    xp = tf.pad(x, [[0, ladder(r) - r], [0, 0]])
    y, d = _fwd(xp)
    d = d[:r]
    return y[:r], lambda dy: dy * d
def bench(name, f, x, n=30):
    @tf.function
    def step(x):
        with tf.GradientTape() as t:
            t.watch(x); y = f(x); loss = tf.reduce_sum(y*1.0001)
        return t.gradient(loss, [x]), y
    for _ in range(3): step(x)
    t0 = time.perf_counter()
    for _ in range(n): r = step(x)
    print(f"{name:30s} {(time.perf_counter()-t0)/n*1e3:7.2f} ms"); return r
for N in [10600, 3001]:
    x = tf.random.normal([N, F])
    a = bench(f"graph {N}", keras.activations.gelu, x)
    b = bench(f"island {N}", gelu_island, x)
    print(" diff", float(tf.reduce_max(tf.abs(a[0][0]-b[0][0]))), float(tf.reduce_max(tf.abs(a[1]-b[1]))))
