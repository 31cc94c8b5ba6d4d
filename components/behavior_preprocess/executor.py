"""Executor of BehaviorPreprocess: artifact I/O and input checks.

The preprocessing itself is `clue_keras.data.preprocess.build_pipeline` (named
Beam transforms, also run in-process by `clue prepare`); this module reads the
input artifacts, checks the raw rows (`validate_inputs`: schema, statistics,
ExampleValidator anomalies; `locate_problem` names the raw file at fault), runs
the graph on the configured Beam runner and records ``stats.json`` as custom
properties of the output artifact.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence

from absl import logging
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx import types
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.utils import io_utils

from clue_keras.data.formats import BEHAVIOR_COLUMNS, iter_raw_rows
from clue_keras.data.prepare import no_train_users_message
from clue_keras.data.preprocess import (SPLITS, STATS_FILENAME, VOCAB_DIRNAME,
                                        InputValidationError, build_pipeline)

#: Types ExampleGen may infer for each required raw column. Ids and texts: strings,
#: or integers (read as their decimal string) or floats; the timestamp: int64 (unix
#: seconds or ordinals), a float, or a string (ISO-8601): `clue_keras.data.values`.
_STRINGS = frozenset({schema_pb2.BYTES, schema_pb2.INT, schema_pb2.FLOAT})
ACCEPTED_TYPES = {c: _STRINGS for c in BEHAVIOR_COLUMNS}
ACCEPTED_TYPES["timestamp"] = frozenset({schema_pb2.INT, schema_pb2.BYTES, schema_pb2.FLOAT})
_TYPE_NAMES = {schema_pb2.BYTES: "string (BYTES)", schema_pb2.INT: "integer (INT)",
               schema_pb2.FLOAT: "float (FLOAT)", schema_pb2.STRUCT: "STRUCT",
               schema_pb2.TYPE_UNKNOWN: "unknown (no values)"}


# ---------------------------------------------------------------------------
# Input checks (before any Beam work).
# ---------------------------------------------------------------------------

def locate_problem(input_base: Optional[str], file_pattern: Optional[str],
                   fmt: Optional[str], column: str, problem: str,
                   limit: int = 10_000) -> List[str]:
    """Names the raw files (with a sample row) showing ``problem`` for ``column``.

    Args:
      problem: ``missing`` (column absent) or ``empty`` (rows without a value).
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
            for row in iter_raw_rows(path, fmt, limit):
                if None in row:  # header / column list
                    if problem == "missing" and column not in row[None]:
                        findings.append(f"{path} (columns: {', '.join(row[None])})")
                        break
                    continue
                i += 1
                if problem == "missing" and column not in row:
                    findings.append(f"{path} (row {i} has keys {sorted(row)})")
                    break
                if problem == "empty" and row.get(column) is None:
                    findings.append(f"{path} (row {i}: {row})")
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
    schema with an accepted type (`ACCEPTED_TYPES`: integer ids and ISO
    timestamps are fine); ExampleValidator reported no anomaly. Messages name
    the column and, when the raw files are known (``input_base``), the
    offending file. Rows with an empty or bad value are not an error here: the
    Beam graph drops and counts them (``rows_dropped_*`` in ``stats.json``).

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
    for col, accepted in ACCEPTED_TYPES.items():
        if col not in features:
            raise InputValidationError(
                f"required column {col!r} is missing{_where(exec_properties, col, 'missing')}; "
                f"columns must be {', '.join(ACCEPTED_TYPES)}")
        got = features[col].type
        if got not in accepted:
            raise InputValidationError(
                f"column {col!r} has type {_TYPE_NAMES.get(got, got)} but must be one of "
                f"{', '.join(_TYPE_NAMES[t] for t in sorted(accepted))}"
                f"{_where(exec_properties, col, 'empty')}")
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
            raise InputValidationError("BehaviorPreprocess: " + no_train_users_message(
                result, int(exec_properties["min_items_per_user"]),
                int(exec_properties["min_services_per_user"])))
        logging.info("BehaviorPreprocess stats: %s", result)


def _common_pattern(patterns: Sequence[str]) -> str:
    """One glob over every raw split directory (``.../Split-*/*`` if several)."""
    if len(patterns) == 1:
        return patterns[0]
    parent = os.path.dirname(os.path.dirname(patterns[0]))
    return os.path.join(parent, "Split-*", "*")
