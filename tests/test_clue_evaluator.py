"""ClueEvaluator: inputs and execution properties, the TFX blessing convention, the task
read from ExampleGen records, and Do() on a tiny exported model with BehaviorPreprocess-
style records (in this process and in the Keras-2 child process)."""

import json
import os

import pytest

from tfx.components.util import model_utils
from tfx.types import artifact_utils
from tfx.types import channel_utils
from tfx.types import standard_artifacts

from components.clue_evaluator import executor as ex
from components.clue_evaluator.blessing import blessing_decision
from components.clue_evaluator.component import ClueEvaluator

TASK = "movies"


# ------------------------------------------------------------------ fast checks

def _channel(artifact_type):
    return channel_utils.as_channel([artifact_type()])


def test_component_spec_carries_the_gate_settings_and_takes_the_data_as_artifacts():
    model, users, task = (_channel(standard_artifacts.Model), _channel(standard_artifacts.Examples),
                          _channel(standard_artifacts.Examples))
    c = ClueEvaluator(model=model, user_examples=users, task=task, task_name="movies",
                      epochs=2, seed=5, margin_over_toppop=0.01, margin_over_untrained=None,
                      sequence_models=False, confidence=0.9)
    p = c.exec_properties
    assert (p["task_name"], p["epochs"], p["seed"], p["sequence_models"]) == ("movies", 2, 5, 0)
    assert p["confidence"] == 0.9
    assert p["margin_over_toppop"] == 0.01 and p["margin_over_untrained"] is None
    assert "task_dir" not in p and "data_dir" not in p  # the data are input artifacts
    assert set(c.inputs) == {"model", "user_examples", "task"}
    assert c.inputs["task"].type == standard_artifacts.Examples
    assert set(c.outputs) == {"evaluation", "blessing"}
    assert c.outputs["blessing"].type == standard_artifacts.ModelBlessing
    assert c.outputs["evaluation"].type == standard_artifacts.ModelEvaluation
    with_catalogue = ClueEvaluator(model=model, user_examples=users, task=task,
                                   catalogue=_channel(standard_artifacts.Examples))
    assert set(with_catalogue.inputs) == {"model", "user_examples", "task", "catalogue"}
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        ClueEvaluator(model=model, user_examples=users, task=task, epochs=0)
    with pytest.raises(ValueError, match=r"confidence must be in \(0.5, 1\), got 1.5"):
        ClueEvaluator(model=model, user_examples=users, task=task, confidence=1.5)


def test_evaluation_params_validate_and_name_the_property():
    p = ex.evaluation_params({"task_name": "movies", "epochs": 2, "seed": 1,
                              "margin_over_toppop": None, "sequence_models": 0})
    assert p == {"task_name": "movies", "epochs": 2, "seed": 1, "margin_over_toppop": None,
                 "margin_over_untrained": None, "sequence_models": False, "confidence": 0.95}
    assert ex.evaluation_params({"confidence": 0.99})["confidence"] == 0.99
    with pytest.raises(ex.EvaluationConfigError, match="confidence must be in"):
        ex.evaluation_params({"confidence": 0.3})
    assert ex.evaluation_params({})["task_name"] == "task"
    with pytest.raises(ex.EvaluationConfigError, match="epochs must be >= 1, got 0"):
        ex.evaluation_params({"epochs": 0})


def _examples_artifact(uri, splits=("all",)):
    artifact = standard_artifacts.Examples()
    artifact.uri = str(uri)
    artifact.split_names = artifact_utils.encode_split_names(list(splits))
    return artifact


def test_data_params_name_every_split_file_of_the_input_artifacts(tmp_path):
    for split, names in (("train", ["b.gz", "a.gz"]), ("eval", ["c.gz"])):
        (tmp_path / "users" / f"Split-{split}").mkdir(parents=True)
        for name in names:
            (tmp_path / "users" / f"Split-{split}" / name).write_bytes(b"")
    (tmp_path / "task" / "Split-all").mkdir(parents=True)
    (tmp_path / "task" / "Split-all" / "data_tfrecord-00000-of-00001.gz").write_bytes(b"")
    inputs = {"user_examples": [_examples_artifact(tmp_path / "users", ("train", "eval"))],
              "task": [_examples_artifact(tmp_path / "task")]}
    got = ex.data_params(inputs)
    assert got == {"records": str(tmp_path / "users"),
                   "task_examples": [str(tmp_path / "task" / "Split-all" /
                                         "data_tfrecord-00000-of-00001.gz")],
                   "catalogue_examples": None}
    (tmp_path / "empty" / "Split-all").mkdir(parents=True)
    inputs["catalogue"] = [_examples_artifact(tmp_path / "empty")]
    with pytest.raises(FileNotFoundError, match=f"catalogue artifact {tmp_path}/empty has no "
                                                 "record files"):
        ex.data_params(inputs)


