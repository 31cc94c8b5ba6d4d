"""`clue bench train|preprocess|serve|evaluate`: the benchmarks behind docs/PERFORMANCE.md
(library: `clue_bench`)."""

from __future__ import annotations

import argparse
import os
import sys

from clue_cli._args import add_beam_arg, add_model_args, comma_ints, positive_int


def add_parser(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks (see docs/PERFORMANCE.md)")
    bsub = bench.add_subparsers(dest="bench", metavar="WHAT")
    bsub.required = True
    _add_train(bsub)
    _add_preprocess(bsub)
    _add_serve(bsub)
    _add_evaluate(bsub)


def _write_json(path: str, obj) -> None:
    from clue_keras.atomic import write_json_atomic

    write_json_atomic(os.path.abspath(path), obj)


# -- clue bench train ---------------------------------------------------------


def _add_train(bsub) -> None:
    b = bsub.add_parser("train", help="training throughput and FLOP/s vs a matmul in the same run")
    b.add_argument("--steps", type=int, default=20)
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--fill", type=float, default=0.5,
                   help="--lengths uniform: share of item/token slots that hold real data")
    b.add_argument("--lengths", choices=["skewed", "uniform"], default="skewed",
                   help="length distribution of the synthetic batch (default %(default)s; "
                        "see docs/PERFORMANCE.md)")
    b.add_argument("--records", metavar="DIR",
                   help="benchmark on real records instead: a `clue prepare --out DIR` "
                        "directory (vocab/, Split-train/); --steps batches of it, "
                        "S and L from the records")
    b.add_argument("--mode", choices=["both", "padded", "bucketed", "xla", "packed"],
                   nargs="+", default=["both"],
                   help="one or more of: the encoder padded, bucketed by length, with "
                        "static shapes compiled by XLA (xla), with the child on one "
                        "stream of real tokens compiled by XLA per length rung (packed); "
                        "both = padded bucketed; all timed in this process (default: both)")
    b.add_argument("--buckets", type=positive_int, default=None,
                   help="length buckets of the child transformer (bucketed mode; "
                        "default: the encoder's)")
    b.add_argument("--parent-buckets", type=int, default=None,
                   help="length buckets of the parent transformer (default: --buckets; "
                        "0: parent padded)")
    b.add_argument("--rounds", type=positive_int, default=1,
                   help="alternating timing rounds per mode; the median is reported")
    b.add_argument("--json", help="also write the figures to this JSON file")
    b.add_argument("--profile", metavar="DIR",
                   help="after timing, profile --steps more steps of the last mode with the "
                        "TensorFlow profiler into DIR (TensorBoard's profile plugin reads it) "
                        "and print the op types and the parts of the step (GELU, LayerNorm, "
                        "matrix products, ...) that took the most time")
    b.add_argument("--workers", type=positive_int, default=1,
                   help="N > 1: N worker processes on 127.0.0.1 (MultiWorkerMirroredStrategy) "
                        "against one process, both on the same global batch --batch-size, "
                        "with the communication share (default 1: this process alone)")
    b.add_argument("--warmup", type=positive_int, default=3,
                   help="warm-up steps before the timed ones (default 3)")
    b.add_argument("--timeout", type=float, default=1800.0,
                   help="--workers > 1: seconds each run of the processes may take before "
                        "they are stopped with an error (default 1800)")
    add_model_args(b)
    b.set_defaults(func=_run_train)


def _print_figures(res) -> None:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:,.4g}"
        return ", ".join(map(fmt, v)) if isinstance(v, list) else str(v)

    for k, v in res.items():
        print(f"{k:<34} {fmt(v)}")


def _run_train_multiworker(args) -> int:
    if args.cpu_replicas > 1:
        print("clue bench train: --workers > 1 runs one CPU replica per worker; "
              "drop --cpu-replicas", file=sys.stderr)
        return 2
    if args.steps < 2 or args.batch_size % args.workers:
        print(f"clue bench train: --workers {args.workers} needs --steps >= 2 and a "
              f"--batch-size divisible by it", file=sys.stderr)
        return 2
    from clue_bench.train_multiworker import WorkerError, bench_train_multiworker

    try:
        res = bench_train_multiworker(args.preset, steps=args.steps, batch_size=args.batch_size,
                                      fill=args.fill, precision=args.precision,
                                      workers=args.workers, warmup=args.warmup,
                                      timeout_s=args.timeout)
    except WorkerError as e:
        print(f"clue bench train: {e}", file=sys.stderr)
        return 1
    _print_figures(res)
    print(f"\n{args.workers} processes share this machine's {res['cpu_count']} cores: "
          "this measures the overhead of going multi-worker, not a speed-up.")
    if args.json:
        _write_json(args.json, res)
    return 0


