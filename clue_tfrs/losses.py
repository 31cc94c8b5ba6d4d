"""Training and validation losses of the downstream models (:mod:`clue_tfrs.models`).

Sampled softmax: each positive is scored against its own item and M
negatives; in training the M negatives are drawn uniformly from the catalogue
once per batch and shared by every positive of the batch
(:func:`sampled_softmax_loss`, TensorFlow), in validation every positive has
its own fixed negatives (:func:`softmax_loss`, NumPy on the towers' logits).
Uniform negatives keep the objective aligned with the ``uni100`` evaluation
(the test positives are ranked among uniformly sampled items).
"""

from __future__ import annotations

import numpy as np

import clue_tfrs  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

__all__ = ["sampled_softmax_loss", "softmax_loss"]


def sampled_softmax_loss(query: tf.Tensor, positive: tf.Tensor, negatives: tf.Tensor,
                         positive_ids: tf.Tensor, negative_ids: tf.Tensor) -> tf.Tensor:
    """Mean softmax cross-entropy of each positive against shared negatives.

    Row b's logits are ``[<q_b, p_b>, <q_b, n_1>, ..., <q_b, n_M>]`` and its loss
    ``logsumexp(logits) - <q_b, p_b>``; a negative with the same item id as row
    b's positive (an accidental hit) is left out of that row.

    Args:
      query: float [B, D] query vectors.
      positive: float [B, D] candidate vectors of each row's positive.
      negatives: float [M, D] candidate vectors of the shared negatives.
      positive_ids: int [B] item ids of the positives.
      negative_ids: int [M] item ids of the negatives.

    Returns:
      float32 scalar, the mean over the B rows.
    """
    pos = tf.reduce_sum(query * positive, axis=-1, keepdims=True)                 # [B, 1]
    neg = tf.matmul(query, negatives, transpose_b=True)                            # [B, M]
    hit = tf.equal(tf.cast(positive_ids, tf.int64)[:, None],
                   tf.cast(negative_ids, tf.int64)[None, :])
    neg = tf.where(hit, tf.fill(tf.shape(neg), tf.constant(-1e9, neg.dtype)), neg)
    logits = tf.cast(tf.concat([pos, neg], axis=1), tf.float32)
    return tf.reduce_mean(tf.reduce_logsumexp(logits, axis=1) - logits[:, 0])


def softmax_loss(logits: np.ndarray) -> float:
    """Mean softmax cross-entropy of rows ``logits`` [N, 1 + K] whose column 0 is the
    positive (float64, exact)."""
    logits = np.asarray(logits, dtype=np.float64)
    top = logits.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return float(np.mean(lse - logits[:, 0])) if len(logits) else float("nan")
