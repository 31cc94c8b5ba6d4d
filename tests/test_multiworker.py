"""MultiWorkerMirroredStrategy for real: two worker processes on 127.0.0.1 (CPU,
collectives over loopback gRPC) train like one process on the same global batch;
only the chief writes the model directory; a killed worker stops the other with a
clear error and a re-run resumes from the chief's last checkpoint.

Each worker runs tests/multiworker_worker.py with its own TF_CONFIG.
"""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import clue_synth as synth
import multiworker_worker  # run as a script; imported so that BUILD ships it with the test
from clue_keras.config import PRESETS, TrainConfig
from clue_keras.data.prepare import prepare_local
from clue_keras.train import load_pretrainer, train

MC = PRESETS["tiny"]
WORKER = os.path.abspath(multiworker_worker.__file__)
CHIEF_FILES = {"checkpoints", "logs", "pretrainer.keras", "train_result.json"}
RUN_TIMEOUT_S = 240          # one 2-process run, start-up included (2 shared cores)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiworker")
    synth.generate(str(root / "data"), users=120, seed=7)
    prepare_local(str(root / "data"), str(root / "records"), max_items=MC.max_items,
                  max_tokens=MC.max_tokens, vocab_size=MC.vocab_size)
    return str(root / "records")


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start(records, model_dir, tc, cluster, step_delay_s=0.0, tag="run", evaluate=False):
    """Starts one process per task of ``cluster``; returns [(task, Popen, log path)].
    Logs go next to ``model_dir``."""
    spec = json.dumps({"files": os.path.join(records, "Split-train", "*"),
                       "eval_files": os.path.join(records, "Split-eval", "*") if evaluate
                       else None,
                       "vocab": os.path.join(records, "vocab"), "model_dir": model_dir,
                       "preset": "tiny", "train": dataclasses.asdict(tc),
                       "step_delay_s": step_delay_s})
    procs = []
    for job, addresses in cluster.items():
        for index in range(len(addresses)):
            env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
            env["TF_CONFIG"] = json.dumps({"cluster": cluster,
                                           "task": {"type": job, "index": index}})
            env["TF_CPP_MIN_LOG_LEVEL"] = "3"
            log = os.path.join(os.path.dirname(model_dir), f"{tag}-{job}{index}.log")
            with open(log, "w") as out:
                proc = subprocess.Popen([sys.executable, WORKER, spec], stdout=out,
                                        stderr=subprocess.STDOUT, env=env)
            procs.append((f"{job}:{index}", proc, log))
    return procs


def _wait(procs, timeout_s=RUN_TIMEOUT_S):
    """Waits for every process (killing all on timeout); returns {task: (rc, log text)}."""
    deadline = time.monotonic() + timeout_s
    try:
        for _, proc, _ in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for _, proc, _ in procs:
            proc.kill()
            proc.wait(timeout=30)
        raise AssertionError("workers still running after %d s:\n%s"
                             % (timeout_s, _logs(procs)))
    return {task: (proc.returncode, open(log).read()) for task, proc, log in procs}


def _kill_all(procs):
    for _, proc, _ in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _logs(procs):
    return "\n".join(f"--- {task}\n{open(log).read()[-3000:]}" for task, _, log in procs)


def _result(text):
    lines = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
    assert lines, text[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def _cluster(*jobs):
    ports = iter(_free_ports(sum(n for _, n in jobs)))
    return {job: [f"127.0.0.1:{next(ports)}" for _ in range(n)] for job, n in jobs}


def test_two_workers_train_like_one_process_and_only_the_chief_writes(records, tmp_path):
    tc = TrainConfig(batch_size=8, train_steps=4, checkpoint_every=4, log_every=1,
                     learning_rate=2e-3)
    model_dir = str(tmp_path / "multi")
    procs = _start(records, model_dir, tc, _cluster(("worker", 2)), evaluate=True)
    try:
        single = train(os.path.join(records, "Split-train", "*"),
                       os.path.join(records, "vocab"), MC, tc, str(tmp_path / "single"),
                       precision="float32", eval_files=os.path.join(records, "Split-eval", "*"),
                       printer=lambda *_: None)      # meanwhile, in this process
        done = _wait(procs)
    finally:
        _kill_all(procs)
    assert all(rc == 0 for rc, _ in done.values()), _logs(procs)

    results = {task: _result(text) for task, (_, text) in done.items()}
    for r in results.values():
        assert r["strategy"] == "CollectiveAllReduceStrategy" and r["replicas"] == 2
        assert r["steps"] == 4
    # Loss with negatives gathered across the two processes == the one-process loss.
    want = [h["loss"] for h in single.history]
    assert len(want) == 4
    for r in results.values():
        np.testing.assert_allclose([h["loss"] for h in r["history"]], want, rtol=1e-5,
                                   atol=1e-6)
        assert single.eval_loss is not None and r["eval_loss"] is not None
        np.testing.assert_allclose(r["eval_loss"], single.eval_loss, rtol=1e-5)
    a = load_pretrainer(str(tmp_path / "single" / "pretrainer.keras")).get_weights()
    b = load_pretrainer(os.path.join(model_dir, "pretrainer.keras")).get_weights()
    assert len(a) == len(b)
    for wa, wb in zip(a, b):
        np.testing.assert_allclose(wb, wa, atol=1e-5)

    # The chief's files only; the non-chief's scratch directory is gone.
    assert set(os.listdir(model_dir)) == CHIEF_FILES
    assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).endswith("ckpt-4")
    saved = json.load(open(os.path.join(model_dir, "train_result.json")))
    assert saved["steps"] == 4 and saved["strategy"] == "CollectiveAllReduceStrategy"


def test_killed_worker_fails_the_other_fast_and_a_rerun_resumes(records, tmp_path):
    tc = TrainConfig(batch_size=8, train_steps=30, checkpoint_every=5, log_every=1,
                     learning_rate=2e-3)
    model_dir = str(tmp_path / "m")
    ckpt_dir = os.path.join(model_dir, "checkpoints")
    cluster = _cluster(("chief", 1), ("worker", 1))  # an explicit chief this time
    procs = _start(records, model_dir, tc, cluster, step_delay_s=0.5)
    (_, chief, _), (_, worker, _) = procs
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while not tf.train.latest_checkpoint(ckpt_dir):  # training is under way
            assert chief.poll() is None and worker.poll() is None, _logs(procs)
            assert time.monotonic() < deadline, "no checkpoint yet:\n" + _logs(procs)
            time.sleep(0.2)
        worker.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        done = _wait(procs, timeout_s=120)
    finally:
        _kill_all(procs)
    survivor_rc, survivor_log = done["chief:0"]
    assert survivor_rc != 0, survivor_log[-3000:]
    assert "PeerLostError" in survivor_log and "a peer worker was lost" in survivor_log
    assert time.monotonic() - killed_at < 120
    last = int(tf.train.latest_checkpoint(ckpt_dir).rsplit("-", 1)[1])
    assert 5 <= last < 30, last               # killed mid-run
    assert not os.path.exists(os.path.join(model_dir, "pretrainer.keras"))

    done = _wait(_start(records, model_dir, tc, cluster, tag="rerun"))
    assert all(rc == 0 for rc, _ in done.values()), done
    for _, text in done.values():
        r = _result(text)
        assert r["resumed_from_step"] == last > 0
        assert r["steps"] == 30
        assert r["history"][0]["step"] == last + 1 and r["history"][-1]["step"] == 30
    assert set(os.listdir(model_dir)) == CHIEF_FILES  # the killed worker's scratch too
    assert tf.train.latest_checkpoint(ckpt_dir).endswith("ckpt-30")
