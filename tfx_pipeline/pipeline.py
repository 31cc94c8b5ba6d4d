"""`create_pipeline(config) -> tfx.dsl.Pipeline`: the CLUE training pipeline.

A pure function of a `PipelineConfig`: it builds component objects and
touches no file, so the same definition runs under LocalDagRunner
(`local_runner`) and compiles for Kubeflow Pipelines v2 (`kubeflow_runner`).

```
ExampleGen (csv | jsonl | parquet | tfrecord)
  -> StatisticsGen -> SchemaGen (or ImportSchemaGen of a curated schema) -> ExampleValidator
  -> BehaviorPreprocess (Beam; fails on any anomaly / missing column / empty input)
  -> Trainer (tfx_pipeline.trainer_module.run_fn)
  -> Evaluator (ClueEvaluator: downstream task, ModelBlessing)
  -> Pusher (copies the serving SavedModel to <serving_model_dir>/<unix time>/,
             only when the blessing says BLESSED)
```
With ``config.evaluate=False`` the pipeline stops after the Trainer and
never pushes.
"""

from __future__ import annotations

from typing import List, Optional

from tfx import v1 as tfx
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.components.example_gen.custom_executors import parquet_executor
from tfx.dsl.components.base import base_node
from tfx.dsl.components.base import executor_spec

from components.behavior_preprocess.component import BehaviorPreprocess
from components.clue_evaluator.component import ClueEvaluator
from components.jsonl_example_gen import executor as jsonl_executor
from tfx_pipeline.config import PipelineConfig

#: Python path of the Trainer's run_fn (imported by the Trainer executor, so it
#: must be importable in the container image on Kubeflow: the package is).
RUN_FN = "tfx_pipeline.trainer_module.run_fn"

#: Split ExampleGen writes: everything in one split; BehaviorPreprocess does
#: the by-user train/eval/test split itself.
RAW_SPLIT = "all"

#: Component ids, in pipeline order.
EXAMPLE_GEN, STATISTICS_GEN, SCHEMA_GEN, EXAMPLE_VALIDATOR = (
    "ExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator")
BEHAVIOR_PREPROCESS, TRAINER, EVALUATOR, PUSHER = (
    "BehaviorPreprocess", "Trainer", "Evaluator", "Pusher")


def _example_gen(config: PipelineConfig) -> base_node.BaseNode:
    """TFX's own ExampleGen for the format, writing one split ``all``."""
    input_config = tfx.proto.Input(splits=[
        tfx.proto.Input.Split(name=RAW_SPLIT, pattern=config.file_pattern)])
    output_config = tfx.proto.Output(split_config=tfx.proto.SplitConfig(splits=[
        tfx.proto.SplitConfig.Split(name=RAW_SPLIT, hash_buckets=1)]))
    kw = dict(input_base=config.data_root, input_config=input_config,
              output_config=output_config)
    fmt = config.data_format
    if fmt == "csv":
        gen = tfx.components.CsvExampleGen(**kw)
    elif fmt == "tfrecord":
        gen = tfx.components.ImportExampleGen(**kw)
    elif fmt == "parquet":
        gen = FileBasedExampleGen(custom_executor_spec=executor_spec.BeamExecutorSpec(
            parquet_executor.Executor), **kw)
    elif fmt == "jsonl":
        gen = FileBasedExampleGen(custom_executor_spec=executor_spec.BeamExecutorSpec(
            jsonl_executor.Executor), **kw)
    else:  # PipelineConfig already validates; keep the error for direct callers.
        raise ValueError(f"unsupported data_format {fmt!r}")
    return gen.with_id(EXAMPLE_GEN)


def _make_evaluator(config: PipelineConfig, trainer: base_node.BaseNode,
                    user_examples) -> Optional[base_node.BaseNode]:
    """The component that blesses (or not) the model: `ClueEvaluator`, id ``Evaluator``.

    It evaluates ``trainer.outputs["model"]`` on the downstream task
    ``config.evaluation_task_dir`` with user features from
    ``config.evaluation_data_dir`` and outputs ``evaluation`` and ``blessing``
    (ModelBlessing). Returns None when ``config.evaluate`` is False; then no
    Pusher is added either, so nothing is ever pushed unblessed.
    """
    del user_examples  # features come from the raw logs, as `clue evaluate` computes them
    if not config.evaluate:
        return None
    return ClueEvaluator(
        model=trainer.outputs["model"],
        task_dir=config.evaluation_task_dir,
        data_dir=config.evaluation_data_dir,
        epochs=config.eval_epochs,
        seed=config.eval_seed,
        margin_over_toppop=config.margin_over_toppop,
        margin_over_untrained=config.margin_over_untrained,
        sequence_models=config.eval_sequence_models,
    ).with_id(EVALUATOR)


def create_pipeline(config: PipelineConfig) -> tfx.dsl.Pipeline:
    """Builds the CLUE TFX pipeline from ``config`` (no side effects)."""
    model_config = config.model

    example_gen = _example_gen(config)
    statistics_gen = tfx.components.StatisticsGen(
        examples=example_gen.outputs["examples"]).with_id(STATISTICS_GEN)
    if config.schema_path:  # validate against the user's curated schema
        schema_gen = tfx.components.ImportSchemaGen(
            schema_file=config.schema_path).with_id(SCHEMA_GEN)
    else:
        schema_gen = tfx.components.SchemaGen(
            statistics=statistics_gen.outputs["statistics"],
            infer_feature_shape=False).with_id(SCHEMA_GEN)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"],
        schema=schema_gen.outputs["schema"]).with_id(EXAMPLE_VALIDATOR)
    preprocess = BehaviorPreprocess(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        statistics=statistics_gen.outputs["statistics"],
        anomalies=example_validator.outputs["anomalies"],
        max_items=model_config.max_items,
        max_tokens=model_config.max_tokens,
        vocab_size=model_config.vocab_size,
        min_items_per_user=config.min_items_per_user,
        min_services_per_user=config.min_services_per_user,
        eval_percent=config.eval_percent,
        test_percent=config.test_percent,
        bpe_sample_size=config.bpe_sample_size,
        num_shards=config.num_shards,
        input_base=config.data_root,
        input_format=config.data_format,
        file_pattern=config.file_pattern,
    ).with_id(BEHAVIOR_PREPROCESS)
    trainer = tfx.components.Trainer(
        run_fn=RUN_FN,
        examples=preprocess.outputs["user_examples"],
        train_args=tfx.proto.TrainArgs(splits=["train"], num_steps=config.train.train_steps),
        eval_args=tfx.proto.EvalArgs(splits=["eval"], num_steps=10),
        custom_config=config.trainer_custom_config(),
    ).with_id(TRAINER)

    components: List[base_node.BaseNode] = [
        example_gen, statistics_gen, schema_gen, example_validator, preprocess, trainer]

    evaluator = _make_evaluator(config, trainer, preprocess.outputs["user_examples"])
    if evaluator is not None:
        pusher = tfx.components.Pusher(
            model=trainer.outputs["model"],
            model_blessing=evaluator.outputs["blessing"],
            push_destination=tfx.proto.PushDestination(
                filesystem=tfx.proto.PushDestination.Filesystem(
                    base_directory=config.serving_model_dir)),
        ).with_id(PUSHER)
        components += [evaluator, pusher]

    metadata = (tfx.orchestration.metadata.sqlite_metadata_connection_config(
        config.metadata_path) if config.metadata_path else None)
    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=components,
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata,
        beam_pipeline_args=list(config.beam_pipeline_args),
    )
