"""The results table (paper Table 3) and its outputs: JSON, Markdown, a bar chart.

Besides the mean metrics, the table keeps every model's rank of every test
positive (:class:`PerExample`: the two rank counts per positive, aligned across
models: same positives, same candidates), so that two models can be compared
*paired*, with a bootstrap over test users (:meth:`ResultsTable.compare`,
:func:`clue_tfrs.metrics.paired_bootstrap`). ``info["paired"]`` holds those
comparisons for MRR; the pipeline's blessing reads them.

Files are written atomically (:mod:`clue_keras.atomic`): a reader never sees
a half-written results file. No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from clue_keras.atomic import atomic_file, write_text_atomic
from clue_tfrs import metrics as metrics_lib

__all__ = ["PerExample", "ResultsTable", "write_results", "plot_results", "format_difference"]

#: The metric whose paired comparisons ``info["paired"]`` holds.
PAIRED_METRIC = "MRR"


@dataclasses.dataclass
class PerExample:
    """Every model's rank of every test positive (aligned across models).

    Attributes:
      users: int [N], the test user of each positive (index into the sorted
        test users), the resampling unit of paired comparisons.
      greater / ties: column -> int [N], negatives scored above / equal to
        the positive (:func:`clue_tfrs.metrics.rank_counts`).
      num_negatives: K, candidates per positive besides it.
    """

    users: np.ndarray
    greater: Dict[str, np.ndarray]
    ties: Dict[str, np.ndarray]
    num_negatives: int

    def values(self, column: str, metric: str = "MRR") -> np.ndarray:
        """float64 [N] per-positive ``metric`` of ``column`` (MRR: reciprocal ranks)."""
        if column not in self.greater:
            raise KeyError(f"no per-example ranks of {column!r}; have {list(self.greater)}")
        return metrics_lib.metric_from_counts(metric, self.greater[column], self.ties[column],
                                              self.num_negatives)

    def to_dict(self) -> Dict[str, Any]:
        return {"num_negatives": int(self.num_negatives),
                "users": [int(u) for u in self.users],
                "greater": {c: [int(x) for x in v] for c, v in self.greater.items()},
                "ties": {c: [int(x) for x in v] for c, v in self.ties.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PerExample":
        return cls(users=np.asarray(d["users"], dtype=np.int64),
                   greater={c: np.asarray(v, dtype=np.int64) for c, v in d["greater"].items()},
                   ties={c: np.asarray(v, dtype=np.int64) for c, v in d["ties"].items()},
                   num_negatives=int(d["num_negatives"]))


def format_difference(c: Mapping[str, Any], digits: int = 4) -> str:
    """``"U-MLP (CLUE) MRR 0.1601 vs TopPop 0.1210: +0.0391 [95% CI +0.0210, +0.0570]"``.

    ``c`` is one comparison of :meth:`ResultsTable.compare` (its bounds are
    one-sided bounds at ``confidence``, see :func:`clue_tfrs.metrics.paired_bootstrap`).
    """
    pct = f"{100 * c['confidence']:g}%"
    return (f"{c['model']} {c['metric']} {c['model_value']:.{digits}f} vs {c['baseline']} "
            f"{c['baseline_value']:.{digits}f}: {c['difference']:+.{digits}f} "
            f"[{pct} CI {c['lower']:+.{digits}f}, {c['upper']:+.{digits}f}]")


@dataclasses.dataclass
class ResultsTable:
    """Models as columns, metrics as rows (paper Table 3).

    Attributes:
      columns: model names, in display order.
      rows: metric names.
      values: ``values[column][row]`` -> float.
      info: provenance: split sizes, cold-start counts, training losses,
        epochs used, seconds per model, config, seed, and ``paired``: the
        paired MRR comparisons of every ordered pair of columns
        (:meth:`compare`), when the per-example ranks are known.
      per_example: the ranks of every test positive per column, or None
        (a table made from means only).
    """

    columns: List[str]
    rows: List[str]
    values: Dict[str, Dict[str, float]]
    info: Dict[str, object] = dataclasses.field(default_factory=dict)
    per_example: Optional[PerExample] = None

    def compare(self, model: str, baseline: str, metric: str = PAIRED_METRIC,
                confidence: float = 0.95, resamples: int = 2000, seed: int = 0
                ) -> Dict[str, Any]:
        """Paired bootstrap of ``metric(model) - metric(baseline)`` over test users.

        Returns the dict of :func:`clue_tfrs.metrics.paired_bootstrap` plus
        ``model``, ``baseline``, ``metric``, ``model_value``, ``baseline_value``.
        Raises ValueError when the table has no per-example ranks.
        """
        if self.per_example is None:
            raise ValueError("this results table has no per-example ranks to compare")
        pe = self.per_example
        a, b = pe.values(model, metric), pe.values(baseline, metric)
        out = {"model": model, "baseline": baseline, "metric": metric,
               "model_value": float(a.mean()), "baseline_value": float(b.mean())}
        out.update(metrics_lib.paired_bootstrap(a, b, pe.users, confidence, resamples, seed))
        return out

    def paired_comparisons(self, confidence: float = 0.95, resamples: int = 2000,
                           seed: int = 0, pairs: Optional[Sequence[Sequence[str]]] = None
                           ) -> List[Dict[str, Any]]:
        """:meth:`compare` on MRR for ``pairs`` (default: every ordered pair of columns)."""
        if pairs is None:
            pairs = [(a, b) for a in self.columns for b in self.columns if a != b]
        return [self.compare(a, b, PAIRED_METRIC, confidence, resamples, seed) for a, b in pairs]

    def value(self, column: str, row: str) -> float:
        if column not in self.values:
            raise KeyError(f"no column {column!r} in the results; columns: {self.columns}")
        if row not in self.values[column]:
            raise KeyError(f"no metric {row!r} in the results; rows: {self.rows}")
        return self.values[column][row]

    def to_dict(self) -> Dict[str, object]:
        out = {
            "columns": list(self.columns),
            "rows": list(self.rows),
            "values": {c: dict(v) for c, v in self.values.items()},
            "info": self.info,
        }
        if self.per_example is not None:
            out["per_example"] = self.per_example.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> "ResultsTable":
        pe = d.get("per_example")
        return cls(
            columns=list(d["columns"]),
            rows=list(d["rows"]),
            values={c: {r: float(x) for r, x in v.items()} for c, v in d["values"].items()},
            info=dict(d.get("info", {})),
            per_example=PerExample.from_dict(pe) if pe else None,
        )

    def headline_comparisons(self) -> List[Dict[str, Any]]:
        """The comparisons of ``info["paired"]`` worth a line: every model vs the
        first column (TopPop), the first U-MLP vs the other U-MLPs, Hybrids vs T-UBM."""
        paired = self.info.get("paired") or []
        first_umlp = next((c for c in self.columns if c.startswith("U-MLP")), None)

        def wanted(c: Mapping[str, Any]) -> bool:
            m, b = c["model"], c["baseline"]
            return (b == self.columns[0] or (m == first_umlp and b.startswith("U-MLP"))
                    or (m.startswith("Hybrid") and b.startswith("T-UBM")))

        return [c for c in paired if wanted(c)]

    def to_markdown(self) -> str:
        """GitHub Markdown table; the best value of each row in bold."""
        lines = [
            "| Metric | " + " | ".join(self.columns) + " |",
            "|---|" + "---:|" * len(self.columns),
        ]
        for row in self.rows:
            vals = [self.values[c][row] for c in self.columns]
            best = max(vals) if vals else None
            cells = [f"**{v:.4f}**" if v == best else f"{v:.4f}" for v in vals]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        info = self.info
        if info:
            notes = []
            if "num_test_positives" in info:
                notes.append(
                    f"{info['num_test_positives']} test positives from "
                    f"{info.get('num_users', {}).get('test', '?')} test users, each ranked "
                    f"among {info.get('num_negatives', '?')} sampled negatives (ties averaged)."
                )
            for name, counts in info.get("cold_start_users", {}).items():
                notes.append(
                    f"Feature set {name!r}: cold-start users (zero vector) "
                    + ", ".join(f"{k} {v}" for k, v in counts.items())
                    + f"; cold items {info.get('cold_items', {}).get(name, 0)}."
                )
            if notes:
                lines.append("")
                lines.extend(notes)
            headline = self.headline_comparisons()
            if headline:
                c0 = headline[0]
                lines.append("")
                lines.append(
                    f"Paired differences (bootstrap over the {c0['groups']} test users, "
                    f"{c0['resamples']} resamples, seed {c0['seed']}; bounds one-sided at "
                    f"{100 * c0['confidence']:g}%):")
                lines.extend(f"* {format_difference(c)}" for c in headline)
        return "\n".join(lines) + "\n"


def plot_results(table: ResultsTable, path: str) -> None:
    """Grouped bar chart PNG: one group per metric, one bar per model (Agg, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 1.6 * len(table.rows) * max(1, len(table.columns)) / 3), 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    n = max(1, len(table.columns))
    width = 0.8 / n
    x = np.arange(len(table.rows))
    for j, column in enumerate(table.columns):
        heights = [table.values[column][r] for r in table.rows]
        ax.bar(x + (j - (n - 1) / 2) * width, heights, width, label=column)
    ax.set_xticks(x)
    ax.set_xticklabels(table.rows, fontsize=8)
    ax.set_ylabel("score")
    ax.set_ylim(0, 1)
    ax.set_title(f"Downstream evaluation: {table.info.get('task', '')}")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def results_json(table: ResultsTable) -> str:
    """results.json text: indented, but the long per-example lists one per line."""
    d = table.to_dict()
    per_example = d.pop("per_example", None)
    text = json.dumps(d, indent=2, sort_keys=False)
    if per_example is not None:
        compact = ",\n    ".join(f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}"
                                 for k, v in per_example.items())
        text = text[:-2] + ',\n  "per_example": {\n    ' + compact + "\n  }\n}"
    return text + "\n"


def write_results(table: ResultsTable, out_dir: str) -> Dict[str, str]:
    """Writes results.json, results.md and results.png atomically.

    Returns {"json": path, "md": path, "png": path}. ``out_dir`` may be a
    ``tf.io.gfile`` URI (``gs://...``).
    """
    import tensorflow as tf

    tf.io.gfile.makedirs(out_dir)
    paths = {
        "json": os.path.join(out_dir, "results.json"),
        "md": os.path.join(out_dir, "results.md"),
        "png": os.path.join(out_dir, "results.png"),
    }
    write_text_atomic(paths["json"], results_json(table))
    write_text_atomic(paths["md"], table.to_markdown())
    plot_results(table, paths["png"])
    return paths
