"""`clue export-embeddings`: batch user embeddings with Apache Beam.

    clue export-embeddings --model MODEL_DIR --data DATA_DIR --out OUT_DIR \\
        [--dtype float32|float16|int8] [--shards N] [--batch-size 256] \\
        [--lookup-model DIR] [--overwrite] [--beam-arg=--runner=FlinkRunner ...]

Writes ``OUT_DIR/embeddings-*.parquet`` + ``manifest.json`` (see
``clue_keras.embeddings``) and, with ``--lookup-model``, the id-lookup
SavedModel (``clue_keras.embeddings.lookup_model``). Without ``--beam-arg`` the
DirectRunner runs multi-process over all cores.

Exit codes: 0 success; 2 bad arguments, input or model; 1 the pipeline failed.
"""

from __future__ import annotations

import json
import sys

from clue_cli._args import add_beam_arg


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export-embeddings",
        help="embed every user of a behaviour-log directory into sharded Parquet (Apache Beam)",
        description="Read behaviour logs, clean each user's history as in training, run the "
                    "SavedModel's serving_default in batches on a Beam runner, and write "
                    "embeddings-*.parquet (user_id, embedding bytes, scale) and manifest.json "
                    "atomically.")
    p.add_argument("--model", required=True, help="CLUE serving SavedModel directory")
    p.add_argument("--data", required=True, help="behaviour-log directory (<data>/behaviors/*)")
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "int8"],
                   help="storage per value; int8 = symmetric per-vector scale (default float32)")
    p.add_argument("--shards", type=int, default=0, help="output shards (0 = runner decides)")
    p.add_argument("--batch-size", type=int, default=256, help="users per SavedModel call")
    p.add_argument("--lookup-model", help="also write the user_id -> embedding lookup SavedModel here")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out (after success)")
    add_beam_arg(p)
    p.set_defaults(func=_run)


def _run(args) -> int:
    from clue_keras.embeddings.batch import export_embeddings

    try:
        manifest = export_embeddings(
            args.model, args.data, args.out, dtype=args.dtype, num_shards=args.shards,
            batch_size=args.batch_size, beam_args=args.beam_arg, overwrite=args.overwrite,
            lookup_model_dir=args.lookup_model,
            progress=sys.stdout)  # users embedded: a bar on a terminal, else lines
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"clue export-embeddings: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the pipeline itself failed; nothing was written
        print(f"clue export-embeddings: pipeline failed, no output written: {type(e).__name__}: {e}",
              file=sys.stderr)
        return 1
    summary = {k: manifest[k] for k in ("count", "dim", "dtype", "seconds")}
    print(f"exported {manifest['count']} users -> {args.out} "
          f"({len(manifest['shards'])} shards) {json.dumps(summary)}")
    if args.lookup_model:
        print(f"lookup SavedModel -> {args.lookup_model}")
    return 0
