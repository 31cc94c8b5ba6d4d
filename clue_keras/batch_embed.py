"""Batch user embeddings with Apache Beam: behaviour logs -> sharded Parquet.

``export_embeddings(model_dir, data_dir, out_dir)`` runs one Beam pipeline:

1. read every behaviour file of ``data_dir`` (``clue_keras.synth.behavior_files``:
   CSV / JSONL / Parquet with ``user_id, service, timestamp, item_text``), one
   file per element, with the same reader and error messages as the rest of
   the project; rows of services the model was not trained on are dropped;
2. group the rows by ``user_id`` and clean each user exactly as training and
   ``clue_tfrs.features.user_text_tensor`` do (``clean_behaviors``: normalise,
   drop empty texts and repeats, newest S per service, oldest first), giving
   the user's ``[P, S]`` text row ("" = padding; P in
   ``assets/clue_vocab.json["services"]`` order);
3. batch users (``beam.BatchElements``) and run the SavedModel's
   ``serving_default`` signature (``item_texts`` string [B, P, S] ->
   ``embedding`` float32 [B, P*D]). This is a plain DoFn, not RunInference:
   tfx_bsl's RunInference wants ``tf.Example`` inputs and Beam's
   ``TFModelHandler*`` loads Keras models, neither fits a string [B, P, S]
   signature. The SavedModel is loaded once per worker process in
   ``setup()`` (``apache_beam.utils.shared.Shared``, so the threads of one
   process share it);
4. store each vector as float32, float16 or int8 (below) and write
   ``embeddings-SSSSS-of-NNNNN.parquet`` shards.

Output directory (written under ``<parent>/.tmp-embeddings-*`` and renamed into
place at the end, so a reader never sees a partial export; a failed run leaves
no output directory)::

    embeddings-00000-of-0000N.parquet   user_id string, embedding binary, scale float32
    manifest.json                       written last (see ``export_embeddings``)

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
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from clue_keras.atomic import publish_dir, write_json_atomic  # noqa: F401  (re-exported)

DTYPES: Dict[str, str] = {"float32": "<f4", "float16": "<f2", "int8": "i1"}
INT8_LEVELS = 127
MANIFEST_FILE = "manifest.json"
SHARD_PREFIX = "embeddings"
SHARD_SUFFIX = ".parquet"
MANIFEST_FORMAT = "clue-embeddings/1"
SIGNATURE = "serving_default"
INPUT_NAME = "item_texts"
OUTPUT_NAME = "embedding"
#: Beam options when the caller gives none: the DirectRunner over all cores.
DEFAULT_BEAM_ARGS: Tuple[str, ...] = (
    "--direct_running_mode=multi_processing",
    "--direct_num_workers=0",
)


# --------------------------------------------------------------------------- storage


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
    path = os.path.join(embeddings_dir, MANIFEST_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no manifest; {embeddings_dir} is not a finished embeddings export")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    return manifest


def read_embeddings(embeddings_dir: str) -> EmbeddingTable:
    """Reads every shard listed in the manifest; checks row counts and vector sizes."""
    import pyarrow.parquet as pq

    manifest = load_manifest(embeddings_dir)
    dtype, dim = manifest["dtype"], manifest["dim"]
    np_dtype = np.dtype(DTYPES[dtype])
    ids: List[str] = []
    rows: List[np.ndarray] = []
    scales: List[np.ndarray] = []
    for shard in manifest["shards"]:
        path = os.path.join(embeddings_dir, shard["file"])
        table = pq.read_table(path)
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


# --------------------------------------------------------------------------- model layout


def read_model_layout(model_dir: str) -> Tuple[List[str], int]:
    """(services in P order, S) of a CLUE serving SavedModel; clear errors if it is not one."""
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model directory {model_dir!r} does not exist")
    if not os.path.isfile(os.path.join(model_dir, "saved_model.pb")):
        raise FileNotFoundError(f"{model_dir}: no saved_model.pb (not a SavedModel directory)")
    path = os.path.join(model_dir, "assets", "clue_vocab.json")
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        return [str(s) for s in info["services"]], int(info["max_items"])
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: {model_dir} is not a CLUE serving SavedModel") from None
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: needs 'services' and 'max_items': {e}") from None


def user_text_row(rows: Iterable[Tuple[str, int, str]], services: Sequence[str],
                  max_items: int) -> np.ndarray:
    """One user's cleaned history as object [P, S] str ("" = padding).

    ``rows`` are ``(service, timestamp, item_text)``; cleaning is
    ``clue_keras.records.clean_behaviors`` (the training cleaning); rows of
    services not in ``services`` must already be filtered out.
    """
    from clue_keras.records import clean_behaviors

    out = np.full((len(services), max_items), "", dtype=object)
    index = {s: i for i, s in enumerate(services)}
    for service, texts in clean_behaviors(rows, max_items).items.items():
        out[index[service], : len(texts)] = texts
    return out


# --------------------------------------------------------------------------- Beam parts


def _read_behavior_file(path: str, services: Sequence[str]) -> Iterator[Tuple[str, Tuple[str, int, str]]]:
    """(user_id, (service, timestamp, text)) for each row of a known service."""
    from clue_keras.synth import BEHAVIOR_COLUMNS, read_table

    df = read_table(path, BEHAVIOR_COLUMNS)
    df = df[df["service"].isin(set(services))]
    for uid, service, ts, text in zip(df["user_id"], df["service"], df["timestamp"], df["item_text"]):
        yield str(uid), (str(service), int(ts), str(text))


class _LoadedModel:
    """A loaded SavedModel signature (weak-referenceable, for ``shared.Shared``)."""

    def __init__(self, model_dir: str, signature: str):
        import tensorflow as tf

        from clue_keras.tokenizer import register_text_ops

        register_text_ops()  # the serving graph tokenises with RegexSplitWithOffsets
        self.module = tf.saved_model.load(model_dir)
        if signature not in self.module.signatures:
            raise ValueError(f"{model_dir}: no signature {signature!r}; has {sorted(self.module.signatures)}")
        self.fn = self.module.signatures[signature]


def _make_embed_dofn():
    import apache_beam as beam
    from apache_beam.utils import shared

    class _EmbedUsers(beam.DoFn):
        """Batches of (user_id, object [P, S]) -> (user_id, float32 [E]) via the SavedModel.

        The model is loaded in ``setup()``, once per worker process (shared by
        its threads), never per element.
        """

        def __init__(self, model_dir: str, signature: str = SIGNATURE,
                     input_name: str = INPUT_NAME, output: str = OUTPUT_NAME):
            self._model_dir = model_dir
            self._signature = signature
            self._input_name = input_name
            self._output = output
            self._shared = shared.Shared()
            self._model = None

        def setup(self):
            key = f"{self._model_dir}|{self._signature}"
            self._model = self._shared.acquire(
                lambda: _LoadedModel(self._model_dir, self._signature), tag=key)

        def process(self, batch):
            import tensorflow as tf

            ids = [uid for uid, _ in batch]
            texts = np.stack([row for _, row in batch]).astype(object)
            out = self._model.fn(**{self._input_name: tf.constant(texts.tolist(), tf.string)})
            vectors = np.asarray(out[self._output].numpy(), np.float32)
            if vectors.ndim != 2 or vectors.shape[0] != len(ids):
                raise ValueError(f"{self._model_dir}: output {self._output!r} has shape "
                                 f"{vectors.shape}, expected [{len(ids)}, E]")
            for uid, vector in zip(ids, vectors):
                yield uid, vector

    return _EmbedUsers


def _to_record(item: Tuple[str, np.ndarray], dtype: str) -> dict:
    uid, vector = item
    values, scale = quantize(vector[None, :], dtype)
    return {"user_id": uid, "embedding": values[0].astype(DTYPES[dtype]).tobytes(),
            "scale": float(scale[0])}


def build_pipeline(p, files: Sequence[str], model_dir: str, services: Sequence[str],
                   max_items: int, file_prefix: str, dtype: str = "float32",
                   num_shards: int = 0, batch_size: int = 256):
    """Adds the export graph to Beam pipeline ``p``; see the module docstring.

    Returns the PCollection of written shard file names.
    """
    import apache_beam as beam

    services = list(services)
    embed = _make_embed_dofn()
    users = (p
             | "BehaviorFiles" >> beam.Create(list(files))
             | "SpreadFiles" >> beam.Reshuffle()
             | "ReadRows" >> beam.FlatMap(_read_behavior_file, services=services)
             | "GroupByUser" >> beam.GroupByKey()
             | "CleanUser" >> beam.MapTuple(
                 lambda uid, rows: (uid, user_text_row(rows, services, max_items))))
    return (users
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=batch_size)
            | "Embed" >> beam.ParDo(embed(model_dir))
            | "Store" >> beam.Map(_to_record, dtype=dtype)
            | "Write" >> beam.io.WriteToParquet(
                file_prefix, parquet_schema(), num_shards=num_shards,
                file_name_suffix=SHARD_SUFFIX, codec="snappy"))


# --------------------------------------------------------------------------- driver


def _shard_summary(directory: str) -> Tuple[List[dict], int, Optional[int]]:
    """[{file, rows}], total rows and dim (None when there are no rows) of written shards."""
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


def export_embeddings(
    model_dir: str,
    data_dir: str,
    out_dir: str,
    dtype: str = "float32",
    num_shards: int = 0,
    batch_size: int = 256,
    beam_args: Optional[Sequence[str]] = None,
    overwrite: bool = False,
    lookup_model_dir: Optional[str] = None,
) -> dict:
    """Embeds every user of ``data_dir`` with ``model_dir``; writes ``out_dir``.

    Args:
      model_dir: a CLUE serving SavedModel (``clue_keras.export``).
      data_dir: behaviour logs (``<data_dir>/behaviors/`` or a ``clue synth`` dir).
      out_dir: output directory; must not exist or be empty unless ``overwrite``.
      dtype: storage of each value: ``float32``, ``float16`` or ``int8``.
      num_shards: output shards; 0 lets the runner decide.
      batch_size: most users per SavedModel call.
      beam_args: Beam pipeline options (default ``DEFAULT_BEAM_ARGS``, the
        multi-processing DirectRunner); e.g. ``--runner=FlinkRunner ...``.
        The output path must be a local (or mounted) directory: it is renamed
        into place at the end.
      overwrite: replace an existing ``out_dir`` (swapped in only after success).
      lookup_model_dir: also build the id-lookup SavedModel there
        (``clue_keras.lookup_model.build_lookup_model``).

    Returns:
      The manifest, also ``out_dir/manifest.json`` (written last): ``format``,
      ``count`` (users), ``dim`` (E), ``dtype``, ``quantization`` (scheme and
      formula), ``shards`` ([{file, rows}]), ``model`` (absolute path),
      ``services``, ``max_items``, ``signature``, ``output``, ``seconds``.

    Raises:
      FileNotFoundError / ValueError: bad model or data directory (before any
        output is created); FileExistsError: ``out_dir`` is not empty; any
        pipeline error (the temporary directory is removed first).
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from clue_keras.synth import behavior_files

    if dtype not in DTYPES:
        raise ValueError(f"unknown embedding dtype {dtype!r}; choose from {list(DTYPES)}")
    if batch_size < 1 or num_shards < 0:
        raise ValueError(f"need batch_size >= 1 and num_shards >= 0, got {batch_size}, {num_shards}")
    model_dir = os.path.abspath(model_dir)
    services, max_items = read_model_layout(model_dir)
    files = [os.path.abspath(f) for f in behavior_files(data_dir)]
    out_dir = os.path.abspath(out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"output directory {out_dir} is not empty (pass overwrite=True / --overwrite)")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"output path {out_dir} exists and is not a directory")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-embeddings-", dir=parent)
    old = None
    start = time.monotonic()
    try:
        options = PipelineOptions(list(DEFAULT_BEAM_ARGS if beam_args is None else beam_args))
        with beam.Pipeline(options=options) as p:
            build_pipeline(p, files, model_dir, services, max_items,
                           os.path.join(tmp, SHARD_PREFIX), dtype=dtype,
                           num_shards=num_shards, batch_size=batch_size)
        shards, count, dim_bytes = _shard_summary(tmp)
        leftovers = [n for n in os.listdir(tmp) if n not in {s["file"] for s in shards}]
        for name in leftovers:  # Beam's own temp dirs, if the runner left any.
            path = os.path.join(tmp, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
        dim = None if dim_bytes is None else dim_bytes // np.dtype(DTYPES[dtype]).itemsize
        manifest = {
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
            "model": model_dir,
            "signature": SIGNATURE,
            "output": OUTPUT_NAME,
            "services": services,
            "max_items": max_items,
            "seconds": round(time.monotonic() - start, 3),
        }
        write_json_atomic(os.path.join(tmp, MANIFEST_FILE), manifest)
        if os.path.isdir(out_dir):
            if os.listdir(out_dir):  # overwrite: move the old export aside first
                old = tempfile.mkdtemp(prefix=".old-embeddings-", dir=parent)
                os.rmdir(old)
                os.replace(out_dir, old)
            else:
                os.rmdir(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.exists(out_dir):
            os.replace(old, out_dir)  # put the previous export back
            old = None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    if lookup_model_dir:
        from clue_keras.lookup_model import build_lookup_model

        build_lookup_model(out_dir, lookup_model_dir)
    return manifest
