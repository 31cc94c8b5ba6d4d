"""Downstream models (paper 4.1): U-MLP and TopPop here; the T-UBM (BST-like) and the Hybrid in
:mod:`clue_tfrs.sequence_model`.

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

__all__ = ["DownstreamModel", "UMLP", "TopPop"]

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
