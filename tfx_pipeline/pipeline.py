"""`create_pipeline(config) -> tfx.dsl.Pipeline`: the CLUE training pipeline.

A pure function of a `PipelineConfig`: it builds component objects and
touches no file, so the same definition runs under LocalDagRunner
(`local_runner`) and compiles for Kubeflow Pipelines v2 (`kubeflow_runner`).

```
ExampleGen (csv | jsonl | parquet | tfrecord)
  -> StatisticsGen -> SchemaGen (or ImportSchemaGen of a curated schema) -> ExampleValidator
  -> BehaviorPreprocess (Beam; fails on any anomaly / missing column / empty input)
  -> Trainer (tfx_pipeline.trainer_module.run_fn)
TaskExampleGen (the downstream interactions, any format)  [+ TaskCatalogueExampleGen]
  -> Evaluator (ClueEvaluator: model + BehaviorPreprocess's user_examples + task
                [+ catalogue] -> evaluation, ModelBlessing)
  -> Pusher (copies the serving SavedModel to <serving_model_dir>/<unix time>/,
             only when the blessing says BLESSED)
  -> EmbeddingExport (Beam: every kept user's embedding from BehaviorPreprocess's
                      records with the blessed encoder -> the user-id lookup SavedModel)
  -> LookupPusher (the lookup model to <lookup_serving_model_dir>/<unix time>/, gated
                   by the same blessing)
```
The task is data: its ExampleGen fingerprints the task file, so a changed
task re-runs TaskExampleGen, the Evaluator and what follows the blessing (the
Pushers, EmbeddingExport) and nothing else,
and MLMD's events link a blessing to the task examples it was computed on.
With ``config.evaluate=False`` the pipeline has no task ExampleGen and no
Evaluator, stops after the Trainer and never pushes; ``config.export_lookup=False``
leaves out EmbeddingExport and LookupPusher.
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
from components.embedding_export.component import EmbeddingExport
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
#: ExampleGens of the downstream task's interactions and (when named) its catalogue.
TASK_EXAMPLE_GEN, CATALOGUE_EXAMPLE_GEN = "TaskExampleGen", "TaskCatalogueExampleGen"
#: The user-id -> embedding lookup model: built after the Evaluator, pushed beside the encoder.
EMBEDDING_EXPORT, LOOKUP_PUSHER = "EmbeddingExport", "LookupPusher"


def _example_gen(config: PipelineConfig) -> base_node.BaseNode:
    """TFX's own ExampleGen for the behaviour logs' format, writing one split ``all``."""
    return _file_example_gen(config.data_root, config.file_pattern, config.data_format,
                             EXAMPLE_GEN)


def _file_example_gen(input_base: str, pattern: str, fmt: str,
                      node_id: str) -> base_node.BaseNode:
    """TFX's own ExampleGen for ``fmt`` over ``input_base/pattern``, one split ``all``.

    Its driver fingerprints the matching files, so changed data (same path)
    gives a new ``examples`` artifact and re-runs whatever reads it.
    """
    input_config = tfx.proto.Input(splits=[
        tfx.proto.Input.Split(name=RAW_SPLIT, pattern=pattern)])
    output_config = tfx.proto.Output(split_config=tfx.proto.SplitConfig(splits=[
        tfx.proto.SplitConfig.Split(name=RAW_SPLIT, hash_buckets=1)]))
    kw = dict(input_base=input_base, input_config=input_config,
              output_config=output_config)
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
    return gen.with_id(node_id)


def _task_example_gens(config: PipelineConfig) -> List[base_node.BaseNode]:
    """``TaskExampleGen`` over the task's interactions and, when
    ``config.eval_catalogue_path`` names one, ``TaskCatalogueExampleGen`` over the
    catalogue (`PipelineConfig.evaluation_task_input` / `evaluation_catalogue_input`)."""
    gens = [_file_example_gen(*config.evaluation_task_input, TASK_EXAMPLE_GEN)]
    if config.evaluation_catalogue_input:
        gens.append(_file_example_gen(*config.evaluation_catalogue_input,
                                      CATALOGUE_EXAMPLE_GEN))
    return gens


def _make_evaluator(config: PipelineConfig, trainer: base_node.BaseNode, user_examples,
                    task_gens: List[base_node.BaseNode]) -> base_node.BaseNode:
    """The component that blesses (or not) the model: `ClueEvaluator`, id ``Evaluator``.

    It evaluates ``trainer.outputs["model"]`` with user features from
    ``user_examples`` (BehaviorPreprocess's records, what the Trainer read) on the
    task examples of ``task_gens`` (`_task_example_gens`) and outputs
    ``evaluation`` and ``blessing`` (ModelBlessing).
    """
    catalogue = task_gens[1].outputs["examples"] if len(task_gens) > 1 else None
    return ClueEvaluator(
        model=trainer.outputs["model"],
        user_examples=user_examples,
        task=task_gens[0].outputs["examples"],
        catalogue=catalogue,
        task_name=config.evaluation_task_name,
        epochs=config.eval_epochs,
        seed=config.eval_seed,
        margin_over_toppop=config.margin_over_toppop,
        margin_over_untrained=config.margin_over_untrained,
        sequence_models=config.eval_sequence_models,
        confidence=config.blessing_confidence,
    ).with_id(EVALUATOR)


def _pusher(model, blessing, base_directory: str, node_id: str) -> base_node.BaseNode:
    """TFX's Pusher of ``model`` to ``base_directory/<unix time>/``, only when ``blessing``
    says BLESSED."""
    return tfx.components.Pusher(
        model=model, model_blessing=blessing,
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=base_directory)),
    ).with_id(node_id)


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
        max_text_bytes=config.max_text_bytes,
        num_shards=config.num_shards,
        input_base=config.data_root,
        input_format=config.data_format,
        file_pattern=config.file_pattern,
    ).with_id(BEHAVIOR_PREPROCESS)
    if config.preprocess_beam_args:  # appended to the pipeline's: the later value wins
        preprocess.with_beam_pipeline_args(list(config.preprocess_beam_args))
    trainer = tfx.components.Trainer(
        run_fn=RUN_FN,
        examples=preprocess.outputs["user_examples"],
        train_args=tfx.proto.TrainArgs(splits=["train"], num_steps=config.train.train_steps),
        eval_args=tfx.proto.EvalArgs(splits=["eval"], num_steps=10),
        custom_config=config.trainer_custom_config(),
    ).with_id(TRAINER)

    components: List[base_node.BaseNode] = [
        example_gen, statistics_gen, schema_gen, example_validator, preprocess, trainer]

    if config.evaluate:  # else no Evaluator, hence no Pusher: nothing is pushed unblessed
        task_gens = _task_example_gens(config)
        evaluator = _make_evaluator(config, trainer, preprocess.outputs["user_examples"],
                                    task_gens)
        blessing = evaluator.outputs["blessing"]
        pusher = _pusher(trainer.outputs["model"], blessing, config.serving_model_dir, PUSHER)
        components += [*task_gens, evaluator, pusher]
        if config.export_lookup:  # the id-lookup model, pushed on the same blessing
            export = EmbeddingExport(
                model=trainer.outputs["model"],
                user_examples=preprocess.outputs["user_examples"],
                blessing=blessing).with_id(EMBEDDING_EXPORT)
            components += [export, _pusher(export.outputs["lookup_model"], blessing,
                                           config.lookup_serving_model_dir, LOOKUP_PUSHER)]

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
