"""What a study writes from its finished runs: ``results.csv``, ``fit.json``, the
figures and ``REPORT.md`` (`summarize` rebuilds them all)."""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Any, Dict, Mapping, Optional, Sequence

from clue_keras.atomic import write_json_atomic, write_text_atomic
from clue_scaling.fit import fit_frontier, fits_from
from clue_scaling.grid import Grid
from clue_scaling.plots import plot_figure4, plot_figure5, plot_learning_curves
from clue_scaling.store import (CURVES, FIGURE4, FIGURE5, FIT_FILE, REPORT_FILE, RESULTS_CSV,
                                collect_results)

CSV_COLUMNS = ("run_id", "model", "params", "batch_size", "max_items", "max_tokens", "steps",
               "tokens_seen", "pf_days", "final_train_loss", "heldout_loss", "downstream_mrr",
               "downstream_mrr_untrained", "wall_seconds")


def _row(r: Mapping[str, Any]) -> Dict[str, Any]:
    ds = r.get("downstream") or {}
    return {"run_id": r["run_id"], "model": r["model"], "params": r["params"],
            "batch_size": r["batch_size"], "max_items": r["max_items"],
            "max_tokens": r["max_tokens"], "steps": r["steps"], "tokens_seen": r["tokens_seen"],
            "pf_days": r["pf_days"], "final_train_loss": r["final_train_loss"],
            "heldout_loss": r["heldout_loss"], "downstream_mrr": ds.get("mrr", ""),
            "downstream_mrr_untrained": ds.get("mrr_untrained", ""),
            "wall_seconds": round(r.get("wall_seconds", float("nan")), 1)}


def write_results_csv(results: Sequence[Mapping[str, Any]], path: str) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in results:
        writer.writerow(_row(r))
    write_text_atomic(path, buf.getvalue())


def _fmt(v, spec=".4f") -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan"
    return format(v, spec)


def results_table_markdown(results: Sequence[Mapping[str, Any]],
                           frontier_ids: Sequence[str] = ()) -> str:
    """One row per run, in increasing PF-days; frontier runs marked with *."""
    lines = ["| run | model | params | B | S | L | steps | tokens seen | PF-days | train loss "
             "| held-out loss | MRR | MRR untrained |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        ds = r.get("downstream") or {}
        mark = " *" if r["run_id"] in frontier_ids else ""
        lines.append(
            f"| `{r['run_id']}`{mark} | {r['model']} | {r['params']:,} | {r['batch_size']} | "
            f"{r['max_items']} | {r['max_tokens']} | {r['steps']} | {r['tokens_seen']:,} | "
            f"{r['pf_days']:.3e} | {_fmt(r['final_train_loss'])} | {_fmt(r['heldout_loss'])} | "
            f"{_fmt(ds.get('mrr'))} | {_fmt(ds.get('mrr_untrained'))} |")
    return "\n".join(lines) + "\n"


def fit_markdown(fit_json: Mapping[str, Any]) -> str:
    lines = ["| fit | a | b | c | R² (loss) | R² (log loss) | frontier points |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    names = {"offset": "L = a·C^-b + c (c ≥ 0)", "pure": "L = a·C^-b"}
    for key, fit in fits_from(fit_json).items():
        if fit.ok:
            lines.append(f"| {names[key]} | {fit.a:.4g} | {fit.b:.4f} | {fit.c:.4f} | "
                         f"{fit.r2:.4f} | {fit.r2_log:.4f} | {fit.n} |")
        else:
            lines.append(f"| {names[key]} | - | - | - | - | - | {fit.n} ({fit.reason}) |")
    return "\n".join(lines) + "\n"


def write_report(out_dir: str, grid: Grid, results: Sequence[Mapping[str, Any]],
                 fit_json: Mapping[str, Any], command: Optional[str] = None,
                 pending: int = 0) -> str:
    """Writes ``<out>/REPORT.md`` (figures referenced by relative path); returns its path."""
    total_s = sum(r.get("wall_seconds", 0.0) for r in results)
    tr = fit_json.get("transfer")
    parts = [
        f"# Scaling study `{grid.name}`\n",
        f"Grid `{grid.source}`: {len(grid.models)} model(s) x {len(grid.batch_sizes)} batch "
        f"size(s) x {len(grid.max_items)} S x {len(grid.max_tokens)} L, {grid.steps} steps "
        f"each; {len(results)} finished run(s)"
        + (f", {pending} pending" if pending else "") + f", {total_s / 60:.1f} min of runs.\n",
    ]
    if command:
        parts.append(f"```\n{command}\n```\n")
    parts += [
        "PF-days = 6 x params x B x steps x (S x L) / 8.64e19; tokens seen = B x steps x S x L "
        "(token slots of one service sequence, padding included; the P services of a user are "
        "not multiplied in). Held-out loss: contrastive loss on the eval+test users at batch "
        f"{grid.heldout_batch_size} for every run (chance about ln {grid.heldout_batch_size} = "
        f"{math.log(grid.heldout_batch_size):.3f}). Train loss is at the run's own batch size "
        "and is not comparable across batch sizes. Runs marked * are on the compute frontier.\n",
        "## Runs\n", results_table_markdown(results, fit_json["frontier_run_ids"]),
        "## Power-law fit on the compute frontier\n", fit_markdown(fit_json),
    ]
    if tr:
        parts.append(f"Downstream MRR vs held-out loss over {tr['n']} runs: Spearman "
                     f"{tr['spearman']:.3f}, Pearson {tr['pearson']:.3f} (negative = lower "
                     "pre-training loss, higher MRR).\n")
    parts += ["## Figures\n", f"![Figure 4-like]({FIGURE4})\n", f"![Figure 5-like]({FIGURE5})\n",
              f"![learning curves]({CURVES})\n"]
    path = os.path.join(out_dir, REPORT_FILE)
    write_text_atomic(path, "\n".join(parts))
    return path


def summarize(out_dir: str, grid: Grid, command: Optional[str] = None) -> Dict[str, Any]:
    """Rebuilds ``results.csv``, ``fit.json``, the figures and ``REPORT.md`` from the
    ``result.json`` files of the grid's runs; returns the fit dict."""
    ids = [r.run_id for r in grid.runs()]
    results = collect_results(out_dir, ids)
    if not results:
        raise ValueError(f"{out_dir}: no finished run of grid {grid.source} yet")
    write_results_csv(results, os.path.join(out_dir, RESULTS_CSV))
    fit_json = fit_frontier(results)
    write_json_atomic(os.path.join(out_dir, FIT_FILE), fit_json)
    plot_figure4(results, os.path.join(out_dir, FIGURE4))
    plot_figure5(results, fit_json, os.path.join(out_dir, FIGURE5))
    plot_learning_curves(results, os.path.join(out_dir, CURVES))
    write_report(out_dir, grid, results, fit_json, command=command,
                 pending=len(ids) - len(results))
    return fit_json
