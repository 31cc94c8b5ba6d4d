"""A SavedModel that serves precomputed user embeddings by user id.

``build_lookup_model(embeddings_dir, export_dir)`` turns an
``export-embeddings`` directory (``clue_keras.embeddings.batch``) into a SavedModel
with one signature, servable by TF Serving or ``clue serve``:

* ``serving_default``: ``user_id`` string [B] -> ``embedding`` float32 [B, E]
  and ``found`` bool [B].

An unknown id (or "") is not an error: it gets an all-zero vector and
``found = False``, so one unknown user never fails a whole batch.

Inside: a ``tf.lookup.StaticHashTable`` (id -> row) initialised from the asset
``assets/user_ids.txt`` (one id per line, line number = row; ids therefore may
not contain line breaks), and the embedding matrix kept in its stored dtype
(float32, float16 or int8) as a variable, plus the per-row int8 scales;
rows are gathered and dequantised on the fly (``x = q * scale / 127`` for
int8, a cast otherwise), so the model is as small as the export. Only core
TF ops are used. ``assets/embeddings_manifest.json`` is the export's manifest.
The directory is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from clue_keras.atomic import abspath, atomic_dir, is_remote
from clue_keras.embeddings.table import DTYPES, INT8_LEVELS, MANIFEST_FILE, read_embeddings

IDS_ASSET = "user_ids.txt"
MANIFEST_ASSET = "embeddings_manifest.json"


def _make_module_class():
    import tensorflow as tf

    class EmbeddingLookup(tf.Module):
        """user_id string [B] -> embedding float32 [B, E], found bool [B]."""

        def __init__(self, ids_path: str, manifest_path: str, values: np.ndarray,
                     scale: np.ndarray, dtype: str):
            super().__init__(name="clue_embedding_lookup")
            self.ids_asset = tf.saved_model.Asset(ids_path)
            self.manifest_asset = tf.saved_model.Asset(manifest_path)
            initializer = tf.lookup.TextFileInitializer(
                self.ids_asset, key_dtype=tf.string, key_index=tf.lookup.TextFileIndex.WHOLE_LINE,
                value_dtype=tf.int64, value_index=tf.lookup.TextFileIndex.LINE_NUMBER)
            self.table = tf.lookup.StaticHashTable(initializer, default_value=-1)
            self.values = tf.Variable(values, trainable=False, name="values")          # [N, E] stored
            self.row_scale = tf.Variable(                                               # [N] float32
                scale / INT8_LEVELS if dtype == "int8" else np.ones_like(scale), trainable=False,
                name="row_scale")
            self.dim = int(values.shape[1])
            self.serving_default = tf.function(
                self._lookup, input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])

        def _lookup(self, user_id):
            row = self.table.lookup(user_id)                      # int64 [B], -1 = unknown
            found = row >= 0
            safe = tf.maximum(row, 0)
            vectors = tf.cast(tf.gather(self.values, safe), tf.float32)
            vectors = vectors * tf.gather(self.row_scale, safe)[:, None]
            embedding = tf.where(found[:, None], vectors, tf.zeros_like(vectors))
            return {"embedding": embedding, "found": found}

    return EmbeddingLookup


def build_lookup_model(embeddings_dir: str, export_dir: str) -> str:
    """Builds the id-lookup SavedModel from an embeddings export; returns ``export_dir``.

    Args:
      embeddings_dir: output of ``export_embeddings`` (manifest + Parquet shards).
      export_dir: where to write; must not exist or be empty (e.g.
        ``<model base>/<version>`` for a server).

    Raises:
      FileNotFoundError / ValueError: not a finished export, no users, an id
        with a line break, or a duplicate id.
      FileExistsError: ``export_dir`` is not empty.
    """
    import tensorflow as tf

    table = read_embeddings(embeddings_dir)
    if not table.user_ids:
        raise ValueError(f"{embeddings_dir}: no users; a lookup model needs at least one")
    bad = next((u for u in table.user_ids if "\n" in u or "\r" in u), None)
    if bad is not None:
        raise ValueError(f"{embeddings_dir}: user id {bad!r} contains a line break")
    if len(set(table.user_ids)) != len(table.user_ids):
        seen, dup = set(), None
        for u in table.user_ids:
            if u in seen:
                dup = u
                break
            seen.add(u)
        raise ValueError(f"{embeddings_dir}: user id {dup!r} appears more than once")
    if table.dtype not in DTYPES:
        raise ValueError(f"{embeddings_dir}: unknown dtype {table.dtype!r}")

    export_dir = abspath(export_dir)  # gs://: built locally, then copied (atomic_dir)
    with atomic_dir(export_dir, prefix=".tmp-lookup-") as tmp, \
            tempfile.TemporaryDirectory(
                prefix=".tmp-lookup-assets-",
                dir=None if is_remote(export_dir) else os.path.dirname(export_dir)) as staging:
        ids_path = os.path.join(staging, IDS_ASSET)
        with open(ids_path, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(u + "\n" for u in table.user_ids)
        manifest_path = os.path.join(staging, MANIFEST_ASSET)
        tf.io.gfile.copy(os.path.join(embeddings_dir, MANIFEST_FILE), manifest_path, overwrite=True)
        module = _make_module_class()(ids_path, manifest_path, table.values, table.scale, table.dtype)
        tf.saved_model.save(module, tmp, signatures={
            "serving_default": module.serving_default.get_concrete_function()})
    return export_dir
