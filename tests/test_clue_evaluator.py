"""ClueEvaluator: execution properties, the TFX blessing convention, and Do() on a
tiny exported model (in this process and in the Keras-2 child process)."""

import json
import os

import pytest

from tfx.components.util import model_utils
from tfx.types import channel_utils
from tfx.types import standard_artifacts

from components.clue_evaluator import executor as ex
from components.clue_evaluator.component import ClueEvaluator

TASK = "movies"


# ------------------------------------------------------------------ fast checks

def test_component_spec_carries_the_gate_settings():
    model = channel_utils.as_channel([standard_artifacts.Model()])
    c = ClueEvaluator(model=model, task_dir="/d/downstream/movies", epochs=2, seed=5,
                      margin_over_toppop=0.01, margin_over_untrained=None,
                      sequence_models=False)
    p = c.exec_properties
    assert (p["task_dir"], p["epochs"], p["seed"], p["sequence_models"]) == (
        "/d/downstream/movies", 2, 5, 0)
    assert p["margin_over_toppop"] == 0.01 and p["margin_over_untrained"] is None
    assert set(c.outputs) == {"evaluation", "blessing"}
    assert c.outputs["blessing"].type == standard_artifacts.ModelBlessing
    assert c.outputs["evaluation"].type == standard_artifacts.ModelEvaluation
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        ClueEvaluator(model=model, task_dir="/d", epochs=0)


def test_evaluation_params_validate_and_name_the_property(tmp_path):
    task = tmp_path / "downstream" / TASK
    task.mkdir(parents=True)
    p = ex.evaluation_params({"task_dir": str(task), "epochs": 2, "seed": 1,
                              "margin_over_toppop": None, "sequence_models": 0})
    assert p == {"task_dir": str(task), "data_dir": None, "epochs": 2, "seed": 1,
                 "margin_over_toppop": None, "margin_over_untrained": None,
                 "sequence_models": False}
    with pytest.raises(ex.EvaluationConfigError, match="'task_dir' .* is required"):
        ex.evaluation_params({})
    with pytest.raises(ex.EvaluationConfigError, match=f"task_dir '{tmp_path}/nope' is not a dir"):
        ex.evaluation_params({"task_dir": str(tmp_path / "nope")})
    with pytest.raises(ex.EvaluationConfigError, match="data_dir '/no/such' .* is not a dir"):
        ex.evaluation_params({"task_dir": str(task), "data_dir": "/no/such"})
    with pytest.raises(ex.EvaluationConfigError, match="epochs must be >= 1, got 0"):
        ex.evaluation_params({"task_dir": str(task), "epochs": 0})


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


def test_read_outcome_names_the_missing_file(tmp_path):
    with pytest.raises(RuntimeError, match=f"wrote no {tmp_path}/blessing.json"):
        ex.read_outcome(str(tmp_path))


# ------------------------------------------------- Do() on a tiny exported model

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """150 synthetic users (movies task) and an untrained tiny CLUE SavedModel
    in a Model artifact layout (<uri>/Format-Serving)."""
    from clue_keras import synth
    from clue_keras.config import PRESETS
    from clue_keras.export import export_saved_model
    from clue_keras.prepare import prepare_local
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
    return root, data


def _do(root, name, data, **props):
    model = standard_artifacts.Model()
    model.uri = str(root / "model")
    evaluation = standard_artifacts.ModelEvaluation()
    evaluation.uri = str(root / name / "evaluation")
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(root / name / "blessing")
    exec_properties = {"task_dir": os.path.join(data, "downstream", TASK), "data_dir": data,
                       "epochs": 1, "seed": 0, "sequence_models": 0, **props}
    ex.Executor().Do({"model": [model]}, {"evaluation": [evaluation], "blessing": [blessing]},
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
    _check_agree(evaluation, blessing, verdict, table)
    assert verdict["blessed"] is False
    mrr = table["values"]["U-MLP (CLUE)"]["MRR"]
    toppop = table["values"]["TopPop"]["MRR"]
    assert verdict["reason"] == (f"not blessed: U-MLP (CLUE) MRR {mrr:.4f} <= TopPop "
                                 f"{toppop:.4f} + margin 10.0000")


def test_a_failing_child_process_raises_with_its_output(tmp_path):
    with pytest.raises(RuntimeError, match="child process failed with exit code 1: "
                                           "FileNotFoundError: no interactions"):
        ex.evaluate_in_subprocess(str(tmp_path / "no_model"), str(tmp_path / "out"),
                                  {"task_dir": str(tmp_path), "data_dir": str(tmp_path),
                                   "epochs": 1, "seed": 0, "margin_over_toppop": 0.0,
                                   "margin_over_untrained": 0.0, "sequence_models": False})
