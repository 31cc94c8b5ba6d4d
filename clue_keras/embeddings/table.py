"""The embeddings table on disk: storage dtypes, Parquet shards, manifest, reading back.

An export directory (written by :mod:`clue_keras.embeddings.batch`)::

    embeddings-00000-of-0000N.parquet   user_id string, embedding binary, scale float32
    manifest.json                       written last (see ``build_manifest``)

``embedding`` holds the vector's raw little-endian bytes in the manifest's
``dtype`` (``dim * itemsize`` bytes; Parquet has no float16 in pyarrow 10,
and raw bytes keep int8 at one byte per value). Storage per value
(paper 5.4: storage is the bottleneck):

* ``float32``: exact; ``scale`` = 1.
* ``float16``: IEEE half, round to nearest; ``scale`` = 1. For L2-normalised
  vectors (|x_i| <= 1) the absolute error is at most 2**-12 per value.
* ``int8``: symmetric per-vector quantisation, ``s = max_i |x_i|``,
  ``q_i = round(x_i / s * 127)`` in [-127, 127], stored with ``scale = s``;
  ``x_i ~= q_i * s / 127`` with absolute error at most ``s / 254`` (half a step).
  An all-zero vector has ``s = 0`` and ``q = 0``.

``dequantize`` / ``read_embeddings`` turn any of them back into float32.
No TensorFlow and no Beam here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

DTYPES: Dict[str, str] = {"float32": "<f4", "float16": "<f2", "int8": "i1"}
INT8_LEVELS = 127
MANIFEST_FILE = "manifest.json"
SHARD_PREFIX = "embeddings"
SHARD_SUFFIX = ".parquet"
MANIFEST_FORMAT = "clue-embeddings/1"


def quantize(x: np.ndarray, dtype: str) -> Tuple[np.ndarray, np.ndarray]:
    """Stores float vectors as ``dtype``.

    Args:
      x: float [N, E] vectors.
      dtype: ``"float32"``, ``"float16"`` or ``"int8"`` (see the module docstring).

    Returns:
      ``(values [N, E] in dtype, scale float32 [N])``; scale is 1 for the float
      types and ``max |x|`` per row for int8.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown embedding dtype {dtype!r}; choose from {list(DTYPES)}")
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise ValueError(f"quantize expects [N, E] vectors, got shape {x.shape}")
    ones = np.ones(x.shape[0], np.float32)
    if dtype == "float32":
        return x.copy(), ones
    if dtype == "float16":
        return x.astype(np.float16), ones
    scale = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(x.shape[0], np.float32)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.rint(x / safe[:, None] * INT8_LEVELS)
    return np.clip(q, -INT8_LEVELS, INT8_LEVELS).astype(np.int8), scale.astype(np.float32)


