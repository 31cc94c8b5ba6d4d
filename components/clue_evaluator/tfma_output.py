"""ClueEvaluator's results in TFMA's own file format, for `tfma.load_eval_result`.

TFX's stock Evaluator writes TensorFlow Model Analysis output into its
``ModelEvaluation`` artifact; notebooks and dashboards read it with
``tfma.load_eval_result(evaluation.uri)``, ``tfma.load_metrics`` and
``tfma.load_validation_result``. ClueEvaluator writes the same files next to
its own (results.json / .md / .png, blessing.json), from the results table:

```
<uri>/eval_config.json                        tfma EvalRun (JSON): config, model location
<uri>/metrics-00000-of-00001.tfrecord         MetricsForSlice records (below)
<uri>/validations-00000-of-00001.tfrecord     one ValidationResult: the blessing
```

The downstream models are *slices* of one evaluation (the model evaluated is
the CLUE encoder; each downstream model is a view of it), so a plain
``tfma.load_eval_result(uri)`` shows the whole table without ``model_name``:

* slice ``(("model", <column>),)`` for every column of the table (TopPop,
  U-MLP (CLUE), ...): every metric row (HR@1, NDCG@10, MRR, top-10 accuracy,
  as double values), ``example_count`` (test positives) and, for every paired
  comparison whose model is this column, ``"<metric> diff vs <baseline>"``:
  the difference of the means with its bootstrap interval as TFMA's
  confidence interval (loaded as a ``boundedValue``);
* the overall slice ``()``: the metrics of the candidate column (U-MLP (CLUE),
  the encoder's score) and ``example_count`` (absent when the table has neither).

The ValidationResult's ``validation_ok`` is the blessing; when not blessed it
holds one failure on the candidate's slice whose message is the reason.

Written with the protos and ``tf.io`` only (no Beam), each file to a hidden
temporary name first and renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import tensorflow as tf
from google.protobuf import json_format
from tensorflow_model_analysis import version as tfma_version
from tensorflow_model_analysis.proto import config_pb2
from tensorflow_model_analysis.proto import metrics_for_slice_pb2 as mfs_pb2
from tensorflow_model_analysis.proto import validation_result_pb2

#: File names TFMA's writers use (and its loaders glob for: ``metrics*``, ``validations*``).
EVAL_CONFIG_FILE = "eval_config.json"
METRICS_FILE = "metrics-00000-of-00001.tfrecord"
VALIDATIONS_FILE = "validations-00000-of-00001.tfrecord"

#: The slice feature naming the downstream model.
SLICE_FEATURE = "model"
#: TFMA's standard name of the number of evaluated examples.
EXAMPLE_COUNT = "example_count"
#: The column whose metrics the overall slice holds (``blessing.CLUE_COLUMN``).
CANDIDATE_COLUMN = "U-MLP (CLUE)"

__all__ = ["write_tfma_output", "metrics_for_slices", "diff_metric_name", "SLICE_FEATURE",
           "EXAMPLE_COUNT", "EVAL_CONFIG_FILE", "METRICS_FILE", "VALIDATIONS_FILE"]


def diff_metric_name(metric: str, baseline: str) -> str:
    """``"MRR diff vs TopPop"``: the name of a paired difference in a model's slice."""
    return f"{metric} diff vs {baseline}"


def _table_dict(table: Any) -> Mapping[str, Any]:
    """The results.json dict of a ``ResultsTable`` or of that dict itself."""
    return table if isinstance(table, Mapping) else table.to_dict()


def _slice_key(column: Optional[str]) -> mfs_pb2.SliceKey:
    key = mfs_pb2.SliceKey()
    if column is not None:
        key.single_slice_keys.add(column=SLICE_FEATURE, bytes_value=column.encode("utf-8"))
    return key


def _add(record: mfs_pb2.MetricsForSlice, name: str, value: float,
         bounds: Optional[Tuple[float, float]] = None) -> None:
    kv = record.metric_keys_and_values.add()
    kv.key.name = name
    kv.value.double_value.value = float(value)
    if bounds is not None:
        kv.confidence_interval.lower_bound.double_value.value = float(bounds[0])
        kv.confidence_interval.upper_bound.double_value.value = float(bounds[1])


def _example_count(info: Mapping[str, Any]) -> Optional[int]:
    count = info.get("num_test_positives")
    return None if count is None else int(count)


def _comparisons(info: Mapping[str, Any], column: str) -> Iterable[Mapping[str, Any]]:
    return [c for c in info.get("paired") or [] if c.get("model") == column]


