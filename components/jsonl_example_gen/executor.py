"""ExampleGen executor for JSON Lines: one flat JSON object per line -> tf.Example.

Use with TFX's FileBasedExampleGen, as tfx's own parquet executor is used::

    FileBasedExampleGen(input_base=DIR, input_config=...,
        custom_executor_spec=executor_spec.BeamExecutorSpec(jsonl_executor.Executor))

Types: JSON integers -> int64, numbers with a fraction -> float, strings ->
bytes (UTF-8), lists of one of those -> a multi-valued feature, null or a
missing key -> the feature is absent. Anything else (nested objects, mixed
lists, booleans) and malformed lines fail with the file name and line number.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Tuple

import apache_beam as beam
import tensorflow as tf
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.types import standard_component_specs


def _feature(value: Any, where: str, key: str) -> tf.train.Feature:
    values = value if isinstance(value, list) else [value]
    values = [v for v in values if v is not None]
    if not values:
        return tf.train.Feature()
    if any(isinstance(v, bool) for v in values):
        raise ValueError(f"{where}: key {key!r} holds a boolean; use 0/1 or a string")
    if all(isinstance(v, int) for v in values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    if all(isinstance(v, (int, float)) for v in values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))
    if all(isinstance(v, str) for v in values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[v.encode("utf-8") for v in values]))
    raise ValueError(f"{where}: key {key!r} has unsupported value {value!r} "
                     "(expected a string, a number, or a list of one of those)")


def json_line_to_example(file_and_line: Tuple[str, str]) -> tf.train.Example:
    """``(file name, one JSON line)`` -> tf.Example; errors name the file."""
    where, line = file_and_line
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg}): {line[:80]!r}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object per line, got {type(obj).__name__}")
    return tf.train.Example(features=tf.train.Features(
        feature={k: _feature(v, where, k) for k, v in obj.items()}))


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
def _JsonlToExample(pipeline: beam.Pipeline, exec_properties: Dict[str, Any],
                    split_pattern: str) -> beam.pvalue.PCollection:
    """Reads every file matching ``input_base/split_pattern`` as JSON Lines."""
    input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
    pattern = os.path.join(input_base, split_pattern)
    return (pipeline
            | "ReadJsonLines" >> beam.io.ReadFromTextWithFilename(pattern)
            | "DropBlankLines" >> beam.Filter(lambda fl: fl[1].strip() != "")
            | "JsonToExample" >> beam.Map(json_line_to_example))


class Executor(BaseExampleGenExecutor):
    """TFX ExampleGen executor for JSON Lines files."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _JsonlToExample
