"""The TFX pipeline end to end (LocalDagRunner, SQLite MLMD) and its Kubeflow compile.

Slow tests run the real components on tiny synthetic data (tiny preset, 20
steps, a one-epoch downstream evaluation without the sequence models); Beam
runs in-memory with one worker here to spare the 2-core CI box (production
default: multi-processing DirectRunner on every core).
"""

import glob
import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from clue_keras.config import LOCAL_TRAIN, PRESETS, get_preset
from clue_cli import main as cli
from tfx_pipeline import local_runner
from tfx_pipeline import pipeline as pl
from tfx_pipeline.config import PipelineConfig, TrainerSettings

BEAM_IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
#: Components of the pipeline, in order.
COMPONENTS = [pl.EXAMPLE_GEN, pl.STATISTICS_GEN, pl.SCHEMA_GEN, pl.EXAMPLE_VALIDATOR,
              pl.BEHAVIOR_PREPROCESS, pl.TRAINER, pl.EVALUATOR, pl.PUSHER]
#: Fast evaluation settings for the e2e runs.
FAST_EVAL = ["--eval-epochs", "1", "--no-sequence-models"]


def _store(metadata_path):
    import ml_metadata as mlmd
    from tfx.orchestration import metadata

    return mlmd.MetadataStore(metadata.sqlite_metadata_connection_config(metadata_path))


def _count_records(pattern):
    return sum(1 for path in glob.glob(pattern)
               for _ in tf.data.TFRecordDataset(path, compression_type="GZIP"))


def _serve_pushed(version_dir):
    """Loads a pushed SavedModel as TF Serving would and embeds 3 users: [3, P*D]."""
    from clue_keras.tokenizer import register_text_ops

    register_text_ops()
    with open(os.path.join(version_dir, "assets", "clue_vocab.json")) as f:
        layout = json.load(f)
    services, max_items = layout["services"], layout["max_items"]
    texts = np.full((3, len(services), max_items), "", dtype=object)
    texts[0, 0, :2] = ["Galaxy S24 Ultra 256GB", "best running shoes"]
    texts[1, :, 0] = "how to bake bread"
    texts[2, -1, :3] = ["서울 날씨", "LG OLED TV", "Champions League final"]
    model = tf.saved_model.load(version_dir)
    out = model.signatures["serving_default"](item_texts=tf.constant(texts.astype(str)))
    return services, out["embedding"].numpy()


