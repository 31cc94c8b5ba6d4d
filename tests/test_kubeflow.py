"""The compiled Kubeflow Pipelines v2 spec is checked, not only written.

The spec is parsed strictly with the KFP pipeline-spec protos (the schema the
KFP backend and Vertex AI load it with), then every component's image, command
and arguments are checked, the Beam and Trainer options are found where the
executors read them, and no local path is left in it.
"""

import importlib
import json

import pytest

from clue_keras.config import LOCAL_TRAIN, PRESETS
from tfx_pipeline import pipeline as pl
from tfx_pipeline.config import PipelineConfig, TrainerSettings

pytest.importorskip("kfp.pipeline_spec", reason="KubeflowV2DagRunner needs kfp-pipeline-spec")

IMAGE = "gcr.io/my-project/clue-tfx:1.0"
BEAM = ("--runner=DataflowRunner", "--project=my-project", "--region=europe-west4",
        "--temp_location=gs://bucket/tmp")
RUN_EXECUTOR = ["python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]
BEAM_COMPONENTS = {pl.EXAMPLE_GEN, pl.STATISTICS_GEN, pl.BEHAVIOR_PREPROCESS,
                   pl.EMBEDDING_EXPORT}


def _compile(tmp_path, **overrides):
    from kfp.pipeline_spec import pipeline_spec_pb2
    from google.protobuf import json_format

    from tfx_pipeline.kubeflow_runner import compile_pipeline

    config = PipelineConfig(
        pipeline_root="gs://bucket/root", data_root="gs://bucket/data/behaviors",
        serving_model_dir="gs://bucket/serving", beam_pipeline_args=BEAM,
        train=LOCAL_TRAIN.replace(train_steps=1000, batch_size=128),
        preset="clue-4m", precision="mixed_bfloat16", cpu_replicas=2, **overrides)
    out = compile_pipeline(config, IMAGE, str(tmp_path / "spec" / "clue.json"))
    with open(out) as f:
        spec = json.load(f)
    job = pipeline_spec_pb2.PipelineJob()
    json_format.ParseDict(spec, job)  # strict: unknown fields raise
    return config, spec, job


def _strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def test_spec_parses_and_every_executor_runs_the_image_with_an_importable_class(tmp_path):
    config, spec, job = _compile(tmp_path)
    tasks = job.pipeline_spec.fields["root"].struct_value.fields["dag"].struct_value \
        .fields["tasks"].struct_value.fields
    assert set(tasks) == {pl.EXAMPLE_GEN, pl.STATISTICS_GEN, pl.SCHEMA_GEN, pl.EXAMPLE_VALIDATOR,
                          pl.BEHAVIOR_PREPROCESS, pl.TRAINER, pl.EVALUATOR, pl.PUSHER,
                          pl.TASK_EXAMPLE_GEN, pl.EMBEDDING_EXPORT, pl.LOOKUP_PUSHER}
    executors = spec["pipelineSpec"]["deploymentSpec"]["executors"]
    assert len(executors) == len(tasks)
    for name, executor in executors.items():
        container = executor["container"]
        assert container["image"] == IMAGE, name
        assert container["command"] == RUN_EXECUTOR, name
        args = container["args"]
        class_path = args[args.index("--executor_class_path") + 1]
        module, _, cls = class_path.rpartition(".")
        assert hasattr(importlib.import_module(module), cls), class_path
        component = name[: -len("_executor")]
        beam_args = [a for a in args if a in BEAM]
        if component in BEAM_COMPONENTS:
            assert beam_args == list(BEAM), (component, args)
    assert spec["runtimeConfig"]["gcsOutputDirectory"] == config.pipeline_root


def test_trainer_and_pipeline_options_reach_the_spec_and_no_local_path_is_left(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config, spec, _ = _compile(tmp_path)
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]

    def param(task, name):
        return tasks[task]["inputs"]["parameters"][name]["runtimeValue"]["constantValue"]

    settings = TrainerSettings.from_custom_config(
        json.loads(param(pl.TRAINER, "custom_config")["stringValue"]))
    assert settings == TrainerSettings(preset="clue-4m", model=PRESETS["clue-4m"],
                                       train=config.train, precision="mixed_bfloat16",
                                       cpu_replicas=2)
    assert json.loads(param(pl.TRAINER, "train_args")["stringValue"])["num_steps"] == 1000
    assert param(pl.TRAINER, "run_fn")["stringValue"] == pl.RUN_FN
    assert param(pl.EXAMPLE_GEN, "input_base")["stringValue"] == config.data_root
    assert param(pl.BEHAVIOR_PREPROCESS, "max_items")["intValue"] == str(PRESETS["clue-4m"].max_items)
    assert "gs://bucket/serving" in param(pl.PUSHER, "push_destination")["stringValue"]
    assert "gs://bucket/serving_user_lookup" in \
        param(pl.LOOKUP_PUSHER, "push_destination")["stringValue"]
    local = [s for s in _strings(spec) if str(tmp_path) in s or s.startswith(("/tmp", "/work", "/root"))]
    assert local == []


def test_a_local_path_in_the_config_would_be_seen(tmp_path):
    """The no-local-path check above can fail: a local serving dir shows up."""
    _, spec, _ = _compile(tmp_path, schema_path=None)
    spec_text = json.dumps(spec)
    assert "gs://bucket/serving" in spec_text
    from tfx_pipeline.kubeflow_runner import compile_pipeline

    local = PipelineConfig(pipeline_root="gs://bucket/root", data_root="gs://bucket/data",
                           serving_model_dir=str(tmp_path / "serving"))
    out = compile_pipeline(local, IMAGE, str(tmp_path / "local.json"))
    with open(out) as f:
        assert any(str(tmp_path) in s for s in _strings(json.load(f)))
