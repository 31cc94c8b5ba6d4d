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

Defaults come from `tfx_pipeline.config.PipelineConfig` (its ``train`` field is
`clue_keras.config.LOCAL_TRAIN`), except those of the synthetic data set below.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from clue_cli._args import add_beam_arg, confidence, margin, non_negative_int, positive_int
from clue_cli.train import add_schedule_args
from clue_keras.config import PRECISIONS
from tfx_pipeline.config import DEFAULT_EVAL_TASK, FORMAT_EXTENSIONS, PipelineConfig

#: `clue run` without --data: ROOT and the synthetic data set generated into ROOT/data.
DEFAULT_ROOT = "clue_runs"
SYNTH_USERS = 2000
SYNTH_SEED = 0

#: PipelineConfig's field defaults (the CLI's defaults; ``train`` is a TrainConfig).
_D = {f.name: f.default for f in dataclasses.fields(PipelineConfig)
      if f.default is not dataclasses.MISSING}
_T = _D["train"]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=_D["preset"], help="model preset (see `clue presets`)")
    p.add_argument("--train-steps", type=int, default=_T.train_steps, help="Trainer optimizer steps")
    p.add_argument("--batch-size", type=int, default=_T.batch_size,
                   help="global batch (users per step)")
    p.add_argument("--learning-rate", type=float, default=_T.learning_rate,
                   help="AdamW peak learning rate (default %(default)s for the tiny preset; "
                        "the paper uses 5e-4)")
    p.add_argument("--checkpoint-every", type=int, default=_T.checkpoint_every,
                   help="checkpoint interval in steps (0: only at the end)")
    add_schedule_args(p)
    p.add_argument("--precision", default=_D["precision"], choices=list(PRECISIONS),
                   help="Trainer precision policy; auto: mixed_float16 on a GPU, mixed_bfloat16 "
                        "on CPUs with native bf16, else float32 (default %(default)s)")
    p.add_argument("--cpu-replicas", type=positive_int, default=_D["cpu_replicas"],
                   help="Trainer MirroredStrategy over N logical CPU devices when there is no "
                        "GPU (default %(default)s: the default strategy)")
    p.add_argument("--schema", metavar="FILE",
                   help="curated schema.pbtxt the logs are validated against (ImportSchemaGen)")
    p.add_argument("--min-items", type=int, default=_D["min_items_per_user"],
                   help="activity threshold: drop users with fewer distinct items")
    p.add_argument("--max-text-bytes", type=non_negative_int, default=_D["max_text_bytes"],
                   metavar="N", help="cut item texts to N UTF-8 bytes before tokenisation, in "
                                     "preprocessing and serving alike (0: no cap; default "
                                     "%(default)s)")
    p.add_argument("--eval-percent", type=int, default=_D["eval_percent"])
    p.add_argument("--test-percent", type=int, default=_D["test_percent"])
    add_beam_arg(p, metavar="OPTION")
    p.add_argument("--preprocess-beam-arg", action="append", default=[], metavar="OPTION",
                   help="Beam option for BehaviorPreprocess only, after --beam-arg (repeatable), "
                        "e.g. --preprocess-beam-arg=--runner=clue_keras.data.dask_runner.DaskRunner "
                        "--preprocess-beam-arg=--dask_client_address=tcp://HOST:8786")
    p.add_argument("--no-cache", action="store_true", help="do not reuse cached outputs")
    e = p.add_argument_group(
        "evaluation and push",
        "The Evaluator trains the downstream models on one task and blesses the model when "
        "U-MLP on CLUE features beats TopPop and the untrained encoder on MRR by the margins; "
        "only a blessed model is pushed.")
    e.add_argument("--task", "--task-dir", dest="task", metavar="PATH",
                   help="the downstream task: its interactions file (any name; csv, jsonl, "
                        "parquet or tfrecord; columns user_id, item_id, timestamp, and "
                        "item_text unless a catalogue gives the texts) or a directory holding "
                        "it (interactions.<fmt>, or the one table file) and optionally "
                        "catalogue.<fmt>; a bare NAME means DATA/downstream/NAME (default: "
                        f"DATA/downstream/{DEFAULT_EVAL_TASK}). Read by the TaskExampleGen; "
                        "the user features come from BehaviorPreprocess's records")
    e.add_argument("--eval-epochs", type=int, default=_D["eval_epochs"],
                   help="epochs per downstream model")
    e.add_argument("--eval-seed", type=int, default=_D["eval_seed"])
    e.add_argument("--margin-over-toppop", type=margin, default=_D["margin_over_toppop"],
                   metavar="MRR|none",
                   help="required MRR lead over TopPop; 'none' skips (default %(default)s)")
    e.add_argument("--margin-over-untrained", type=margin, default=_D["margin_over_untrained"],
                   metavar="MRR|none",
                   help="required MRR lead over the untrained encoder; 'none' skips "
                        "(default %(default)s)")
    e.add_argument("--blessing-confidence", type=confidence,
                   default=_D["blessing_confidence"], metavar="C",
                   help="the blessing needs the lower bound of the paired bootstrap interval "
                        "at this confidence above each margin (default %(default)s)")
    e.add_argument("--no-sequence-models", action="store_true",
                   help="skip T-UBM (BST) and Hybrid in the evaluation (faster)")
    e.add_argument("--no-evaluate", action="store_true",
                   help="train only: no Evaluator, hence no Pusher")
    e.add_argument("--no-lookup", action="store_true",
                   help="no EmbeddingExport / LookupPusher: do not build and push the user-id "
                        "-> embedding lookup model beside the encoder")
    e.add_argument("--lookup-serving-dir",
                   help="LookupPusher destination (default: the serving directory + "
                        "'_user_lookup')")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run", help="run the TFX pipeline locally (LocalDagRunner, SQLite MLMD)",
        description="Runs ExampleGen -> StatisticsGen -> SchemaGen -> ExampleValidator -> "
                    "BehaviorPreprocess -> Trainer, and TaskExampleGen (the downstream task "
                    "as data) -> Evaluator -> Pusher, EmbeddingExport -> LookupPusher (the "
                    "user-id lookup model), and prints a "
                    "summary read back from MLMD: the downstream results table, whether the "
                    "model was blessed and why, where it was pushed and how to serve it. "
                    "A repeated identical run reuses cached outputs.")
    p.add_argument("--data", help="behaviour-log directory (a `clue synth` output or a folder "
                                  "of csv/jsonl/parquet/tfrecord files); synthetic data is "
                                  "generated into ROOT/data when omitted")
    p.add_argument("--root", default=DEFAULT_ROOT,
                   help="run directory: pipeline outputs, metadata.db, data (default %(default)s)")
    p.add_argument("--serving-dir", help="Pusher destination (default ROOT/serving); "
                                         "a gs:// URI works too")
    p.add_argument("--pipeline-root", metavar="URI",
                   help="the components' outputs (default ROOT/pipeline); e.g. gs://B/root, "
                        "while ROOT (lock, metadata.db, logs) stays local")
    p.add_argument("--users", type=int, default=SYNTH_USERS,
                   help="synthetic users when --data is omitted")
    p.add_argument("--seed", type=int, default=SYNTH_SEED, help="synthetic data seed")
    p.add_argument("--preflight-rows", type=int, default=0, metavar="N",
                   help="check only the first N rows of each log file before the run "
                        "(default 0: every row; about 40,000 rows/s)")
    p.add_argument("--wait-for-lock", action="store_true",
                   help="when another `clue run` is using ROOT, wait for it to finish instead "
                        "of stopping at once (one run per ROOT: ROOT/.clue-run.lock)")
    p.add_argument("--verbose", action="store_true",
                   help="show every third-party log line on the terminal (default: they go to "
                        "ROOT/logs/run-*.log and only the component lines and the summary show)")
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
    c.add_argument("--format", default=_D["data_format"],
                   choices=list(FORMAT_EXTENSIONS),
                   help="format of the files under --data")
    c.add_argument("--file-pattern", default=None,
                   help="glob of the files under --data (default *.FORMAT)")
    c.add_argument("--serving-dir", help="Pusher destination (default PIPELINE_ROOT/serving)")
    c.add_argument("--pipeline-name", default=_D["pipeline_name"])
    c.add_argument("--out", required=True, help="output JSON file")
    _add_common(c)
    c.set_defaults(func=_compile)


