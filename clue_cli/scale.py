"""`clue scale`: a resumable scaling-law study over model size, batch size and
sequence length (paper section 5.3; library: `clue_scaling`).

Example::

    clue synth --users 2000 --out data/synth
    clue scale --data data/synth --grid examples/scaling_grid_tiny.yaml --out runs/scale
    # interrupted? run the same command again: finished runs print "skip (done)"
"""

from __future__ import annotations

import argparse
import shlex
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "scale", help="train a grid of runs and fit loss vs compute (scaling laws)",
        description=(
            "Trains every run of a grid (model size x batch size x sequence length, fixed "
            "steps), records params, tokens seen, PF-days, training and held-out contrastive "
            "loss and downstream MRR per run, fits loss = a*C^-b + c on the compute frontier, "
            "and writes results.csv, fit.json, Figure-4/5-like PNGs and REPORT.md under --out. "
            "Re-running continues an interrupted grid; finished runs are never repeated."))
    p.add_argument("--data", required=True,
                   help="data directory as written by `clue synth` (behaviors/, downstream/)")
    p.add_argument("--grid", required=True, help="grid YAML (see examples/scaling_grid_tiny.yaml)")
    p.add_argument("--out", required=True, help="study directory (runs/<id>/, results, report)")
    p.add_argument("--max-runs", type=int, default=None,
                   help="train at most this many runs now, then stop (the rest stay pending)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the runs with params, PF-days and status; train nothing")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild results.csv, fit, figures and REPORT.md from finished runs")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from clue_scaling.fit import fits_from
    from clue_scaling.grid import GridError, load_grid
    from clue_scaling.report import summarize
    from clue_scaling.store import REPORT_FILE, is_finished
    from clue_scaling.study import run_grid

    try:
        grid = load_grid(args.grid)
    except GridError as e:
        print(f"clue scale: error: {e}", file=sys.stderr)
        return 2
    if args.max_runs is not None and args.max_runs < 0:
        print("clue scale: error: --max-runs must be >= 0", file=sys.stderr)
        return 2
    runs = grid.runs()
    if args.dry_run:
        print(f"{'run id':<13} {'model':<12} {'params':>10} {'B':>5} {'S':>4} {'L':>4} "
              f"{'steps':>6} {'PF-days':>10}  status")
        for r in runs:
            status = "done" if is_finished(args.out, r.run_id) else "pending"
            print(f"{r.run_id:<13} {r.model:<12} {r.planned_params:>10,} {r.batch_size:>5} "
                  f"{r.max_items:>4} {r.max_tokens:>4} {r.steps:>6} {r.planned_pf_days:>10.3e}"
                  f"  {status}")
        return 0
    outcome = None
    if not args.report_only:
        try:
            outcome = run_grid(grid, args.data, args.out, max_runs=args.max_runs)
        except (GridError, FileNotFoundError, ValueError) as e:
            print(f"clue scale: error: {e}", file=sys.stderr)
            return 2
    command = "clue scale " + " ".join(
        shlex.quote(a) for a in ("--data", args.data, "--grid", args.grid, "--out", args.out))
    try:
        fit = summarize(args.out, grid, command=command)
    except ValueError as e:
        print(f"clue scale: {e}", file=sys.stderr)
        return 1 if outcome and outcome.failed else 0
    for name, fit_obj in fits_from(fit).items():
        print(f"fit ({name}): {fit_obj.formula()}" + (f", R^2 {fit_obj.r2:.4f}" if fit_obj.ok else ""))
    print(f"report: {args.out}/{REPORT_FILE}")
    if outcome and outcome.failed:
        print(f"clue scale: {len(outcome.failed)} run(s) failed (see runs/<id>/error.json); "
              "run again to retry them", file=sys.stderr)
        return 1
    return 0
