"""The TFX pipeline end to end (LocalDagRunner, SQLite MLMD) and its Kubeflow compile.

Slow tests run the real components on tiny synthetic data (tiny preset, 20
steps, a one-epoch downstream evaluation without the sequence models); Beam
runs in-memory with one worker here to spare the 2-core CI box (production
default: multi-processing DirectRunner on every core).
"""

import csv
import glob
import json
import math
import re
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
#: Components of the pipeline `clue run` builds on `clue synth` data, in order (a task
#: with a catalogue file; TFX orders the nodes without inputs first, by id).
COMPONENTS = [pl.EXAMPLE_GEN, pl.CATALOGUE_EXAMPLE_GEN, pl.TASK_EXAMPLE_GEN, pl.STATISTICS_GEN,
              pl.SCHEMA_GEN, pl.EXAMPLE_VALIDATOR, pl.BEHAVIOR_PREPROCESS, pl.TRAINER,
              pl.EVALUATOR, pl.EMBEDDING_EXPORT, pl.PUSHER, pl.LOOKUP_PUSHER]
#: What runs again when only the blessing changes (or the task: with TaskExampleGen).
AFTER_EVALUATOR = (pl.EVALUATOR, pl.EMBEDDING_EXPORT, pl.PUSHER, pl.LOOKUP_PUSHER)
#: ... for a task without a catalogue file, and without evaluation.
NO_CATALOGUE = [c for c in COMPONENTS if c != pl.CATALOGUE_EXAMPLE_GEN]
TRAIN_ONLY = [c for c in COMPONENTS if c not in (pl.CATALOGUE_EXAMPLE_GEN, pl.TASK_EXAMPLE_GEN,
                                                 *AFTER_EVALUATOR)]
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


def _one_user_per_split(examples_uri):
    """The first user id of each split's records (train, eval, test)."""
    ids = []
    for split in ("train", "eval", "test"):
        files = sorted(glob.glob(f"{examples_uri}/Split-{split}/*.gz"))
        raw = next(iter(tf.data.TFRecordDataset(files, compression_type="GZIP")))
        ids.append(tf.train.Example.FromString(raw.numpy()).features.feature["user_id"]
                   .bytes_list.value[0].decode())
    return ids


