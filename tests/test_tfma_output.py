"""ClueEvaluator's results read back with TFMA's own loaders (tfma.load_eval_result & co).

A results table with per-example ranks (so with paired comparisons) is written
with `components.clue_evaluator.tfma_output` and loaded with
``tfma.load_eval_result``, ``tfma.load_metrics`` and ``tfma.load_validation_result``:
every model's every metric must come back as the table holds it, in the slice
``model=<column>``, and the blessing as ``validation_ok``. The executor's wiring
is checked with a stand-in evaluation (no training).
"""

import json
import os

import numpy as np
import pytest
import tensorflow_model_analysis as tfma
from tfx.types import standard_artifacts

from clue_tfrs.reporting import PerExample, ResultsTable
from components.clue_evaluator import executor as ex
from components.clue_evaluator import tfma_output

COLUMNS = ["TopPop", "U-MLP (CLUE)", "U-MLP (Untrained)", "T-UBM (BST)"]
K = 100


def _table() -> ResultsTable:
    """Four models, 30 test positives of 12 users, real rank counts, paired comparisons."""
    rng = np.random.default_rng(7)
    n = 30
    users = np.sort(rng.integers(0, 12, size=n))
    greater = {c: rng.integers(0, 40 - 9 * i, size=n) for i, c in enumerate(COLUMNS)}
    ties = {c: rng.integers(0, 2, size=n) for c in COLUMNS}
    pe = PerExample(users=users, greater=greater, ties=ties, num_negatives=K)
    rows = ["HR@1", "NDCG@10", "MRR"]
    values = {c: {r: float(pe.values(c, r).mean()) for r in rows} for c in COLUMNS}
    table = ResultsTable(columns=COLUMNS, rows=rows, values=values, per_example=pe,
                         info={"task": "movies", "num_test_positives": n})
    table.info["paired"] = table.paired_comparisons(resamples=200)
    return table


def _value(v):
    """A loaded metric value: ``doubleValue`` or, with an interval, ``boundedValue``."""
    return v["doubleValue"] if "doubleValue" in v else v["boundedValue"]["value"]


@pytest.mark.parametrize("as_dict", [False, True], ids=["ResultsTable", "results.json"])
def test_every_model_and_metric_round_trips_through_tfma_load_eval_result(tmp_path, as_dict):
    table = _table()
    src = json.loads(json.dumps(table.to_dict())) if as_dict else table
    paths = tfma_output.write_tfma_output(str(tmp_path), src, blessed=True, reason="ok",
                                          model_location="/models/clue/1")
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths.values())

    result = tfma.load_eval_result(str(tmp_path))
    assert result.model_location == "/models/clue/1"
    assert result.data_location == "movies"
    assert [s.feature_keys for s in result.config.slicing_specs] == [[], ["model"]]
    by_slice = result.get_metrics_for_all_slices()
    assert set(by_slice) == {()} | {(("model", c),) for c in COLUMNS}
    for column in COLUMNS:
        got = result.get_metrics_for_slice((("model", column),))
        for row in table.rows:
            assert got[row]["doubleValue"] == pytest.approx(table.values[column][row], abs=1e-12)
        assert got["example_count"]["doubleValue"] == 30
        # Every paired comparison of this model, with its bootstrap interval.
        mine = [c for c in table.info["paired"] if c["model"] == column]
        assert len(mine) == len(COLUMNS) - 1
        for c in mine:
            b = got[tfma_output.diff_metric_name("MRR", c["baseline"])]["boundedValue"]
            assert (b["value"], b["lowerBound"], b["upperBound"]) == pytest.approx(
                (c["difference"], c["lower"], c["upper"]), abs=1e-12)
            assert b["value"] == pytest.approx(
                table.values[column]["MRR"] - table.values[c["baseline"]]["MRR"], abs=1e-9)
    # The overall slice is the encoder's score: the U-MLP (CLUE) column.
    overall = result.get_metrics_for_slice(())
    assert {k: _value(v) for k, v in overall.items()} == pytest.approx(
        {**table.values["U-MLP (CLUE)"], "example_count": 30})


