"""CLIP-style symmetric contrastive loss over services (paper eq. 4).

For every ordered pair of services (A, B) a user has, the user's projected
embedding in A is the query and the same user's embedding in B is the positive
among the embeddings in B of every user of the GLOBAL batch:

    l_{u,A,B} = -log softmax_v(tau * <f(z_{u,A}), f(z_{v,B})>)[u]

The loss is the mean of l over all valid (u, A, B) terms; with two services
that is exactly the paper's (l_{u,A,B} + l_{u,B,A}) / 2 averaged over users.
Columns of users without service B are excluded from the softmax.

Distribution: under a ``tf.distribute`` strategy each replica scores its local
queries against the all-gathered keys of every replica. ``all_gather`` carries
gradients back to the replica that owns each key, so after the usual SUM of
gradients across replicas the update equals the single-device one on the same
global batch. Each replica returns ``local_sum / global_count``; summing those
over replicas gives the global mean.
"""

from __future__ import annotations

import tensorflow as tf

_NEG = -1e9


def _replica_context():
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return None
    return ctx


def clip_loss(embeddings, service_mask, logit_scale):
    """Contrastive loss of one replica's rows against the global batch.

    Args:
      embeddings: float [b, P, E], L2-normalised projections f(z) of the local rows.
      service_mask: bool [b, P], true where the user has the service.
      logit_scale: float scalar tau (already clipped).

    Returns:
      (loss, num_terms): float32 scalar ``local_sum / global_count`` and the
      float32 global number of (user, A, B) terms. loss is 0 (not NaN) when the
      batch holds no user with two services.
    """
    q = tf.cast(embeddings, tf.float32)
    mask = tf.cast(service_mask, tf.bool)
    b = tf.shape(q)[0]
    num_services = tf.shape(q)[1]
    ctx = _replica_context()
    if ctx is None:
        keys, key_mask, offset = q, mask, 0
    else:
        keys = ctx.all_gather(q, axis=0)                          # [B, P, E]
        key_mask = tf.cast(ctx.all_gather(tf.cast(mask, tf.int32), axis=0), tf.bool)  # [B, P]
        offset = tf.cast(ctx.replica_id_in_sync_group, tf.int32) * b

    scale = tf.cast(logit_scale, tf.float32)
    # logits[a, c, i, j] = tau * <q_i in service a, key_j in service c>   [P, P, b, B]
    logits = scale * tf.einsum("iae,jce->acij", q, keys)
    col_valid = tf.transpose(key_mask)[None, :, None, :]          # [1, P, 1, B]
    logits = tf.where(col_valid, logits, _NEG)
    labels = offset + tf.range(b)                                 # [b]
    log_norm = tf.reduce_logsumexp(logits, axis=-1)               # [P, P, b]
    onehot = tf.one_hot(labels, tf.shape(keys)[0], dtype=tf.float32)  # [b, B]
    positive = tf.reduce_sum(logits * onehot, axis=-1)            # [P, P, b]
    per_term = log_norm - positive

    has = tf.transpose(mask)                                      # [P, b]
    pair_valid = tf.logical_and(has[:, None, :], has[None, :, :])  # [P, P, b]
    off_diag = tf.logical_not(tf.eye(num_services, dtype=tf.bool))[:, :, None]
    valid = tf.cast(tf.logical_and(pair_valid, off_diag), tf.float32)

    local_sum = tf.reduce_sum(per_term * valid)
    count = tf.reduce_sum(valid)
    if ctx is not None:
        count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, count)
    loss = local_sum / tf.maximum(count, 1.0)
    return loss, count
