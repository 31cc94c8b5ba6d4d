"""Executor of BehaviorPreprocess: the Beam pipeline and the input checks.

Beam graph (each step a named, separately testable transform)::

  raw tf.Examples (every ExampleGen split)
    | ParseRows            -> {"user_id", "service", "timestamp", "item_text"} (text normalised)
    | BuildUserHistories   -> (user_id, {service: [item_text, ...]})  oldest first,
                              exact repeats dropped, newest S per service kept,
                              users under the activity threshold dropped
    | SplitByUser          -> train / eval / test by a hash of user_id
  train | TrainVocab       -> <out>/vocab/  (BPE on a sample of train texts)
  each split | EncodeUsers -> gzipped TFRecords of per-user tf.Examples
  counts  | WriteStats     -> <out>/stats.json (also artifact custom properties)

The per-row and per-user logic is not written here: it is
`clue_keras.tokenizer.normalize_text`, `clue_keras.prepare` and
`clue_keras.records` (the same functions `clue prepare` uses without Beam),
so the Beam and the single-process paths produce identical records.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
import tensorflow as tf
from absl import logging
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx import types
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.utils import io_utils
from clue_keras.atomic import write_json_atomic

VOCAB_DIRNAME = "vocab"
STATS_FILENAME = "stats.json"
SPLITS = ("train", "eval", "test")
OUTPUT_PREFIX = "data_tfrecord"

#: Required raw columns and their tf.Example / schema types.
REQUIRED_COLUMNS = {
    "user_id": schema_pb2.BYTES,
    "service": schema_pb2.BYTES,
    "timestamp": schema_pb2.INT,
    "item_text": schema_pb2.BYTES,
}
_TYPE_NAMES = {schema_pb2.BYTES: "string (BYTES)", schema_pb2.INT: "integer (INT)",
               schema_pb2.FLOAT: "float (FLOAT)", schema_pb2.STRUCT: "STRUCT",
               schema_pb2.TYPE_UNKNOWN: "unknown (no values)"}


class InputValidationError(ValueError):
    """The raw behaviour logs cannot be preprocessed; the message says why and where."""


# ---------------------------------------------------------------------------
# Per-element functions (thin wrappers over clue_keras; picklable, no state).
# ---------------------------------------------------------------------------

def parse_row(serialized: bytes) -> Dict[str, Any]:
    """Serialized raw tf.Example -> ``{"user_id": str, "service": str,
    "timestamp": int (unix s), "item_text": str ("" when empty)}``.

    An empty ``item_text`` is kept as "" (`clean_behaviors` skips and counts
    it); any other required column must hold exactly one value.
    """
    feats = tf.train.Example.FromString(serialized).features.feature
    row = {}
    for col, typ in REQUIRED_COLUMNS.items():
        f = feats[col] if col in feats else tf.train.Feature()
        values = f.int64_list.value if typ == schema_pb2.INT else f.bytes_list.value
        if col == "item_text" and not values:
            row[col] = ""
            continue
        if len(values) != 1:
            user = feats["user_id"].bytes_list.value if "user_id" in feats else "?"
            raise InputValidationError(
                f"column {col!r} must hold exactly one value per row, got {list(values)!r} "
                f"(row of user_id={list(user)!r})")
        row[col] = int(values[0]) if typ == schema_pb2.INT else values[0].decode("utf-8")
    return row


def build_history(user_rows: Tuple[str, Iterable[Dict[str, Any]]], max_items: int):
    """``(user_id, rows)`` -> ``(user_id, CleanedUser)``: text normalised, empty
    texts and exact repeats dropped, oldest first, newest ``max_items`` per
    service (`clue_keras.records.clean_behaviors`)."""
    from clue_keras.records import clean_behaviors

    user_id, rows = user_rows
    return user_id, clean_behaviors(
        ((r["service"], r["timestamp"], r["item_text"]) for r in rows), max_items)


def is_active(user: Tuple[str, Any], min_items: int, min_services: int) -> bool:
    """Activity threshold: >= ``min_items`` kept items over all services
    (`clue_keras.records.is_active`) and >= ``min_services`` services."""
    from clue_keras.records import is_active as enough_items

    cleaned = user[1]
    return enough_items(cleaned.n_items, min_items) and len(cleaned.items) >= min_services


def split_index(user: Tuple[str, Any], num_partitions: int, eval_percent: int,
                test_percent: int) -> int:
    """Partition fn: index into `SPLITS` from a stable hash of the user id
    (`clue_keras.records.split_of`)."""
    from clue_keras.records import split_of

    del num_partitions
    return SPLITS.index(split_of(user[0], eval_percent, test_percent))


# ---------------------------------------------------------------------------
# Composite transforms.
# ---------------------------------------------------------------------------

@beam.ptransform_fn
def ParseRows(serialized: beam.PCollection) -> beam.PCollection:  # pylint: disable=invalid-name
    """bytes (serialized raw tf.Example) -> row dicts (`parse_row`)."""
    return serialized | "Parse" >> beam.Map(parse_row)


@beam.ptransform_fn
def CleanUsers(rows: beam.PCollection, max_items: int) -> beam.PCollection:  # pylint: disable=invalid-name
    """rows -> ``(user_id, CleanedUser)`` for every user (`build_history`)."""
    return (rows
            | "KeyByUser" >> beam.Map(lambda r: (r["user_id"], r))
            | "GroupByUser" >> beam.GroupByKey()
            | "Clean" >> beam.Map(build_history, max_items=max_items))


@beam.ptransform_fn
def BuildUserHistories(rows: beam.PCollection, max_items: int, min_items: int,  # pylint: disable=invalid-name
                       min_services: int) -> beam.PCollection:
    """rows -> ``(user_id, CleanedUser)`` of active users only.

    ``CleanedUser.items`` is ``{service: [normalised text, ...]}``, oldest
    first, exact repeats dropped, at most ``max_items`` (the newest) each.
    """
    return (rows
            | "CleanUsers" >> CleanUsers(max_items=max_items)  # pylint: disable=no-value-for-parameter
            | "DropInactive" >> beam.Filter(is_active, min_items=min_items,
                                            min_services=min_services))


def split_by_user(users: beam.PCollection, eval_percent: int,
                  test_percent: int) -> Dict[str, beam.PCollection]:
    """Partitions ``(user_id, ...)`` into ``{"train", "eval", "test"}`` by user-id hash."""
    parts = users | "SplitByUser" >> beam.Partition(
        split_index, len(SPLITS), eval_percent=eval_percent, test_percent=test_percent)
    return dict(zip(SPLITS, parts))


def _item_texts(user: Tuple[str, Any]) -> List[str]:
    return [t for items in user[1].items.values() for t in items]


def _train_vocab(texts: List[str], services: List[str], vocab_dir: str, vocab_size: int,
                 max_items: int, max_tokens: int) -> str:
    """Trains the BPE on ``texts`` and writes the vocab artifact to ``vocab_dir``
    (local or remote; `train_bpe` writes each file atomically, ``clue_vocab.json`` last)."""
    from clue_keras.tokenizer import train_bpe

    if not texts:
        raise InputValidationError("the train split has no items to train the BPE on; "
                                   "lower eval/test percent or the activity threshold")
    train_bpe(sorted(texts), services, vocab_size, vocab_dir, max_items=max_items,
              max_tokens=max_tokens)
    return vocab_dir


@beam.ptransform_fn
def TrainVocab(train: beam.PCollection, services: beam.PCollection, vocab_dir: str,  # pylint: disable=invalid-name
               vocab_size: int, max_items: int, max_tokens: int,
               sample_size: int) -> beam.PCollection:
    """Train-split users -> a one-element PCollection holding ``vocab_dir``.

    At most ``sample_size`` item texts (a uniform sample) reach the single
    worker that trains the BPE; ``services`` is a one-element PCollection of
    the sorted service list. Texts are sorted before training so that the same
    sample gives the same vocabulary whatever order the runner delivered it in.
    """
    return (train
            | "Texts" >> beam.FlatMap(_item_texts)
            | "Sample" >> beam.combiners.Sample.FixedSizeGlobally(sample_size)
            | "TrainBPE" >> beam.Map(
                _train_vocab, services=beam.pvalue.AsSingleton(services),
                vocab_dir=vocab_dir, vocab_size=vocab_size, max_items=max_items,
                max_tokens=max_tokens))


class EncodeUserFn(beam.DoFn):
    """``(user_id, CleanedUser)`` -> serialized per-user tf.Example (docs/ARCHITECTURE.md).

    The tokenizer is loaded once per DoFn instance from the vocab directory
    given as a side input (so encoding starts only after `TrainVocab`).
    """

    def __init__(self):
        super().__init__()
        self._tokenizer = None

    def process(self, user: Tuple[str, Any], vocab_dir: str) -> Iterable[bytes]:
        from clue_keras.records import build_user_example
        from clue_keras.tokenizer import OfflineTokenizer

        if self._tokenizer is None or self._tokenizer.vocab_dir != vocab_dir:
            self._tokenizer = OfflineTokenizer(vocab_dir)
        user_id, cleaned = user
        ids = {service: self._tokenizer.encode_items(texts, service)
               for service, texts in cleaned.items.items()}
        yield build_user_example(user_id, ids, self._tokenizer.info.services).SerializeToString()


@beam.ptransform_fn
def EncodeUsers(users: beam.PCollection, vocab_dir: beam.PCollection  # pylint: disable=invalid-name
                ) -> beam.PCollection:
    """``(user_id, CleanedUser)`` -> serialized tf.Examples; ``vocab_dir`` a singleton."""
    return users | "Encode" >> beam.ParDo(EncodeUserFn(), beam.pvalue.AsSingleton(vocab_dir))


def _count(pcoll: beam.PCollection, label: str) -> beam.PCollection:
    return pcoll | label >> beam.combiners.Count.Globally()


# ---------------------------------------------------------------------------
# Input checks (before any Beam work).
# ---------------------------------------------------------------------------

def _iter_raw_rows(path: str, fmt: str, limit: int):
    """Yields up to ``limit`` raw rows of one input file as ``{column: value}``
    (value None when the cell is empty); the first yield of a CSV/Parquet file
    is its column list under the key ``None``."""
    if fmt == "csv":
        import csv
        with fileio.open(path, "r") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            yield {None: header}
            for i, rec in enumerate(reader):
                if i >= limit:
                    return
                yield {k: (v if v != "" else None) for k, v in zip(header, rec)}
    elif fmt == "jsonl":
        with fileio.open(path, "r") as f:
            for i, line in enumerate(f):
                if i >= limit:
                    return
                if line.strip():
                    yield json.loads(line)
    elif fmt == "parquet":
        import pyarrow.parquet as pq
        table = pq.read_table(path)
        yield {None: table.column_names}
        for rec in table.slice(0, limit).to_pylist():
            yield rec
    elif fmt == "tfrecord":
        compression = "GZIP" if path.endswith(".gz") else ""
        ds = tf.data.TFRecordDataset(path, compression_type=compression).take(limit)
        for raw in ds.as_numpy_iterator():
            feats = tf.train.Example.FromString(raw).features.feature
            row = {}
            for k, f in feats.items():
                kind = f.WhichOneof("kind")
                vals = list(getattr(f, kind).value) if kind else []
                row[k] = vals[0] if len(vals) == 1 else (vals or None)
            yield row


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    if isinstance(value, (str, bytes)):
        try:
            int(value)
            return True
        except ValueError:
            return False
    return False


def locate_problem(input_base: Optional[str], file_pattern: Optional[str],
                   fmt: Optional[str], column: str, problem: str,
                   limit: int = 10_000) -> List[str]:
    """Names the raw files (with a sample row) showing ``problem`` for ``column``.

    Args:
      problem: ``missing`` (column absent), ``type`` (values not integers,
        checked for INT columns only) or ``empty`` (rows without a value).
      limit: rows scanned per file.

    Returns:
      Human-readable findings, e.g. ``"/data/b-0.csv (header: user_id, service)"``;
      empty when the files are unknown or nothing was found.
    """
    if not input_base or not fmt:
        return []
    pattern = os.path.join(input_base, file_pattern or "*")
    findings = []
    for path in sorted(fileio.glob(pattern)):
        try:
            i = 0  # data rows seen
            for row in _iter_raw_rows(path, fmt, limit):
                if None in row:  # header / column list
                    if problem == "missing" and column not in row[None]:
                        findings.append(f"{path} (columns: {', '.join(row[None])})")
                        break
                    continue
                i += 1
                if problem == "missing" and column not in row:
                    findings.append(f"{path} (row {i} has keys {sorted(row)})")
                    break
                value = row.get(column)
                if problem == "empty" and column in row and value is None:
                    findings.append(f"{path} (row {i}: {row})")
                    break
                if problem == "type" and value is not None and not _is_int(value):
                    findings.append(f"{path} (row {i}: {column}={value!r})")
                    break
        except Exception as e:  # a file we cannot even read is a finding itself
            findings.append(f"{path} (unreadable: {e})")
    return findings


def _where(exec_properties: Dict[str, Any], column: str, problem: str) -> str:
    findings = locate_problem(exec_properties.get("input_base"),
                              exec_properties.get("file_pattern"),
                              exec_properties.get("input_format"), column, problem)
    if findings:
        return " in file(s): " + "; ".join(findings)
    base = exec_properties.get("input_base")
    return f" in the input under {base}" if base else ""


def _load_anomalies(artifact: types.Artifact) -> Dict[str, anomalies_pb2.Anomalies]:
    out = {}
    for split in artifact_utils.decode_split_names(artifact.split_names):
        path = os.path.join(artifact_utils.get_split_uri([artifact], split), "SchemaDiff.pb")
        if fileio.exists(path):
            with fileio.open(path, "rb") as f:
                out[split] = anomalies_pb2.Anomalies.FromString(f.read())
    return out


def validate_inputs(schema: schema_pb2.Schema,
                    stats: Dict[str, Any],
                    anomalies: Dict[str, anomalies_pb2.Anomalies],
                    exec_properties: Dict[str, Any]) -> int:
    """Raises `InputValidationError` unless the raw rows can be preprocessed.

    Checks, in order: the input is not empty; every required column is in the
    schema with the right type; no row lacks a required value; ExampleValidator
    reported no anomaly. Messages name the column and, when the raw files are
    known (``input_base``), the offending file.

    Args:
      schema: SchemaGen's schema of the raw rows.
      stats: ``{split: DatasetFeatureStatistics}`` from StatisticsGen.
      anomalies: ``{split: Anomalies}`` from ExampleValidator.

    Returns:
      The number of raw rows (over all splits).
    """
    base = exec_properties.get("input_base") or "the ExampleGen input"
    num_rows = sum(int(s.num_examples) for s in stats.values())
    if num_rows == 0:
        raise InputValidationError(
            f"the behaviour logs are empty: 0 rows in {base} "
            f"(pattern {exec_properties.get('file_pattern') or '*'})")
    features = {f.name: f for f in schema.feature}
    for col, want in REQUIRED_COLUMNS.items():
        if col not in features:
            raise InputValidationError(
                f"required column {col!r} is missing{_where(exec_properties, col, 'missing')}; "
                f"columns must be {', '.join(REQUIRED_COLUMNS)}")
        got = features[col].type
        if got != want:
            raise InputValidationError(
                f"column {col!r} has type {_TYPE_NAMES.get(got, got)} but must be "
                f"{_TYPE_NAMES[want]}{_where(exec_properties, col, 'type')}")
    for split, s in stats.items():
        for fs in s.features:
            col = fs.path.step[0] if fs.path.step else fs.name
            if col not in REQUIRED_COLUMNS or col == "item_text":
                continue  # an empty item text is dropped later, not an error
            common = (fs.num_stats.common_stats if fs.HasField("num_stats")
                      else fs.string_stats.common_stats)
            if common.num_missing:
                raise InputValidationError(
                    f"column {col!r} is empty in {common.num_missing} of {s.num_examples} "
                    f"rows{_where(exec_properties, col, 'empty')}")
    problems = []
    for split, a in sorted(anomalies.items()):
        for feature, info in sorted(a.anomaly_info.items()):
            problems.append(f"column {feature!r} (split {split}): {info.description or info.short_description}")
        if a.HasField("dataset_anomaly_info"):
            info = a.dataset_anomaly_info
            problems.append(f"dataset (split {split}): {info.description or info.short_description}")
    if problems:
        raise InputValidationError(
            f"ExampleValidator found anomalies in {base}: " + "; ".join(problems))
    return num_rows


# ---------------------------------------------------------------------------
# Executor.
# ---------------------------------------------------------------------------

def _sum(pcoll: beam.PCollection, fn, label: str) -> beam.PCollection:
    return (pcoll | f"{label}Values" >> beam.Map(fn)
            | label >> beam.CombineGlobally(sum))


def build_pipeline(p: beam.Pipeline, raw_pattern: str, output_uri: str,
                   params: Dict[str, Any]) -> None:
    """Adds the whole preprocessing graph to ``p``.

    Reads raw tf.Examples matching ``raw_pattern``; writes
    ``output_uri/Split-{train,eval,test}/data_tfrecord-*.gz``,
    ``output_uri/vocab/`` and ``output_uri/stats.json``. ``params`` are the
    `BehaviorPreprocessSpec` parameters.
    """
    max_items, max_tokens = int(params["max_items"]), int(params["max_tokens"])
    raw = p | "ReadRaw" >> beam.io.ReadFromTFRecord(raw_pattern)
    rows = raw | "ParseRows" >> ParseRows()  # pylint: disable=no-value-for-parameter
    cleaned = rows | "CleanUsers" >> CleanUsers(max_items=max_items)  # pylint: disable=no-value-for-parameter
    active = cleaned | "DropInactive" >> beam.Filter(
        is_active, min_items=int(params["min_items_per_user"]),
        min_services=int(params["min_services_per_user"]))
    splits = split_by_user(active, int(params["eval_percent"]), int(params["test_percent"]))
    services = (active
                | "ServiceNames" >> beam.FlatMap(lambda u: list(u[1].items))
                | "DistinctServices" >> beam.Distinct()
                | "ServiceList" >> beam.combiners.ToList()
                | "SortServices" >> beam.Map(sorted))
    vocab = splits["train"] | "TrainVocab" >> TrainVocab(  # pylint: disable=no-value-for-parameter
        services, vocab_dir=os.path.join(output_uri, VOCAB_DIRNAME),
        vocab_size=int(params["vocab_size"]), max_items=max_items, max_tokens=max_tokens,
        sample_size=int(params["bpe_sample_size"]))
    counts = {
        "rows_read": _count(rows, "CountRows"),
        "users_read": _count(cleaned, "CountUsersRead"),
        "users_kept": _count(active, "CountUsersKept"),
        "rows_empty_text": _sum(cleaned, lambda u: u[1].n_empty, "SumEmpty"),
        "rows_duplicate": _sum(cleaned, lambda u: u[1].n_duplicates, "SumDuplicates"),
        "items_truncated": _sum(cleaned, lambda u: u[1].n_truncated, "SumTruncated"),
    }
    for split, users in splits.items():
        encoded = users | f"Encode[{split}]" >> EncodeUsers(vocab)  # pylint: disable=no-value-for-parameter
        _ = encoded | f"Write[{split}]" >> beam.io.WriteToTFRecord(
            os.path.join(output_uri, f"Split-{split}", OUTPUT_PREFIX),
            file_name_suffix=".gz",
            compression_type=beam.io.filesystem.CompressionTypes.GZIP,
            num_shards=int(params.get("num_shards") or 0))
        counts[f"users_{split}"] = _count(encoded, f"CountUsers[{split}]")
        counts[f"items_{split}"] = _sum(users, lambda u: u[1].n_items, f"SumItems[{split}]")

    def write_stats(_, services, **c):
        stats = {k: int(v) for k, v in c.items()}
        stats["services"] = list(services)
        write_json_atomic(os.path.join(output_uri, STATS_FILENAME), stats)

    _ = (p | "StatsTrigger" >> beam.Create([None])
         | "WriteStats" >> beam.Map(
             write_stats, services=beam.pvalue.AsSingleton(services),
             **{k: beam.pvalue.AsSingleton(v) for k, v in counts.items()}))


class Executor(base_beam_executor.BaseBeamExecutor):
    """Runs the BehaviorPreprocess Beam pipeline on the configured runner."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        """Checks the inputs, then writes per-user records, vocab and stats.

        Args:
          input_dict: ``examples`` (raw rows), ``schema``, ``statistics``, ``anomalies``.
          output_dict: ``user_examples``: Split-train/eval/test, vocab/, stats.json.
          exec_properties: the `BehaviorPreprocessSpec` parameters.

        Raises:
          InputValidationError: empty input, a missing/mistyped/empty required
            column, or ExampleValidator anomalies (nothing is written then).
        """
        self._log_startup(input_dict, output_dict, exec_properties)
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        schema = io_utils.SchemaReader().read(io_utils.get_only_uri_in_dir(
            artifact_utils.get_single_uri(input_dict["schema"])))
        stats_artifact = artifact_utils.get_single_instance(input_dict["statistics"])
        stats = {}
        for split in artifact_utils.decode_split_names(stats_artifact.split_names):
            lst = stats_artifact_utils.load_statistics(stats_artifact, split).proto()
            stats[split] = lst.datasets[0]
        anomalies = _load_anomalies(artifact_utils.get_single_instance(input_dict["anomalies"]))
        validate_inputs(schema, stats, anomalies, exec_properties)

        out = artifact_utils.get_single_instance(output_dict["user_examples"])
        out.split_names = artifact_utils.encode_split_names(list(SPLITS))
        raw_patterns = [os.path.join(artifact_utils.get_split_uri([examples], s), "*")
                        for s in artifact_utils.decode_split_names(examples.split_names)]
        logging.info("BehaviorPreprocess: reading %s, writing %s", raw_patterns, out.uri)
        with self._make_beam_pipeline() as p:
            build_pipeline(p, _common_pattern(raw_patterns), out.uri, exec_properties)

        with fileio.open(os.path.join(out.uri, STATS_FILENAME)) as f:
            result = json.load(f)
        for key, value in result.items():
            if isinstance(value, int):
                out.set_int_custom_property(key, value)
        out.set_string_custom_property("services", ",".join(result["services"]))
        out.set_string_custom_property("vocab_dir", os.path.join(out.uri, VOCAB_DIRNAME))
        if result.get("users_train", 0) == 0:
            raise InputValidationError(
                f"no user reached the activity threshold in the train split "
                f"({result}); lower min_items_per_user / min_services_per_user")
        logging.info("BehaviorPreprocess stats: %s", result)


def _common_pattern(patterns: Sequence[str]) -> str:
    """One glob over every raw split directory (``.../Split-*/*`` if several)."""
    if len(patterns) == 1:
        return patterns[0]
    parent = os.path.dirname(os.path.dirname(patterns[0]))
    return os.path.join(parent, "Split-*", "*")