def _print_modes(res, modes) -> None:
    """The per-mode figures of `clue bench train` as one table, a column per mode."""
    _print_figures({k: v for k, v in res.items() if not isinstance(v, dict)})
    print()
    print(f"{'':<34} " + " ".join(f"{m:>12}" for m in modes))
    for key in res[modes[0]]:
        row = []
        for m in modes:
            v = res[m][key]
            row.append(f"{v:>12.1%}" if "share" in key else f"{v:>12,.4g}")
        print(f"{key:<34} " + " ".join(row))
    feed = res.get("input_pipeline")
    if feed:
        print(f"\ninput pipeline ({feed['mode']}): {feed['streamed_step_s']:.4g} s/step fed by the "
              f"Trainer's reader vs {feed['in_memory_step_s']:.4g} s in memory: "
              f"ratio {feed['ratio']:.3f} (median of {feed['rounds']} alternating rounds)")
    if res.get("profile"):
        from clue_bench.profile import format_ranking

        print(f"\n({res['profile']['mode']}) " + format_ranking(res["profile"]))


def _run_train(args) -> int:
    if args.workers > 1:
        if args.records or args.mode != ["both"] or args.lengths != "skewed" or args.profile:
            print("clue bench train: --workers > 1 runs the synthetic batch with the "
                  "encoder's default bucketing; drop --records/--mode/--lengths/--profile",
                  file=sys.stderr)
            return 2
        return _run_train_multiworker(args)
    if args.steps < 2 or (args.parent_buckets is not None and args.parent_buckets < 0):
        print("clue bench train: needs --steps >= 2 and --parent-buckets >= 0", file=sys.stderr)
        return 2
    from clue_keras.distribute import get_strategy

    strategy = get_strategy(args.cpu_replicas)  # before anything else initialises TensorFlow

    from clue_bench.train import DEFAULT_MODES, bench_train
    from clue_keras.encoder import DEFAULT_CHILD_BUCKETS, DEFAULT_PARENT_BUCKETS

    modes = list(dict.fromkeys(m for arg in args.mode
                               for m in (DEFAULT_MODES if arg == "both" else [arg])))
    try:
        res = bench_train(args.preset, steps=args.steps, batch_size=args.batch_size,
                          fill=args.fill, precision=args.precision, strategy=strategy,
                          lengths=args.lengths, records=args.records, modes=modes,
                          buckets=args.buckets or DEFAULT_CHILD_BUCKETS,
                          parent_buckets=(args.parent_buckets if args.parent_buckets is not None
                                          else args.buckets or DEFAULT_PARENT_BUCKETS),
                          rounds=args.rounds, warmup=args.warmup, profile_dir=args.profile)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"clue bench train: {e}", file=sys.stderr)
        return 1
    _print_modes(res, modes)
    if args.json:
        _write_json(args.json, res)
    return 0


# -- clue bench preprocess ----------------------------------------------------


def _add_preprocess(bsub) -> None:
    from clue_bench import preprocess  # light: standard library at import time

    b = bsub.add_parser(
        "preprocess", help="BehaviorPreprocess (Beam) and prepare_local time vs number of users",
        description=preprocess.__doc__.split("\n\n", 1)[1] if preprocess.__doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--users", type=int, nargs="+", default=list(preprocess.DEFAULT_USERS),
                   metavar="N", help="user counts (default: %(default)s)")
    b.add_argument("--preset", default="clue-4m",
                   help="model preset fixing S, L and the vocabulary size (default %(default)s)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--work", help="working directory (default: a temporary one)")
    b.add_argument("--keep", action="store_true", help="keep the data in --work")
    b.add_argument("--reuse-data", action="store_true",
                   help="reuse the data an earlier --keep run left in --work (same N and seed)")
    b.add_argument("--beam-mode", default="multi_processing",
                   choices=["multi_processing", "multi_threading", "in_memory"])
    b.add_argument("--workers", type=int, default=0, help="DirectRunner workers (0: all cores)")
    b.add_argument("--no-local", action="store_true", help="skip prepare_local")
    b.add_argument("--no-pandas", action="store_true",
                   help="skip the pandas baseline (and the per-core ratio)")
    b.add_argument("--baseline-users", type=int, default=100,
                   help="small run measured first for the fixed cost; marginal rates are "
                        "relative to it (0: skip; default %(default)s)")
    b.add_argument("--json", help="also write the figures to this JSON file")
    b.set_defaults(func=_run_preprocess)


def _run_preprocess(args) -> int:
    import logging

    from clue_bench.preprocess import bench_preprocess, format_report

    # The portable DirectRunner relays every worker's start-up warnings; keep the output readable.
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    result = bench_preprocess(args.users, work_dir=args.work, preset=args.preset, seed=args.seed,
                              beam_mode=args.beam_mode, workers=args.workers,
                              run_local=not args.no_local, keep=args.keep,
                              baseline_users=args.baseline_users,
                              run_pandas=not args.no_pandas, reuse_data=args.reuse_data)
    print(format_report(result))
    if args.json:
        _write_json(args.json, result)
        print(f"wrote {os.path.abspath(args.json)}")
    return 0


