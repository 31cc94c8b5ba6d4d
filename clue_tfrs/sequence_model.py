"""The sequence models of the evaluation: T-UBM (BST-like) and the Hybrid.

:class:`SequenceModel` is a :class:`clue_tfrs.models.DownstreamModel` whose
query tower is a transformer (:class:`TransformerBlock`) over the user's
history of the task's items; with a frozen user feature (CLUE's embedding) it
is the Hybrid. See :class:`SequenceModel` for the causal variant the
evaluation trains in one pass per user.
"""

from __future__ import annotations

from typing import Optional, Tuple

import clue_tfrs  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from clue_tfrs.losses import sampled_softmax_loss
from clue_tfrs.models import DownstreamModel, Features

__all__ = ["TransformerBlock", "SequenceModel"]


@tf.keras.utils.register_keras_serializable(package="clue_tfrs")
class TransformerBlock(tf.keras.layers.Layer):
    """Post-LayerNorm transformer encoder block (as in BST / BERT).

    in: x float32 [B, T, H], mask bool [B, T] (True = real item);
    out: float32 [B, T, H]. Padded positions attend to nothing real but their
    outputs are ignored by the caller's masked pooling.

    Args:
      hidden_size: H.
      num_heads: A; H must be divisible by A.
      intermediate_size: width of the feed-forward layer.
      dropout: dropout rate on attention probabilities and residual branches.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        dropout: float = 0.1,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if hidden_size % num_heads:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})"
            )
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.intermediate_size = intermediate_size
        self.dropout = dropout

    def build(self, input_shape) -> None:
        self.attention = tf.keras.layers.MultiHeadAttention(
            num_heads=self.num_heads,
            key_dim=self.hidden_size // self.num_heads,
            dropout=self.dropout,
            dtype=self.dtype_policy,
            name="attention",
        )
        self.attention_norm = tf.keras.layers.LayerNormalization(
            epsilon=1e-6, dtype="float32", name="attention_norm"
        )
        self.ffn_in = tf.keras.layers.Dense(
            self.intermediate_size, activation="gelu", dtype=self.dtype_policy, name="ffn_in"
        )
        self.ffn_out = tf.keras.layers.Dense(
            self.hidden_size, dtype=self.dtype_policy, name="ffn_out"
        )
        self.ffn_norm = tf.keras.layers.LayerNormalization(
            epsilon=1e-6, dtype="float32", name="ffn_norm"
        )
        self.residual_dropout = tf.keras.layers.Dropout(self.dropout)
        super().build(input_shape)

    def call(self, x: tf.Tensor, mask: tf.Tensor, training: bool = False,
             causal: bool = False) -> tf.Tensor:
        attention_mask = tf.logical_and(mask[:, :, None], mask[:, None, :])  # [B, T, T]
        if causal:  # column order is time order: a position attends to itself and earlier
            width = tf.shape(mask)[1]
            earlier = tf.range(width)[None, :] <= tf.range(width)[:, None]  # [T, T]
            attention_mask = tf.logical_and(attention_mask, earlier[None])
        attended = self.attention(x, x, attention_mask=attention_mask, training=training)
        x = self.attention_norm(x + self.residual_dropout(attended, training=training))
        ffn = self.ffn_out(self.ffn_in(x))
        return self.ffn_norm(x + self.residual_dropout(ffn, training=training))

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_size=self.hidden_size,
            num_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            dropout=self.dropout,
        )
        return config


class SequenceModel(DownstreamModel):
    """T-UBM (BST-like) and, with ``user_feature_dim``, the Hybrid model.

    Query tower: learned item-id embeddings [H] of the history plus learned
    position embeddings (position T-1 = most recent), LayerNorm, ``num_layers``
    transformer blocks, masked mean (or last item) pooling -> [H], a final
    Dense -> u [H]. Candidate tower: the *same* item-id embedding table
    plus a learned per-item bias. The logit is <u, e_i> + b_i, expressed as
    the dot product of [u, 1] and [e_i, b_i] so that it factorises.
    Trained from scratch (paper: L=4, H=128, A=4).

    ``causal=True`` (the evaluation's default, ``EvalConfig.seq_causal``): each
    history item attends only to itself and earlier items, positions count
    from the oldest item of the history (0 = oldest), and the pooling at item
    t covers items up to t. The user vector after a history is then the same
    whether the history is the whole input or the first part of a longer one,
    so one pass over a user's sequence gives the query of every next-item
    positive in it (SASRec-style training, :meth:`sequence_queries`, a batch
    with ``"next_items"``) while a single history still scores as one query.

    Hybrid (``user_feature_dim``), ``fusion="residual"`` (default): u + W_f
    LN(f_u). LN standardises the frozen feature over its dimensions (no
    learned scale: a feature of any norm enters at unit scale; a zero vector,
    a cold-start user, adds nothing); W_f starts at zero and is created after
    every other weight, so at initialisation the Hybrid *is* the T-UBM of the
    same seed and the feature enters only as far as training finds it useful.
    ``fusion="concat"``, the earlier design: u = Dense([pooled, Dense(f_u)]),
    which starts from other weights than the T-UBM and mixes a randomly
    projected feature into u from the first step.

    Args:
      num_items: C; item indices are 1..C, 0 is padding.
      max_history: T.
      hidden_size: H.
      num_layers: L.
      num_heads: A.
      intermediate_size: feed-forward width (default 4 H).
      dropout: dropout rate.
      pooling: "mean" (masked mean over real items) or "last".
      user_feature_dim: dim_u of the frozen user feature for the Hybrid, or
        None for the pure T-UBM.
      fusion: "residual" or "concat" (Hybrid only; see above).
      causal: causal attention and pooling, positions from the oldest item (above).
    """

    def __init__(
        self,
        num_items: int,
        max_history: int,
        hidden_size: int = 128,
        num_layers: int = 4,
        num_heads: int = 4,
        intermediate_size: Optional[int] = None,
        dropout: float = 0.1,
        pooling: str = "mean",
        user_feature_dim: Optional[int] = None,
        fusion: str = "residual",
        name: Optional[str] = None,
        causal: bool = False,
    ) -> None:
        super().__init__(name=name or ("hybrid" if user_feature_dim else "t_ubm"))
        if pooling not in ("mean", "last"):
            raise ValueError(f"pooling must be 'mean' or 'last', got {pooling!r}")
        if fusion not in ("residual", "concat"):
            raise ValueError(f"fusion must be 'residual' or 'concat', got {fusion!r}")
        if num_items < 1 or max_history < 1 or num_layers < 0:
            raise ValueError(
                "need num_items >= 1, max_history >= 1, num_layers >= 0; got "
                f"{num_items}, {max_history}, {num_layers}"
            )
        self.num_items = num_items
        self.max_history = max_history
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_size = intermediate_size or 4 * hidden_size
        self.dropout = dropout
        self.pooling = pooling
        self.user_feature_dim = user_feature_dim
        self.fusion = fusion
        self.causal = causal

        self.item_embedding = tf.keras.layers.Embedding(
            num_items + 1, hidden_size, name="item_embedding"
        )
        self.item_bias = tf.keras.layers.Embedding(
            num_items + 1, 1, embeddings_initializer="zeros", name="item_bias"
        )
        self.position_embedding = tf.keras.layers.Embedding(
            max_history, hidden_size, name="position_embedding"
        )
        self.input_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6, name="input_norm")
        self.input_dropout = tf.keras.layers.Dropout(dropout)
        self.blocks = [
            TransformerBlock(hidden_size, num_heads, self.intermediate_size, dropout, name=f"block_{i}")
            for i in range(num_layers)
        ]
        self.output_projection = tf.keras.layers.Dense(hidden_size, name="output_projection")
        self.user_feature_norm = self.user_feature_projection = None
        if user_feature_dim and fusion == "residual":
            self.user_feature_norm = tf.keras.layers.LayerNormalization(
                epsilon=1e-6, center=False, scale=False, name="user_feature_norm")
            self.user_feature_projection = tf.keras.layers.Dense(
                hidden_size, use_bias=False, kernel_initializer="zeros",
                name="user_feature_projection")
        elif user_feature_dim:
            self.user_feature_projection = tf.keras.layers.Dense(
                hidden_size, name="user_feature_projection")

    def sequence_vector(self, features: Features, training: bool = False) -> tf.Tensor:
        """float32 [B, H]: the T-UBM's user vector (the residual Hybrid adds its feature
        term to it); a query may carry it precomputed as ``"sequence_vector"``."""
        if "sequence_vector" in features:
            return tf.cast(features["sequence_vector"], tf.float32)
        return self.output_projection(self._pooled(features, training))

    def _encode(self, features: Features, training: bool) -> Tuple[tf.Tensor, tf.Tensor]:
        """The transformer's outputs float [B, T', H] and the real-item mask bool [B, T']."""
        history = tf.cast(features["history"], tf.int32)  # [B, T'], T' <= T, right-aligned
        mask = history > 0
        if self.causal:  # position 0 = the oldest real item, whatever the padding before it
            positions = tf.maximum(tf.cumsum(tf.cast(mask, tf.int32), axis=1) - 1, 0)
            x = self.item_embedding(history) + self.position_embedding(positions)
        else:
            # Right-aligned: the last column is position T - 1 whatever T' is, so a
            # history cut to its real items scores exactly as the full-width one.
            positions = tf.range(self.max_history - tf.shape(history)[1], self.max_history)
            x = self.item_embedding(history) + self.position_embedding(positions)[None]
        x = self.input_dropout(self.input_norm(x), training=training)
        for block in self.blocks:
            x = block(x, mask, training=training, causal=self.causal)
        return x, mask

    def _pooled(self, features: Features, training: bool) -> tf.Tensor:
        x, mask = self._encode(features, training)
        if self.causal:
            return self._pooled_each(x, mask)[:, -1, :]
        if self.pooling == "mean":
            weights = tf.cast(mask, x.dtype)[:, :, None]
            pooled = tf.reduce_sum(x * weights, axis=1) / tf.maximum(
                tf.reduce_sum(weights, axis=1), 1.0
            )
        else:  # right-aligned: the most recent item is the last column
            pooled = x[:, -1, :]
        return pooled

    def _pooled_each(self, x: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        """float [B, T', H]: the causal pooling after each column (mean of the real items up
        to it, or the item itself)."""
        if self.pooling == "last":
            return x
        weights = tf.cast(mask, x.dtype)[:, :, None]
        return tf.cumsum(x * weights, axis=1) / tf.maximum(tf.cumsum(weights, axis=1), 1.0)

    def query_tower(self, features: Features, training: bool = False) -> tf.Tensor:
        if self.user_feature_projection is None:
            user = self.sequence_vector(features, training)
        elif self.fusion == "residual":  # output layer first: the T-UBM's weights and draws
            user = self.sequence_vector(features, training)
            feature = self.user_feature_norm(tf.cast(features["user_features"], user.dtype))
            user = user + self.user_feature_projection(feature)
        else:
            user = self.output_projection(tf.concat(
                [self._pooled(features, training),
                 self.user_feature_projection(features["user_features"])], axis=-1))
        return tf.concat([user, tf.ones_like(user[:, :1])], axis=-1)  # [B, H + 1]

    def sequence_queries(self, features: Features, training: bool = False) -> tf.Tensor:
        """float32 [B, T', H + 1]: the query after each column of ``features["history"]``
        (causal models only): column t's equals :meth:`query_tower` of the history cut
        after t. The layers run in the order ``query_tower`` runs them."""
        if not self.causal:
            raise ValueError("sequence_queries needs a causal SequenceModel")
        if self.user_feature_projection is not None and self.fusion == "concat":
            x, mask = self._encode(features, training)
            pooled = self._pooled_each(x, mask)  # [B, T', H]
            feature = self.user_feature_projection(features["user_features"])[:, None, :]
            user = self.output_projection(tf.concat(
                [pooled, tf.broadcast_to(feature, tf.shape(pooled))], axis=-1))
        else:
            user = self.sequence_vectors(features, training)
            if self.user_feature_projection is not None:
                feature = self.user_feature_norm(tf.cast(features["user_features"], user.dtype))
                user = user + self.user_feature_projection(feature)[:, None, :]
        return tf.concat([user, tf.ones_like(user[..., :1])], axis=-1)

    def sequence_vectors(self, features: Features, training: bool = False) -> tf.Tensor:
        """float32 [B, T', H]: :meth:`sequence_vector` after each column (causal models)."""
        if not self.causal:
            raise ValueError("sequence_vectors needs a causal SequenceModel")
        x, mask = self._encode(features, training)
        return self.output_projection(self._pooled_each(x, mask))

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        """A batch of next-item windows (``"next_items"`` int [B, T'], the item after each
        history column, 0 = none): every real next item is a positive whose query is
        :meth:`sequence_queries` at its column; else the base class's loss."""
        features, negatives = inputs
        if "next_items" not in features:
            return super().compute_loss(inputs, training)
        queries = self.sequence_queries(features, training)
        real = features["next_items"] > 0
        items = tf.boolean_mask(features["next_items"], real)
        loss = sampled_softmax_loss(
            tf.boolean_mask(queries, real),
            self.candidate_tower({"item": items}, training=training),
            self.candidate_tower(negatives, training=training),
            items, negatives["item"])
        self.loss_tracker.update_state(loss)
        return loss

    def candidate_tower(self, features: Features, training: bool = False) -> tf.Tensor:
        item = tf.cast(features["item"], tf.int32)
        return tf.concat([self.item_embedding(item), self.item_bias(item)], axis=-1)

    def get_config(self):
        return {
            "num_items": self.num_items,
            "max_history": self.max_history,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
            "dropout": self.dropout,
            "pooling": self.pooling,
            "user_feature_dim": self.user_feature_dim,
            "fusion": self.fusion,
            "name": self.name,
            "causal": self.causal,
        }
