"""The pipeline's blessing rule: is the CLUE model good enough to push?

Blessed iff U-MLP (CLUE) beats TopPop and U-MLP (Untrained) on MRR *by more
than noise*: for each baseline, the paired comparison of the evaluation (a
bootstrap over test users of the difference of MRR on the same test positives
and the same candidates, ``info["paired"]`` of the results, see
``clue_tfrs.reporting.ResultsTable.compare``) must have its one-sided lower
confidence bound above the margin::

    lower bound of (MRR(U-MLP (CLUE)) - MRR(baseline)) > margin

(``margin_over_toppop``, ``margin_over_untrained``; default 0, i.e. "better
with confidence ``EvalConfig.confidence``", 0.95 by default). A margin of None
skips that comparison; a compared column missing from the results raises
KeyError (a gate must not pass silently). A results table without paired
comparisons (written before they existed) falls back to comparing the two
means, and the reason says so.

The reason reads e.g. ``blessed: U-MLP (CLUE) MRR 0.1601 vs TopPop 0.1210:
+0.0391 [95% CI +0.0210, +0.0570], lower bound +0.0210 > margin 0.0000; ...``.

The rule reads a results table (``clue_tfrs.reporting.ResultsTable`` or the
dict of its ``results.json``) and imports no TensorFlow, so the executor can
apply it in a process where ``tf.keras`` is Keras 3. ``evaluate_and_bless``
is the whole `clue evaluate` step: ``clue_tfrs.run.run_evaluation``, then this
rule, then ``blessing.json``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

from clue_keras.atomic import write_json_atomic

#: The verdict file next to the results: {"blessed": bool, "reason": str}.
BLESSING_JSON = "blessing.json"

#: Column names of the results table (``clue_tfrs.protocol``), as results.json holds them.
CLUE_COLUMN = "U-MLP (CLUE)"
TOPPOP_COLUMN = "TopPop"
UNTRAINED_COLUMN = "U-MLP (Untrained)"
GATE_METRIC = "MRR"


def _parts(table: Any) -> Tuple[Mapping[str, Any], List[str], Mapping[str, Any]]:
    """(values, columns, info) of a ResultsTable or a results.json dict."""
    if isinstance(table, Mapping):
        return (table["values"], list(table.get("columns", list(table["values"]))),
                table.get("info", {}) or {})
    return table.values, list(table.columns), table.info or {}


def _value(table: Any, column: str, metric: str) -> float:
    """``table[column][metric]`` of a ResultsTable or a results.json dict."""
    values, columns, _ = _parts(table)
    if column not in values:
        raise KeyError(f"no column {column!r} in the results; columns: {list(columns)}")
    if metric not in values[column]:
        raise KeyError(f"no metric {metric!r} in the results for {column!r}")
    return float(values[column][metric])


def paired_comparison(table: Any, model: str, baseline: str, metric: str = GATE_METRIC
                      ) -> Optional[Mapping[str, Any]]:
    """The results' paired comparison of ``model`` against ``baseline`` on ``metric``, or None."""
    _, _, info = _parts(table)
    for c in info.get("paired") or []:
        if (c.get("model"), c.get("baseline"), c.get("metric")) == (model, baseline, metric):
            return c
    return None


def format_comparison(c: Mapping[str, Any], digits: int = 4) -> str:
    """``"U-MLP (CLUE) MRR 0.1601 vs TopPop 0.1210: +0.0391 [95% CI +0.0210, +0.0570]"``
    (the same words as ``clue_tfrs.reporting.format_difference``)."""
    pct = f"{100 * float(c['confidence']):g}%"
    return (f"{c['model']} {c['metric']} {float(c['model_value']):.{digits}f} vs {c['baseline']} "
            f"{float(c['baseline_value']):.{digits}f}: {float(c['difference']):+.{digits}f} "
            f"[{pct} CI {float(c['lower']):+.{digits}f}, {float(c['upper']):+.{digits}f}]")


def _check(table: Any, feature_name: str, baseline: str, margin: float, metric: str
           ) -> Tuple[bool, str]:
    score = _value(table, feature_name, metric)
    base = _value(table, baseline, metric)
    c = paired_comparison(table, feature_name, baseline, metric)
    if c is None:  # a table of means only: the old rule, said out loud
        ok = bool(score > base + margin) and math.isfinite(score)
        return ok, (f"{feature_name} {metric} {score:.4f} {'>' if ok else '<='} "
                    f"{baseline} {base:.4f} + margin {margin:.4f} (means only: the results "
                    "hold no paired comparison)")
    lower = float(c["lower"])
    ok = bool(lower > margin) and math.isfinite(lower)
    return ok, (f"{format_comparison(c)}, lower bound {lower:+.4f} {'>' if ok else '<='} "
                f"margin {margin:.4f}")


def blessing_decision(
    table: Any,
    feature_name: str = CLUE_COLUMN,
    margin_over_toppop: Optional[float] = 0.0,
    margin_over_untrained: Optional[float] = 0.0,
    untrained_name: str = UNTRAINED_COLUMN,
    metric: str = GATE_METRIC,
) -> Tuple[bool, str]:
    """Blesses the model when its U-MLP beats the baselines on ``metric`` beyond noise.

    Args:
      table: a ``ResultsTable`` or the dict of its ``results.json``.
      feature_name: the column that must win.
      margin_over_toppop / margin_over_untrained: what the lower confidence
        bound of the difference must exceed (None: skip that baseline).
      untrained_name: the untrained-encoder column.
      metric: the compared row.

    Returns:
      (blessed, human-readable reason with the numbers and intervals).
    """
    score = _value(table, feature_name, metric)
    checks = []
    for baseline, margin in ((TOPPOP_COLUMN, margin_over_toppop),
                             (untrained_name, margin_over_untrained)):
        if margin is not None:
            checks.append(_check(table, feature_name, baseline, float(margin), metric))
    if not checks:
        return True, f"no baseline comparison requested; {feature_name} {metric} = {score:.4f}"
    blessed = all(ok for ok, _ in checks)
    return blessed, ("blessed: " if blessed else "not blessed: ") + "; ".join(m for _, m in checks)


def write_verdict(out_dir: str, blessed: bool, reason: str) -> str:
    """Writes ``out_dir/blessing.json`` atomically; returns its path."""
    path = os.path.join(out_dir, BLESSING_JSON)
    write_json_atomic(path, {"blessed": bool(blessed), "reason": reason})
    return path


@dataclasses.dataclass
class BlessedEvaluation:
    """A downstream evaluation and its verdict.

    Attributes:
      table: the ``clue_tfrs.reporting.ResultsTable``.
      blessed: the verdict of :func:`blessing_decision`.
      reason: its reason, with the numbers.
      paths: files written (``json``, ``md``, ``png``, ``blessing``); empty
        without an output directory.
    """

    table: Any
    blessed: bool
    reason: str
    paths: Dict[str, str]


def evaluate_and_bless(model_dir: str, task_dir: str, out_dir: Optional[str] = None,
                       margin_over_toppop: Optional[float] = 0.0,
                       margin_over_untrained: Optional[float] = 0.0,
                       **evaluation: Any) -> BlessedEvaluation:
    """``clue_tfrs.run.run_evaluation`` (keyword arguments ``evaluation``), then the rule.

    Needs ``tf.keras`` to be Keras 2 in this process (TFRS). With ``out_dir``,
    ``blessing.json`` is written next to the results.
    """
    from clue_tfrs.run import run_evaluation  # pylint: disable=import-outside-toplevel

    outcome = run_evaluation(model_dir, task_dir, out_dir=out_dir, **evaluation)
    blessed, reason = blessing_decision(outcome.table, margin_over_toppop=margin_over_toppop,
                                        margin_over_untrained=margin_over_untrained)
    paths = dict(outcome.paths)
    if out_dir:
        paths["blessing"] = write_verdict(out_dir, blessed, reason)
    return BlessedEvaluation(outcome.table, blessed, reason, paths)