def _common_fields(args) -> dict:
    """PipelineConfig fields of the options `clue run` and `clue compile` share."""
    return dict(
        preset=args.preset, precision=args.precision, cpu_replicas=args.cpu_replicas,
        schema_path=args.schema,
        train=_T.replace(train_steps=args.train_steps, batch_size=args.batch_size,
                         learning_rate=args.learning_rate,
                         checkpoint_every=args.checkpoint_every, epochs=args.epochs,
                         eval_every=args.eval_every, patience=args.patience),
        min_items_per_user=args.min_items, max_text_bytes=args.max_text_bytes,
        eval_percent=args.eval_percent, test_percent=args.test_percent,
        beam_pipeline_args=tuple(args.beam_arg) if args.beam_arg else _D["beam_pipeline_args"],
        preprocess_beam_args=tuple(args.preprocess_beam_arg),
        enable_cache=not args.no_cache,
        evaluate=not args.no_evaluate, eval_task_path=args.task,
        export_lookup=not args.no_lookup, lookup_serving_dir=args.lookup_serving_dir,
        eval_epochs=args.eval_epochs, eval_seed=args.eval_seed,
        margin_over_toppop=args.margin_over_toppop,
        margin_over_untrained=args.margin_over_untrained,
        blessing_confidence=args.blessing_confidence,
        eval_sequence_models=not args.no_sequence_models)


