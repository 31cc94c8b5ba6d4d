"""What a downstream model reads: feature dicts gathered per batch, and the batch order.

:class:`ModelInputs` gathers one split's query and candidate features inside
``tf.data``; :func:`batch_order` cuts the examples into batches, for the
sequence models of similar history length (each batch is then cut to its
longest history: right-aligned, padding masked, so the scores do not change,
only the work).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional

import numpy as np

import clue_tfrs  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from clue_tfrs import tasks as tasks_lib

__all__ = ["ModelInputs", "history_lengths", "batch_order"]


class ModelInputs:
    """Builds model feature dicts from example / item indices (inside tf.data).

    Holds one split's per-example user features and histories and the item
    features; ``query(ex)`` and ``candidate(items)`` gather from them, histories
    cut to the longest in the batch (leading all-padding columns dropped). With
    ``sequence_vectors`` (float [N, H], a frozen sequence part's output per
    example, :meth:`clue_tfrs.sequence_model.SequenceModel.sequence_vector`) queries
    carry those instead of the histories.
    """

    def __init__(
        self,
        examples: tasks_lib.Examples,
        user_matrix: Optional[np.ndarray] = None,
        user_row: Optional[Mapping[str, int]] = None,
        item_matrix: Optional[np.ndarray] = None,
        use_sequence: bool = False,
        sequence_vectors: Optional[np.ndarray] = None,
    ) -> None:
        self.use_sequence = use_sequence and sequence_vectors is None
        self.sequence_vectors = (None if sequence_vectors is None
                                 else tf.constant(sequence_vectors, tf.float32))
        self.user_features = None
        if user_matrix is not None:
            rows = np.array([user_row[u] for u in examples.user_ids], dtype=np.int64)
            self.user_features = tf.constant(user_matrix[rows])  # [N, dim_u]
        self.item_features = None if item_matrix is None else tf.constant(item_matrix)
        self.histories = tf.constant(examples.histories) if use_sequence else None
        self.lengths = history_lengths(examples.histories)
        self.user_ids, self.example_histories = examples.user_ids, examples.histories

    def rows_like(self, rep: np.ndarray, histories: np.ndarray) -> "ModelInputs":
        """Inputs whose row r has history ``histories[r]`` and the user features of this
        split's example ``rep[r]`` (query windows of a causal model, `clue_tfrs.windows`)."""
        out = object.__new__(ModelInputs)
        out.use_sequence, out.sequence_vectors = True, None
        out.user_features = (None if self.user_features is None
                             else tf.gather(self.user_features, rep))
        out.item_features = self.item_features
        out.histories = tf.constant(histories)
        out.lengths = history_lengths(histories)
        out.user_ids, out.example_histories = self.user_ids[rep], histories
        return out

    def query(self, ex: tf.Tensor) -> Dict[str, tf.Tensor]:
        out = {}
        if self.user_features is not None:
            out["user_features"] = tf.gather(self.user_features, ex)
        if self.sequence_vectors is not None:
            out["sequence_vector"] = tf.gather(self.sequence_vectors, ex)
        if self.use_sequence:
            history = tf.gather(self.histories, ex)  # [B, T], right-aligned
            longest = tf.reduce_max(tf.reduce_sum(tf.cast(history > 0, tf.int32), axis=1))
            width = tf.shape(history)[1]
            out["history"] = history[:, width - tf.maximum(longest, 1):]
        return out

    def candidate(self, items: tf.Tensor) -> Dict[str, tf.Tensor]:
        out = {"item": tf.cast(items, tf.int32)}
        if self.item_features is not None:
            out["item_features"] = tf.gather(self.item_features, items)
        return out


def history_lengths(histories: np.ndarray) -> np.ndarray:
    """int [N] number of real (non-zero) items of each right-aligned history."""
    return np.count_nonzero(histories, axis=1) if histories.size else np.zeros(len(histories), int)


def batch_order(n: int, rows: int, rng: Optional[np.random.Generator],
                lengths: Optional[np.ndarray] = None, bucket_width: int = 4) -> List[np.ndarray]:
    """Indices (into 0..n-1) of every batch of at most ``rows``, in the order they are fed.

    With ``rng``: a random permutation; without: 0..n-1. With ``lengths``
    (history lengths), the examples are then stably grouped by
    ``ceil(length / bucket_width)`` and batches are cut within a group, so a
    batch holds histories of similar length; the batch order is shuffled
    with ``rng``. Every example appears in exactly one batch.
    """
    order = rng.permutation(n) if rng is not None else np.arange(n)
    if lengths is None:
        return [order[s:s + rows] for s in range(0, n, rows)]
    bucket = -(-np.asarray(lengths)[order] // bucket_width)
    by_bucket = np.argsort(bucket, kind="stable")
    order, bucket = order[by_bucket], bucket[by_bucket]
    batches: List[np.ndarray] = []
    for b in np.unique(bucket):
        members = order[bucket == b]
        batches.extend(members[s:s + rows] for s in range(0, len(members), rows))
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches
