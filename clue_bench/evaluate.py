"""`clue bench evaluate`: wall time of the downstream evaluation on a synthetic task.

Builds a task of a given size in memory (``--users``, ``--interactions``,
``--items``) whose clicks follow hidden user topics, item popularity and short
"series" (the next item often follows the previous one in the catalogue), with
two frozen feature sets: ``CLUE`` (each user's topic direction plus noise; item
vectors from their topic) and ``Untrained`` (random vectors). Then it runs
``clue_tfrs.evaluate.evaluate_task`` on it with the library's defaults (the
paper-size sequence models) and reports the seconds of every model and in total.

Time per model is measured from the construction of one downstream model to
the construction of the next (training and scoring; the first span also
covers the task preparation and TopPop). It needs nothing but
``evaluate_task`` and ``clue_tfrs.models.DownstreamModel``, so the same code
times an older checkout (run it with that checkout first on ``PYTHONPATH``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pandas as pd

__all__ = ["synthetic_task", "bench_evaluate", "format_report"]

FeatureSets = Dict[str, Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]]


def _per_user_counts(users: int, interactions: int, rng: np.random.Generator) -> np.ndarray:
    """int [users], each >= 2, summing to ``interactions`` (skewed like real logs)."""
    if interactions < 2 * users:
        raise ValueError(f"need at least 2 interactions per user: {interactions} < 2 x {users}")
    raw = rng.lognormal(mean=0.0, sigma=0.8, size=users)
    counts = 2 + np.floor(raw / raw.sum() * (interactions - 2 * users)).astype(np.int64)
    short = interactions - int(counts.sum())
    counts[rng.choice(users, size=short, replace=short > users)] += 1
    return counts


def synthetic_task(users: int = 6000, interactions: int = 100_000, items: int = 3000,
                   topics: int = 20, feature_dim: int = 64, p_topic: float = 0.5,
                   p_series: float = 0.25, feature_noise: float = 1.0, seed: int = 0
                   ) -> Tuple[pd.DataFrame, pd.DataFrame, FeatureSets]:
    """(interactions, catalogue, {"CLUE": ..., "Untrained": ...}) of a synthetic task.

    Item ``i`` belongs to topic ``i % topics``; popularity is Zipf-like. Each
    user has one hidden topic. Every click is, with probability ``p_series``,
    the next item of the same topic after the previous click; else with
    ``p_topic`` a popular item of the user's topic; else a popular item of the
    whole catalogue. ``CLUE`` user vectors are the topic's random direction
    plus Gaussian noise of norm about ``feature_noise`` (L2-normalised), item
    vectors the topic direction plus a little noise; ``Untrained`` is random.
    """
    rng = np.random.default_rng(seed)
    counts = _per_user_counts(users, interactions, rng)
    item_topic = np.arange(items) % topics
    popularity = 1.0 / (1.0 + rng.permutation(items)) ** 0.8
    by_topic = [np.flatnonzero(item_topic == t) for t in range(topics)]
    topic_cdf = [np.cumsum(popularity[ix]) / popularity[ix].sum() for ix in by_topic]
    global_cdf = np.cumsum(popularity) / popularity.sum()
    user_topic = rng.integers(0, topics, size=users)
    user_ids = np.array([f"u{u:06d}" for u in range(users)], dtype=object)
    rows_user: List[np.ndarray] = []
    rows_item: List[np.ndarray] = []
    for u in range(users):
        t, n = int(user_topic[u]), int(counts[u])
        kind, draw = rng.random(n), rng.random(n)
        pick = np.minimum(np.searchsorted(topic_cdf[t], draw), len(by_topic[t]) - 1)
        in_topic = by_topic[t][pick]
        anywhere = np.minimum(np.searchsorted(global_cdf, draw), items - 1)
        seq = np.where(kind < p_series + (1 - p_series) * p_topic, in_topic, anywhere)
        for k in np.flatnonzero(kind[1:] < p_series) + 1:  # series: the topic's next item
            prev = seq[k - 1]
            seq[k] = prev + topics if prev + topics < items else prev % topics
        rows_user.append(np.full(n, u))
        rows_item.append(seq)
    u_idx, i_idx = np.concatenate(rows_user), np.concatenate(rows_item)
    item_names = np.array([f"i{i:05d}" for i in range(items)], dtype=object)
    ts = 1_600_000_000 + 60 * np.concatenate([np.arange(c) for c in counts])
    frame = pd.DataFrame({"user_id": user_ids[u_idx], "item_id": item_names[i_idx],
                          "timestamp": ts.astype(np.int64)})
    catalogue = pd.DataFrame({"item_id": item_names, "topic": item_topic})

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    directions = unit(rng.standard_normal((topics, feature_dim)))
    noise = rng.standard_normal((users, feature_dim)) * feature_noise / np.sqrt(feature_dim)
    clue_users = unit(directions[user_topic] + noise)
    clue_items = unit(directions[item_topic] + 0.3 * rng.standard_normal((items, feature_dim))
                      / np.sqrt(feature_dim))
    rand_users = unit(rng.standard_normal((users, feature_dim)))
    rand_items = unit(rng.standard_normal((items, feature_dim)))
    sets: FeatureSets = {
        "CLUE": (dict(zip(user_ids, clue_users)), dict(zip(item_names, clue_items))),
        "Untrained": (dict(zip(user_ids, rand_users)), dict(zip(item_names, rand_items))),
    }
    return frame, catalogue, sets


def write_task(out_dir: str, frame: pd.DataFrame, catalogue: pd.DataFrame, sets: FeatureSets
               ) -> None:
    """Writes a task once (``interactions.parquet``, ``catalogue.parquet``,
    ``features.npz``) so that several checkouts evaluate the very same data."""
    os.makedirs(out_dir, exist_ok=True)
    frame.to_parquet(os.path.join(out_dir, "interactions.parquet"), index=False)
    catalogue.to_parquet(os.path.join(out_dir, "catalogue.parquet"), index=False)
    arrays: Dict[str, np.ndarray] = {}
    for name, (users, items) in sets.items():
        for part, feats in (("user", users), ("item", items)):
            arrays[f"{name}/{part}_ids"] = np.array(list(feats), dtype=str)
            arrays[f"{name}/{part}_vectors"] = np.stack(list(feats.values()))
    np.savez(os.path.join(out_dir, "features.npz"), **arrays)


def read_task(task_dir: str) -> Tuple[pd.DataFrame, pd.DataFrame, FeatureSets]:
    """(interactions, catalogue, feature sets) as :func:`write_task` wrote them."""
    frame = pd.read_parquet(os.path.join(task_dir, "interactions.parquet"))
    catalogue = pd.read_parquet(os.path.join(task_dir, "catalogue.parquet"))
    sets: FeatureSets = {}
    with np.load(os.path.join(task_dir, "features.npz")) as z:
        for name in sorted({k.split("/")[0] for k in z.files}):
            sets[name] = tuple(  # type: ignore[assignment]
                dict(zip(z[f"{name}/{part}_ids"].tolist(), z[f"{name}/{part}_vectors"]))
                for part in ("user", "item"))
    return frame, catalogue, sets


def protocol_fingerprint(frame: pd.DataFrame, catalogue: pd.DataFrame, cfg: Any, seed: int,
                         num_negatives: int = 100) -> Dict[str, Any]:
    """SHA-256 of the split users, the test positives and their sampled negatives, computed
    with the imported ``clue_tfrs.tasks``: equal fingerprints = the same protocol."""
    from clue_tfrs import tasks  # pylint: disable=import-outside-toplevel

    frame, catalogue = tasks.validate_task(frame, catalogue, source="bench")
    split = tasks.split_users(frame["user_id"], seed, cfg.fractions)
    index = tasks.ItemIndex(catalogue["item_id"])
    test = tasks.build_examples(frame, split.test, index, cfg.max_history, cfg.min_history)
    negatives = tasks.sample_eval_negatives(test.user_ids, tasks.user_positive_items(frame, index),
                                            index.num_items, num_negatives, seed)
    digest = hashlib.sha256()
    for part in (split.train, split.val, split.test):
        digest.update("\n".join(map(str, part)).encode() + b"|")
    for array in (test.targets, test.histories, negatives):
        digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    return {"sha256": digest.hexdigest()[:16], "test_positives": len(test)}


@contextlib.contextmanager
def _phases(stamps: List[float]) -> Iterator[Dict[Tuple[str, int], float]]:
    """Seconds per (phase, model number) in Keras ``Model.fit`` ("train": the epochs) and in
    the validation loss ("validation": ``Model.evaluate`` or
    ``clue_tfrs.fitting.validation_loss``), whatever the checkout; the model number is
    ``len(stamps) - 1`` (:func:`_model_builds`)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    spent: Dict[Tuple[str, int], float] = {}
    fitting = sys.modules.get("clue_tfrs.fitting")
    patched: List[Tuple[Any, str, str]] = [(tf.keras.Model, "fit", "train"),
                                           (tf.keras.Model, "evaluate", "validation")]
    if fitting is not None and hasattr(fitting, "validation_loss"):
        patched.append((fitting, "validation_loss", "validation"))
    originals = [getattr(owner, attr) for owner, attr, _ in patched]

    def timed(fn, phase):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                key = (phase, len(stamps) - 1)
                spent[key] = spent.get(key, 0.0) + time.perf_counter() - t
        return wrapper

    for (owner, attr, phase), fn in zip(patched, originals):
        setattr(owner, attr, timed(fn, phase))
    try:
        yield spent
    finally:
        for (owner, attr, _), fn in zip(patched, originals):
            setattr(owner, attr, fn)


