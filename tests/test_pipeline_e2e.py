"""The TFX pipeline end to end (LocalDagRunner, SQLite MLMD) and its Kubeflow compile.

Slow tests run the real components on tiny synthetic data (tiny preset, 20
steps); Beam runs in-memory with one worker here to spare the 2-core CI box
(production default: multi-processing DirectRunner on every core).
"""

import glob
import json
import math
import os

import pytest
import tensorflow as tf

from tfx_pipeline import cli
from tfx_pipeline import local_runner
from tfx_pipeline import pipeline as pl
from tfx_pipeline.config import PipelineConfig

BEAM_IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
#: Components of the pipeline today. EVALUATOR SLOT: add pl.EVALUATOR and
#: pl.PUSHER here once `pipeline._make_evaluator` returns a component.
COMPONENTS = [pl.EXAMPLE_GEN, pl.STATISTICS_GEN, pl.SCHEMA_GEN, pl.EXAMPLE_VALIDATOR,
              pl.BEHAVIOR_PREPROCESS, pl.TRAINER]


def _store(metadata_path):
    import ml_metadata as mlmd
    from tfx.orchestration import metadata

    return mlmd.MetadataStore(metadata.sqlite_metadata_connection_config(metadata_path))


def _count_records(pattern):
    return sum(1 for path in glob.glob(pattern)
               for _ in tf.data.TFRecordDataset(path, compression_type="GZIP"))


@pytest.mark.slow
def test_clue_run_trains_then_a_rerun_is_fully_cached(tmp_path, capsys):
    root = tmp_path / "runs"
    argv = ["run", "--root", str(root), "--users", "120", "--preset", "tiny",
            "--train-steps", "20", "--batch-size", "16"]
    argv += [f"--beam-arg={a}" for a in BEAM_IN_MEMORY]
    metadata_path = str(root / "metadata" / "metadata.db")

    assert cli.main(argv) == 0
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

    # No evaluator yet -> no blessing -> nothing pushed.
    assert summary.blessed is None and summary.pushed_to is None
    assert not (root / "serving").exists()
    assert "not pushed" in out

    # Second identical run: every component reuses its cached outputs.
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    again = local_runner.summarize(metadata_path, "clue")
    assert again.run_id != summary.run_id
    assert again.executions == {c: "CACHED" for c in COMPONENTS}
    assert len(store.get_executions()) == 2 * len(COMPONENTS)
    assert len(store.get_artifacts()) == artifacts
    assert again.preprocess_stats == summary.preprocess_stats
    assert "using the synthetic data already" in out
    assert f"{len(COMPONENTS)} of {len(COMPONENTS)} components reused cached outputs" in out


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
        metadata_path=str(tmp_path / "metadata.db"), train_steps=20, batch_size=4,
        beam_pipeline_args=BEAM_IN_MEMORY)
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


def test_create_pipeline_is_pure_and_has_no_pusher_without_an_evaluator(tmp_path):
    config = PipelineConfig(pipeline_root=str(tmp_path / "p"), data_root=str(tmp_path / "d"),
                            serving_model_dir=str(tmp_path / "s"),
                            metadata_path=str(tmp_path / "m.db"))
    p = pl.create_pipeline(config)
    assert [c.id for c in p.components] == COMPONENTS
    assert not os.listdir(tmp_path)  # building the definition touches no file
    trainer = next(c for c in p.components if c.id == pl.TRAINER)
    assert trainer.exec_properties["custom_config"] is not None
    assert p.beam_pipeline_args == list(config.beam_pipeline_args)


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
