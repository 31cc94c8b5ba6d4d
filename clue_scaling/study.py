"""Running and resuming a grid: `run_grid` trains every unfinished run once;
finished runs are skipped, failed ones recorded and retried on the next call."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Dict, List, Optional

from clue_keras.atomic import write_json_atomic
from clue_scaling.execute import execute_run
from clue_scaling.grid import Grid, GridError, RunSpec
from clue_scaling.store import RESULT_FILE, check_study, is_finished, make_result, run_dir

Executor = Callable[[RunSpec, str, str, Callable[[str], None]], Dict[str, Any]]


@dataclasses.dataclass
class GridOutcome:
    finished: List[str]   # run ids finished in this invocation
    skipped: List[str]    # run ids that were already finished
    failed: Dict[str, str]  # run id -> error message
    pending: List[str]    # run ids not attempted (max_runs reached)


def run_grid(grid: Grid, data_dir: str, out_dir: str, max_runs: Optional[int] = None,
             printer: Callable[[str], None] = print,
             executor: Optional[Executor] = None) -> GridOutcome:
    """Trains every unfinished run of ``grid``; finished runs are skipped.

    Args:
      grid: the parsed grid.
      data_dir: a `clue synth` style data directory (``behaviors/``,
        ``downstream/<task>/``).
      out_dir: study directory (``runs/<id>/``, ``records/``, ``study.json``).
      max_runs: stop after this many runs were trained in this call
        (``None``: all); the rest stay pending for the next call.
      printer: progress lines.
      executor: ``executor(spec, data_dir, run_dir, printer) -> measurements``
        with ``params``, ``final_train_loss``, ``heldout_loss``, ``downstream``
        and ``history``; default :func:`execute_run` (real training).

    Returns:
      What happened to each run id. A run that raises is recorded in
      ``runs/<id>/error.json`` and retried on the next call.
    """
    executor = executor or execute_run
    if grid.downstream:
        task_dir = os.path.join(data_dir, "downstream", grid.downstream.task)
        if not os.path.isdir(task_dir):
            raise FileNotFoundError(f"downstream task {grid.downstream.task!r}: {task_dir} "
                                    f"does not exist (grid {grid.source}, key downstream.task)")
    os.makedirs(out_dir, exist_ok=True)
    check_study(out_dir, data_dir, grid)
    runs = grid.runs()
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        dup = next(r for r in runs if ids.count(r.run_id) > 1)
        raise GridError(f"{grid.source}: models: two model names give the same configuration "
                        f"({dup.describe()}); give each model distinct settings")
    outcome = GridOutcome([], [], {}, [])
    for i, spec in enumerate(runs, 1):
        rid = spec.run_id
        head = f"[{i}/{len(runs)}] {rid} {spec.describe()}"
        if is_finished(out_dir, rid):
            printer(f"{head}: skip (done)")
            outcome.skipped.append(rid)
            continue
        if max_runs is not None and len(outcome.finished) + len(outcome.failed) >= max_runs:
            outcome.pending.append(rid)
            continue
        rdir = run_dir(out_dir, rid)
        os.makedirs(rdir, exist_ok=True)
        write_json_atomic(os.path.join(rdir, "config.json"),
                          {"run_id": rid, "model": spec.model, **spec.canonical()})
        printer(f"{head}: {spec.planned_params:,} params, {spec.planned_pf_days:.3g} PF-days")
        start = time.time()
        try:
            measured = executor(spec, data_dir, rdir, printer)
        except Exception as e:  # noqa: BLE001  (recorded, reported, retried next call)
            msg = f"{type(e).__name__}: {e}"
            write_json_atomic(os.path.join(rdir, "error.json"), {"error": msg})
            printer(f"{head}: FAILED {msg}")
            outcome.failed[rid] = msg
            continue
        result = make_result(spec, measured, wall_seconds=time.time() - start)
        write_json_atomic(os.path.join(rdir, RESULT_FILE), result)
        if os.path.exists(os.path.join(rdir, "error.json")):
            os.remove(os.path.join(rdir, "error.json"))
        outcome.finished.append(rid)
        mrr = (result["downstream"] or {}).get("mrr")
        printer(f"{head}: done in {result['wall_seconds']:.0f} s, held-out loss "
                f"{result['heldout_loss']:.4f}" + (f", MRR {mrr:.4f}" if mrr is not None else ""))
    if outcome.pending:
        printer(f"stopped after {max_runs} run(s); {len(outcome.pending)} pending "
                f"(run again to continue)")
    return outcome