def _run(args) -> int:
    """One `clue run` per ROOT at a time: the whole run holds ROOT/.clue-run.lock."""
    from tfx_pipeline.output_dirs import OutputDirError
    from tfx_pipeline.run_lock import RunLockBusy, run_lock

    root = os.path.abspath(args.root)
    try:
        with run_lock(root, wait=args.wait_for_lock,
                      on_wait=lambda line: print(line, flush=True)):
            return _run_locked(args, root)
    except (RunLockBusy, OutputDirError) as e:  # (ROOT itself cannot be written)
        print(f"clue run: {e}", file=sys.stderr)
        return 2


def _run_locked(args, root: str) -> int:
    from clue_cli._data import synthetic_data
    from tfx_pipeline import local_runner
    from tfx_pipeline.config import detect_format
    from tfx_pipeline.output_dirs import OutputDirError

    if args.cpu_replicas > 1:
        # Logical CPU devices must exist before TensorFlow initialises; the Trainer
        # runs in this process under LocalDagRunner.
        from clue_keras.distribute import configure_logical_cpus

        configure_logical_cpus(args.cpu_replicas)
    from clue_keras.uri import abspath

    data = (abspath(args.data) if args.data
            else synthetic_data(os.path.join(root, "data"), args.users, args.seed))
    input_dir, fmt, pattern = detect_format(data)
    if not _preflight_logs(os.path.join(input_dir, pattern), args.preflight_rows):
        return 2
    fields = _common_fields(args)
    schema_file = os.path.join(root, "schema", "schema.pbtxt")
    # The schema kept by the first run is used when asked for (--schema): switching
    # SchemaGen to ImportSchemaGen by itself would re-run every later component once.
    for key in ("eval_task_path", "schema_path", "lookup_serving_dir"):
        if fields[key]:
            fields[key] = abspath(fields[key])
    config = PipelineConfig(
        pipeline_root=abspath(args.pipeline_root or os.path.join(root, "pipeline")),
        data_root=input_dir, data_format=fmt, file_pattern=pattern,
        serving_model_dir=abspath(args.serving_dir or os.path.join(root, "serving")),
        metadata_path=os.path.join(root, "metadata", "metadata.db"), **fields)
    if config.evaluate:
        try:
            config = _checked_task(config, args.task)
        except (ValueError, OSError) as e:  # DataValidationError is a ValueError
            print(f"clue run: the downstream task for the Evaluator: {e}\n"
                  "clue run: pass --task FILE|DIR, or --no-evaluate to train only",
                  file=sys.stderr)
            return 2
    print(f"running pipeline {config.pipeline_name!r}: {fmt} files {pattern} in {input_dir}, "
          f"outputs under {config.pipeline_root}")
    if config.schema_path:
        print(f"validating the logs against the schema {config.schema_path}")
    try:
        summary = local_runner.run(config, verbose=args.verbose,
                                   log_dir=os.path.join(root, "logs"), exclusive=True)
    except OutputDirError as e:  # before any component ran
        print(f"clue run: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # pylint: disable=broad-except
        log_path = getattr(e, "clue_log_path", None)
        failed = getattr(e, "clue_failed_components", None)
        where = f"{' and '.join(failed)} failed: " if failed else ""
        print(f"clue run: {where}{type(e).__name__}: {e}", file=sys.stderr)
        if log_path:
            print(f"clue run: the full log is {log_path}", file=sys.stderr)
        raise
    print(summary.format())
    if not config.schema_path:
        kept = local_runner.keep_inferred_schema(config.metadata_path, config.pipeline_name,
                                                 schema_file)
        if kept:
            print(f"kept the schema inferred from these logs in {kept}; curate it and pass "
                  f"--schema {kept} to validate later runs' logs against it")
    if summary.cached:
        print(f"{summary.cached} of {len(summary.executions)} components reused cached "
              "outputs from an earlier identical run")
    return 0


def _checked_task(config: PipelineConfig, task_arg) -> PipelineConfig:
    """Validates the task before any component runs (`clue_keras.data.validate.validate_task`:
    columns, ids, timestamps, every item with a text) and names its files in the config:
    the interactions file and the directory's catalogue file, if any."""
    import tensorflow as tf

    from clue_keras.data.validate import validate_task

    path = config.evaluation_task_path
    if task_arg and not tf.io.gfile.exists(path) and os.path.basename(task_arg) == task_arg:
        path = os.path.join(config.dataset_root, "downstream", task_arg)  # a bare task name
    report = validate_task(path)
    print(f"downstream task {report.interactions}: {report.rows} interactions, {report.users} "
          f"users, {report.items} items; catalogue "
          + (report.catalogue or "derived from the interactions (no catalogue file)"))
    return config.replace(eval_task_path=report.interactions,
                          eval_catalogue_path=report.catalogue)


def _preflight_logs(files: str, max_rows: int) -> bool:
    """Reads the logs as ExampleGen and preprocessing will, in seconds, before anything
    expensive runs: prints what will be dropped, or names file and line and says no."""
    from clue_keras.data.errors import DataValidationError
    from clue_keras.data.validate import validate_logs

    try:
        report = validate_logs(files, max_rows_per_file=max_rows or None)
    except (DataValidationError, OSError) as e:  # OSError: e.g. a file that cannot be read
        print(f"clue run: the behaviour logs cannot go through the pipeline:\n{e}",
              file=sys.stderr)
        return False
    for line in report.lines():
        print(f"checked the logs: {line}")
    return True


def _compile(args) -> int:
    from tfx_pipeline.kubeflow_runner import compile_pipeline

    root = args.pipeline_root.rstrip("/")
    config = PipelineConfig(
        pipeline_name=args.pipeline_name, pipeline_root=root,
        data_root=args.data or f"{root}/data/behaviors", data_format=args.format,
        file_pattern=args.file_pattern or (
            "*" if args.format == "tfrecord" else "*" + FORMAT_EXTENSIONS[args.format][0]),
        serving_model_dir=args.serving_dir or f"{root}/serving", **_common_fields(args))
    try:
        path = compile_pipeline(config, args.image, args.out)
    except ImportError as e:
        print(f"clue compile: {e}", file=sys.stderr)
        return 2
    print(f"wrote the Kubeflow v2 pipeline spec to {path}")
    return 0