@pytest.mark.slow
def test_clue_run_trains_evaluates_pushes_and_reruns_from_cache(tmp_path, capsys):
    """Blessed run pushes a servable model; an identical rerun is fully cached; a run
    with an unreachable margin re-evaluates only, is not blessed and pushes nothing."""
    root = tmp_path / "runs"
    argv = ["run", "--root", str(root), "--users", "150", "--preset", "tiny",
            "--train-steps", "20", "--batch-size", "16", *FAST_EVAL]
    argv += [f"--beam-arg={a}" for a in BEAM_IN_MEMORY]
    lenient = ["--margin-over-toppop=-1", "--margin-over-untrained=-1"]
    metadata_path = str(root / "metadata" / "metadata.db")

    assert cli.main(argv + lenient) == 0
    out = capsys.readouterr().out
    summary = local_runner.summarize(metadata_path, "clue")
    assert summary.executions == {c: "COMPLETE" for c in COMPONENTS}
    assert summary.cached == 0
    store = _store(metadata_path)
    assert len(store.get_executions()) == len(COMPONENTS)
    artifacts = len(store.get_artifacts())
    assert artifacts >= len(COMPONENTS)

    # BehaviorPreprocess: every raw row read, kept users split three ways, records match.
    with open(root / "data" / "manifest.json") as f:
        manifest = json.load(f)
    rows = sum(n for rel, n in manifest["files"].items() if rel.startswith("behaviors/"))
    s = summary.preprocess_stats
    assert s["rows_read"] == rows
    assert s["users_train"] + s["users_eval"] + s["users_test"] == s["users_kept"]
    assert s["users_kept"] <= s["users_read"] <= manifest["users"]
    assert s["users_train"] > s["users_eval"] > 0 and s["users_test"] > 0
    assert s["services"] == ",".join(manifest["services"])
    examples_uri = os.path.dirname(s["vocab_dir"])
    for split in ("train", "eval", "test"):
        assert _count_records(f"{examples_uri}/Split-{split}/*.gz") == s[f"users_{split}"]
    assert f"rows read {rows}" in out

    # Trainer: 20 steps, a finite loss, the serving SavedModel in the Model artifact.
    t = summary.train_result
    assert t["steps"] == 20 and math.isfinite(t["final_loss"]) and t["num_params"] > 0
    assert os.path.exists(os.path.join(summary.model_uri, "Format-Serving", "saved_model.pb"))
    assert f"{t['num_params']:,} parameters" in out

    # Evaluator: the table in its artifact, MRR per model in MLMD, a lenient gate passed.
    with open(os.path.join(summary.evaluation_uri, "results.json")) as f:
        table = json.load(f)
    assert table["columns"] == ["TopPop", "U-MLP (CLUE)", "U-MLP (Untrained)"]
    # (the SQLite MLMD store keeps 6 significant digits of a double property)
    assert summary.mrr == pytest.approx({c: v["MRR"] for c, v in table["values"].items()},
                                        rel=1e-5)
    assert summary.blessed is True
    assert "margin -1.0000" in summary.blessing_reason
    assert summary.evaluation_table.splitlines()[0].startswith("| Metric | TopPop |")
    assert "| MRR |" in out and "BLESSED:" in out

    # Pusher: one version under the serving dir, servable and giving unit-norm embeddings.
    serving = root / "serving"
    versions = os.listdir(serving)
    assert len(versions) == 1 and versions[0].isdigit()
    assert summary.pushed_to == str(serving / versions[0])
    assert f"pushed to {summary.pushed_to}" in out
    assert f"clue serve --model-base-path {serving} --model-name clue" in out
    assert "clue embed --server 127.0.0.1:8500 --model clue" in out
    services, emb = _serve_pushed(summary.pushed_to)
    assert emb.shape == (3, len(services) * get_preset("tiny").embedding_dim)
    assert np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-4)

    # Second identical run: every component reuses its cached outputs.
    assert cli.main(argv + lenient) == 0
    out = capsys.readouterr().out
    again = local_runner.summarize(metadata_path, "clue")
    assert again.run_id != summary.run_id
    assert again.executions == {c: "CACHED" for c in COMPONENTS}
    assert len(store.get_executions()) == 2 * len(COMPONENTS)
    assert len(store.get_artifacts()) == artifacts
    assert again.preprocess_stats == summary.preprocess_stats
    assert again.blessed is True and again.pushed_to == summary.pushed_to
    assert "using the synthetic data already" in out
    assert f"{len(COMPONENTS)} of {len(COMPONENTS)} components reused cached outputs" in out
    assert os.listdir(serving) == versions

    # An unreachable margin: only Evaluator and Pusher run again; nothing is pushed.
    assert cli.main(argv + ["--margin-over-toppop=10"]) == 0
    out = capsys.readouterr().out
    strict = local_runner.summarize(metadata_path, "clue")
    assert strict.executions == {c: ("COMPLETE" if c in (pl.EVALUATOR, pl.PUSHER) else "CACHED")
                                 for c in COMPONENTS}
    assert strict.blessed is False and strict.pushed_to is None
    assert "margin 10.0000" in strict.blessing_reason
    blessing_dir = os.path.dirname(os.path.dirname(strict.evaluation_uri))
    assert glob.glob(f"{blessing_dir}/blessing/*/NOT_BLESSED")
    assert "NOT BLESSED, so not pushed: U-MLP (CLUE) MRR" in out and "margin 10.0000" in out
    assert "clue serve" not in out
    assert os.listdir(serving) == versions  # still only the blessed version


BAD_INPUTS = {
    # name: (csv text, expected message fragment; "{file}" is the CSV's path)
    "missing_column": (
        "user_id,service,timestamp\n" + "".join(
            f"u{i},{s},{100 + i}\n" for i in range(6) for s in ("news", "search")),
        "required column 'item_text' is missing in file(s): {file} "
        "(columns: user_id, service, timestamp)"),
    "wrong_type": (
        "user_id,service,timestamp,item_text\nu1,news,12,a\nu1,search,yesterday,b\n",
        "column 'timestamp' has type string (BYTES) but must be integer (INT) in file(s): "
        "{file} (row 2: timestamp='yesterday')"),
    "empty": ("user_id,service,timestamp,item_text\n",
              "the behaviour logs are empty: 0 rows in {dir}"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_stops_the_run_naming_column_and_file(tmp_path, case):
    text, expected = BAD_INPUTS[case]
    data = tmp_path / "data"
    data.mkdir()
    (data / "behaviors.csv").write_text(text)
    config = PipelineConfig(
        pipeline_root=str(tmp_path / "pipeline"), data_root=str(data), data_format="csv",
        file_pattern="*.csv", serving_model_dir=str(tmp_path / "serving"),
        metadata_path=str(tmp_path / "metadata.db"),
        train=LOCAL_TRAIN.replace(train_steps=20, batch_size=4), beam_pipeline_args=BEAM_IN_MEMORY)
    with pytest.raises(Exception) as err:
        local_runner.run(config)
    assert expected.format(file=data / "behaviors.csv", dir=data) in str(err.value)

    summary = local_runner.summarize(config.metadata_path, config.pipeline_name)
    assert summary.executions[pl.BEHAVIOR_PREPROCESS] == "FAILED"
    assert pl.TRAINER not in summary.executions and pl.PUSHER not in summary.executions
    assert not os.path.exists(config.serving_model_dir)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "tfrecord"])
