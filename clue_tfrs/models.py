"""Downstream models (paper 4.1): U-MLP, T-UBM (BST-like), Hybrid and TopPop.

Every trained model is a two-tower ``tfrs.models.Model`` whose logit is a dot
product ``<query_tower(features), candidate_tower(features)>``. Training is a
sampled softmax (:func:`clue_tfrs.losses.sampled_softmax_loss`): the query tower runs once per
positive, and every positive of a batch is scored against its own item and
the same uniformly sampled negatives, shared by the whole batch (the paper's
4.2 BCE on one pair at a time recomputed the query for every pair). Because
the score factorises, the same towers give the ``uni100`` scores and the
full-catalogue top-k retrieval (``tfrs.layers.factorized_top_k.BruteForce``).

Feature dictionaries (B = batch, T = history length, C = catalogue size):

* ``"user_features"``: float32 [B, dim_u], frozen pre-trained user vector
  (U-MLP, Hybrid).
* ``"item_features"``: float32 [B, dim_i], frozen item vector (U-MLP).
* ``"history"``: int32 [B, T], item indices 1..C of the user's previous
  interactions, right-aligned (most recent last), 0 = padding (T-UBM, Hybrid).
* ``"item"``: int32 [B], the candidate's item index 1..C (T-UBM, Hybrid).

This module is Keras 2 (``tf.keras`` = tf_keras); import it through the
``clue_tfrs`` package, which makes sure of that.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

import clue_tfrs  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
import tensorflow_recommenders as tfrs

from clue_tfrs.losses import sampled_softmax_loss

__all__ = ["DownstreamModel", "UMLP", "TransformerBlock", "SequenceModel", "TopPop"]

Features = Dict[str, tf.Tensor]


class DownstreamModel(tfrs.models.Model):
    """Two-tower model trained with a sampled softmax over shared negatives.

    Subclasses implement :meth:`query_tower` and :meth:`candidate_tower`;
    ``call(features)`` returns the logits float32 [B, 1] (or [B, K] for K
    candidates per row). Training batches are ``(features, negatives)``:
    ``features`` the query features of B positives plus their candidate
    features (``"item"`` [B], ...), ``negatives`` the candidate features of M
    negatives shared by the batch (``"item"`` [M], ...); the loss is
    :func:`clue_tfrs.losses.sampled_softmax_loss`, its epoch mean the ``"softmax_loss"`` metric.
    """

    def __init__(self, name: Optional[str] = None) -> None:
        super().__init__(name=name)
        self.loss_tracker = tf.keras.metrics.Mean(name="softmax_loss")

    @property
    def metrics(self):
        return [self.loss_tracker]

    def query_tower(self, features: Features, training: bool = False) -> tf.Tensor:
        """float32 [B, D] query (user) vectors."""
        raise NotImplementedError

    def candidate_tower(self, features: Features, training: bool = False) -> tf.Tensor:
        """float32 [B, D] candidate (item) vectors."""
        raise NotImplementedError

    def call(self, features: Features, training: bool = False) -> tf.Tensor:
        """Logits: [B, 1] for one candidate per row, or [B, K] when ``features["item"]``
        is [B, K] (the query tower then runs once per row, not once per candidate)."""
        query = self.query_tower(features, training=training)              # [B, D]
        candidate = self.candidate_tower(features, training=training)      # [B, D] or [B, K, D]
        if candidate.shape.rank == 3:
            return tf.einsum("bd,bkd->bk", query, candidate)
        return tf.reduce_sum(query * candidate, axis=-1, keepdims=True)

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        features, negatives = inputs
        loss = sampled_softmax_loss(
            self.query_tower(features, training=training),
            self.candidate_tower(features, training=training),
            self.candidate_tower(negatives, training=training),
            features["item"], negatives["item"])
        self.loss_tracker.update_state(loss)
        return loss


class UMLP(DownstreamModel):
    """U-MLP: one Dense projection per frozen feature, dot product (+ item bias).

    logit(u, x) = <W_u f_u + b_u, W_x f_x + b_x> + beta_x with f_u the
    pre-trained user feature [dim_u] and f_x the item feature [dim_i], both
    projected to ``width``. The features themselves are inputs, not weights:
    they stay frozen. ``beta_x`` is an optional learned per-item scalar (the
    item-id bias every production ranking model has): it lets the model learn
    popularity, which item *text* does not carry, so that the comparison with
    TopPop measures what the user features add beyond popularity. It is
    appended to the towers as one extra dimension ([.., 1] for users,
    [.., beta_x] for items) so scoring stays a dot product.

    Args:
      width: common projection width (output size of both Dense layers).
      num_items: catalogue size (item indices 1..num_items, 0 = padding);
        required when ``item_bias``.
      item_bias: add the per-item bias.
    """

    def __init__(self, width: int = 64, num_items: Optional[int] = None,
                 item_bias: bool = False, name: Optional[str] = "u_mlp") -> None:
        super().__init__(name=name)
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if item_bias and not num_items:
            raise ValueError("item_bias needs num_items")
        self.width = width
        self.num_items = num_items
        self.item_bias = item_bias
        self.user_projection = tf.keras.layers.Dense(width, name="user_projection")
        self.item_projection = tf.keras.layers.Dense(width, name="item_projection")
        self.bias = (tf.keras.layers.Embedding(num_items + 1, 1, embeddings_initializer="zeros",
                                               name="item_bias") if item_bias else None)

    def query_tower(self, features: Features, training: bool = False) -> tf.Tensor:
        q = self.user_projection(features["user_features"])
        if self.bias is None:
            return q
        return tf.concat([q, tf.ones_like(q[:, :1])], axis=-1)

    def candidate_tower(self, features: Features, training: bool = False) -> tf.Tensor:
        c = self.item_projection(features["item_features"])
        if self.bias is None:
            return c
        return tf.concat([c, self.bias(features["item"])], axis=-1)

    def get_config(self):
        return {"width": self.width, "num_items": self.num_items,
                "item_bias": self.item_bias, "name": self.name}


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

    def call(self, x: tf.Tensor, mask: tf.Tensor, training: bool = False) -> tf.Tensor:
        attention_mask = tf.logical_and(mask[:, :, None], mask[:, None, :])  # [B, T, T]
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

    def _pooled(self, features: Features, training: bool) -> tf.Tensor:
        history = tf.cast(features["history"], tf.int32)  # [B, T'], T' <= T
        mask = history > 0
        # Right-aligned: the last column is position T - 1 whatever T' is, so a
        # history cut to its real items scores exactly as the full-width one.
        positions = tf.range(self.max_history - tf.shape(history)[1], self.max_history)
        x = self.item_embedding(history) + self.position_embedding(positions)[None]
        x = self.input_dropout(self.input_norm(x), training=training)
        for block in self.blocks:
            x = block(x, mask, training=training)
        if self.pooling == "mean":
            weights = tf.cast(mask, x.dtype)[:, :, None]
            pooled = tf.reduce_sum(x * weights, axis=1) / tf.maximum(
                tf.reduce_sum(weights, axis=1), 1.0
            )
        else:  # right-aligned: the most recent item is the last column
            pooled = x[:, -1, :]
        return pooled

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
        }


class TopPop:
    """Popularity baseline: score(u, i) = number of train interactions with i.

    Expressed as two towers like the trained models: query = [1] for every
    user, candidate = [count_i], so score = count_i.
    """

    def __init__(self, num_items: int) -> None:
        self.num_items = num_items
        self.counts = np.zeros(num_items + 1, dtype=np.float32)

    def fit(self, train_items: np.ndarray) -> "TopPop":
        """Counts item indices (1..C) of the train split's interactions."""
        items = np.asarray(train_items, dtype=np.int64)
        if items.size and (items.min() < 1 or items.max() > self.num_items):
            raise ValueError(f"item indices must be in [1, {self.num_items}]")
        self.counts = np.bincount(items, minlength=self.num_items + 1).astype(np.float32)
        return self

    def query_embeddings(self, num_queries: int) -> np.ndarray:
        """float32 [N, 1] of ones."""
        return np.ones((num_queries, 1), dtype=np.float32)

    def candidate_embeddings(self, items: np.ndarray) -> np.ndarray:
        """float32 [len(items), 1] counts."""
        return self.counts[np.asarray(items, dtype=np.int64)][:, None]