def metrics_for_slices(table: Any, candidate: str = CANDIDATE_COLUMN
                       ) -> List[mfs_pb2.MetricsForSlice]:
    """The MetricsForSlice records of a results table (see the module docstring).

    ``table``: a ``clue_tfrs.reporting.ResultsTable`` or its results.json dict.
    The overall slice comes first (left out when it would have no metric: TFMA's
    views fail on an empty slice), then one slice per column in table order.
    """
    d = _table_dict(table)
    values: Mapping[str, Mapping[str, float]] = d["values"]
    columns = list(d.get("columns") or values)
    rows = list(d.get("rows") or [])
    info = d.get("info") or {}
    count = _example_count(info)

    def metrics(column: str, record: mfs_pb2.MetricsForSlice) -> None:
        names = rows or list(values[column])
        for name in names:
            if name in values[column]:
                _add(record, name, values[column][name])
        if count is not None:
            _add(record, EXAMPLE_COUNT, count)

    overall = mfs_pb2.MetricsForSlice(slice_key=_slice_key(None))
    if candidate in values:
        metrics(candidate, overall)
    elif count is not None:
        _add(overall, EXAMPLE_COUNT, count)
    # An overall slice without metrics would load as None and break TFMA's views.
    records = [overall] if overall.metric_keys_and_values else []
    for column in columns:
        record = mfs_pb2.MetricsForSlice(slice_key=_slice_key(column))
        metrics(column, record)
        for c in _comparisons(info, column):
            _add(record, diff_metric_name(c["metric"], c["baseline"]), c["difference"],
                 (c["lower"], c["upper"]))
        records.append(record)
    return records


def eval_run(table: Any, model_location: str = "", data_location: str = "",
             candidate: str = CANDIDATE_COLUMN) -> config_pb2.EvalRun:
    """The EvalRun of eval_config.json: slicing specs (overall, by ``model``), the
    candidate as the one model spec, where the model and the task data were."""
    d = _table_dict(table)
    config = config_pb2.EvalConfig(
        model_specs=[config_pb2.ModelSpec(name="")],
        slicing_specs=[config_pb2.SlicingSpec(),
                       config_pb2.SlicingSpec(feature_keys=[SLICE_FEATURE])])
    task = (d.get("info") or {}).get("task", "")
    return config_pb2.EvalRun(
        eval_config=config, version=tfma_version.VERSION,
        data_location=data_location or str(task), file_format="tfrecord",
        model_locations={"": model_location or candidate})


def validation_result(blessed: bool, reason: str, candidate: str = CANDIDATE_COLUMN
                      ) -> validation_result_pb2.ValidationResult:
    """``validation_ok`` = the blessing; not blessed: one failure with the reason."""
    result = validation_result_pb2.ValidationResult(validation_ok=bool(blessed))
    if not blessed:
        per_slice = result.metric_validations_per_slice.add(slice_key=_slice_key(candidate))
        failure = per_slice.failures.add(message=reason)
        failure.metric_key.name = "MRR"
    return result


def _write_atomic(path: str, write) -> None:
    """``write(tmp_path)``, then rename ``tmp_path`` to ``path`` (hidden until then)."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".tmp-{name}")
    write(tmp)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def _write_records(path: str, messages: Iterable[Any]) -> None:
    def write(tmp: str) -> None:
        with tf.io.TFRecordWriter(tmp) as w:
            for m in messages:
                w.write(m.SerializeToString())

    _write_atomic(path, write)


def _write_text(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write(text)

    _write_atomic(path, write)


def write_tfma_output(out_dir: str, table: Any, blessed: Optional[bool] = None,
                      reason: str = "", model_location: str = "", data_location: str = "",
                      candidate: str = CANDIDATE_COLUMN) -> Dict[str, str]:
    """Writes eval_config.json, the metrics and (with ``blessed``) the validations file.

    Args:
      out_dir: the ``ModelEvaluation`` artifact's uri (created if missing).
      table: ``ResultsTable`` or its results.json dict.
      blessed / reason: the blessing verdict; None writes no validations file.
      model_location: the evaluated SavedModel (shown by TFMA as the model location).
      data_location: where the task data was (default: the task's name).
      candidate: the column the overall slice shows.

    Returns:
      {"eval_config": path, "metrics": path[, "validations": path]}.
    """
    tf.io.gfile.makedirs(out_dir)
    paths = {"eval_config": os.path.join(out_dir, EVAL_CONFIG_FILE),
             "metrics": os.path.join(out_dir, METRICS_FILE)}
    _write_records(paths["metrics"], metrics_for_slices(table, candidate))
    if blessed is not None:
        paths["validations"] = os.path.join(out_dir, VALIDATIONS_FILE)
        _write_records(paths["validations"], [validation_result(blessed, reason, candidate)])
    # Last: TFMA reads the config to know a run is there.
    _write_text(paths["eval_config"], json_format.MessageToJson(
        eval_run(table, model_location, data_location, candidate)))
    return paths
