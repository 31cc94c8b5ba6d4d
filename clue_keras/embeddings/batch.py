"""Batch user embeddings with Apache Beam: behaviour logs -> sharded Parquet.

``export_embeddings(model_dir, data_dir, out_dir)`` runs one Beam pipeline:

1. read every behaviour file of ``data_dir`` (``clue_keras.data.tables.behavior_files``:
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
4. store each vector as float32, float16 or int8 (``table.quantize``) and write
   ``embeddings-SSSSS-of-NNNNN.parquet`` shards.

With ``progress=`` a stream (`clue export-embeddings` passes standard output),
the users embedded so far show as a bar on a terminal or as plain lines
elsewhere, counted from the workers (`clue_keras.embeddings.progress`).

The output directory is built under ``<parent>/.tmp-embeddings-*`` and
renamed into place at the end (``clue_keras.atomic.atomic_dir``), so a reader
never sees a partial export and a failed run leaves no output directory. Its
format (shards, manifest, storage dtypes) is :mod:`clue_keras.embeddings.table`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from typing import Iterator, Optional, Sequence, TextIO, Tuple

import numpy as np

from clue_keras.atomic import abspath, atomic_dir, write_json_atomic
from clue_keras.embeddings.table import (DTYPES, MANIFEST_FILE, SHARD_PREFIX, SHARD_SUFFIX,
                                         build_manifest, parquet_schema, quantize,
                                         shard_summary)
from clue_keras.embeddings.user_rows import read_model_layout, user_text_row
from clue_keras.data.direct_runner import local_beam_args

SIGNATURE = "serving_default"
INPUT_NAME = "item_texts"
OUTPUT_NAME = "embedding"
#: Without a terminal, a progress line every this many users embedded (and one at the end).
PROGRESS_LINE_EVERY = 10_000
#: Beam options when the caller gives none: the DirectRunner over all cores
#: (without its Prism attempt: `clue_keras.data.direct_runner`).
DEFAULT_BEAM_ARGS: Tuple[str, ...] = tuple(local_beam_args("multi_processing", 0))


def _read_behavior_file(path: str, services: Sequence[str]) -> Iterator[Tuple[str, Tuple[str, int, str]]]:
    """(user_id, (service, timestamp, text)) for each row of a known service."""
    from clue_keras.data.formats import BEHAVIOR_COLUMNS, read_table

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
                     input_name: str = INPUT_NAME, output: str = OUTPUT_NAME,
                     progress_path: Optional[str] = None):
            self._model_dir = model_dir
            self._signature = signature
            self._input_name = input_name
            self._output = output
            self._progress_path = progress_path
            self._shared = shared.Shared()
            self._model = None
            self._progress = None

        def setup(self):
            from clue_keras.embeddings.progress import ProgressFile

            key = f"{self._model_dir}|{self._signature}"
            self._model = self._shared.acquire(
                lambda: _LoadedModel(self._model_dir, self._signature), tag=key)
            self._progress = ProgressFile(self._progress_path)

        def teardown(self):
            if self._progress is not None:
                self._progress.close()

        def process(self, batch):
            import tensorflow as tf

            ids = [uid for uid, _ in batch]
            texts = np.stack([row for _, row in batch]).astype(object)
            out = self._model.fn(**{self._input_name: tf.constant(texts.tolist(), tf.string)})
            vectors = np.asarray(out[self._output].numpy(), np.float32)
            if vectors.ndim != 2 or vectors.shape[0] != len(ids):
                raise ValueError(f"{self._model_dir}: output {self._output!r} has shape "
                                 f"{vectors.shape}, expected [{len(ids)}, E]")
            if self._progress is not None:
                self._progress.record(len(ids))
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
                   num_shards: int = 0, batch_size: int = 256,
                   progress_path: Optional[str] = None):
    """Adds the export graph to Beam pipeline ``p``; see the module docstring.

    ``progress_path``: the file the embedding workers count users into
    (`clue_keras.embeddings.progress.ProgressFile`; None: no counting).
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
            | "Embed" >> beam.ParDo(embed(model_dir, progress_path=progress_path))
            | "Store" >> beam.Map(_to_record, dtype=dtype)
            | "Write" >> beam.io.WriteToParquet(
                file_prefix, parquet_schema(), num_shards=num_shards,
                file_name_suffix=SHARD_SUFFIX, codec="snappy"))


