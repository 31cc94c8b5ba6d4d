"""`clue bench train --workers N` (clue_bench.train_multiworker): the figures it
returns, its bounded and clear failures.

The fast tests run stand-in worker modules (no TensorFlow) or stop at the CLI's
checks; one slow test runs the real bench (tiny preset, 2 workers on loopback).
No timing is asserted, only that the figures are there, positive and coherent.
"""

import json
import math
import os
import time

import pytest

from clue_bench import train_multiworker as tm
from clue_bench.train_multiworker import KEYS, WorkerError, bench_train_multiworker, run_workers
from clue_cli.main import main as clue_main

_FAKE = '''
import json, os, sys, time
spec = json.loads(sys.argv[1])
task = json.loads(os.environ.get("TF_CONFIG", '{"task": {"index": 0}}'))["task"]
if spec["mode"] == "fail_one" and task["index"] == 1:
    print("bad option: --frobnicate", file=sys.stderr, flush=True)
    sys.exit(3)
if spec["mode"] in ("fail_one", "hang"):
    time.sleep(600)             # a peer that would wait for ever
if spec["mode"] == "no_result":
    print("nothing useful", flush=True)
    sys.exit(0)
print("RESULT " + json.dumps({"index": task["index"],
                              "tf_config": "TF_CONFIG" in os.environ}), flush=True)
'''


@pytest.fixture
def fake_entry(tmp_path, monkeypatch):
    (tmp_path / "fake_bench_worker.py").write_text(_FAKE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    return "fake_bench_worker"


def test_run_workers_gives_each_worker_its_task_and_returns_results_in_order(fake_entry):
    res = run_workers({"mode": "ok"}, 2, timeout_s=60, entry=fake_entry)
    assert res == [{"index": 0, "tf_config": True}, {"index": 1, "tf_config": True}]
    # One worker: the single-process reference, without TF_CONFIG.
    assert run_workers({"mode": "ok"}, 1, timeout_s=60, entry=fake_entry) == [
        {"index": 0, "tf_config": False}]


def test_a_failing_worker_stops_the_others_with_its_error(fake_entry, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    t0 = time.monotonic()
    with pytest.raises(WorkerError) as e:
        run_workers({"mode": "fail_one"}, 2, timeout_s=300, log_dir=str(logs), entry=fake_entry)
    assert time.monotonic() - t0 < 120      # not the 300 s timeout, nor the 600 s sleep
    msg = str(e.value)
    assert "worker:1 exited with status 3" in msg and "bad option: --frobnicate" in msg


def test_a_hung_worker_is_stopped_after_the_timeout(fake_entry):
    with pytest.raises(WorkerError, match=r"worker:0, worker:1 still running after 2 s"):
        run_workers({"mode": "hang"}, 2, timeout_s=2, entry=fake_entry)


def test_a_worker_without_result_is_an_error(fake_entry):
    with pytest.raises(WorkerError, match="single printed no RESULT line:\nnothing useful"):
        run_workers({"mode": "no_result"}, 1, timeout_s=60, entry=fake_entry)


def test_free_ports_are_distinct_loopback_ports():
    ports = tm.free_ports(3)
    assert len(set(ports)) == 3 and all(0 < p < 65536 for p in ports)


@pytest.mark.parametrize("argv, message", [
    (["--workers", "2", "--batch-size", "5"], "divisible"),
    (["--workers", "2", "--steps", "1"], "--steps >= 2"),
    (["--workers", "2", "--cpu-replicas", "2"], "drop --cpu-replicas"),
])
def test_cli_rejects_what_the_multiworker_bench_cannot_run(argv, message, capsys):
    assert clue_main(["bench", "train", *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_reports_a_worker_failure_as_an_error(capsys):
    # A bad preset: every process fails (after the strategy is up); exit 1, the reason shown.
    rc = clue_main(["bench", "train", "--workers", "2", "--preset", "no-such-preset",
                    "--steps", "2", "--batch-size", "4", "--timeout", "300"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "benchmark single exited with status 1" in err and "no-such-preset" in err


def test_real_workers_with_a_bad_option_fail_with_its_reason():
    spec = {"preset": "tiny", "batch_size": 4, "precision": "float32",  # no "fill"
            "steps": 2, "warmup": 1, "collective_timeout_s": 120}
    with pytest.raises(WorkerError, match=r"benchmark worker:[01] exited with status 1") as e:
        run_workers(spec, 2, timeout_s=300)
    assert "KeyError: 'fill'" in str(e.value)


def test_bench_library_checks_its_arguments():
    with pytest.raises(ValueError, match="workers >= 2"):
        bench_train_multiworker("tiny", workers=1)
    with pytest.raises(ValueError, match="divisible"):
        bench_train_multiworker("tiny", batch_size=7, workers=2)


@pytest.mark.slow
def test_two_workers_against_one_process_on_the_same_global_batch(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = clue_main(["bench", "train", "--workers", "2", "--preset", "tiny", "--steps", "3",
                    "--warmup", "1", "--batch-size", "8", "--precision", "float32",
                    "--timeout", "400", "--json", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    res = json.loads(out.read_text())
    assert set(res) == set(KEYS)
    assert res["workers"] == 2 and res["replicas"] == 2
    assert res["strategy"] == "CollectiveAllReduceStrategy"
    assert res["single_global_batch"] == res["multi_global_batch"] == 8
    assert res["per_worker_batch"] == 4 and res["preset"] == "tiny" and res["params"] > 0
    for key in ("single_step_time_s", "multi_step_time_s", "single_fit_time_per_step_s",
                "multi_fit_time_per_step_s", "single_tokens_per_s", "multi_tokens_per_s",
                "comm_time_per_step_s", "gradient_bytes_per_worker",
                "gathered_bytes_per_worker"):
        assert res[key] > 0 and math.isfinite(res[key]), key
    assert len(res["multi_step_time_per_worker_s"]) == 2
    assert res["multi_step_time_s"] == max(res["multi_step_time_per_worker_s"])
    # Same global batch: tokens/s ratio is the inverse step-time ratio; share = comm / step.
    assert res["multi_over_single_tokens_per_s"] == pytest.approx(
        res["multi_tokens_per_s"] / res["single_tokens_per_s"])
    assert res["multi_over_single_step_time"] == pytest.approx(
        1 / res["multi_over_single_tokens_per_s"])
    assert res["communication_share"] == pytest.approx(
        res["comm_time_per_step_s"] / res["multi_step_time_s"])
    # The gradient all-reduce carries at least every dense weight once (float32).
    assert res["gradient_bytes_per_worker"] >= 4 * 0.5 * res["params"]
    assert "multi_over_single_tokens_per_s" in printed and "not a speed-up" in printed
