"""The CLUE pre-training task: projection head, logit scale, CLIP loss."""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import ops

from clue_keras.clip_loss import clip_loss
from clue_keras.encoder import CLUEEncoder


@keras.saving.register_keras_serializable(package="clue")
class CLUEPretrainer(keras.Model):
    """Wraps a :class:`CLUEEncoder` with the contrastive objective.

    Projection f(z) = W2 sigma(W1 z) (paper eq. 4, SimCLR head), cosine
    similarity scaled by a learnable logit scale tau, stored as log(tau),
    initialised to 14.27 and clipped at 100 in the forward pass.

    call(inputs) -> dict with the encoder's outputs plus
      ``projection``: float32 [B, P, projection_dim], L2-normalised f(z).
    train_step / test_step report ``loss``, ``logit_scale``, ``tokens`` (non-padding
    tokens in the global batch) and ``pairs`` (contrastive terms in the global batch).
    """

    def __init__(self, encoder: CLUEEncoder, projection_dim: int,
                 logit_scale_init: float = 14.27, logit_scale_max: float = 100.0,
                 dtype=None, **kwargs):
        super().__init__(dtype=dtype, **kwargs)
        self.encoder = encoder
        self.projection_dim = projection_dim
        self.logit_scale_init = logit_scale_init
        self.logit_scale_max = logit_scale_max
        policy = self.dtype_policy
        self.proj_hidden = keras.layers.Dense(encoder.embedding_dim, activation="relu",
                                              dtype=policy, name="projection_hidden")
        self.proj_out = keras.layers.Dense(projection_dim, dtype=policy, name="projection_out")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.scale_tracker = keras.metrics.Mean(name="logit_scale")
        self.token_tracker = keras.metrics.Sum(name="tokens")
        self.pair_tracker = keras.metrics.Sum(name="pairs")

    def build(self, input_shape=None):
        if not self.encoder.built:
            self.encoder.build(self.encoder.input_shape_for_build())
        self.proj_hidden.build((None, self.encoder.embedding_dim))
        self.proj_out.build((None, self.encoder.embedding_dim))
        self.log_logit_scale = self.add_weight(
            name="log_logit_scale", shape=(),
            initializer=keras.initializers.Constant(math.log(self.logit_scale_init)),
            dtype="float32", autocast=False,
        )
        self.built = True

    def get_build_config(self):
        return {"built": True}

    def build_from_config(self, config):
        self.build(self.encoder.input_shape_for_build())

    @property
    def logit_scale(self):
        """tau = exp(min(log_tau, log(max))): float32 scalar, never above the clip."""
        return ops.exp(ops.minimum(self.log_logit_scale, math.log(self.logit_scale_max)))

    @property
    def metrics(self):
        return [self.loss_tracker, self.scale_tracker, self.token_tracker, self.pair_tracker]

    def call(self, inputs, training=False):
        out = dict(self.encoder(inputs, training=training))
        z = out["user_embedding"]                                   # [B, P, D] float32
        f = self.proj_out(self.proj_hidden(z))
        f = ops.cast(f, "float32")
        # f / max(|f|, 1e-6), written as tf.math.l2_normalize does: the gradient of
        # a norm at 0 is 0 * inf = NaN under XLA (tests/test_xla.py).
        sq = ops.maximum(ops.sum(ops.square(f), axis=-1, keepdims=True), 1e-12)
        out["projection"] = f * ops.rsqrt(sq)
        return out

    def compute_contrastive_loss(self, inputs, training=False):
        """(loss, pairs): float32 scalars for this replica's rows (see clip_loss)."""
        out = self(inputs, training=training)
        return clip_loss(out["projection"], out["service_mask"], self.logit_scale)

    def _report(self, inputs, loss, pairs):
        ctx = tf.distribute.get_replica_context()
        tokens = tf.reduce_sum(tf.cast(tf.not_equal(inputs["token_ids"], 0), tf.float32))
        global_loss = loss
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            global_loss = ctx.all_reduce(tf.distribute.ReduceOp.SUM, loss)
            tokens = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tokens)
            # `pairs` is already global; Sum metrics are summed over replicas.
            pairs = pairs / ctx.num_replicas_in_sync
            tokens = tokens / ctx.num_replicas_in_sync
        self.loss_tracker.update_state(global_loss)
        self.scale_tracker.update_state(self.logit_scale)
        self.token_tracker.update_state(tokens)
        self.pair_tracker.update_state(pairs)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss, pairs = self.compute_contrastive_loss(data, training=True)
            scaled = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply(grads, variables)
        return self._report(data, loss, pairs)

    def test_step(self, data):
        loss, pairs = self.compute_contrastive_loss(data, training=False)
        return self._report(data, loss, pairs)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.saving.serialize_keras_object(self.dtype_policy),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "projection_dim": self.projection_dim,
            "logit_scale_init": self.logit_scale_init,
            "logit_scale_max": self.logit_scale_max,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)