def test_example_gen_reads_each_format(tmp_path, fmt):
    """The ExampleGen chosen for each format turns 3 rows into typed tf.Examples."""
    from tfx import v1 as tfx

    rows = [{"user_id": f"u{i}", "service": "news", "timestamp": 10 + i,
             "item_text": f"text {i} 맛집"} for i in range(3)]
    data = tmp_path / "data"
    data.mkdir()
    if fmt == "jsonl":
        (data / "b.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                              for r in rows), encoding="utf-8")
    elif fmt == "parquet":
        import pandas as pd

        pd.DataFrame(rows).to_parquet(data / "b.parquet")
    else:
        with tf.io.TFRecordWriter(str(data / "b.tfrecord.gz"), options="GZIP") as w:
            for r in rows:
                ex = tf.train.Example()
                for k, v in r.items():
                    f = ex.features.feature[k]
                    (f.int64_list if isinstance(v, int) else f.bytes_list).value.append(
                        v if isinstance(v, int) else v.encode())
                w.write(ex.SerializeToString())
    from tfx_pipeline.config import detect_format

    input_dir, got_fmt, pattern = detect_format(str(data))
    assert got_fmt == fmt
    config = PipelineConfig(pipeline_root=str(tmp_path / "p"), data_root=input_dir,
                            data_format=fmt, file_pattern=pattern,
                            serving_model_dir=str(tmp_path / "s"),
                            metadata_path=str(tmp_path / "m.db"),
                            beam_pipeline_args=BEAM_IN_MEMORY)
    gen = pl._example_gen(config)  # pylint: disable=protected-access
    tfx.orchestration.LocalDagRunner().run(tfx.dsl.Pipeline(
        pipeline_name="gen", pipeline_root=config.pipeline_root, components=[gen],
        metadata_connection_config=tfx.orchestration.metadata
        .sqlite_metadata_connection_config(config.metadata_path),
        beam_pipeline_args=BEAM_IN_MEMORY))
    paths = glob.glob(f"{config.pipeline_root}/{pl.EXAMPLE_GEN}/examples/*/Split-all/*.gz")
    got = sorted((tf.train.Example.FromString(r.numpy()) for p in paths
                  for r in tf.data.TFRecordDataset(p, compression_type="GZIP")),
                 key=lambda e: e.features.feature["timestamp"].int64_list.value[0])
    assert [e.features.feature["timestamp"].int64_list.value[0] for e in got] == [10, 11, 12]
    assert got[1].features.feature["item_text"].bytes_list.value == ["text 1 맛집".encode()]
    assert got[2].features.feature["user_id"].bytes_list.value == [b"u2"]


def test_create_pipeline_is_pure_and_gates_the_pusher_on_the_evaluator(tmp_path):
    config = PipelineConfig(pipeline_root=str(tmp_path / "p"),
                            data_root=str(tmp_path / "d" / "behaviors"),
                            serving_model_dir=str(tmp_path / "s"),
                            metadata_path=str(tmp_path / "m.db"),
                            eval_epochs=2, margin_over_untrained=None)
    p = pl.create_pipeline(config)
    assert [c.id for c in p.components] == COMPONENTS
    assert not os.listdir(tmp_path)  # building the definition touches no file
    nodes = {c.id: c for c in p.components}
    custom_config = json.loads(nodes[pl.TRAINER].exec_properties["custom_config"])
    settings = TrainerSettings.from_custom_config(custom_config)
    assert settings == TrainerSettings(preset="tiny", model=PRESETS["tiny"], train=LOCAL_TRAIN)
    assert p.beam_pipeline_args == list(config.beam_pipeline_args)

    evaluator, pusher = nodes[pl.EVALUATOR], nodes[pl.PUSHER]
    props = evaluator.exec_properties
    assert props["task_dir"] == str(tmp_path / "d" / "downstream" / "movies")
    assert props["data_dir"] == str(tmp_path / "d")
    assert (props["epochs"], props["sequence_models"]) == (2, 1)
    assert props["margin_over_toppop"] == 0.0 and props["margin_over_untrained"] is None
    assert evaluator.inputs["model"].producer_component_id == pl.TRAINER
    assert pusher.inputs["model_blessing"].producer_component_id == pl.EVALUATOR
    assert pusher.inputs["model_blessing"].output_key == "blessing"
    assert str(tmp_path / "s") in pusher.exec_properties["push_destination"]

    # Evaluation off: train only, and no Pusher (nothing is ever pushed unblessed).
    p = pl.create_pipeline(config.replace(evaluate=False, eval_task_dir="/x"))
    assert [c.id for c in p.components] == COMPONENTS[:-2]


def test_evaluation_paths_follow_the_synth_layout(tmp_path):
    base = dict(pipeline_root="p", serving_model_dir="s")
    c = PipelineConfig(data_root="/data/behaviors/", **base)
    assert (c.evaluation_task_dir, c.evaluation_data_dir) == (
        "/data/downstream/movies", "/data")
    c = PipelineConfig(data_root="gs://b/data", eval_task="books", **base)
    assert c.evaluation_task_dir == "gs://b/data/downstream/books"
    c = c.replace(eval_task_dir="/t", eval_data_dir="/u")
    assert (c.evaluation_task_dir, c.evaluation_data_dir) == ("/t", "/u")
    with pytest.raises(ValueError, match="eval_epochs must be >= 1, got 0"):
        PipelineConfig(data_root="/d", eval_epochs=0, **base)


def test_config_resolves_the_preset_once_and_round_trips_the_trainer_settings():
    base = dict(pipeline_root="p", serving_model_dir="s", data_root="/d")
    c = PipelineConfig(**base)
    assert c.model == PRESETS["tiny"] and c.train == LOCAL_TRAIN
    c4 = c.replace(preset="clue-4m", precision="float32", cpu_replicas=2)
    assert c4.model == PRESETS["clue-4m"]  # replace re-resolves the preset
    settings = TrainerSettings.from_custom_config(json.loads(json.dumps(
        c4.trainer_custom_config())))
    assert (settings.model, settings.train, settings.precision, settings.cpu_replicas) == (
        PRESETS["clue-4m"], LOCAL_TRAIN, "float32", 2)
    with pytest.raises(ValueError, match=r"unknown Trainer custom_config keys \['steps'\]"):
        TrainerSettings.from_custom_config({**c.trainer_custom_config(), "steps": 3})
    with pytest.raises(ValueError, match="precision 'fp8' is not one of"):
        PipelineConfig(precision="fp8", **base)
    with pytest.raises(ValueError, match=r"train_steps \(30\) must be a multiple of "
                                         r"checkpoint_every \(20\)"):
        PipelineConfig(train=LOCAL_TRAIN.replace(train_steps=30, checkpoint_every=20), **base)


def test_clue_compile_writes_a_kfp_v2_spec_naming_every_component_and_the_image(tmp_path):
    pytest.importorskip("kfp.pipeline_spec",
                        reason="KubeflowV2DagRunner needs kfp-pipeline-spec (tfx[kfp])")
    out = tmp_path / "spec" / "clue.json"
    image = "gcr.io/my-project/clue-tfx:1.0"
    assert cli.main(["compile", "--kubeflow", "--image", image,
                     "--pipeline-root", "gs://bucket/root", "--out", str(out)]) == 0
    spec = json.loads(out.read_text())
    pipeline_spec = spec["pipelineSpec"]
    assert spec["displayName"] == "clue"
    assert set(pipeline_spec["root"]["dag"]["tasks"]) == set(COMPONENTS)
    executors = pipeline_spec["deploymentSpec"]["executors"]
    assert {k[: -len("_executor")] for k in executors} == set(COMPONENTS)
    assert {e["container"]["image"] for e in executors.values()} == {image}
    assert spec["runtimeConfig"]["gcsOutputDirectory"] == "gs://bucket/root"
    assert not list(out.parent.glob(".*.tmp"))
