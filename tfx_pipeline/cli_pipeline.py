"""`clue run` (LocalDagRunner + SQLite MLMD) and `clue compile --kubeflow`.

Beam options: ``--beam-arg`` may be repeated; each value is one Beam
pipeline option. Without any, Beam components use the DirectRunner in
multi-processing mode on every core. Examples::

  clue run --beam-arg=--direct_num_workers=2
  clue run --beam-arg=--runner=FlinkRunner --beam-arg=--flink_master=host:8081 \\
           --beam-arg=--environment_type=LOOPBACK
  clue compile --kubeflow --image gcr.io/P/clue:1 --pipeline-root gs://B/root \\
      --data gs://B/data/behaviors --out clue.json \\
      --beam-arg=--runner=DataflowRunner --beam-arg=--project=P \\
      --beam-arg=--region=R --beam-arg=--temp_location=gs://B/tmp
"""

from __future__ import annotations

import argparse
import json
import os
import sys

DEFAULT_ROOT = "clue_runs"


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help="model preset (see `clue presets`)")
    # Defaults sized for the tiny preset on a 2-core machine (`make run` in ~10 min);
    # the paper's learning rate for its large models is 5e-4 (TrainConfig's default).
    p.add_argument("--train-steps", type=int, default=400, help="Trainer optimizer steps")
    p.add_argument("--batch-size", type=int, default=64, help="global batch (users per step)")
    p.add_argument("--learning-rate", type=float, default=2e-3,
                   help="AdamW peak learning rate (default %(default)s for the tiny preset; "
                        "the paper uses 5e-4)")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="checkpoint interval in steps (0: only at the end)")
    p.add_argument("--min-items", type=int, default=2,
                   help="activity threshold: drop users with fewer distinct items")
    p.add_argument("--eval-percent", type=int, default=10)
    p.add_argument("--test-percent", type=int, default=10)
    p.add_argument("--beam-arg", action="append", default=None, metavar="OPTION",
                   help="a Beam pipeline option, e.g. --beam-arg=--direct_num_workers=2 "
                        "(repeatable; replaces the multi-processing DirectRunner default)")
    p.add_argument("--no-cache", action="store_true", help="do not reuse cached outputs")
    e = p.add_argument_group(
        "evaluation and push",
        "The Evaluator trains the downstream models on one task and blesses the model when "
        "U-MLP on CLUE features beats TopPop and the untrained encoder on MRR by the margins; "
        "only a blessed model is pushed.")
    e.add_argument("--task", default="movies",
                   help="downstream task, read from DATA/downstream/TASK (default %(default)s)")
    e.add_argument("--task-dir", help="explicit downstream task directory (overrides --task)")
    e.add_argument("--eval-data", help="behaviour logs for the evaluation's user features "
                                       "(default: the --data directory)")
    e.add_argument("--eval-epochs", type=int, default=5, help="epochs per downstream model")
    e.add_argument("--eval-seed", type=int, default=0)
    e.add_argument("--margin-over-toppop", type=_margin, default=0.0, metavar="MRR|none",
                   help="required MRR lead over TopPop; 'none' skips (default %(default)s)")
    e.add_argument("--margin-over-untrained", type=_margin, default=0.0, metavar="MRR|none",
                   help="required MRR lead over the untrained encoder; 'none' skips "
                        "(default %(default)s)")
    e.add_argument("--no-sequence-models", action="store_true",
                   help="skip T-UBM (BST) and Hybrid in the evaluation (faster)")
    e.add_argument("--no-evaluate", action="store_true",
                   help="train only: no Evaluator, hence no Pusher")


def _margin(text: str):
    """argparse type: a float, or ``none`` (skip that comparison)."""
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def _eval_kwargs(args) -> dict:
    """PipelineConfig fields of the evaluation options."""
    return dict(evaluate=not args.no_evaluate, eval_task=args.task,
                eval_task_dir=args.task_dir, eval_data_dir=args.eval_data,
                eval_epochs=args.eval_epochs, eval_seed=args.eval_seed,
                margin_over_toppop=args.margin_over_toppop,
                margin_over_untrained=args.margin_over_untrained,
                eval_sequence_models=not args.no_sequence_models)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run", help="run the TFX pipeline locally (LocalDagRunner, SQLite MLMD)",
        description="Runs ExampleGen -> StatisticsGen -> SchemaGen -> ExampleValidator -> "
                    "BehaviorPreprocess -> Trainer -> Evaluator -> Pusher and prints a "
                    "summary read back from MLMD: the downstream results table, whether the "
                    "model was blessed and why, where it was pushed and how to serve it. "
                    "A repeated identical run reuses cached outputs.")
    p.add_argument("--data", help="behaviour-log directory (a `clue synth` output or a folder "
                                  "of csv/jsonl/parquet/tfrecord files); synthetic data is "
                                  "generated into ROOT/data when omitted")
    p.add_argument("--root", default=DEFAULT_ROOT,
                   help="run directory: pipeline outputs, metadata.db, data (default %(default)s)")
    p.add_argument("--serving-dir", help="Pusher destination (default ROOT/serving)")
    p.add_argument("--users", type=int, default=2000, help="synthetic users when --data is omitted")
    p.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    _add_common(p)
    p.set_defaults(func=_run)

    c = sub.add_parser(
        "compile", help="compile the pipeline for Kubeflow Pipelines v2 / Vertex AI",
        description="Writes a KFP v2 pipeline spec (JSON) whose components all run in IMAGE.")
    c.add_argument("--kubeflow", action="store_true", required=True,
                   help="target Kubeflow Pipelines v2 (the only target for now)")
    c.add_argument("--image", required=True, help="container image with this package installed")
    c.add_argument("--pipeline-root", required=True, help="artifact root URI, e.g. gs://B/root")
    c.add_argument("--data", help="behaviour-log URI (default PIPELINE_ROOT/data/behaviors)")
    c.add_argument("--format", default="csv", choices=["csv", "jsonl", "parquet", "tfrecord"],
                   help="format of the files under --data")
    c.add_argument("--file-pattern", default=None,
                   help="glob of the files under --data (default *.FORMAT)")
    c.add_argument("--serving-dir", help="Pusher destination (default PIPELINE_ROOT/serving)")
    c.add_argument("--pipeline-name", default="clue")
    c.add_argument("--out", required=True, help="output JSON file")
    _add_common(c)
    c.set_defaults(func=_compile)


