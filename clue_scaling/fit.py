"""The compute frontier of (PF-days, held-out loss) and the power-law fits on it."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np


def compute_frontier(compute: Sequence[float], loss: Sequence[float]) -> List[int]:
    """Indices of the compute frontier, in increasing compute.

    A point is on the frontier when its loss is strictly lower than the loss of
    every point with less (or equal, and listed earlier after sorting) compute:
    the Pareto front of (compute, loss), both minimised.
    """
    c, l = np.asarray(compute, float), np.asarray(loss, float)  # noqa: E741
    order = np.lexsort((l, c))  # by compute, ties by loss
    best, keep = math.inf, []
    for i in order:
        if np.isfinite(l[i]) and l[i] < best:
            keep.append(int(i))
            best = l[i]
    return keep


@dataclasses.dataclass
class PowerLawFit:
    """``loss = a * C^-b + c`` fitted on ``n`` points (``c`` is 0 for the pure power law).

    ``r2``: coefficient of determination on the loss values; ``r2_log``: on log(loss).
    ``ok`` is False (with ``reason``) when there were too few points or the fit failed.
    """

    with_offset: bool
    n: int
    a: float = float("nan")
    b: float = float("nan")
    c: float = 0.0
    r2: float = float("nan")
    r2_log: float = float("nan")
    ok: bool = True
    reason: str = ""

    def predict(self, compute) -> np.ndarray:
        return self.a * np.power(np.asarray(compute, float), -self.b) + self.c

    def formula(self) -> str:
        if not self.ok:
            return f"not fitted ({self.reason})"
        tail = f" + {self.c:.4g}" if self.with_offset else ""
        return f"L = {self.a:.4g} * C^-{self.b:.4g}{tail}"


def _r2(y, pred) -> float:
    y, pred = np.asarray(y, float), np.asarray(pred, float)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0.0:
        return float("nan")
    return 1.0 - float(np.sum((y - pred) ** 2)) / ss_tot


def fit_power_law(compute: Sequence[float], loss: Sequence[float],
                  with_offset: bool = True) -> PowerLawFit:
    """Fits ``loss = a * C^-b (+ c)`` by least squares.

    Without offset: ordinary least squares of log L on log C (needs 2 points).
    With offset: ``scipy.optimize.curve_fit`` of ``exp(log_a - b log C) + c`` with
    ``0 <= c <= min(L)`` and ``b >= 0`` started from the pure power law (needs 4
    points: 3 parameters plus one degree of freedom).
    """
    c_arr, l_arr = np.asarray(compute, float), np.asarray(loss, float)
    good = np.isfinite(c_arr) & np.isfinite(l_arr) & (c_arr > 0) & (l_arr > 0)
    c_arr, l_arr = c_arr[good], l_arr[good]
    n = int(c_arr.size)
    need = 4 if with_offset else 2
    fit = PowerLawFit(with_offset=with_offset, n=n)
    if n < need or np.unique(c_arr).size < min(need, 2):
        fit.ok, fit.reason = False, f"needs >= {need} points with distinct compute, has {n}"
        return fit
    x, y = np.log(c_arr), np.log(l_arr)
    slope, intercept = np.polyfit(x, y, 1)
    fit.a, fit.b = float(math.exp(intercept)), float(-slope)
    if with_offset:
        from scipy.optimize import curve_fit

        def model(xx, log_a, b, c):
            return np.exp(log_a - b * xx) + c

        c_max = float(l_arr.min())
        c0 = 0.5 * c_max
        # start from the log-log fit of the loss above half the lowest value
        s0, i0 = np.polyfit(x, np.log(np.maximum(l_arr - c0, 1e-12)), 1)
        p0 = [i0, max(-s0, 1e-6), c0]
        try:
            popt, _ = curve_fit(model, x, l_arr, p0=p0,
                                bounds=([-np.inf, 0.0, 0.0], [np.inf, np.inf, c_max]),
                                maxfev=20000)
        except (RuntimeError, ValueError) as e:
            fit.ok, fit.reason = False, f"curve_fit failed: {e}"
            return fit
        fit.a, fit.b, fit.c = float(math.exp(popt[0])), float(popt[1]), float(popt[2])
    pred = fit.predict(c_arr)
    fit.r2 = _r2(l_arr, pred)
    fit.r2_log = _r2(np.log(l_arr), np.log(np.maximum(pred, 1e-300)))
    return fit


def fit_frontier(results: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Frontier of held-out loss vs PF-days and both fits, as a JSON-able dict."""
    compute = [r["pf_days"] for r in results]
    loss = [r["heldout_loss"] for r in results]
    idx = compute_frontier(compute, loss)
    fc, fl = [compute[i] for i in idx], [loss[i] for i in idx]
    fits = {"offset": fit_power_law(fc, fl, with_offset=True),
            "pure": fit_power_law(fc, fl, with_offset=False)}
    out: Dict[str, Any] = {"frontier_run_ids": [results[i]["run_id"] for i in idx],
                           "frontier": [{"pf_days": c, "heldout_loss": l} for c, l in zip(fc, fl)],
                           "fits": {k: dataclasses.asdict(v) for k, v in fits.items()}}
    mrr = [((r.get("downstream") or {}).get("mrr"), r["heldout_loss"]) for r in results]
    mrr = [(m, l) for m, l in mrr if m is not None]
    if len(mrr) >= 3:
        from scipy.stats import pearsonr, spearmanr

        m, l = zip(*mrr)  # noqa: E741
        out["transfer"] = {"n": len(mrr), "spearman": float(spearmanr(l, m).statistic),
                           "pearson": float(pearsonr(l, m).statistic)}
    return out


def fits_from(fit_json: Mapping[str, Any]) -> Dict[str, PowerLawFit]:
    """The `PowerLawFit`s of a `fit_frontier` dict."""
    return {k: PowerLawFit(**v) for k, v in fit_json["fits"].items()}
