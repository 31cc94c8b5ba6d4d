"""Packed child transformer: every real token of a batch's items in one stream.

The bucketed child (`clue_keras.buckets`) runs up to K separate transformer
calls whose shapes depend on the data, so XLA cannot compile them. Here the
real tokens of all items are laid end to end in one stream of length T, padded
up to a *rung* of a geometric ladder (``RUNGS_PER_OCTAVE`` rungs per doubling,
multiples of ``CHUNK``), and the whole child transformer stack runs on that
[rung, D] stream as one XLA-compiled function (an "island" inside the training
step): one compiled program per rung, so a few per training run.

Attention stays inside each item without cutting the stream into rows: the
stream is split into chunks of ``CHUNK`` queries, and each chunk attends to a
window of keys reaching ``L - 1`` tokens past either end, masked to the
query's own item (its *segment*). An item's tokens are contiguous and at most
L long, so each window holds all of them. The projections, the feed-forward
layers and the LayerNorms then run on real tokens plus the rung's slack only.

Exactness: each real token sees exactly its item's tokens (keys outside the
item are masked out), with the same position embeddings, weights and post-norm
block as ``TransformerLayer``; item vectors are the mean over the item's
tokens. So item vectors equal the padded computation up to float summation
order (tests/test_packed.py). Used for training steps only (``training=True``);
inference and export keep the bucketed or padded path, so a SavedModel needs no
XLA.
"""

from __future__ import annotations

import math
import weakref
from typing import Sequence

import tensorflow as tf
from keras import ops

#: Queries per attention chunk; rungs are multiples of it.
CHUNK = 64
#: Rungs per doubling of the stream length: each rung is at most ~9% above the
#: last, plus rounding to whole chunks (under 23% slack in all from 16 chunks on).
RUNGS_PER_OCTAVE = 8


def rung(n, chunk: int = CHUNK, per_octave: int = RUNGS_PER_OCTAVE) -> tf.Tensor:
    """int32 scalar: the smallest rung >= ``n`` tokens (``chunk`` when n <= chunk).

    Rungs are ``chunk * ceil(2 ** (j / per_octave))`` for j = 0, 1, ...: a
    geometric ladder, so a training run meets only a few distinct lengths.
    """
    units = tf.maximum(tf.cast(tf.math.ceil(tf.cast(n, tf.float64) / chunk), tf.float64), 1.0)
    j = tf.math.ceil(per_octave * tf.math.log(units) / math.log(2.0) - 1e-9)
    padded = tf.maximum(tf.math.ceil(tf.pow(tf.constant(2.0, tf.float64), j / per_octave) - 1e-9), units)
    return tf.cast(padded, tf.int32) * chunk


def pack_tokens(token_ids):
    """The real tokens of ``token_ids`` [N, L] (non-zero ids) as one stream.

    Returns (ids [T], positions [T] (the token's slot in its item),
    segments [T] (the item's row), T) in row-major order, so each item's tokens
    are contiguous.
    """
    where = tf.where(tf.not_equal(token_ids, 0))                       # [T, 2] int64
    ids = tf.gather_nd(token_ids, where)
    return ids, tf.cast(where[:, 1], tf.int32), tf.cast(where[:, 0], tf.int32), tf.shape(ids)[0]


def _window_attention(mha, x, seg, max_len: int, training):
    """Self-attention of ``mha`` (a built Keras MultiHeadAttention) on the stream
    x [R, D] (R a multiple of CHUNK), each token attending to its own segment."""
    r = tf.shape(x)[0]
    n = r // CHUNK
    pad = max_len - 1
    width = CHUNK + 2 * pad
    q = mha._query_dense(x[None])[0]                                     # [R, H, dh]
    k = mha._key_dense(x[None])[0]
    v = mha._value_dense(x[None])[0]
    window = tf.range(n)[:, None] * CHUNK + tf.range(width)[None, :]     # [n, width]
    k_win = tf.gather(tf.pad(k, [[pad, pad], [0, 0], [0, 0]]), window)   # [n, width, H, dh]
    v_win = tf.gather(tf.pad(v, [[pad, pad], [0, 0], [0, 0]]), window)
    seg_win = tf.gather(tf.pad(seg, [[pad, pad]], constant_values=-2), window)
    seg_q = tf.reshape(seg, [n, CHUNK])
    mask = tf.equal(seg_q[:, :, None], seg_win[:, None, :])             # [n, CHUNK, width]
    q = tf.reshape(q, [n, CHUNK, tf.shape(q)[1], tf.shape(q)[2]])
    out, _ = mha._compute_attention(q, k_win, v_win, attention_mask=mask, training=training)
    out = mha._output_dense(out)                                         # [n, CHUNK, D]
    return tf.reshape(out, [r, tf.shape(out)[-1]])


def packed_block(layer, x, seg, max_len: int, training):
    """One keras-hub ``TransformerEncoder`` block (``TransformerLayer``) on the stream."""
    residual = x
    if layer.normalize_first:
        x = layer._self_attention_layer_norm(x)
    x = _window_attention(layer._self_attention_layer, x, seg, max_len, training)
    x = layer._self_attention_dropout(x, training=training)
    x = x + residual
    if not layer.normalize_first:
        x = layer._self_attention_layer_norm(x)
    residual = x
    if layer.normalize_first:
        x = layer._feedforward_layer_norm(x)
    x = layer._feedforward_intermediate_dense(x)
    x = layer._feedforward_output_dense(x)
    x = layer._feedforward_dropout(x, training=training)
    x = x + residual
    if not layer.normalize_first:
        x = layer._feedforward_layer_norm(x)
    return x


# One compiled stack per encoder, kept outside it so that SavedModel export
# never sees the jit-compiled function.
_ISLANDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def packed_stack(owner, layers: Sequence, max_len: int, xla: bool = True):
    """fn(x [R, D], seg [R], training) -> [R, D]: ``layers`` on the stream, compiled
    by XLA (one program per rung R) unless ``xla`` is false."""
    key = (id(layers[0]) if layers else 0, max_len, xla)
    per_owner = _ISLANDS.setdefault(owner, {})
    if key not in per_owner:
        def run(x, seg, training):
            for layer in layers:
                x = packed_block(layer, x, seg, max_len, training)
            return x

        per_owner[key] = tf.function(run, jit_compile=xla, reduce_retracing=True)
    return per_owner[key]


def packed_items(embed, stack, pool_dtype, token_ids, max_len: int, training):
    """Item vectors [N, D] (zeros for padding items) of ``token_ids`` [N, L]:
    ``embed(ids, positions)`` -> [T, D] embeds the stream, ``stack`` (from
    :func:`packed_stack`) runs the transformer on it padded to its rung, and each
    item is the float32 mean of its tokens, cast to ``pool_dtype``."""
    ids, positions, seg, t = pack_tokens(token_ids)
    x = embed(ids, positions)
    r = rung(t)
    x = tf.pad(x, [[0, r - t], [0, 0]])
    seg_padded = tf.pad(seg, [[0, r - t]], constant_values=-1)
    y = stack(x, seg_padded, training)[:t]
    n = tf.shape(token_ids)[0]
    total = tf.math.unsorted_segment_sum(tf.cast(y, tf.float32), seg, n)
    count = tf.math.unsorted_segment_sum(tf.ones_like(seg, tf.float32), seg, n)
    return ops.cast(total / tf.maximum(count, 1.0)[:, None], pool_dtype)