def _beam_args(args):
    from tfx_pipeline.config import DEFAULT_BEAM_ARGS

    return tuple(args.beam_arg) if args.beam_arg else DEFAULT_BEAM_ARGS


def _synthetic_data(root: str, users: int, seed: int) -> str:
    """Generates synthetic logs into ROOT/data unless the same ones are already there
    (regenerating would change file times and so defeat the pipeline cache)."""
    from clue_keras import synth

    data = os.path.join(root, "data")
    manifest = os.path.join(data, "manifest.json")
    if os.path.exists(manifest):
        with open(manifest) as f:
            m = json.load(f)
        if m.get("users") == users and m.get("seed") == seed and m.get("format") == "csv":
            print(f"using the synthetic data already in {data}")
            return data
    print(f"generating synthetic behaviour logs for {users} users into {data}")
    synth.generate(data, users=users, seed=seed, fmt="csv")
    return data


def _run(args) -> int:
    from tfx_pipeline import local_runner
    from tfx_pipeline.config import PipelineConfig, detect_format

    root = os.path.abspath(args.root)
    data = os.path.abspath(args.data) if args.data else _synthetic_data(root, args.users, args.seed)
    input_dir, fmt, pattern = detect_format(data)
    evaluation = _eval_kwargs(args)
    for key in ("eval_task_dir", "eval_data_dir"):
        if evaluation[key]:
            evaluation[key] = os.path.abspath(evaluation[key])
    config = PipelineConfig(
        pipeline_root=os.path.join(root, "pipeline"),
        data_root=input_dir, data_format=fmt, file_pattern=pattern,
        serving_model_dir=os.path.abspath(args.serving_dir or os.path.join(root, "serving")),
        metadata_path=os.path.join(root, "metadata", "metadata.db"),
        preset=args.preset, train_steps=args.train_steps, batch_size=args.batch_size,
        learning_rate=args.learning_rate, checkpoint_every=args.checkpoint_every,
        min_items_per_user=args.min_items,
        eval_percent=args.eval_percent, test_percent=args.test_percent,
        beam_pipeline_args=_beam_args(args), enable_cache=not args.no_cache, **evaluation)
    if config.evaluate and not os.path.isdir(config.evaluation_task_dir):
        print(f"clue run: no downstream task directory {config.evaluation_task_dir} for the "
              "Evaluator; pass --task-dir (or --task), or --no-evaluate to train only",
              file=sys.stderr)
        return 2
    print(f"running pipeline {config.pipeline_name!r}: {fmt} files {pattern} in {input_dir}, "
          f"outputs under {config.pipeline_root}")
    summary = local_runner.run(config)
    print(summary.format())
    if summary.cached:
        print(f"{summary.cached} of {len(summary.executions)} components reused cached "
              "outputs from an earlier identical run")
    return 0


def _compile(args) -> int:
    from tfx_pipeline.config import FORMAT_EXTENSIONS, PipelineConfig
    from tfx_pipeline.kubeflow_runner import compile_pipeline

    root = args.pipeline_root.rstrip("/")
    config = PipelineConfig(
        pipeline_name=args.pipeline_name, pipeline_root=root,
        data_root=args.data or f"{root}/data/behaviors", data_format=args.format,
        file_pattern=args.file_pattern or (
            "*" if args.format == "tfrecord" else "*" + FORMAT_EXTENSIONS[args.format][0]),
        serving_model_dir=args.serving_dir or f"{root}/serving",
        preset=args.preset, train_steps=args.train_steps, batch_size=args.batch_size,
        learning_rate=args.learning_rate, checkpoint_every=args.checkpoint_every,
        min_items_per_user=args.min_items,
        eval_percent=args.eval_percent, test_percent=args.test_percent,
        beam_pipeline_args=_beam_args(args), enable_cache=not args.no_cache,
        **_eval_kwargs(args))
    try:
        path = compile_pipeline(config, args.image, args.out)
    except ImportError as e:
        print(f"clue compile: {e}", file=sys.stderr)
        return 2
    print(f"wrote the Kubeflow v2 pipeline spec to {path}")
    return 0
