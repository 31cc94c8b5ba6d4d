"""Microbenchmark behind docs/PERFORMANCE.md, "Precision on an AMD EPYC with AVX512-BF16":
does XLA:CPU keep bfloat16 matrix products as fast as TensorFlow's oneDNN kernels?
A 2048^3 product and two of a clue-4m batch's feed-forward and fused-QKV shapes,
float32 and bfloat16, as a tf.function with and without jit_compile.

    TF_CPP_MIN_LOG_LEVEL=3 python docs/bench/xla_matmul.py
"""
import os, time, json
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf

def rate(fn, a, b, flops, n=10):
    fn(a, b)  # warm/compile
    t = time.perf_counter()
    for _ in range(n):
        r = fn(a, b)
    _ = r.numpy()
    return flops * n / (time.perf_counter() - t)

out = {}
for (m, k, n) in [(2048, 2048, 2048), (10600, 192, 512), (10600, 192, 576)]:
    for dt in (tf.float32, tf.bfloat16):
        a = tf.cast(tf.random.normal([m, k]), dt); b = tf.cast(tf.random.normal([k, n]), dt)
        g = tf.function(lambda x, y: tf.matmul(x, y))
        x = tf.function(lambda x, y: tf.matmul(x, y), jit_compile=True)
        f = 2 * m * k * n
        out[f"{m}x{k}x{n} {dt.name}"] = {"graph": rate(g, a, b, f) / 1e9, "xla": rate(x, a, b, f) / 1e9}
        print(f"{m}x{k}x{n} {dt.name}", {k2: round(v, 1) for k2, v in out[f'{m}x{k}x{n} {dt.name}'].items()}, "GFLOP/s", flush=True)
json.dump(out, open("xla_matmul.json", "w"), indent=1)
