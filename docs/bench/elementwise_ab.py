# Microbenchmark behind docs/PERFORMANCE.md, "Elementwise work under mixed_bfloat16":
# forward + backward of GELU on [10600, 512] and of LayerNorm on [10600, 192]
# (a clue-4m bucketed batch), in bfloat16 and float32, several formulations.
# Run: TF_CPP_MIN_LOG_LEVEL=3 python docs/bench/elementwise_ab.py
import os, time
os.environ["TF_CPP_MIN_LOG_LEVEL"]="3"
import tensorflow as tf, numpy as np
import keras
from keras import ops
N, F, D = 10600, 512, 192
SQ2 = 1.4142135623730951; C = 0.3989422804014327

@tf.custom_gradient
def gelu_cg(x):
    x32 = tf.cast(x, tf.float32)
    cdf = 0.5 * (1.0 + tf.math.erf(x32 * (1.0 / SQ2)))
    y = tf.cast(x32 * cdf, x.dtype)
    def grad(dy):
        pdf = tf.exp(-0.5 * tf.square(x32)) * C
        return tf.cast(tf.cast(dy, tf.float32) * (cdf + x32 * pdf), x.dtype)
    return y, grad

def gelu_keras(x): return keras.activations.gelu(x)
def gelu_f32(x): return tf.cast(keras.activations.gelu(tf.cast(x, tf.float32)), x.dtype)
def gelu_tanh(x): return keras.activations.gelu(x, approximate=True)

def ln_keras(x, g, b): return ops.cast(ops.layer_normalization(x, g, b, -1, 1e-5), x.dtype)

@tf.custom_gradient
def ln_cg(x, g, b):
    x32 = tf.cast(x, tf.float32)
    mean, var = tf.nn.moments(x32, axes=[-1], keepdims=True)
    rstd = tf.math.rsqrt(var + 1e-5)
    xhat = (x32 - mean) * rstd
    y = tf.cast(xhat * g + b, x.dtype)
    def grad(dy):
        dy32 = tf.cast(dy, tf.float32)
        dxhat = dy32 * g
        dx = rstd * (dxhat - tf.reduce_mean(dxhat, -1, keepdims=True)
                     - xhat * tf.reduce_mean(dxhat * xhat, -1, keepdims=True))
        red = list(range(len(x.shape) - 1))
        return tf.cast(dx, x.dtype), tf.reduce_sum(dy32 * xhat, red), tf.reduce_sum(dy32, red)
    return y, grad

def bench(name, f, *args, n=30):
    @tf.function
    def step(*a):
        with tf.GradientTape() as t:
            t.watch(a)
            y = f(*a)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * 1.0001)
        return t.gradient(loss, a)
    for _ in range(3): step(*args)
    t0 = time.perf_counter()
    for _ in range(n): r = step(*args)
    [x.numpy() for x in r]
    print(f"{name:30s} {(time.perf_counter()-t0)/n*1e3:7.2f} ms")
    return r

for dt in ["bfloat16", "float32"]:
    x = tf.cast(tf.random.normal([N, F]), dt)
    a = bench(f"gelu keras {dt}", gelu_keras, x)
    bench(f"gelu f32-inside {dt}", gelu_f32, x)
    bench(f"gelu tanh {dt}", gelu_tanh, x)
    c = bench(f"gelu custom_grad {dt}", gelu_cg, x)
    print("  max grad diff", float(tf.reduce_max(tf.abs(tf.cast(a[0],tf.float32)-tf.cast(c[0],tf.float32)))))
    xl = tf.cast(tf.random.normal([N, D]), dt); g = tf.random.normal([D]); b = tf.random.normal([D])
    a = bench(f"ln keras {dt}", ln_keras, xl, g, b)
    c = bench(f"ln custom_grad {dt}", ln_cg, xl, g, b)
    print("  max grad diff", [float(tf.reduce_max(tf.abs(tf.cast(u,tf.float32)-tf.cast(v,tf.float32)))) for u,v in zip(a,c)])

def ln_fbn(x, g, b):
    shp = tf.shape(x)
    x32 = tf.cast(x, tf.float32)
    r = tf.reduce_prod(shp[:-1])
    x4 = tf.reshape(x32, [1, r, shp[-1], 1])
    ones = tf.ones([r], tf.float32); zeros = tf.zeros([r], tf.float32)
    y, _, _ = tf.compat.v1.nn.fused_batch_norm(x4, ones, zeros, epsilon=1e-5, data_format="NCHW")[:3]
    y = tf.reshape(y, shp) * g + b
    return tf.cast(y, x.dtype)
print("----")
for dt in ["bfloat16", "float32"]:
    xl = tf.cast(tf.random.normal([N, D]), dt); g = tf.random.normal([D]); b = tf.random.normal([D])
    a = bench(f"ln keras {dt}", ln_keras, xl, g, b)
    c = bench(f"ln fused_bn {dt}", ln_fbn, xl, g, b)
    print("  max grad diff", [float(tf.reduce_max(tf.abs(tf.cast(u,tf.float32)-tf.cast(v,tf.float32)))) for u,v in zip(a,c)])