@contextlib.contextmanager
def _model_builds() -> Iterator[Tuple[List[float], List[float]]]:
    """Records ``time.perf_counter()`` and ``time.process_time()`` at every downstream
    model construction."""
    from clue_tfrs import models  # pylint: disable=import-outside-toplevel

    stamps: List[float] = []
    cpu: List[float] = []
    original = models.DownstreamModel.__init__

    def init(self, *args, **kwargs):
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())
        original(self, *args, **kwargs)

    models.DownstreamModel.__init__ = init
    try:
        yield stamps, cpu
    finally:
        models.DownstreamModel.__init__ = original


def machine() -> Dict[str, Any]:
    """Cores and CPU model of this machine (for the report)."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu}


def bench_evaluate(users: int = 6000, interactions: int = 100_000, items: int = 3000,
                   epochs: Optional[int] = None, seed: int = 0, sequence_models: bool = True,
                   config_overrides: Optional[Dict[str, Any]] = None,
                   task_dir: Optional[str] = None) -> Dict[str, Any]:
    """Times ``evaluate_task`` on :func:`synthetic_task`; returns the figures and metrics.

    ``epochs``: passed on when given (else the library's default).
    ``config_overrides``: ``EvalConfig`` fields to change (default: none).
    ``task_dir``: read the task from there (:func:`read_task`; ``users``,
    ``interactions``, ``items`` are then taken from it) instead of generating it.
    """
    import clue_tfrs  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    from clue_tfrs import evaluate as ev  # pylint: disable=import-outside-toplevel

    t0 = time.perf_counter()
    if task_dir:
        frame, catalogue, sets = read_task(task_dir)
        users, interactions = frame["user_id"].nunique(), len(frame)
        items = len(catalogue)
    else:
        frame, catalogue, sets = synthetic_task(users, interactions, items, seed=seed)
    t_data = time.perf_counter() - t0
    cfg = ev.EvalConfig(**{"run_sequence_models": sequence_models, **(config_overrides or {})})
    kwargs: Dict[str, Any] = {"seed": seed, "config": cfg, "task_name": "bench"}
    if epochs is not None:
        kwargs["epochs"] = epochs
    fingerprint = protocol_fingerprint(frame, catalogue, cfg, seed)
    with _model_builds() as (stamps, cpu_stamps), _phases(stamps) as spent:
        start, cpu0 = time.perf_counter(), time.process_time()
        table = ev.evaluate_task(frame, catalogue, sets, **kwargs)
        end, cpu1 = time.perf_counter(), time.process_time()
    trained = table.columns[1:]
    marks = stamps + [end]
    first = stamps[0] if stamps else end
    seconds = {table.columns[0] + " (and task preparation)": first - start}
    seconds.update({c: marks[k + 1] - marks[k] for k, c in enumerate(trained)})
    cpu_marks = cpu_stamps + [cpu1]
    cpu_seconds = {table.columns[0] + " (and task preparation)": (cpu_stamps or [cpu1])[0] - cpu0}
    cpu_seconds.update({c: cpu_marks[k + 1] - cpu_marks[k] for k, c in enumerate(trained)})
    phases = {}
    for k, c in enumerate(trained):
        train, val = spent.get(("train", k), 0.0), spent.get(("validation", k), 0.0)
        phases[c] = {"train": train, "validation": val,
                     "inputs_and_scoring": marks[k + 1] - marks[k] - train - val}
    training = table.info.get("training", {})
    return {
        "users": int(users), "interactions": int(interactions), "items": int(items),
        "seed": seed, "task_dir": task_dir, "clue_tfrs": os.path.dirname(ev.__file__),
        "epochs_argument": epochs, "machine": machine(), "data_seconds": t_data,
        "seconds": seconds, "total_seconds": end - start, "cpu_seconds": cpu1 - cpu0,
        "phases": phases, "protocol": fingerprint, "model_cpu_seconds": cpu_seconds,
        "epochs_used": {c: len(training.get(c, {}).get("loss", [])) for c in trained},
        "mrr": {c: table.value(c, "MRR") for c in table.columns},
        "values": table.values,
        "training": training,
        "info_seconds": table.info.get("seconds"),
        "paired": [c for c in table.info.get("paired", []) if c["baseline"] == "TopPop"
                   or c["model"].startswith("Hybrid")],
        "num_test_positives": table.info.get("num_test_positives"),
        "hybrid": table.info.get("hybrid"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load": os.getloadavg(),
    }


def format_report(res: Dict[str, Any]) -> str:
    """The figures as aligned text lines: per model its seconds, MRR, epochs and phases."""
    lines = [f"task: {res['users']} users, {res['interactions']} interactions, {res['items']} "
             f"items; {res['num_test_positives']} test positives; protocol "
             f"{res['protocol']['sha256']}; machine: {res['machine']['cores']} cores, "
             f"{res['machine']['cpu']}; load {res['load'][0]:.1f}"]
    for column, sec in res["seconds"].items():
        epochs = res["epochs_used"].get(column)
        mrr = res["mrr"].get(column.split(" (and")[0])
        extra = ""
        if epochs:
            ph = res["phases"][column]
            extra = (f"  {epochs} epochs: train {ph['train']:.1f} s ({ph['train'] / epochs:.1f}"
                     f" s/epoch), validation {ph['validation']:.1f} s, inputs+scoring "
                     f"{ph['inputs_and_scoring']:.1f} s")
        cpu = res["model_cpu_seconds"][column]
        lines.append(f"{column:<40} {sec:8.1f} s (CPU {cpu:6.1f} s)  MRR {mrr:.4f}{extra}")
    lines.append(f"{'total':<40} {res['total_seconds']:8.1f} s   (process CPU "
                 f"{res['cpu_seconds']:.0f} s)")
    hybrid = res.get("hybrid") or {}
    if hybrid.get("val_loss") is not None and hybrid.get("t_ubm_val_loss") is not None:
        lines.append(f"Hybrid column: {hybrid['selected']} (validation loss "
                     f"{hybrid['val_loss']:.4f} vs T-UBM {hybrid['t_ubm_val_loss']:.4f})")
    return "\n".join(lines)


def format_comparison(before: Dict[str, Any], after: Dict[str, Any]) -> str:
    """Per model: wall and process-CPU seconds before / after with their speed-ups, MRR
    before / after; then whether the protocol (split, test positives, sampled negatives)
    and TopPop's metrics are identical."""
    lines = [f"{'model':<40} {'wall before/after':>19} {'x':>6} {'CPU before/after':>17} "
             f"{'x':>6}   MRR before / after"]
    rows = [(c, s, after["model_cpu_seconds"][c]) for c, s in after["seconds"].items()]
    rows.append(("total", after["total_seconds"], after["cpu_seconds"]))
    for column, sec, cpu in rows:
        old = before["seconds"].get(column, before["total_seconds"] if column == "total" else 0)
        old_cpu = (before["cpu_seconds"] if column == "total"
                   else before["model_cpu_seconds"].get(column, 0))
        name = column.split(" (and")[0]
        mrr = (f"{before['mrr'].get(name, float('nan')):.4f} / {after['mrr'][name]:.4f}"
               if name in after["mrr"] else "")
        lines.append(f"{column:<40} {old:9.1f}/{sec:<9.1f} {old / sec:5.2f}x "
                     f"{old_cpu:8.1f}/{cpu:<8.1f} {old_cpu / cpu:5.2f}x   {mrr}")
    same = before["protocol"] == after["protocol"]
    top_same = before["values"].get("TopPop") == after["values"].get("TopPop")
    lines.append(f"protocol {'identical' if same else 'DIFFERENT'} ({before['protocol']['sha256']}"
                 f" / {after['protocol']['sha256']}); TopPop metrics "
                 f"{'identical' if top_same else 'DIFFERENT'}")
    return "\n".join(lines)


_CHILD = """import json, sys
import clue_bench.evaluate as bench
sys.path.insert(0, sys.argv[1])  # the reference checkout's clue_tfrs from here on
res = bench.bench_evaluate(epochs=json.loads(sys.argv[3]), seed=int(sys.argv[4]),
                           sequence_models=sys.argv[5] == "1", task_dir=sys.argv[2])
with open(sys.argv[6], "w", encoding="utf-8") as f:
    json.dump(res, f, default=bench.json_default)
"""


def json_default(obj: Any) -> Any:
    """JSON for NumPy scalars and arrays."""
    return obj.tolist() if hasattr(obj, "tolist") else str(obj)


def run_reference(commit: str, task_dir: str, epochs: Optional[int] = None, seed: int = 0,
                  sequence_models: bool = True) -> Dict[str, Any]:
    """:func:`bench_evaluate` of another commit's ``clue_tfrs`` on the task in ``task_dir``.

    Checks ``commit`` out into a temporary ``git worktree`` (removed afterwards) and runs the
    bench in a child process with that tree's ``clue_tfrs`` first on ``sys.path`` (this
    checkout's ``clue_bench`` times it), so both sides see the same data and seed.
    """
    repo = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse",
                           "--show-toplevel"], check=True, capture_output=True, text=True
                          ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="clue_bench_ref_") as tmp:
        tree, out = os.path.join(tmp, "tree"), os.path.join(tmp, "result.json")
        subprocess.run(["git", "-C", repo, "worktree", "add", "--detach", tree, commit],
                       check=True, capture_output=True, text=True)
        try:
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                p for p in (repo, os.environ.get("PYTHONPATH")) if p))
            subprocess.run([sys.executable, "-c", _CHILD, tree, os.path.abspath(task_dir),
                            json.dumps(epochs), str(seed), "1" if sequence_models else "0", out],
                           check=True, env=env, cwd=tmp)
            with open(out, encoding="utf-8") as f:
                res = json.load(f)
        finally:
            subprocess.run(["git", "-C", repo, "worktree", "remove", "--force", tree],
                           check=False, capture_output=True)
    res["commit"] = commit
    return res