def _lookup_and_encode_over_grpc(encoder_base, lookup_base, data_dir, user_ids):
    """Serves both pushed models from one `clue serve` server on loopback; returns
    (lookup by id: embedding, found; encoder on the users' raw histories: embedding)."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from clue_keras.data.tables import read_behaviors
    from clue_keras.embeddings.user_rows import read_model_layout, user_text_row
    from clue_keras.serving.server import serve
    from tfx_pipeline.config import ENCODER_MODEL_NAME, LOOKUP_MODEL_NAME

    version = sorted(os.listdir(encoder_base))[-1]
    services, max_items = read_model_layout(os.path.join(encoder_base, version))
    df = read_behaviors(str(data_dir))
    texts = np.stack([user_text_row(zip(g["service"], g["timestamp"], g["item_text"]),
                                    services, max_items)
                      for u in user_ids
                      for g in [df[(df["user_id"].astype(str) == u)
                                   & df["service"].isin(services)]]])
    utf8 = np.vectorize(lambda t: t.encode("utf-8"), otypes=[object])

    def predict(stub, model, **inputs):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        outputs = stub.Predict(request, timeout=60).outputs
        return {k: tf.make_ndarray(v) for k, v in outputs.items()}

    server = serve(None, None, models=[(ENCODER_MODEL_NAME, str(encoder_base)),
                                       (LOOKUP_MODEL_NAME, str(lookup_base))],
                   port=0, host="127.0.0.1", poll_seconds=0.05)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            by_id = predict(stub, LOOKUP_MODEL_NAME, user_id=np.array(
                [u.encode() for u in user_ids] + [b"no-such-user"], dtype=object))
            by_texts = predict(stub, ENCODER_MODEL_NAME, item_texts=utf8(texts))
    finally:
        server.stop(grace=0)
    return by_id["embedding"], by_id["found"], by_texts["embedding"]


@pytest.mark.slow
def test_clue_run_trains_evaluates_pushes_and_reruns_from_cache(tmp_path, capsys):
    """Blessed run pushes a servable model; an identical rerun is fully cached; a run
    with an unreachable margin re-evaluates only, is not blessed and pushes nothing."""
    root = tmp_path / "runs"
    argv = ["run", "--root", str(root), "--users", "150", "--preset", "tiny",
            "--train-steps", "20", "--batch-size", "16", "--cpu-replicas", "2", *FAST_EVAL]
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
    assert t["strategy"] == "MirroredStrategy" and t["replicas"] == 2
    assert "trained with MirroredStrategy on 2 replica(s), precision policy" in out

    # One line per component as it ends, in pipeline order, while the run works.
    done = [line.split("]")[0][1:] for line in out.splitlines()
            if line.startswith("[") and " done in " in line]
    assert done == COMPONENTS, out
    assert "full log: " + str(root / "logs") in out
    report = re.search(r"report: (\S+\.html)", out).group(1)
    assert os.path.dirname(report) == str(root / "reports")
    report_text = open(report, encoding="utf-8").read()
    assert all(f"<td>{c}</td>" in report_text for c in COMPONENTS)
    assert "data:image/png;base64," in report_text

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

    # LookupPusher: the user-id lookup model of every kept user, beside the encoder. Both
    # served by one server, a lookup by id over gRPC gives what the encoder gives for the
    # user's history (a user of each split), and an unknown id gets zeros.
    lookup_serving = root / "serving_user_lookup"
    lookup_versions = os.listdir(lookup_serving)
    assert summary.lookup_pushed_to == str(lookup_serving / lookup_versions[0])
    assert len(lookup_versions) == 1 and summary.lookup_users == s["users_kept"]
    assert f"--model-base-path {lookup_serving} --model-name clue_user_lookup" in out
    users = _one_user_per_split(examples_uri)
    by_id, found, by_texts = _lookup_and_encode_over_grpc(serving, lookup_serving,
                                                          root / "data", users)
    assert found.tolist() == [True, True, True, False]
    np.testing.assert_allclose(by_id[:3], by_texts, atol=2e-5)
    np.testing.assert_array_equal(by_id[3], 0.0)

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
    assert again.lookup_pushed_to == summary.lookup_pushed_to
    assert "using the synthetic data already" in out
    assert f"{len(COMPONENTS)} of {len(COMPONENTS)} components reused cached outputs" in out
    cached = [line.split("]")[0][1:] for line in out.splitlines()
              if line.startswith("[") and " cached in " in line]
    assert cached == COMPONENTS, out
    assert os.listdir(serving) == versions

    # An unreachable margin: only Evaluator and Pusher run again; nothing is pushed.
    assert cli.main(argv + ["--margin-over-toppop=10"]) == 0
    out = capsys.readouterr().out
    strict = local_runner.summarize(metadata_path, "clue")
    assert strict.executions == {c: ("COMPLETE" if c in AFTER_EVALUATOR else "CACHED")
                                 for c in COMPONENTS}
    assert strict.blessed is False and strict.pushed_to is None
    assert "margin 10.0000" in strict.blessing_reason
    blessing_dir = os.path.dirname(os.path.dirname(strict.evaluation_uri))
    assert glob.glob(f"{blessing_dir}/blessing/*/NOT_BLESSED")
    assert "NOT BLESSED, so not pushed: U-MLP (CLUE) MRR" in out and "margin 10.0000" in out
    assert "clue serve" not in out
    assert os.listdir(serving) == versions  # still only the blessed version
    assert os.listdir(lookup_serving) == lookup_versions and strict.lookup_pushed_to is None


BAD_INPUTS = {
    # name: (csv text, expected message fragment; "{file}" is the CSV's path)
    "missing_column": (
        "user_id,service,timestamp\n" + "".join(
            f"u{i},{s},{100 + i}\n" for i in range(6) for s in ("news", "search")),
        "required column 'item_text' is missing in file(s): {file} "
        "(columns: user_id, service, timestamp)"),
    "wrong_type": (
        "user_id,service,timestamp,item_text\nu1,news,12,a\nu1,search,yesterday,b\n",
        # a row whose timestamp is not a timestamp is dropped and counted (values.py), so
        # this two-row log leaves nobody to train on, and the error says why
        "'rows_dropped_bad_timestamp': 1"),
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
        train=LOCAL_TRAIN.replace(train_steps=20, batch_size=4), beam_pipeline_args=BEAM_IN_MEMORY,
        evaluate=False)  # no downstream task here: the logs alone are under test
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
    assert [c.id for c in p.components] == NO_CATALOGUE
    assert not os.listdir(tmp_path)  # building the definition touches no file
    nodes = {c.id: c for c in p.components}
    custom_config = json.loads(nodes[pl.TRAINER].exec_properties["custom_config"])
    settings = TrainerSettings.from_custom_config(custom_config)
    assert settings == TrainerSettings(preset="tiny", model=PRESETS["tiny"], train=LOCAL_TRAIN)
    assert p.beam_pipeline_args == list(config.beam_pipeline_args)

    # The task is data: an ExampleGen over <data>/downstream/movies/interactions.*.
    task_gen = nodes[pl.TASK_EXAMPLE_GEN]
    assert task_gen.exec_properties["input_base"] == str(tmp_path / "d" / "downstream" / "movies")
    assert json.loads(task_gen.exec_properties["input_config"])["splits"] == [
        {"name": "all", "pattern": "interactions.*"}]
    evaluator, pusher = nodes[pl.EVALUATOR], nodes[pl.PUSHER]
    props = evaluator.exec_properties
    assert "task_dir" not in props and "data_dir" not in props
    assert props["task_name"] == "movies"
    assert (props["epochs"], props["sequence_models"]) == (2, 1)
    assert props["margin_over_toppop"] == 0.0 and props["margin_over_untrained"] is None
    assert evaluator.inputs["model"].producer_component_id == pl.TRAINER
    assert evaluator.inputs["user_examples"].producer_component_id == pl.BEHAVIOR_PREPROCESS
    assert evaluator.inputs["user_examples"].output_key == "user_examples"
    assert evaluator.inputs["task"].producer_component_id == pl.TASK_EXAMPLE_GEN
    assert "catalogue" not in evaluator.inputs
    assert pusher.inputs["model_blessing"].producer_component_id == pl.EVALUATOR
    assert pusher.inputs["model_blessing"].output_key == "blessing"
    assert str(tmp_path / "s") in pusher.exec_properties["push_destination"]
    # The id-lookup model: built from the Trainer's model and the records, after the
    # Evaluator, pushed on the same blessing to <serving dir>_user_lookup.
    export, lookup_pusher = nodes[pl.EMBEDDING_EXPORT], nodes[pl.LOOKUP_PUSHER]
    assert export.inputs["model"].producer_component_id == pl.TRAINER
    assert export.inputs["user_examples"].producer_component_id == pl.BEHAVIOR_PREPROCESS
    assert export.inputs["blessing"].producer_component_id == pl.EVALUATOR
    assert lookup_pusher.inputs["model"].producer_component_id == pl.EMBEDDING_EXPORT
    assert lookup_pusher.inputs["model_blessing"].producer_component_id == pl.EVALUATOR
    assert str(tmp_path / "s_user_lookup") in lookup_pusher.exec_properties["push_destination"]
    p = pl.create_pipeline(config.replace(export_lookup=False))
    assert [c.id for c in p.components] == [c for c in NO_CATALOGUE
                                            if c not in (pl.EMBEDDING_EXPORT, pl.LOOKUP_PUSHER)]
    with pytest.raises(ValueError, match="lookup_serving_dir must differ"):
        config.replace(lookup_serving_dir=str(tmp_path / "s") + "/")

    # A single task file of any name and format, and a catalogue file: two ExampleGens.
    p = pl.create_pipeline(config.replace(eval_task_path="/t/views_2021.parquet",
                                          eval_catalogue_path="/t/items.jsonl"))
    assert [c.id for c in p.components] == COMPONENTS
    nodes = {c.id: c for c in p.components}
    for node_id, base, pattern in ((pl.TASK_EXAMPLE_GEN, "/t", "views_2021.parquet"),
                                   (pl.CATALOGUE_EXAMPLE_GEN, "/t", "items.jsonl")):
        assert nodes[node_id].exec_properties["input_base"] == base
        assert json.loads(nodes[node_id].exec_properties["input_config"])["splits"][0][
            "pattern"] == pattern
    assert nodes[pl.EVALUATOR].exec_properties["task_name"] == "views_2021"
    assert nodes[pl.EVALUATOR].inputs["catalogue"].producer_component_id == \
        pl.CATALOGUE_EXAMPLE_GEN

    # Evaluation off: train only, no task, and no Pusher (nothing is ever pushed unblessed).
    p = pl.create_pipeline(config.replace(evaluate=False, eval_task_path="/x"))
    assert [c.id for c in p.components] == TRAIN_ONLY


def test_evaluation_paths_follow_the_synth_layout(tmp_path):
    base = dict(pipeline_root="p", serving_model_dir="s")
    c = PipelineConfig(data_root="/data/behaviors/", **base)
    assert c.evaluation_task_path == "/data/downstream/movies"
    assert c.evaluation_task_input == ("/data/downstream/movies", "interactions.*", "csv")
    assert c.evaluation_task_name == "movies" and c.evaluation_catalogue_input is None
    c = PipelineConfig(data_root="gs://b/data", data_format="parquet", **base)
    assert c.evaluation_task_input == ("gs://b/data/downstream/movies", "interactions.*",
                                       "parquet")
    c = c.replace(eval_task_path="/t/clicks.tfrecord.gz", eval_catalogue_path="/t/cat.csv")
    assert c.evaluation_task_input == ("/t", "clicks.tfrecord.gz", "tfrecord")
    assert c.evaluation_catalogue_input == ("/t", "cat.csv", "csv")
    assert c.evaluation_task_name == "clicks"
    c = c.replace(eval_task_path="/data/downstream/books/interactions.jsonl")
    assert c.evaluation_task_name == "books"
    assert c.evaluation_task_input[2] == "jsonl"
    with pytest.raises(ValueError, match="eval_epochs must be >= 1, got 0"):
        PipelineConfig(data_root="/d", eval_epochs=0, **base)


@pytest.mark.parametrize("case", ["no_such_path", "missing_column", "no_text"])
def test_clue_run_stops_on_a_broken_task_before_the_pipeline_starts(tmp_path, capsys, case):
    """`clue run` validates the task up front: in seconds, naming the file and the
    column, and no component runs (no metadata store is created)."""
    root = tmp_path / "runs"
    _hand_written_logs(tmp_path / "logs" / "export.csv")
    task = tmp_path / "task" / "clicks.csv"
    task.parent.mkdir()
    if case == "missing_column":
        task.write_text("user_id,item_id,item_text\nuser1,i1,a film\n")
        expected = f"{task}: missing column(s) ['timestamp']"
    elif case == "no_text":
        task.write_text("user_id,item_id,timestamp\nuser1,i1,5\n")
        expected = "1 of 1 item(s) have no text"
    else:
        task = tmp_path / "nowhere"
        expected = f"{task}: no such task file or directory"
    argv = ["run", "--root", str(root), "--data", str(tmp_path / "logs"), "--task", str(task)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "clue run: the downstream task for the Evaluator: " in err
    assert expected in err, err
    assert not (root / "metadata").exists()
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
    # (remote data: the task is DATA/downstream/movies/interactions.*, no catalogue ExampleGen)
    assert set(pipeline_spec["root"]["dag"]["tasks"]) == set(NO_CATALOGUE)
    executors = pipeline_spec["deploymentSpec"]["executors"]
    assert {k[: -len("_executor")] for k in executors} == set(NO_CATALOGUE)
    assert {e["container"]["image"] for e in executors.values()} == {image}
    assert spec["runtimeConfig"]["gcsOutputDirectory"] == "gs://bucket/root"
    assert not list(out.parent.glob(".*.tmp"))


def _hand_written_logs(path, users=24, iso=False):
    """A small export written by hand: numeric-looking user ids, two services."""
    lines = ["user_id,service,timestamp,item_text"]
    for u in range(users):
        for i, service in enumerate(("news", "shop", "news", "shop")):
            ts = 1_600_000_000 + 3600 * (u * 4 + i)
            stamp = f"2021-03-{1 + i:02d}T05:06:07Z" if iso else str(ts)
            lines.append(f"user{u},{service},{stamp},item {u % 5} {service} {i}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_schema_kept_by_the_first_run_stops_a_drifted_run(tmp_path, capsys):
    """The first run keeps the inferred schema under ROOT/schema; a later run given
    it (--schema) whose logs changed a column's type stops before BehaviorPreprocess
    does any work, naming the column, and nothing is trained."""
    root = tmp_path / "runs"
    base = ["run", "--root", str(root), "--no-evaluate", "--train-steps", "2",
            "--batch-size", "4", *[f"--beam-arg={a}" for a in BEAM_IN_MEMORY]]
    _hand_written_logs(tmp_path / "v1" / "export.csv")
    assert cli.main(base + ["--data", str(tmp_path / "v1")]) == 0
    schema = root / "schema" / "schema.pbtxt"
    assert schema.exists() and 'name: "timestamp"' in schema.read_text()
    assert f"kept the schema inferred from these logs in {schema}" in capsys.readouterr().out
    assert cli.main(base + ["--data", str(tmp_path / "v1")]) == 0  # without --schema: unchanged
    assert local_runner.summarize(str(root / "metadata" / "metadata.db"), "clue").cached == 6

    _hand_written_logs(tmp_path / "v2" / "export.csv", iso=True)  # timestamps became strings
    with pytest.raises(Exception, match="timestamp"):
        cli.main(base + ["--data", str(tmp_path / "v2"), "--schema", str(schema)])
    summary = local_runner.summarize(str(root / "metadata" / "metadata.db"), "clue")
    assert summary.executions[pl.SCHEMA_GEN] == "COMPLETE"  # ImportSchemaGen of the kept file
    assert summary.executions[pl.BEHAVIOR_PREPROCESS] == "FAILED"
    assert pl.TRAINER not in summary.executions
    assert f"validating the logs against the schema {schema}" in capsys.readouterr().out


def _events(store, execution_id, kind):
    """``{input/output key: [artifact ids]}`` of an execution's events of ``kind``."""
    out = {}
    for e in store.get_events_by_execution_ids([execution_id]):
        if e.type == kind:
            out.setdefault(e.path.steps[0].key if e.path.steps else "", []).append(e.artifact_id)
    return out


