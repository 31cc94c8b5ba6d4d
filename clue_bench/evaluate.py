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
import os
import platform
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


@contextlib.contextmanager
def _model_builds() -> Iterator[List[float]]:
    """Records ``time.perf_counter()`` at every downstream model construction."""
    from clue_tfrs import models  # pylint: disable=import-outside-toplevel

    stamps: List[float] = []
    original = models.DownstreamModel.__init__

    def init(self, *args, **kwargs):
        stamps.append(time.perf_counter())
        original(self, *args, **kwargs)

    models.DownstreamModel.__init__ = init
    try:
        yield stamps
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
                   config_overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Times ``evaluate_task`` on :func:`synthetic_task`; returns the figures and metrics.

    ``epochs``: passed on when given (else the library's default).
    ``config_overrides``: ``EvalConfig`` fields to change (default: none).
    """
    import clue_tfrs  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    from clue_tfrs import evaluate as ev  # pylint: disable=import-outside-toplevel

    t0 = time.perf_counter()
    frame, catalogue, sets = synthetic_task(users, interactions, items, seed=seed)
    t_data = time.perf_counter() - t0
    cfg = ev.EvalConfig(**{"run_sequence_models": sequence_models, **(config_overrides or {})})
    kwargs: Dict[str, Any] = {"seed": seed, "config": cfg, "task_name": "bench"}
    if epochs is not None:
        kwargs["epochs"] = epochs
    with _model_builds() as stamps:
        start, cpu0 = time.perf_counter(), time.process_time()
        table = ev.evaluate_task(frame, catalogue, sets, **kwargs)
        end, cpu1 = time.perf_counter(), time.process_time()
    trained = table.columns[1:]
    marks = stamps + [end]
    first = stamps[0] if stamps else end
    seconds = {table.columns[0] + " (and task preparation)": first - start}
    seconds.update({c: marks[k + 1] - marks[k] for k, c in enumerate(trained)})
    training = table.info.get("training", {})
    return {
        "users": users, "interactions": interactions, "items": items, "seed": seed,
        "epochs_argument": epochs, "machine": machine(), "data_seconds": t_data,
        "seconds": seconds, "total_seconds": end - start, "cpu_seconds": cpu1 - cpu0,
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
    }


def format_report(res: Dict[str, Any]) -> str:
    """The figures as aligned text lines."""
    lines = [f"task: {res['users']} users, {res['interactions']} interactions, {res['items']} "
             f"items; {res['num_test_positives']} test positives; machine: "
             f"{res['machine']['cores']} cores, {res['machine']['cpu']}"]
    for column, sec in res["seconds"].items():
        epochs = res["epochs_used"].get(column)
        extra = f"  ({epochs} epochs)" if epochs else ""
        mrr = res["mrr"].get(column.split(" (and")[0])
        lines.append(f"{column:<40} {sec:8.1f} s   MRR {mrr:.4f}{extra}")
    lines.append(f"{'total':<40} {res['total_seconds']:8.1f} s   (process CPU "
                 f"{res['cpu_seconds']:.0f} s)")
    hybrid = res.get("hybrid") or {}
    if hybrid.get("val_loss") is not None and hybrid.get("t_ubm_val_loss") is not None:
        lines.append(f"Hybrid column: {hybrid['selected']} (validation loss "
                     f"{hybrid['val_loss']:.4f} vs T-UBM {hybrid['t_ubm_val_loss']:.4f})")
    return "\n".join(lines)