# -- clue bench serve ---------------------------------------------------------


def _add_serve(bsub) -> None:
    b = bsub.add_parser("serve", help="serving latency/throughput (local gRPC server) and batch-export users/s")
    b.add_argument("--users", type=int, default=2000, help="synthetic users (default 2000)")
    b.add_argument("--requests", type=int, default=300, help="one-user requests per concurrency level")
    b.add_argument("--concurrency", default="1,8,32", help="comma-separated client thread counts")
    b.add_argument("--max-seconds", type=float, default=60.0, help="time cap per concurrency level")
    b.add_argument("--preset", default="tiny", help="preset of the untrained model when --model is not given")
    b.add_argument("--model", help="an existing CLUE serving SavedModel to benchmark instead")
    b.add_argument("--server-threads", type=int, default=32, help="gRPC worker threads of the server")
    b.add_argument("--export-dtype", default="float32", choices=["float32", "float16", "int8"])
    b.add_argument("--skip-export", action="store_true", help="do not time the batch export")
    add_beam_arg(b, "Beam option for the batch export")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--workdir", help="keep data and models here (default: a temporary directory)")
    b.add_argument("--json", help="also write the figures to this JSON file")
    b.set_defaults(func=_run_serve)


def _run_serve(args) -> int:
    try:
        levels = comma_ints(args.concurrency)
    except ValueError:
        print(f"clue bench serve: --concurrency must be comma-separated integers, got {args.concurrency!r}",
              file=sys.stderr)
        return 2
    if not levels or min(levels) < 1 or args.users < 1 or args.requests < 1:
        print("clue bench serve: need --users, --requests and every concurrency >= 1", file=sys.stderr)
        return 2
    from clue_bench.serve import bench_serve, format_table

    res = bench_serve(users=args.users, requests=args.requests, concurrency=levels,
                      max_seconds=args.max_seconds, preset=args.preset, model=args.model,
                      server_threads=args.server_threads, export=not args.skip_export,
                      export_dtype=args.export_dtype, beam_args=args.beam_arg, seed=args.seed,
                      workdir=args.workdir)
    print(format_table(res))
    if args.json:
        _write_json(args.json, res)
    return 0


# -- clue bench evaluate ------------------------------------------------------


def _add_evaluate(bsub) -> None:
    b = bsub.add_parser("evaluate", help="downstream evaluation time per model on a synthetic task")
    b.add_argument("--users", type=positive_int, default=6000)
    b.add_argument("--interactions", type=positive_int, default=100_000)
    b.add_argument("--items", type=positive_int, default=3000)
    b.add_argument("--epochs", type=positive_int,
                   help="most epochs per model (default: the evaluation's own cap; early "
                        "stopping usually ends sooner)")
    b.add_argument("--no-sequence-models", action="store_true", help="skip T-UBM and Hybrid")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--task-dir", help="read the task from this folder; one without the task is "
                                      "written first (the synthetic task of --users etc.)")
    b.add_argument("--reference-commit",
                   help="also time this git commit's clue_tfrs on the same task (a temporary "
                        "worktree, a child process) and print before/after per model")
    b.add_argument("--json", help="also write the figures to this JSON file")
    b.set_defaults(func=_run_evaluate)


def _run_evaluate(args) -> int:
    if args.interactions < 2 * args.users or args.items <= 100:
        print("clue bench evaluate: need --interactions >= 2 x --users and --items > 100 "
              "(each test positive is ranked among 100 sampled items)", file=sys.stderr)
        return 2
    import tempfile

    from clue_bench import evaluate as bench

    with tempfile.TemporaryDirectory(prefix="clue_bench_task_") as tmp:
        task_dir = args.task_dir or (tmp if args.reference_commit else None)
        if task_dir and not os.path.exists(os.path.join(task_dir, "interactions.parquet")):
            bench.write_task(task_dir, *bench.synthetic_task(
                args.users, args.interactions, args.items, seed=args.seed))
        res = bench.bench_evaluate(users=args.users, interactions=args.interactions,
                                   items=args.items, epochs=args.epochs, seed=args.seed,
                                   sequence_models=not args.no_sequence_models, task_dir=task_dir)
        print(_header("this checkout", res), bench.format_report(res), sep="\n",
              flush=True)
        if args.reference_commit:
            ref = bench.run_reference(args.reference_commit, task_dir, args.epochs, args.seed,
                                      not args.no_sequence_models)
            print(_header(f"commit {args.reference_commit}", ref),
                  bench.format_report(ref), "", bench.format_comparison(ref, res), sep="\n")
            res = {"after": res, "before": ref}
    if args.json:
        _write_json(args.json, res)
    return 0


def _header(what: str, res) -> str:
    return f"== {what} (clue_tfrs from {res['clue_tfrs']})"
