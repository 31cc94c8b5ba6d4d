"""`clue bench train --workers N`: N worker processes on loopback against one.

Both measurements run in fresh processes of the same entry point
(``python -m clue_bench.train_worker``), so they are measured alike:

1. the single-process reference: one process, no ``TF_CONFIG``, the default
   strategy, GLOBAL batch B;
2. N processes on ``127.0.0.1`` (free ports), each with its own ``TF_CONFIG``
   (``worker`` 0..N-1; worker 0 is the chief): MultiWorkerMirroredStrategy with
   one CPU replica each, the SAME global batch B (each worker keeps B/N rows of
   it), collectives over loopback gRPC.

Each runs warm-up steps, then times ``steps`` steps of ``model.fit``. The
multi-worker processes then time, alone, the collectives one step issues with
that step's tensor sizes (``train_worker.time_step_collectives``); the
communication share is that time over the multi-worker step time. It leaves
out any overlap of communication with computation and any time a worker waits
for a slower peer inside the step, so it is an estimate of the wire-and-sync
cost, not a profile of the step.

On one machine the N processes share its cores: this measures the overhead of
going multi-worker, not a speed-up.

Every process has a bounded time (``timeout_s``); a process that fails stops the
others at once and raises :class:`WorkerError` with its output.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

from clue_bench import train_worker  # light at import; run as a module in each process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMM_METHOD = ("collectives of one step (all-gather of the projections and mask, its "
               "backward all-reduce, the gradient all-reduce, the logged scalars) timed "
               "alone in the same workers, over the multi-worker step time")


class WorkerError(RuntimeError):
    """A benchmark worker failed, or did not finish in time."""


def free_ports(n: int) -> List[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: str, chars: int = 3000) -> str:
    with open(path, errors="replace") as f:
        return f.read()[-chars:]


def _result(path: str) -> Optional[dict]:
    with open(path, errors="replace") as f:
        lines = [ln for ln in f.read().splitlines() if ln.startswith("RESULT ")]
    return json.loads(lines[-1][len("RESULT "):]) if lines else None


def run_workers(spec: dict, workers: int, timeout_s: float,
                log_dir: Optional[str] = None,
                entry: str = train_worker.__name__) -> List[dict]:
    """Runs ``workers`` processes of ``python -m entry SPEC_JSON`` (1: no
    TF_CONFIG) and returns their results, task order (the chief first).

    Raises WorkerError, naming the task and quoting its output, as soon as one
    exits with an error (the others are killed), or when ``timeout_s`` passes.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    own_dir = log_dir is None
    log_dir = log_dir or tempfile.mkdtemp(prefix="clue-bench-train-")
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(workers)]}
    procs: List[Tuple[str, subprocess.Popen, str]] = []
    try:
        for index in range(workers):
            env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
            env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            if workers > 1:
                env["TF_CONFIG"] = json.dumps({"cluster": cluster,
                                               "task": {"type": "worker", "index": index}})
            task = f"worker:{index}" if workers > 1 else "single"
            log = os.path.join(log_dir, f"{workers}w-{task.replace(':', '')}.log")
            with open(log, "w") as out:
                procs.append((task, subprocess.Popen(
                    [sys.executable, "-m", entry, json.dumps(spec)],
                    stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT), log))
        _wait(procs, timeout_s)
        results = []
        for task, _, log in procs:
            res = _result(log)
            if res is None:
                raise WorkerError(f"benchmark {task} printed no RESULT line:\n{_tail(log)}")
            results.append(res)
        return results
    finally:
        for _, proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        if own_dir:
            for name in os.listdir(log_dir):
                os.remove(os.path.join(log_dir, name))
            os.rmdir(log_dir)


def _wait(procs, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        running = False
        for task, proc, log in procs:
            rc = proc.poll()
            if rc is None:
                running = True
            elif rc != 0:
                raise WorkerError(
                    f"benchmark {task} exited with status {rc} (the other processes "
                    f"were stopped); its output ends:\n{_tail(log)}")
        if not running:
            return
        if time.monotonic() > deadline:
            still = [task for task, proc, _ in procs if proc.poll() is None]
            raise WorkerError(
                f"benchmark {', '.join(still)} still running after {timeout_s:g} s "
                f"(stopped); output of {still[0]} ends:\n"
                f"{_tail(next(log for t, _, log in procs if t == still[0]))}")
        time.sleep(0.2)


def bench_train_multiworker(preset: str, steps: int = 10, batch_size: int = 32,
                            fill: float = 0.5, precision: str = "float32",
                            workers: int = 2, warmup: int = 3,
                            timeout_s: float = 1800.0) -> Dict[str, object]:
    """Single-process vs ``workers`` processes on the same global batch.

    Returns the figures in :data:`KEYS` (see docs/PERFORMANCE.md).
    """
    if workers < 2:
        raise ValueError(f"the multi-worker bench needs workers >= 2, got {workers}")
    if batch_size % workers:
        raise ValueError(f"--batch-size {batch_size} must be divisible by --workers {workers}")
    spec = {"preset": preset, "batch_size": batch_size, "fill": fill,
            "precision": precision, "steps": steps, "warmup": warmup,
            "collective_timeout_s": timeout_s}
    single = run_workers(spec, 1, timeout_s)[0]
    multi = run_workers(spec, workers, timeout_s)
    chief = next(r for r in multi if r["chief"])
    multi_step = max(r["step_time_s"] for r in multi)
    comm = max(r["comm_time_per_step_s"] for r in multi)
    return {
        "preset": preset, "params": chief["params"], "policy": chief["policy"],
        "workers": workers, "strategy": chief["strategy"], "replicas": chief["replicas"],
        "cpu_count": os.cpu_count(), "steps": steps,
        "single_global_batch": single["global_batch"],
        "multi_global_batch": chief["global_batch"],
        "per_worker_batch": chief["global_batch"] // chief["replicas"],
        "single_step_time_s": single["step_time_s"],
        "multi_step_time_s": multi_step,
        "multi_step_time_per_worker_s": [r["step_time_s"] for r in multi],
        "single_fit_time_per_step_s": single["fit_time_per_step_s"],
        "multi_fit_time_per_step_s": max(r["fit_time_per_step_s"] for r in multi),
        "single_tokens_per_s": single["non_padding_tokens_per_s"],
        "multi_tokens_per_s": chief["global_batch_non_padding_tokens"] / multi_step,
        "multi_over_single_step_time": multi_step / single["step_time_s"],
        "multi_over_single_tokens_per_s": single["step_time_s"] / multi_step,
        "comm_time_per_step_s": comm,
        "communication_share": comm / multi_step,
        "comm_method": COMM_METHOD,
        "gradient_bytes_per_worker": chief["gradient_bytes_per_worker"],
        "gathered_bytes_per_worker": chief["gathered_bytes_per_worker"],
    }


KEYS = ("preset", "params", "policy", "workers", "strategy", "replicas", "cpu_count",
        "steps", "single_global_batch", "multi_global_batch", "per_worker_batch",
        "single_step_time_s", "multi_step_time_s", "multi_step_time_per_worker_s",
        "single_fit_time_per_step_s", "multi_fit_time_per_step_s",
        "single_tokens_per_s", "multi_tokens_per_s", "multi_over_single_step_time",
        "multi_over_single_tokens_per_s",
        "comm_time_per_step_s", "communication_share", "comm_method",
        "gradient_bytes_per_worker", "gathered_bytes_per_worker")
