"""Figures of a study: Figure-4-like scaling factors, Figure-5-like frontier and
transfer, learning curves (PNG, written atomically)."""

from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np

from clue_scaling.fit import fits_from
from clue_scaling.grid import pf_days


def _groups(results, key_fn, sort_fn):
    groups: Dict[Any, List[Mapping[str, Any]]] = {}
    for r in results:
        groups.setdefault(key_fn(r), []).append(r)
    return {k: sorted(v, key=sort_fn) for k, v in sorted(groups.items(), key=lambda kv: str(kv[0]))}


def plot_figure4(results: Sequence[Mapping[str, Any]], path: str) -> None:
    """Figure-4-like: held-out loss (top) and downstream MRR (bottom) vs PF-days.

    Columns vary one factor along each line, holding the other two fixed:
    model size (dots in increasing parameters), batch size, sequence length S.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_mrr = any((r.get("downstream") or {}).get("mrr") is not None for r in results)
    rows = [("heldout_loss", "held-out contrastive loss")]
    if has_mrr:
        rows.append(("mrr", "downstream MRR (U-MLP on CLUE)"))
    panels = [
        ("model size", lambda r: f"B={r['batch_size']} S={r['max_items']} L={r['max_tokens']}",
         lambda r: r["params"]),
        ("batch size", lambda r: f"{r['model']} S={r['max_items']} L={r['max_tokens']}",
         lambda r: r["batch_size"]),
        ("sequence length S", lambda r: f"{r['model']} B={r['batch_size']} L={r['max_tokens']}",
         lambda r: (r["max_items"], r["max_tokens"])),
    ]
    fig, axes = plt.subplots(len(rows), 3, figsize=(15, 4.2 * len(rows)), squeeze=False)
    for ri, (field, ylabel) in enumerate(rows):
        for ci, (title, key_fn, sort_fn) in enumerate(panels):
            ax = axes[ri][ci]
            for label, group in _groups(results, key_fn, sort_fn).items():
                xs = [g["pf_days"] for g in group]
                ys = [g[field] if field != "mrr" else (g.get("downstream") or {}).get("mrr")
                      for g in group]
                pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=label)
            ax.set_xscale("log")
            ax.set_xlabel("compute (PF-days)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"varying {title} along each line")
            ax.grid(True, which="both", alpha=0.3)
            if ri == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def plot_figure5(results: Sequence[Mapping[str, Any]], fit_json: Mapping[str, Any],
                 path: str) -> None:
    """Figure-5-like. Left: held-out loss vs PF-days (log-log), frontier and fits.
    Right: downstream MRR vs held-out pre-training loss, one dot per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    models = sorted({r["model"] for r in results},
                    key=lambda m: min(r["params"] for r in results if r["model"] == m))
    colors = {m: f"C{i % 10}" for i, m in enumerate(models)}
    for m in models:
        rs = [r for r in results if r["model"] == m]
        left.scatter([r["pf_days"] for r in rs], [r["heldout_loss"] for r in rs],
                     color=colors[m], alpha=0.6, label=m)
    front = fit_json["frontier"]
    if front:
        fx = [p["pf_days"] for p in front]
        fy = [p["heldout_loss"] for p in front]
        left.plot(fx, fy, "k--", lw=1, marker="s", mfc="none", ms=9, label="frontier")
        grid_x = np.geomspace(min(r["pf_days"] for r in results),
                              max(r["pf_days"] for r in results), 100)
        for (name, fit), style in zip(fits_from(fit_json).items(), ("-", ":")):
            if fit.ok:
                left.plot(grid_x, fit.predict(grid_x), "r" + style,
                          label=f"{fit.formula()} (R²={fit.r2:.3f})")
    left.set_xscale("log")
    left.set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter

    left.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))
    left.yaxis.set_minor_formatter(FormatStrFormatter("%.2f"))
    left.set_xlabel("compute (PF-days)")
    left.set_ylabel("held-out contrastive loss")
    left.set_title("test loss on the training distribution vs compute")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7)
    pts = [(r["heldout_loss"], (r.get("downstream") or {}).get("mrr"), r["model"]) for r in results]
    pts = [p for p in pts if p[1] is not None]
    if pts:
        for m in models:
            mp = [p for p in pts if p[2] == m]
            if mp:
                right.scatter([p[0] for p in mp], [p[1] for p in mp], color=colors[m], label=m)
        base = [(r.get("downstream") or {}).get("mrr_untrained") for r in results]
        base = [b for b in base if b is not None]
        if base:
            right.axhline(float(np.mean(base)), color="gray", ls=":",
                          label="untrained encoder (mean)")
        tr = fit_json.get("transfer")
        title = "downstream MRR vs pre-training loss"
        if tr:
            title += f" (Spearman {tr['spearman']:.2f})"
        right.set_title(title)
        right.legend(fontsize=7)
    else:
        right.text(0.5, 0.5, "no downstream evaluation in this grid", ha="center",
                   transform=right.transAxes)
    right.set_xlabel("held-out contrastive loss")
    right.set_ylabel("downstream MRR (U-MLP on CLUE)")
    right.grid(True, alpha=0.3)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def plot_learning_curves(results: Sequence[Mapping[str, Any]], path: str) -> None:
    """Training loss vs compute spent so far (PF-days at each logged step), one curve per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, r in enumerate(results):
        hist = [h for h in r.get("history", []) if math.isfinite(h.get("loss", float("nan")))]
        if not hist:
            continue
        x = [pf_days(r["params"], r["batch_size"], h["step"], r["sequence_length"]) for h in hist]
        ax.plot(x, [h["loss"] for h in hist], lw=1, color=plt.get_cmap("tab20")(i % 20),
                label=f"{r['model']} B={r['batch_size']} S={r['max_items']}")
    ax.set_xscale("log")
    ax.set_xlabel("compute so far (PF-days)")
    ax.set_ylabel("training loss at the run's batch B")
    ax.set_title("learning curves (running mean within each checkpoint interval)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def _savefig(fig, path: str) -> None:
    from clue_keras.atomic import atomic_file

    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