def test_load_metrics_gives_one_record_per_slice_and_validation_holds_the_blessing(tmp_path):
    table = _table()
    reason = "not blessed: U-MLP (CLUE) MRR ... <= margin 10.0000"
    tfma_output.write_tfma_output(str(tmp_path), table, blessed=False, reason=reason)
    records = list(tfma.load_metrics(str(tmp_path)))
    keys = [tuple((k.column, k.bytes_value.decode()) for k in r.slice_key.single_slice_keys)
            for r in records]
    assert keys == [()] + [(("model", c),) for c in COLUMNS]
    mrr = {key[0][1]: kv.value.double_value.value for key, r in zip(keys[1:], records[1:])
           for kv in r.metric_keys_and_values if kv.key.name == "MRR"}
    assert mrr == pytest.approx({c: table.values[c]["MRR"] for c in COLUMNS}, abs=1e-12)

    validation = tfma.load_validation_result(str(tmp_path))
    assert validation.validation_ok is False
    (per_slice,) = validation.metric_validations_per_slice
    assert per_slice.slice_key.single_slice_keys[0].bytes_value == b"U-MLP (CLUE)"
    assert per_slice.failures[0].message == reason

    tfma_output.write_tfma_output(str(tmp_path), table, blessed=True, reason="blessed: ...")
    assert tfma.load_validation_result(str(tmp_path)).validation_ok is True
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_a_table_without_the_clue_column_or_counts_still_loads(tmp_path):
    d = {"columns": ["TopPop"], "rows": ["MRR"], "values": {"TopPop": {"MRR": 0.25}}}
    tfma_output.write_tfma_output(str(tmp_path), d)
    result = tfma.load_eval_result(str(tmp_path))
    assert result.get_metrics_for_slice((("model", "TopPop"),)) == {
        "MRR": {"doubleValue": 0.25}}
    assert result.get_metrics_for_slice(()) is None  # no empty overall slice
    assert len(list(tfma.load_metrics(str(tmp_path)))) == 1
    assert not os.path.exists(tmp_path / tfma_output.VALIDATIONS_FILE)


def test_the_executor_writes_tfma_files_into_its_model_evaluation_artifact(tmp_path, monkeypatch):
    """Do() with a stand-in evaluation that writes results.json: the ModelEvaluation
    artifact loads with tfma.load_eval_result and agrees with results.json and the verdict."""
    table = _table()
    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "model")
    os.makedirs(tmp_path / "model" / "Format-Serving")
    (tmp_path / "model" / "Format-Serving" / "saved_model.pb").write_bytes(b"")
    evaluation, blessing = standard_artifacts.ModelEvaluation(), standard_artifacts.ModelBlessing()
    evaluation.uri, blessing.uri = str(tmp_path / "evaluation"), str(tmp_path / "blessing")

    def fake_evaluation(model_dir, out_dir, params):
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump(table.to_dict(), f)

    monkeypatch.setattr(ex, "tf_keras_is_keras2", lambda: True)
    monkeypatch.setattr(ex, "evaluate_in_process", fake_evaluation)
    monkeypatch.setattr(ex, "data_params", lambda inputs: {})
    task = standard_artifacts.Examples()
    task.uri = str(tmp_path / "task")
    ex.Executor().Do({"model": [model], "task": [task]},
                     {"evaluation": [evaluation], "blessing": [blessing]},
                     {"task_name": "movies", "epochs": 1, "seed": 0, "sequence_models": 0,
                      "margin_over_toppop": 0.0, "margin_over_untrained": None})
    with open(tmp_path / "evaluation" / "blessing.json") as f:
        verdict = json.load(f)
    result = tfma.load_eval_result(evaluation.uri)
    assert result.model_location == str(tmp_path / "model" / "Format-Serving")
    assert result.data_location == task.uri
    for column in COLUMNS:
        assert result.get_metrics_for_slice((("model", column),))["MRR"]["doubleValue"] == (
            pytest.approx(table.values[column]["MRR"], abs=1e-12))
    validation = tfma.load_validation_result(evaluation.uri)
    assert validation.validation_ok is verdict["blessed"]
