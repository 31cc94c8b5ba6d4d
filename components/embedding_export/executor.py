"""EmbeddingExport executor: every kept user's embedding, with Beam, and the id-lookup model.

The Beam graph (`build_pipeline`, run on the pipeline's ``beam_pipeline_args``
through ``self._make_beam_pipeline()``, like BehaviorPreprocess):

1. ``ReadRecords``: every ``Split-*/*`` file of BehaviorPreprocess's
   ``user_examples`` (train, eval and test: every kept user), one serialised
   per-user ``tf.Example`` per element (``docs/ARCHITECTURE.md``, "Per-user
   training records");
2. ``Batch`` + ``Embed``: batches of records parsed into ``token_ids`` int32
   [B, P, S, L] (`clue_keras.data.input.make_parse_fn`, the Trainer's own parser,
   with the model's ``assets/clue_vocab.json`` layout) and run through the
   serving SavedModel's ``embed_tokens`` signature -> ``embedding`` float32
   [B, P*D]. This is how the Evaluator embeds the same records
   (`clue_tfrs.features.record_features`); ``embed_tokens`` on a user's record
   equals ``serving_default`` on the user's raw texts (tests/test_evaluation_inputs.py).
   The SavedModel is loaded once per worker process (``setup()``, ``shared.Shared``);
3. ``Store`` + ``Write``: Parquet shards in the embeddings table format
   (`clue_keras.embeddings.table`, float32: exact).

Then, in the executor's process, ``manifest.json`` is written next to the
shards and `clue_keras.embeddings.lookup_model.build_lookup_model` turns the
table into the lookup SavedModel (``user_id`` string [B] -> ``embedding``
float32 [B, P*D], ``found`` bool [B]; an unknown id gets zeros and
``found = False``). Those two steps use local files, so for a remote artifact
URI (``gs://``) the table is copied to a local temporary directory, the model
built there and copied back with TFX ``fileio``.

Output (a ``Model`` artifact, ``lookup_model``)::

    <uri>/Format-Serving/   the lookup SavedModel (where TFX's Pusher looks)
    <uri>/embeddings/       embeddings-SSSSS-of-NNNNN.parquet + manifest.json

An unblessed model (the ``blessing`` input says NOT_BLESSED) is not embedded:
the executor writes nothing and marks the artifact ``skipped`` = 1 (custom
property, with ``skipped_reason``); the LookupPusher, gated by the same
blessing, then pushes nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Dict, List

import numpy as np
from absl import logging
from tfx import types
from tfx.components.util import model_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.utils import io_utils
from tfx.utils import path_utils

from clue_keras.uri import is_remote

#: Sub-directories of the output artifact.
EMBEDDINGS_DIRNAME = "embeddings"
#: Signature of the CLUE serving SavedModel the records go through.
SIGNATURE = "embed_tokens"
#: Vocabulary files whose bytes define the token ids (records vs model).
_VOCAB_FILES = ("vocab.json", "merges.txt")
#: Execution properties and the value an absent one stands for.
PARAMETER_DEFAULTS = {"batch_size": 256, "num_shards": 0}


class _LoadedEncoder:
    """The SavedModel's ``embed_tokens`` and the record parser of its layout
    (weak-referenceable, for ``shared.Shared``)."""

    def __init__(self, model_dir: str):
        import tensorflow as tf

        from clue_keras.data.input import make_parse_fn
        from clue_keras.tokenizer import load_vocab_info, register_text_ops

        register_text_ops()  # the serving graph tokenises with RegexSplitWithOffsets
        self.module = tf.saved_model.load(model_dir)
        if SIGNATURE not in self.module.signatures:
            raise ValueError(f"{model_dir}: no signature {SIGNATURE!r} (not a CLUE serving "
                             f"SavedModel); has {sorted(self.module.signatures)}")
        self.fn = self.module.signatures[SIGNATURE]
        self.parse = make_parse_fn(load_vocab_info(os.path.join(model_dir, "assets")))


def _make_embed_dofn():
    import apache_beam as beam
    from apache_beam.utils import shared

    class _EmbedRecords(beam.DoFn):
        """Batches of serialised per-user records -> (user_id, float32 [P*D])."""

        def __init__(self, model_dir: str):
            self._model_dir = model_dir
            self._shared = shared.Shared()
            self._model = None

        def setup(self):
            self._model = self._shared.acquire(lambda: _LoadedEncoder(self._model_dir),
                                               tag=self._model_dir)

        def process(self, batch):
            import tensorflow as tf

            parsed = self._model.parse(tf.constant(list(batch), tf.string))
            vectors = self._model.fn(token_ids=parsed["token_ids"])["embedding"].numpy()
            for uid, vector in zip(parsed["user_id"].numpy(), vectors):
                yield uid.decode("utf-8"), np.asarray(vector, np.float32)

    return _EmbedRecords


def _to_row(item) -> dict:
    """(user_id, float32 [E]) -> a row of the embeddings table (float32, scale 1)."""
    uid, vector = item
    return {"user_id": uid, "embedding": np.asarray(vector, "<f4").tobytes(), "scale": 1.0}


def build_pipeline(p, record_pattern: str, model_dir: str, file_prefix: str,
                   batch_size: int = 256, num_shards: int = 0):
    """Adds the graph of the module docstring to Beam pipeline ``p``.

    Args:
      record_pattern: glob of the gzipped per-user record files (every split).
      model_dir: the CLUE serving SavedModel.
      file_prefix: path prefix of the Parquet shards (``<dir>/embeddings``).

    Returns:
      The PCollection of written shard file names.
    """
    import apache_beam as beam

    from clue_keras.embeddings.table import SHARD_SUFFIX, parquet_schema

    return (p
            | "ReadRecords" >> beam.io.ReadFromTFRecord(record_pattern,
                                                        coder=beam.coders.BytesCoder())
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=batch_size)
            | "Embed" >> beam.ParDo(_make_embed_dofn()(model_dir))
            | "Store" >> beam.Map(_to_row)
            | "Write" >> beam.io.WriteToParquet(
                file_prefix, parquet_schema(), num_shards=num_shards,
                file_name_suffix=SHARD_SUFFIX, codec="snappy"))


def check_vocabulary(records_dir: str, model_dir: str) -> None:
    """Raises ValueError unless the records under ``records_dir`` were tokenised with
    the model's vocabulary (``<records_dir>/vocab/`` vs ``<model_dir>/assets/``:
    services, S, L, vocabulary size and the BPE files). No ``vocab/``: not checked.

    The rule of `clue_tfrs.user_records.check_vocabulary`, kept here because importing
    ``clue_tfrs`` needs Keras 2 as ``tf.keras``, which a TFX executor process may not have."""
    from clue_keras.tokenizer import load_vocab_info

    vocab_dir = os.path.join(records_dir, "vocab")
    if not fileio.exists(os.path.join(vocab_dir, "clue_vocab.json")):
        return
    assets = os.path.join(model_dir, "assets")
    theirs, ours = load_vocab_info(vocab_dir), load_vocab_info(assets)
    different = [f for f in ("services", "max_items", "max_tokens", "vocab_size")
                 if getattr(theirs, f) != getattr(ours, f)]
    different += [name for name in _VOCAB_FILES
                  if io_utils.read_bytes_file(os.path.join(vocab_dir, name))
                  != io_utils.read_bytes_file(os.path.join(assets, name))]
    if different:
        raise ValueError(f"EmbeddingExport: the records in {records_dir} were tokenised with "
                         f"another vocabulary than the model {model_dir} "
                         f"({', '.join(different)} differ)")


def _is_local(uri: str) -> bool:
    return not is_remote(uri)


def export_lookup(records_dir: str, model_dir: str, out_dir: str,
                  beam_pipeline, batch_size: int = 256, num_shards: int = 0) -> dict:
    """Embeds every record under ``records_dir`` and builds the lookup model in ``out_dir``.

    Args:
      records_dir: per-user records (``Split-*/*`` files and ``vocab/``):
        BehaviorPreprocess's ``user_examples`` or `clue prepare`'s output.
      model_dir: the CLUE serving SavedModel the records were tokenised for.
      out_dir: the output (``Format-Serving/`` and ``embeddings/`` are written
        there, replacing whatever a failed earlier attempt left); any URI fileio knows.
      beam_pipeline: a ``beam.Pipeline`` (not yet run) to add the graph to; it is
        run here (``with``).

    Returns:
      The embeddings manifest (``count`` users, ``dim``, shards, provenance).

    Raises:
      FileNotFoundError: no record files; ValueError: another vocabulary, no users,
        a duplicate user id.
    """
    from clue_keras.atomic import write_json_atomic
    from clue_keras.embeddings.lookup_model import build_lookup_model
    from clue_keras.embeddings.table import MANIFEST_FILE, SHARD_PREFIX, build_manifest, \
        shard_summary

    from clue_keras.uri import glob

    pattern = os.path.join(records_dir, "Split-*", "*")
    # clue_keras.uri.glob: tf.io.gfile's GCS glob matches no directory (``Split-*``).
    if not [f for f in glob(pattern) if not fileio.isdir(f)]:
        raise FileNotFoundError(f"EmbeddingExport: no per-user records under {records_dir} "
                                "(expected Split-<split>/ files as BehaviorPreprocess writes them)")
    check_vocabulary(records_dir, model_dir)
    table_uri = os.path.join(out_dir, EMBEDDINGS_DIRNAME)
    serving_uri = path_utils.serving_model_dir(out_dir)
    for stale in (table_uri, serving_uri):  # a retried execution writes the same URIs
        if fileio.exists(stale):
            fileio.rmtree(stale)
    fileio.makedirs(table_uri)
    with beam_pipeline as p:
        build_pipeline(p, pattern, model_dir, os.path.join(table_uri, SHARD_PREFIX),
                       batch_size=batch_size, num_shards=num_shards)

    staging = None if _is_local(out_dir) else tempfile.mkdtemp(prefix="clue-lookup-")
    try:
        local_table = table_uri
        if staging:
            local_table = os.path.join(staging, EMBEDDINGS_DIRNAME)
            io_utils.copy_dir(table_uri, local_table)
        shards, count, dim_bytes = shard_summary(local_table)
        for name in os.listdir(local_table):  # Beam's own temp dirs, if the runner left any
            if os.path.isdir(os.path.join(local_table, name)):
                shutil.rmtree(os.path.join(local_table, name))
        manifest = build_manifest(shards, count, None if dim_bytes is None else dim_bytes // 4,
                                  "float32", model=model_dir, signature=SIGNATURE,
                                  output="embedding", records=records_dir)
        write_json_atomic(os.path.join(local_table, MANIFEST_FILE), manifest)
        local_model = os.path.join(staging, "model") if staging else serving_uri
        build_lookup_model(local_table, local_model)
        if staging:
            io_utils.copy_file(os.path.join(local_table, MANIFEST_FILE),
                               os.path.join(table_uri, MANIFEST_FILE), overwrite=True)
            io_utils.copy_dir(local_model, serving_uri)
    finally:
        if staging:
            shutil.rmtree(staging, ignore_errors=True)
    return manifest


class Executor(base_beam_executor.BaseBeamExecutor):
    """Embeds every kept user with the blessed encoder and builds the id-lookup model."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        """Writes ``lookup_model`` (see the module docstring), or nothing when unblessed.

        Args:
          input_dict: ``model`` (the Trainer's Model: serving SavedModel under
            ``Format-Serving``), ``user_examples`` (BehaviorPreprocess's records),
            ``blessing`` (the Evaluator's ModelBlessing).
          output_dict: ``lookup_model`` (Model).
          exec_properties: ``batch_size`` (users per SavedModel call), ``num_shards``
            (Parquet shards; 0: the runner decides).
        """
        self._log_startup(input_dict, output_dict, exec_properties)
        out = artifact_utils.get_single_instance(output_dict["lookup_model"])
        blessing = artifact_utils.get_single_instance(input_dict["blessing"])
        if not model_utils.is_model_blessed(blessing):
            reason = "the model is not blessed, so no user is embedded and nothing is pushed"
            logging.info("EmbeddingExport: %s (blessing %s)", reason, blessing.uri)
            out.set_int_custom_property("skipped", 1)
            out.set_string_custom_property("skipped_reason", reason)
            return
        model = artifact_utils.get_single_instance(input_dict["model"])
        model_dir = path_utils.serving_model_path(
            model.uri, path_utils.is_old_model_artifact(model))
        if not fileio.exists(os.path.join(model_dir, "saved_model.pb")):
            raise FileNotFoundError(f"EmbeddingExport: no serving SavedModel in {model_dir} "
                                    "(the Trainer's Model artifact)")
        records = artifact_utils.get_single_instance(input_dict["user_examples"])
        params = {k: exec_properties.get(k) for k in PARAMETER_DEFAULTS}
        params = {k: PARAMETER_DEFAULTS[k] if v is None else int(v) for k, v in params.items()}
        if params["batch_size"] < 1 or params["num_shards"] < 0:
            raise ValueError(f"EmbeddingExport: need batch_size >= 1 and num_shards >= 0, "
                             f"got {params}")
        manifest = export_lookup(records.uri, model_dir, out.uri, self._make_beam_pipeline(),
                                 **params)
        out.set_int_custom_property("skipped", 0)
        out.set_int_custom_property("users", int(manifest["count"]))
        out.set_int_custom_property("dim", int(manifest["dim"] or 0))
        out.set_string_custom_property("embeddings_dir",
                                       os.path.join(out.uri, EMBEDDINGS_DIRNAME))
        logging.info("EmbeddingExport: %d users (dim %s) -> %s", manifest["count"],
                     manifest["dim"], out.uri)
