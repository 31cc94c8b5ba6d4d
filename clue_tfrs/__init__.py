"""Downstream evaluation of user representations with TensorFlow Recommenders.

This package implements the paper's downstream protocol (sections 3.2, 4.1,
4.2 and Table 3): per-task user splits and ``uni100`` negative sampling
(:mod:`clue_tfrs.tasks`), ranking metrics (:mod:`clue_tfrs.metrics`), the
downstream models U-MLP, T-UBM (BST-like), Hybrid and TopPop
(:mod:`clue_tfrs.models`), the protocol of one task (:mod:`clue_tfrs.protocol`),
one helper that fits and scores any of those models (:mod:`clue_tfrs.fitting`),
the results table and its files (:mod:`clue_tfrs.reporting`), the entry point
that trains them all (:mod:`clue_tfrs.evaluate`) and the end-to-end run from a
CLUE SavedModel (:mod:`clue_tfrs.run`).

It is **Keras 2** code (``tf.keras`` backed by ``tf_keras``), because TFRS
only works with Keras 2. The CLUE model itself is Keras 3 code
(:mod:`clue_keras`); the two meet only through NumPy arrays, tensors and
SavedModels. Importing this package therefore sets ``TF_USE_LEGACY_KERAS=1``
(unless already set) *before* TensorFlow is imported, and refuses to load if
``tf.keras`` already resolved to Keras 3 in this process.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402  (must come after the env var)


def _check_tf_keras_is_keras2() -> None:
    """Raises ImportError when ``tf.keras`` is Keras 3 in this process."""
    name = getattr(tf.keras, "__name__", "")
    version_fn = getattr(tf.keras, "version", None)
    version = version_fn() if callable(version_fn) else ""
    if not name.startswith("tf_keras") or str(version).startswith("3."):
        raise ImportError(
            "clue_tfrs needs tf.keras to be Keras 2 (the tf_keras package), but "
            f"tf.keras is {name!r} (version {version or 'unknown'}). tf.keras was "
            "already resolved to Keras 3 in this process before clue_tfrs was "
            "imported. Set the environment variable TF_USE_LEGACY_KERAS=1 before "
            "TensorFlow is first imported (e.g. export it in the shell, or import "
            "clue_tfrs before anything that touches tf.keras)."
        )


_check_tf_keras_is_keras2()
del _check_tf_keras_is_keras2

__all__ = ["evaluate", "features", "fitting", "metrics", "models", "protocol", "reporting", "run", "tasks"]