def dequantize(values: np.ndarray, scale: np.ndarray, dtype: str) -> np.ndarray:
    """Inverse of :func:`quantize`: float32 [N, E] from stored values [N, E] and scale [N]."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown embedding dtype {dtype!r}; choose from {list(DTYPES)}")
    values = np.asarray(values).astype(np.float32)
    if dtype == "int8":
        return values * (np.asarray(scale, np.float32)[:, None] / INT8_LEVELS)
    return values


def max_error_bound(dtype: str, scale: np.ndarray) -> np.ndarray:
    """Per-row bound on ``|dequantize(quantize(x)) - x|`` for L2-normalised x: float32 [N]."""
    scale = np.asarray(scale, np.float32)
    if dtype == "float32":
        return np.zeros_like(scale)
    if dtype == "float16":
        return np.full_like(scale, 2.0 ** -12)
    return scale / (2 * INT8_LEVELS)


def parquet_schema():
    """pyarrow schema of an embeddings shard."""
    import pyarrow as pa

    return pa.schema([("user_id", pa.string()), ("embedding", pa.binary()), ("scale", pa.float32())])


@dataclasses.dataclass
class EmbeddingTable:
    """Embeddings read back from an export directory.

    Attributes:
      user_ids: N user ids, shard order.
      values: [N, E] stored values (manifest dtype).
      scale: float32 [N] (1 for float dtypes).
      manifest: the directory's ``manifest.json``.
    """

    user_ids: List[str]
    values: np.ndarray
    scale: np.ndarray
    manifest: dict

    @property
    def dtype(self) -> str:
        return self.manifest["dtype"]

    def dequantized(self) -> np.ndarray:
        """float32 [N, E]."""
        return dequantize(self.values, self.scale, self.dtype)

    def as_dict(self) -> Dict[str, np.ndarray]:
        """user_id -> float32 [E]."""
        return dict(zip(self.user_ids, self.dequantized()))


def load_manifest(embeddings_dir: str) -> dict:
    """``embeddings_dir/manifest.json``; FileNotFoundError names the path."""
    import tensorflow as tf

    path = os.path.join(embeddings_dir, MANIFEST_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path}: no manifest; {embeddings_dir} is not a finished embeddings export")
    with tf.io.gfile.GFile(path, "rb") as f:
        manifest = json.loads(f.read().decode("utf-8"))
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    return manifest


def read_embeddings(embeddings_dir: str) -> EmbeddingTable:
    """Reads every shard listed in the manifest (local, or a ``tf.io.gfile`` URI);
    checks row counts and vector sizes."""
    from clue_keras.uri import read_parquet

    manifest = load_manifest(embeddings_dir)
    dtype, dim = manifest["dtype"], manifest["dim"]
    np_dtype = np.dtype(DTYPES[dtype])
    ids: List[str] = []
    rows: List[np.ndarray] = []
    scales: List[np.ndarray] = []
    for shard in manifest["shards"]:
        path = os.path.join(embeddings_dir, shard["file"])
        table = read_parquet(path)
        if table.num_rows != shard["rows"]:
            raise ValueError(f"{path}: {table.num_rows} rows, manifest says {shard['rows']}")
        if not table.num_rows:
            continue
        blobs = table.column("embedding").to_pylist()
        bad = [i for i, b in enumerate(blobs) if len(b) != dim * np_dtype.itemsize]
        if bad:
            raise ValueError(f"{path}: row {bad[0]} holds {len(blobs[bad[0]])} bytes, "
                             f"expected dim {dim} x {np_dtype.itemsize}")
        ids.extend(table.column("user_id").to_pylist())
        rows.append(np.frombuffer(b"".join(blobs), np_dtype).reshape(-1, dim))
        scales.append(table.column("scale").to_numpy().astype(np.float32))
    values = np.concatenate(rows) if rows else np.zeros((0, dim or 0), np_dtype)
    scale = np.concatenate(scales) if scales else np.zeros((0,), np.float32)
    if len(ids) != manifest["count"]:
        raise ValueError(f"{embeddings_dir}: {len(ids)} rows, manifest count {manifest['count']}")
    return EmbeddingTable(ids, values, scale, manifest)


def shard_summary(directory: str) -> Tuple[List[dict], int, Optional[int]]:
    """[{file, rows}], total rows and bytes per vector (None when there are no rows)
    of the shards written in ``directory``."""
    import pyarrow.parquet as pq

    shards, total, dim_bytes = [], 0, None
    for name in sorted(os.listdir(directory)):
        if not (name.startswith(SHARD_PREFIX) and name.endswith(SHARD_SUFFIX)):
            continue
        path = os.path.join(directory, name)
        rows = pq.ParquetFile(path).metadata.num_rows
        if rows and dim_bytes is None:
            first = pq.read_table(path, columns=["embedding"]).column("embedding")[0].as_py()
            dim_bytes = len(first)
        shards.append({"file": name, "rows": int(rows)})
        total += rows
    return shards, total, dim_bytes


def build_manifest(shards: List[dict], count: int, dim: Optional[int], dtype: str,
                   **provenance) -> dict:
    """The ``manifest.json`` of an export: ``format``, ``count`` (users), ``dim`` (E),
    ``dtype``, ``quantization`` (scheme and formula), ``layout``, ``shards``
    ([{file, rows}]), then ``provenance`` (model, signature, services, ...) in order."""
    return {
        "format": MANIFEST_FORMAT,
        "count": int(count),
        "dim": dim,
        "dtype": dtype,
        "quantization": (
            {"scheme": "symmetric_per_vector", "levels": INT8_LEVELS,
             "encode": "q = round(x / scale * 127), scale = max|x|",
             "decode": "x = q * scale / 127", "scale_column": "scale"}
            if dtype == "int8" else {"scheme": "none" if dtype == "float32" else "cast",
                                     "decode": f"x = float32({dtype} value)"}),
        "layout": {"columns": {"user_id": "string", "embedding": f"binary, {dim} x {dtype} little-endian",
                               "scale": "float32"}},
        "shards": shards,
        **provenance,
    }