@pytest.mark.parametrize("first,then", [(True, False), (False, True)])
def test_write_blessing_follows_tfx_and_the_pusher_agrees(tmp_path, first, then):
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp_path / "blessing")
    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "model")
    for blessed in (first, then):  # a retried execution must not leave the other marker
        ex.write_blessing(blessing, blessed, f"reason {blessed}", model)
    assert sorted(os.listdir(blessing.uri)) == ["BLESSED" if then else "NOT_BLESSED"]
    assert blessing.get_int_custom_property("blessed") == int(then)
    assert model_utils.is_model_blessed(blessing) is then  # what the stock Pusher checks
    assert blessing.get_string_custom_property("blessing_message") == f"reason {then}"
    assert blessing.get_string_custom_property("current_model") == model.uri


def test_read_results_names_the_missing_file(tmp_path):
    with pytest.raises(RuntimeError, match=f"wrote no {tmp_path}/results.json"):
        ex.read_results(str(tmp_path))


def test_split_params_separates_the_gate_from_the_evaluation():
    params = ex.evaluation_params({"task_name": "t", "margin_over_toppop": 0.5})
    run, gate = ex.split_params(params)
    assert gate == {"margin_over_toppop": 0.5, "margin_over_untrained": None}
    assert set(run) == {"task_name", "epochs", "seed", "sequence_models", "confidence"}


RESULTS = {
    "columns": ["TopPop", "U-MLP (Untrained)", "U-MLP (CLUE)"],
    "rows": ["MRR"],
    "values": {"TopPop": {"MRR": 0.20}, "U-MLP (Untrained)": {"MRR": 0.25},
               "U-MLP (CLUE)": {"MRR": 0.30}},
}


@pytest.mark.parametrize("as_table", [False, True])
def test_blessing_decision(as_table):
    """The rule, on a results.json dict and on a clue_tfrs ResultsTable."""
    table = RESULTS
    if as_table:
        from clue_tfrs.reporting import ResultsTable

        table = ResultsTable.from_dict(RESULTS)
    blessed, reason = blessing_decision(table)
    assert blessed and "0.3000 > TopPop 0.2000" in reason
    blessed, reason = blessing_decision(table, margin_over_untrained=0.05)
    assert not blessed and "U-MLP (Untrained) 0.2500 + margin 0.0500" in reason
    assert blessing_decision(table, margin_over_untrained=None, margin_over_toppop=0.09)[0]
    assert not blessing_decision(table, margin_over_untrained=None, margin_over_toppop=0.1)[0]
    with pytest.raises(KeyError, match="U-MLP \\(Other\\)"):
        blessing_decision(table, feature_name="U-MLP (Other)")


# ------------------------------------------------- Do() on a tiny exported model

