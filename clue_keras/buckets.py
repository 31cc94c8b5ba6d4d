"""Length buckets: run a sequence model on the real positions of each row only.

The encoder pads every item to L tokens and every (user, service) history to S
items. Here the rows (items, or histories) are grouped into at most K buckets
by their *extent* (1 + the index of their last real position), each bucket is
trimmed to its width and run through ``fn`` separately, and the per-row results
are scattered back in the original order.

Exactness: a row's real positions all lie inside its bucket's width, and the
positions cut off are padding that the transformer masks as attention keys
and the masked mean drops as queries; position embeddings are a prefix
(``arange(width)``) of the padded ones. So the results equal the padded
computation up to float summation order (tests/test_packing.py).

The widths are chosen per batch, in the graph, to minimise the positions
computed, ``sum_k width_k * rows_k`` (:func:`optimal_widths`, an exact dynamic
programme over the histogram of extents); the last width is the batch's
longest row. Rows of extent 0 (all padding) are not computed; they get zeros.
"""

from __future__ import annotations

from typing import Callable, Sequence

import tensorflow as tf

_INF = tf.int64.max // 4


def extents(mask) -> tf.Tensor:
    """int32 [N]: 1 + index of the last true entry of each row of ``mask`` [N, T]
    (0 for a row with none)."""
    mask = tf.convert_to_tensor(mask)
    t = tf.shape(mask)[-1]
    pos = tf.range(1, t + 1, dtype=tf.int32)
    return tf.reduce_max(tf.where(mask, pos[None, :], 0), axis=-1)


def optimal_widths(ext, max_len: int, k: int) -> tf.Tensor:
    """int32 [k], non-decreasing: bucket widths minimising ``sum_j width_j * count_j``
    where a row of extent e > 0 goes to the first bucket with ``e <= width``.

    ``ext``: int32 [N] in [0, max_len]. The last width is max(ext) (0 when there
    is no real row); a repeated width is an empty bucket. Exact dynamic programme
    over the histogram of extents, O(k * max_len^2) on scalars: cheap next to
    the transformer.
    """
    if k < 1:
        raise ValueError(f"need at least one bucket, got {k}")
    ext = tf.cast(tf.reshape(ext, [-1]), tf.int32)
    hist = tf.math.bincount(ext, minlength=max_len + 1, maxlength=max_len + 1, dtype=tf.int64)
    hist = tf.concat([tf.zeros([1], tf.int64), hist[1:]], axis=0)          # extent 0: not computed
    cum = tf.cumsum(hist)                              # cum[w] = rows with 1 <= e <= w
    w = tf.range(max_len + 1, dtype=tf.int64)
    # cost[v, w]: one bucket holding the rows with v < e <= w, trimmed to w.
    cost = tf.where(w[:, None] <= w[None, :],
                    w[None, :] * (cum[None, :] - cum[:, None]), _INF)
    best = cost[0]                                     # best[w]: one bucket up to w
    choices = []
    for _ in range(k - 1):
        total = best[:, None] + cost                   # [previous width v, width w]
        choices.append(tf.argmin(total, axis=0, output_type=tf.int32))
        best = tf.reduce_min(total, axis=0)
    widths = [tf.reduce_max(tf.concat([ext, [0]], axis=0))]
    for choice in reversed(choices):
        widths.append(tf.gather(choice, widths[-1]))
    return tf.stack(widths[::-1])


def bucket_ids(ext, widths) -> tf.Tensor:
    """int32 [N]: the first bucket whose width holds each row's extent."""
    return tf.reduce_sum(tf.cast(widths[None, :] < ext[:, None], tf.int32), axis=-1)


def computed_positions(ext, widths) -> tf.Tensor:
    """int64 scalar: positions computed by the bucketed run (rows of extent 0 excluded)."""
    ext = tf.cast(ext, tf.int32)
    real = ext > 0
    chosen = tf.gather(widths, tf.boolean_mask(bucket_ids(ext, widths), real))
    return tf.reduce_sum(tf.cast(chosen, tf.int64))


def bucketed_map(fn: Callable[..., tf.Tensor], rows: Sequence[tf.Tensor], ext, max_len: int,
                 k: int, out_dim: int, dtype) -> tf.Tensor:
    """``fn`` on the real rows, bucket by bucket, scattered back: [N, out_dim].

    Args:
      fn: called once per bucket with the bucket's rows of each tensor in
        ``rows``, trimmed to the bucket's width along axis 1; returns
        [rows in the bucket, out_dim].
      rows: tensors [N, T, ...] with the same N and T (e.g. token ids; or item
        vectors and their mask).
      ext: int32 [N], each row's extent (:func:`extents`); rows of extent 0 get
        zeros and are not passed to ``fn``.
      max_len: T, static.
      k: number of buckets.
      out_dim, dtype: of ``fn``'s output.
    """
    ext = tf.cast(ext, tf.int32)
    tf.debugging.assert_less_equal(ext, max_len, message=f"rows longer than {max_len}")
    widths = optimal_widths(ext, max_len, k)
    ids = bucket_ids(ext, widths)
    real = ext > 0
    indices, outputs = [], []
    for j in range(k):
        sel = tf.where(tf.logical_and(real, tf.equal(ids, j)))[:, 0]
        width = tf.maximum(widths[j], 1)               # an empty bucket: any width
        trimmed = [tf.gather(r, sel)[:, :width] for r in rows]
        outputs.append(tf.cast(fn(*trimmed), dtype))
        indices.append(sel)
    n = tf.shape(ext, out_type=tf.int64)[0]
    return tf.scatter_nd(tf.concat(indices, axis=0)[:, None], tf.concat(outputs, axis=0),
                         tf.stack([n, tf.constant(out_dim, tf.int64)]))