def _producers(store, artifact_id):
    """Ids of the executions with an OUTPUT event for ``artifact_id``, oldest first (the
    one that wrote it, then any run that reused it from the cache)."""
    from ml_metadata.proto import metadata_store_pb2 as pb

    return sorted(e.execution_id for e in store.get_events_by_artifact_ids([artifact_id])
                  if e.type == pb.Event.OUTPUT)


@pytest.mark.slow
def test_a_changed_task_reruns_the_evaluator_and_its_blessing_names_the_task(tmp_path, capsys):
    """The task is data: a single task file (any name, no catalogue: derived) goes
    through TaskExampleGen. One row changed under the same path re-runs TaskExampleGen,
    the Evaluator and the Pusher only; the Evaluator reads the new task examples; and
    MLMD's events lead from the blessing back to the TaskExampleGen run that read it."""
    import clue_synth as synth
    from ml_metadata.proto import metadata_store_pb2 as pb

    from clue_tfrs.task_examples import load_task_examples
    from tfx_pipeline.mlmd_query import custom_properties, node_ids

    data, root = tmp_path / "data", tmp_path / "runs"
    synth.generate(str(data), users=150, seed=0)
    task = tmp_path / "tasks" / "views_2021.csv"
    task.parent.mkdir()
    task.write_text((data / "downstream" / "movies" / "interactions.csv").read_text())
    argv = ["run", "--root", str(root), "--data", str(data), "--task", str(task),
            "--train-steps", "10", "--batch-size", "16", *FAST_EVAL,
            "--margin-over-toppop=-1", "--margin-over-untrained=-1",
            *[f"--beam-arg={a}" for a in BEAM_IN_MEMORY]]
    metadata_path = str(root / "metadata" / "metadata.db")

    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f"downstream task {task}: " in out and "derived from the interactions" in out
    first = local_runner.summarize(metadata_path, "clue")
    assert first.executions == {c: "COMPLETE" for c in NO_CATALOGUE}
    with open(os.path.join(first.evaluation_uri, "results.json")) as f:
        assert json.load(f)["info"]["task"] == "views_2021"

    # One row changed under the same path (its item becomes another item of the task).
    # (The schema the first run kept would make the second import it with ImportSchemaGen
    # and so re-run everything after SchemaGen; without it, only the task differs.)
    (root / "schema" / "schema.pbtxt").unlink()
    with open(task, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    row = rows[0]
    other = next(r["item_id"] for r in rows if r["item_id"] != row["item_id"])
    row["item_id"] = other
    with open(task, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        writer.writeheader()
        writer.writerows(rows)

    assert cli.main(argv) == 0
    second = local_runner.summarize(metadata_path, "clue")
    rerun = (pl.TASK_EXAMPLE_GEN, *AFTER_EVALUATOR)
    assert second.executions == {c: ("COMPLETE" if c in rerun else "CACHED")
                                 for c in NO_CATALOGUE}
    assert second.evaluation_uri != first.evaluation_uri

    # Lineage: blessing -> Evaluator execution -> its `task` input -> TaskExampleGen.
    store = _store(metadata_path)
    node_of = node_ids(store, "clue")
    evaluations = sorted(i for i, n in node_of.items() if n == pl.EVALUATOR)
    task_gens = sorted(i for i, n in node_of.items() if n == pl.TASK_EXAMPLE_GEN)
    assert len(evaluations) == len(task_gens) == 2
    inputs = [_events(store, i, pb.Event.INPUT) for i in evaluations]
    assert inputs[0]["task"] != inputs[1]["task"]  # the new examples, not the old ones
    (blessing_id,) = _events(store, evaluations[1], pb.Event.OUTPUT)["blessing"]
    assert _producers(store, blessing_id) == [evaluations[1]]
    (task_id,) = inputs[1]["task"]
    assert _producers(store, task_id) == [task_gens[1]]
    gen = store.get_executions_by_id([task_gens[1]])[0]
    assert custom_properties(gen)["input_base"] == str(task.parent)
    assert json.loads(custom_properties(gen)["input_config"])["splits"][0]["pattern"] == \
        task.name
    (user_examples_id,) = inputs[1]["user_examples"]  # the Trainer's records, cached
    assert user_examples_id == inputs[0]["user_examples"][0]
    assert {node_of[i] for i in _producers(store, user_examples_id)} == {pl.BEHAVIOR_PREPROCESS}

    # The new examples hold the changed row.
    artifact = store.get_artifacts_by_id([task_id])[0]
    files = glob.glob(os.path.join(artifact.uri, "Split-all", "*"))
    interactions, _ = load_task_examples(files)
    changed = interactions[(interactions["user_id"] == row["user_id"])
                           & (interactions["timestamp"] == int(row["timestamp"]))]
    assert other in changed["item_id"].tolist()


def test_report_names_every_component_and_embeds_its_images(tmp_path):
    """The HTML report of a summary: every component, the curves and the chart inline."""
    import base64

    from tfx_pipeline.report import write_report

    model_run = tmp_path / "model_run"
    model_run.mkdir()
    history = [{"step": s, "loss": 4.0 - s / 10, "logit_scale": 14.3 + s / 100,
                "tokens_per_s": 1000.0 + s} for s in range(10, 60, 10)]
    history.append({"step": 50, "eval_loss": 3.5})
    (model_run / "train_result.json").write_text(json.dumps({"history": history}))
    evaluation = tmp_path / "evaluation"
    evaluation.mkdir()
    png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
                           "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")
    (evaluation / "results.png").write_bytes(png)
    summary = local_runner.RunSummary(
        run_id="2026-11-30T20:00:00.1", executions={c: "COMPLETE" for c in COMPONENTS},
        cached=0, preprocess_stats={"rows_read": 1000, "users_train": 80, "items_train": 400,
                                    "rows_dropped_empty_user": 3, "services": "news,shop"},
        train_result={"num_params": 52737, "steps": 50, "final_loss": 3.0,
                      "strategy": "MirroredStrategy", "replicas": 2, "precision": "float32"},
        model_uri=None, blessed=True, pushed_to="/srv/clue/17000",
        blessing_reason="blessed: U-MLP (CLUE) MRR 0.2 vs TopPop 0.1",
        evaluation_uri=str(evaluation), evaluation_table="| Metric | TopPop |\n|---|---|\n| MRR | 0.1 |\n",
        durations={c: 1.5 for c in COMPONENTS}, model_run_uri=str(model_run))
    config = PipelineConfig(pipeline_root="/p", data_root="/d", serving_model_dir="/s")
    path = write_report(summary, config, str(tmp_path / "reports"))
    assert path == str(tmp_path / "reports" / "2026-11-30T20_00_00.1.html")
    text = open(path, encoding="utf-8").read()
    for component in COMPONENTS:
        assert f"<td>{component}</td>" in text
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 2 and base64.b64decode(images[1]) == png
    assert base64.b64decode(images[0])[:8] == b"\x89PNG\r\n\x1a\n"  # the training curves
    assert "rows dropped empty user" in text and "BLESSED" in text and "/srv/clue/17000" in text
    assert "tensorboard --logdir " + str(model_run / "logs") in text


def test_preprocess_beam_args_reach_behavior_preprocess_only_and_win(tmp_path):
    from clue_cli.main import build_parser
    from clue_cli.pipeline import _common_fields

    dask = ["--runner=clue_keras.data.dask_runner.DaskRunner",
            "--dask_client_address=tcp://127.0.0.1:8786"]
    compile_required = ["--kubeflow", "--image", "i", "--pipeline-root", "gs://b/r", "--out", "o"]
    for argv in (["run"], ["compile"] + compile_required):
        parsed = build_parser().parse_args(argv + [f"--preprocess-beam-arg={a}" for a in dask])
        assert _common_fields(parsed)["preprocess_beam_args"] == tuple(dask), argv[0]
    config = PipelineConfig(pipeline_root=str(tmp_path / "p"), data_root=str(tmp_path / "d"),
                            serving_model_dir=str(tmp_path / "s"),
                            beam_pipeline_args=["--direct_num_workers=1"],
                            preprocess_beam_args=dask)
    components = {c.id: c for c in pl.create_pipeline(config).components}
    args = components[pl.BEHAVIOR_PREPROCESS].executor_spec.beam_pipeline_args
    assert args[-2:] == dask and "--direct_num_workers=1" in args
    assert args.index("--direct_num_workers=1") < args.index(dask[0])  # the later value wins
    for cid in (pl.STATISTICS_GEN, pl.EMBEDDING_EXPORT):
        assert dask[0] not in components[cid].executor_spec.beam_pipeline_args, cid