def _example_gen_output(task_dir, out):
    """The task as the pipeline's ExampleGens write it: interactions.csv through
    CsvExampleGen's transform, catalogue.jsonl through the JSONL ExampleGen's, each
    into ``out/<name>/Split-all/`` (gzipped tf.Examples)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from tfx.components.example_gen.csv_example_gen.executor import _CsvToExample

    from components.jsonl_example_gen.executor import _JsonlToExample

    gz = beam.io.filesystem.CompressionTypes.GZIP
    with beam.Pipeline(options=PipelineOptions(["--direct_running_mode=in_memory",
                                                "--direct_num_workers=1"])) as p:
        for name, source, pattern in (("task", _CsvToExample, "interactions.csv"),
                                      ("catalogue", _JsonlToExample, "catalogue.jsonl")):
            _ = (p | f"Read[{name}]" >> source({"input_base": task_dir}, pattern)
                 | f"Serialize[{name}]" >> beam.Map(lambda e: e.SerializeToString())
                 | f"Write[{name}]" >> beam.io.WriteToTFRecord(
                     os.path.join(out, name, "Split-all", "data_tfrecord"),
                     file_name_suffix=".gz", compression_type=gz))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """150 synthetic users (movies task), their per-user records (`clue prepare`, the
    records BehaviorPreprocess writes), an untrained tiny CLUE SavedModel with the
    records' vocabulary in a Model artifact layout (<uri>/Format-Serving), and the
    task as ExampleGen output (``examples/task``, ``examples/catalogue``)."""
    import clue_synth as synth
    from clue_keras.config import PRESETS
    from clue_keras.export import export_saved_model
    from clue_keras.data.prepare import prepare_local
    from clue_keras.tokenizer import load_vocab_info
    from clue_keras.train import build_pretrainer

    root = tmp_path_factory.mktemp("clue_evaluator")
    data = str(root / "data")
    synth.generate(data, users=150, seed=3, tasks=(TASK,))
    mc = PRESETS["tiny"]
    prepare_local(data, str(root / "records"), max_items=mc.max_items,
                  max_tokens=mc.max_tokens, vocab_size=400)
    vocab = str(root / "records" / "vocab")
    model = build_pretrainer(mc.replace(vocab_size=load_vocab_info(vocab).vocab_size))
    export_saved_model(model, vocab, str(root / "model" / "Format-Serving"))
    _example_gen_output(os.path.join(data, "downstream", TASK), str(root / "examples"))
    return root, data


def _do(root, name, data, **props):
    del data  # the data are artifacts: records and the task's examples
    model = standard_artifacts.Model()
    model.uri = str(root / "model")
    evaluation = standard_artifacts.ModelEvaluation()
    evaluation.uri = str(root / name / "evaluation")
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(root / name / "blessing")
    inputs = {"model": [model],
              "user_examples": [_examples_artifact(root / "records", ("train", "eval", "test"))],
              "task": [_examples_artifact(root / "examples" / "task")],
              "catalogue": [_examples_artifact(root / "examples" / "catalogue")]}
    exec_properties = {"task_name": TASK, "epochs": 1, "seed": 0, "sequence_models": 0, **props}
    ex.Executor().Do(inputs, {"evaluation": [evaluation], "blessing": [blessing]},
                     exec_properties)
    with open(os.path.join(evaluation.uri, "blessing.json")) as f:
        verdict = json.load(f)
    with open(os.path.join(evaluation.uri, "results.json")) as f:
        table = json.load(f)
    return evaluation, blessing, verdict, table


def _check_agree(evaluation, blessing, verdict, table):
    """Marker file, `blessed` properties and blessing.json say the same thing."""
    blessed = verdict["blessed"]
    assert os.listdir(blessing.uri) == ["BLESSED" if blessed else "NOT_BLESSED"]
    assert blessing.get_int_custom_property("blessed") == int(blessed)
    assert model_utils.is_model_blessed(blessing) is blessed
    assert evaluation.get_int_custom_property("blessed") == int(blessed)
    assert blessing.get_string_custom_property("blessing_message") == verdict["reason"]
    assert evaluation.get_string_custom_property("task") == TASK
    # One MRR property per model column, equal to the table's value.
    assert set(table["columns"]) >= {"TopPop", "U-MLP (CLUE)", "U-MLP (Untrained)"}
    for column in table["columns"]:
        assert evaluation.get_float_custom_property(f"mrr/{column}") == pytest.approx(
            table["values"][column]["MRR"])
        assert 0.0 < table["values"][column]["MRR"] <= 1.0
    for name in ("results.md", "results.png"):
        assert os.path.getsize(os.path.join(evaluation.uri, name)) > 0
    # The same table and verdict through TFMA's own loaders (tests/test_tfma_output.py).
    import tensorflow_model_analysis as tfma

    result = tfma.load_eval_result(evaluation.uri)
    for column in table["columns"]:
        assert result.get_metrics_for_slice((("model", column),))["MRR"]["doubleValue"] == (
            pytest.approx(table["values"][column]["MRR"]))
    assert tfma.load_validation_result(evaluation.uri).validation_ok is blessed


@pytest.mark.slow
def test_do_with_an_unreachable_margin_is_not_blessed_in_a_keras2_child(tiny, monkeypatch):
    """Do() where tf.keras already resolved to Keras 3 (as in a container whose entry
    point imported TFX first): the evaluation runs in a Keras-2 child process, and
    a margin over TopPop of 10 MRR, which no model can reach, gives NOT_BLESSED.

    The in-process path (this test process has Keras 2) and a blessed verdict are
    covered by tests/test_pipeline_e2e.py, which runs the component in LocalDagRunner.
    """
    root, data = tiny
    monkeypatch.setattr(ex, "tf_keras_is_keras2", lambda: False)
    calls = []
    real = ex.evaluate_in_subprocess
    monkeypatch.setattr(ex, "evaluate_in_subprocess",
                        lambda *a: (calls.append(a), real(*a))[1])
    evaluation, blessing, verdict, table = _do(
        root, "strict", data, margin_over_toppop=10.0, margin_over_untrained=None)
    assert len(calls) == 1
    assert calls[0][2]["records"] == str(root / "records")  # BehaviorPreprocess's records
    assert calls[0][2]["task_examples"][0].startswith(str(root / "examples" / "task"))
    _check_agree(evaluation, blessing, verdict, table)
    # The catalogue input is used: every catalogue item, not only the interacted ones.
    assert table["info"]["num_items"] == 720
    assert verdict["blessed"] is False
    mrr = table["values"]["U-MLP (CLUE)"]["MRR"]
    toppop = table["values"]["TopPop"]["MRR"]
    assert verdict["reason"].startswith(f"not blessed: U-MLP (CLUE) MRR {mrr:.4f} vs TopPop "
                                        f"{toppop:.4f}: ")
    assert verdict["reason"].endswith(" <= margin 10.0000")


def test_a_failing_child_process_raises_with_its_output(tmp_path):
    with pytest.raises(RuntimeError, match="child process failed with exit code 1: "
                                           "ValueError: run_evaluation needs a task"):
        ex.evaluate_in_subprocess(str(tmp_path / "no_model"), str(tmp_path / "out"),
                                  {"task_examples": [], "records": str(tmp_path),
                                   "epochs": 1, "seed": 0, "sequence_models": False})
