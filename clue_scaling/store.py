"""The study directory: ``runs/<id>/`` (``config.json``, ``result.json`` written
last, ``error.json``), the records cache, ``study.json`` (which data the study
belongs to) and the ``result.json`` record itself."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional

from clue_keras.atomic import write_json_atomic
from clue_scaling.grid import Grid, RunSpec, pf_days, tokens_seen

RESULT_FILE = "result.json"
STUDY_FILE = "study.json"
RESULTS_CSV = "results.csv"
FIT_FILE = "fit.json"
REPORT_FILE = "REPORT.md"
FIGURE4 = "figure4_scaling_factors.png"
FIGURE5 = "figure5_frontier_transfer.png"
CURVES = "learning_curves.png"


def run_dir(out_dir: str, run_id: str) -> str:
    return os.path.join(out_dir, "runs", run_id)


def is_finished(out_dir: str, run_id: str) -> bool:
    return os.path.exists(os.path.join(run_dir(out_dir, run_id), RESULT_FILE))


def data_fingerprint(data_dir: str) -> str:
    """SHA-256 of ``manifest.json`` (a `clue synth` directory) or of the behaviour
    files' names and sizes; ties an output directory to one data set."""
    manifest = os.path.join(data_dir, "manifest.json")
    h = hashlib.sha256()
    if os.path.exists(manifest):
        with open(manifest, "rb") as f:
            h.update(f.read())
        return h.hexdigest()
    behaviors = os.path.join(data_dir, "behaviors")
    if not os.path.isdir(behaviors):
        raise FileNotFoundError(f"{data_dir}: neither manifest.json nor behaviors/ found; "
                                "--data must be a `clue synth` style data directory")
    for name in sorted(os.listdir(behaviors)):
        h.update(f"{name}:{os.path.getsize(os.path.join(behaviors, name))}\n".encode())
    return h.hexdigest()


def check_study(out_dir: str, data_dir: str, grid: Grid) -> None:
    """Records which data the output directory belongs to; refuses other data."""
    path = os.path.join(out_dir, STUDY_FILE)
    fp = data_fingerprint(data_dir)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old.get("data_fingerprint") != fp:
            raise ValueError(
                f"{out_dir} holds runs on other data ({old.get('data_dir')}, fingerprint "
                f"{str(old.get('data_fingerprint'))[:12]}); --data {data_dir} has fingerprint "
                f"{fp[:12]}. Use a new --out directory.")
    write_json_atomic(path, {"data_dir": os.path.abspath(data_dir), "data_fingerprint": fp,
                             "grid": grid.raw, "grid_source": grid.source})


def make_result(spec: RunSpec, measured: Mapping[str, Any], wall_seconds: float) -> Dict[str, Any]:
    """The ``result.json`` record: the spec, the measurements and the compute bookkeeping."""
    params = int(measured["params"])
    return {
        "run_id": spec.run_id,
        "model": spec.model,
        "params": params,
        "batch_size": spec.batch_size,
        "steps": spec.steps,
        "max_items": spec.max_items,
        "max_tokens": spec.max_tokens,
        "sequence_length": spec.sequence_length,
        "tokens_seen": tokens_seen(spec.batch_size, spec.steps, spec.max_items, spec.max_tokens),
        "pf_days": pf_days(params, spec.batch_size, spec.steps, spec.sequence_length),
        "final_train_loss": float(measured["final_train_loss"]),
        "heldout_loss": float(measured["heldout_loss"]),
        "heldout_batch_size": spec.heldout_batch_size,
        "heldout_users": measured.get("heldout_users"),
        "downstream": measured.get("downstream"),
        "history": list(measured.get("history", [])),
        "wall_seconds": float(wall_seconds),
        "stage_seconds": dict(measured.get("stage_seconds", {})),
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": spec.canonical(),
    }


def records_dir(out_dir: str, max_items: int, max_tokens: int, vocab_size: int) -> str:
    """Cache of prepared records per distinct (S, L, V)."""
    return os.path.join(out_dir, "records", f"S{max_items}_L{max_tokens}_V{vocab_size}")


def collect_results(out_dir: str, run_ids: Optional[Iterable[str]] = None) -> List[Dict[str, Any]]:
    """``result.json`` of the given runs (default: all finished runs), sorted by PF-days."""
    runs_root = os.path.join(out_dir, "runs")
    if run_ids is None:
        run_ids = sorted(os.listdir(runs_root)) if os.path.isdir(runs_root) else []
    results = []
    for rid in run_ids:
        path = os.path.join(runs_root, rid, RESULT_FILE)
        if os.path.exists(path):
            with open(path) as f:
                results.append(json.load(f))
    return sorted(results, key=lambda r: (r["pf_days"], r["run_id"]))
