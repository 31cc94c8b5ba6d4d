"""BehaviorPreprocess: raw behaviour rows -> per-user tokenised training records.

Spec / executor / component split as in tfx
``examples/custom_components/hello_world``. The work is an Apache Beam pipeline
(`clue_keras.data.preprocess.build_pipeline`, run by `executor`), so the component
runs on whatever Beam runner the pipeline's
``beam_pipeline_args`` name: the DirectRunner locally (``--direct_running_mode=
multi_processing --direct_num_workers=0`` for all cores), Flink, Spark or
Dataflow in production (``--runner=FlinkRunner --flink_master=HOST:PORT``,
``--runner=SparkRunner --spark_master_url=...``, ``--runner=DataflowRunner
--project=... --region=... --temp_location=gs://...``), with no code change.

Output ``user_examples`` (an ``Examples`` artifact):
```
<uri>/Split-train/data_tfrecord-SSSSS-of-NNNNN.gz   per-user tf.Examples (docs/ARCHITECTURE.md)
<uri>/Split-eval/...  <uri>/Split-test/...
<uri>/vocab/{vocab.json, merges.txt, clue_vocab.json}   BPE trained on the train split
<uri>/stats.json   rows read, rows dropped and why, users kept / dropped and why, per split ...
```
The numbers of ``stats.json`` (`clue_keras.data.values.STATS_DOC`) are
also the artifact's custom properties (``rows_read``, ``rows_dropped_empty_user``,
``rows_dropped_bad_timestamp``, ``users_dropped_few_services``, ``users_train``
...), so they can be read back from MLMD.

Input contract: integer or string ``user_id`` / ``service`` / ``item_text``
(integers become their decimal string), ``timestamp`` as int64 (unix seconds or
ordinals), float or ISO-8601 string. A row with an empty user id or service, a
bad timestamp or an empty text is dropped and counted, never an error; what
would crash ExampleGen itself (a CSV row with a wrong field count, bad UTF-8) is
caught before the pipeline by `clue_keras.data.validate.validate_logs`.
"""

from __future__ import annotations

from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_beam_component
from tfx.dsl.components.base import executor_spec
from tfx.types import channel_utils
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter
from tfx.types.component_spec import ExecutionParameter

from clue_keras.text import DEFAULT_MAX_TEXT_BYTES
from components.behavior_preprocess import executor

#: Name of the vocabulary directory inside the output Examples artifact.
VOCAB_DIRNAME = executor.VOCAB_DIRNAME


class BehaviorPreprocessSpec(types.ComponentSpec):
    """Inputs, outputs and parameters of BehaviorPreprocess."""

    PARAMETERS = {
        # Shapes of the records: S items per (user, service), L tokens per item.
        "max_items": ExecutionParameter(type=int),
        "max_tokens": ExecutionParameter(type=int),
        # Size of the byte-level BPE vocabulary, special tokens included.
        "vocab_size": ExecutionParameter(type=int),
        # Activity threshold (after dedup and truncation).
        "min_items_per_user": ExecutionParameter(type=int),
        "min_services_per_user": ExecutionParameter(type=int),
        # Split by a hash of user_id; the rest is train.
        "eval_percent": ExecutionParameter(type=int),
        "test_percent": ExecutionParameter(type=int),
        # At most this many train-split item texts go into BPE training.
        "bpe_sample_size": ExecutionParameter(type=int),
        # Shards per output split; 0 = the runner decides.
        "num_shards": ExecutionParameter(type=int, optional=True),
        # Item texts are cut to this many UTF-8 bytes before BPE (0 = no cap);
        # recorded in vocab/clue_vocab.json so serving cuts the same way.
        "max_text_bytes": ExecutionParameter(type=int, optional=True),
        # Where ExampleGen read the raw files and their format. Used only to
        # name the offending file in error messages.
        "input_base": ExecutionParameter(type=str, optional=True),
        "input_format": ExecutionParameter(type=str, optional=True),
        "file_pattern": ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "schema": ChannelParameter(type=standard_artifacts.Schema),
        "statistics": ChannelParameter(type=standard_artifacts.ExampleStatistics),
        "anomalies": ChannelParameter(type=standard_artifacts.ExampleAnomalies),
    }
    OUTPUTS = {
        "user_examples": ChannelParameter(type=standard_artifacts.Examples),
    }


class BehaviorPreprocess(base_beam_component.BaseBeamComponent):
    """Normalise, dedup, truncate, split by user, train BPE, tokenise, write records.

    Fails (so nothing downstream runs) when ExampleValidator found anomalies, a
    required column is missing or has an unusable type, the input is empty, or
    no user is left for the train split (with the drop counts); the error names
    the column and, when the raw files are known, the file.
    """

    SPEC_CLASS = BehaviorPreprocessSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(
        self,
        examples: types.BaseChannel,
        schema: types.BaseChannel,
        statistics: types.BaseChannel,
        anomalies: types.BaseChannel,
        max_items: int,
        max_tokens: int,
        vocab_size: int,
        min_items_per_user: int = 2,
        min_services_per_user: int = 1,
        eval_percent: int = 10,
        test_percent: int = 10,
        bpe_sample_size: int = 200_000,
        num_shards: int = 0,
        max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES,
        input_base: Optional[str] = None,
        input_format: Optional[str] = None,
        file_pattern: Optional[str] = None,
    ):
        """Builds the component.

        Args:
          examples: raw behaviour rows from an ExampleGen (any splits; all are read).
          schema: SchemaGen output; required columns and their types are checked.
          statistics: StatisticsGen output; used for row and missing-value counts.
          anomalies: ExampleValidator output; any anomaly fails the component.
          max_items: S, items kept per (user, service), the newest.
          max_tokens: L, token ids per item including the service token.
          vocab_size: BPE vocabulary size including special tokens.
          min_items_per_user: users with fewer kept items (all services) are dropped.
          min_services_per_user: users with fewer services are dropped.
          eval_percent, test_percent: percent of users in eval / test.
          bpe_sample_size: max number of train texts sampled for BPE training.
          num_shards: output shards per split (0 = runner decides).
          max_text_bytes: item texts are cut to this many UTF-8 bytes before
            tokenisation (0: no cap), at a character boundary; recorded in
            ``vocab/clue_vocab.json`` so the serving graph cuts the same way.
          input_base, input_format, file_pattern: where and how ExampleGen read
            the raw files, to name the offending file in error messages.
        """
        output = channel_utils.as_channel([standard_artifacts.Examples()])
        spec = BehaviorPreprocessSpec(
            examples=examples, schema=schema, statistics=statistics, anomalies=anomalies,
            max_items=max_items, max_tokens=max_tokens, vocab_size=vocab_size,
            min_items_per_user=min_items_per_user,
            min_services_per_user=min_services_per_user,
            eval_percent=eval_percent, test_percent=test_percent,
            bpe_sample_size=bpe_sample_size, num_shards=num_shards,
            max_text_bytes=max_text_bytes,
            input_base=input_base, input_format=input_format, file_pattern=file_pattern,
            user_examples=output,
        )
        super().__init__(spec=spec)