@contextlib.contextmanager
def _progress(stream: Optional[TextIO]) -> Iterator[Optional[str]]:
    """The workers' count file while a `ProgressBar` on ``stream`` follows it (None: none)."""
    if stream is None:
        yield None
        return
    from clue_keras.embeddings.progress import watch
    from clue_keras.progress_bar import ProgressBar

    with tempfile.TemporaryDirectory(prefix="clue-export-progress-") as d:
        path = os.path.join(d, "users-embedded")
        bar = ProgressBar(None, desc="embedding", unit="users", stream=stream,
                          line_every=PROGRESS_LINE_EVERY)
        with watch(path, bar):
            yield path


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
    progress: Optional[TextIO] = None,
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
        The workers write a local temporary directory that is renamed into
        place at the end, or, for a ``gs://`` (any ``tf.io.gfile``) ``out_dir``,
        copied there with ``manifest.json`` last (``clue_keras.atomic.atomic_dir``);
        ``model_dir`` and ``data_dir`` may be such URIs too.
      overwrite: replace an existing ``out_dir`` (swapped in only after success).
      lookup_model_dir: also build the id-lookup SavedModel there
        (``clue_keras.embeddings.lookup_model.build_lookup_model``).
      progress: stream for the users-embedded progress (a bar on a terminal,
        else a line every `PROGRESS_LINE_EVERY` users and at the end); None: none.

    Returns:
      The manifest, also ``out_dir/manifest.json`` (written last): see
      ``table.build_manifest``; provenance ``model`` (absolute path),
      ``services``, ``max_items``, ``signature``, ``output``, ``seconds``.

    Raises:
      FileNotFoundError / ValueError: bad model or data directory (before any
        output is created); FileExistsError: ``out_dir`` is not empty; any
        pipeline error (the temporary directory is removed first).
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from clue_keras.data.tables import behavior_files

    if dtype not in DTYPES:
        raise ValueError(f"unknown embedding dtype {dtype!r}; choose from {list(DTYPES)}")
    if batch_size < 1 or num_shards < 0:
        raise ValueError(f"need batch_size >= 1 and num_shards >= 0, got {batch_size}, {num_shards}")
    import tensorflow as tf

    model_dir = abspath(model_dir)
    services, max_items = read_model_layout(model_dir)
    files = [abspath(f) for f in behavior_files(data_dir)]
    out_dir = abspath(out_dir)
    if tf.io.gfile.isdir(out_dir) and tf.io.gfile.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"output directory {out_dir} is not empty (pass overwrite=True / --overwrite)")
    start = time.monotonic()
    with atomic_dir(out_dir, prefix=".tmp-embeddings-", overwrite=overwrite) as tmp, \
            _progress(progress) as progress_path:
        options = PipelineOptions(list(DEFAULT_BEAM_ARGS if beam_args is None else beam_args))
        with beam.Pipeline(options=options) as p:
            build_pipeline(p, files, model_dir, services, max_items,
                           os.path.join(tmp, SHARD_PREFIX), dtype=dtype,
                           num_shards=num_shards, batch_size=batch_size,
                           progress_path=progress_path)
        shards, count, dim_bytes = shard_summary(tmp)
        leftovers = [n for n in os.listdir(tmp) if n not in {s["file"] for s in shards}]
        for name in leftovers:  # Beam's own temp dirs, if the runner left any.
            path = os.path.join(tmp, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
        dim = None if dim_bytes is None else dim_bytes // np.dtype(DTYPES[dtype]).itemsize
        manifest = build_manifest(
            shards, count, dim, dtype, model=model_dir, signature=SIGNATURE, output=OUTPUT_NAME,
            services=services, max_items=max_items, seconds=round(time.monotonic() - start, 3))
        write_json_atomic(os.path.join(tmp, MANIFEST_FILE), manifest)
    if lookup_model_dir:
        from clue_keras.embeddings.lookup_model import build_lookup_model

        build_lookup_model(out_dir, lookup_model_dir)
    return manifest
