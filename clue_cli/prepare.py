"""`clue prepare`: behaviour logs -> vocab + per-user TFRecords, in this process.

Runs the pipeline's BehaviorPreprocess Beam graph on the in-memory DirectRunner
(`clue_keras.data.prepare.prepare_local`), or on the engine ``--beam-arg`` names. S, L and the vocabulary size come
from ``--preset`` unless given; the other defaults are `PipelineConfig`'s.
"""

from __future__ import annotations

import dataclasses
import json

from clue_cli._args import non_negative_int, positive_int
from tfx_pipeline.config import PipelineConfig

_D = {f.name: f.default for f in dataclasses.fields(PipelineConfig)
      if f.default is not dataclasses.MISSING}


def _run(args) -> int:
    from clue_keras.config import get_preset
    from clue_keras.data.prepare import prepare_local

    try:
        preset = get_preset(args.preset)
    except ValueError as e:
        print(f"clue prepare: --preset: {e}")
        return 2
    stats = prepare_local(args.behaviors, args.out,
                          max_items=args.max_items or preset.max_items,
                          max_tokens=args.max_tokens or preset.max_tokens,
                          vocab_size=args.vocab_size or preset.vocab_size,
                          min_items=args.min_items, min_services=args.min_services,
                          eval_percent=args.eval_percent, test_percent=args.test_percent,
                          shards=args.shards, bpe_sample_size=args.bpe_sample_size,
                          max_text_bytes=args.max_text_bytes, beam_args=args.beam_arg)
    print(json.dumps(stats, indent=2, sort_keys=True))
    return 0


def add_parser(subparsers) -> None:
    """``clue prepare``: behaviour logs -> vocab + per-user TFRecords, in this process."""
    p = subparsers.add_parser(
        "prepare", help="preprocess behaviour logs into per-user TFRecords (in-process Beam)",
        description=__doc__.split("\n\n")[0])
    p.add_argument("--behaviors", required=True,
                   help="data directory (behaviors/ inside, e.g. from `clue synth`), "
                        "a folder of behaviour files or a glob")
    p.add_argument("--out", required=True, help="output directory (vocab/, Split-*/, stats.json)")
    p.add_argument("--preset", default=_D["preset"],
                   help="model preset whose S, L and vocabulary size to use (default %(default)s)")
    p.add_argument("--max-items", type=positive_int, help="S: items per (user, service) "
                                                          "(default: the preset's)")
    p.add_argument("--max-tokens", type=positive_int, help="L: ids per item (default: the preset's)")
    p.add_argument("--vocab-size", type=positive_int,
                   help="BPE vocabulary size (default: the preset's)")
    p.add_argument("--min-items", type=positive_int, default=_D["min_items_per_user"],
                   help="drop users with fewer items")
    p.add_argument("--min-services", type=positive_int, default=_D["min_services_per_user"],
                   help="drop users with fewer services")
    p.add_argument("--eval-percent", type=non_negative_int, default=_D["eval_percent"])
    p.add_argument("--test-percent", type=non_negative_int, default=_D["test_percent"])
    p.add_argument("--bpe-sample-size", type=positive_int, default=_D["bpe_sample_size"],
                   help="at most this many train item texts train the BPE")
    p.add_argument("--max-text-bytes", type=non_negative_int, default=_D["max_text_bytes"],
                   help="cut item texts to this many UTF-8 bytes (0: no cap)")
    p.add_argument("--shards", type=positive_int, default=2, help="files per split")
    p.add_argument("--beam-arg", action="append", default=[], metavar="OPTION",
                   help="Beam pipeline option (repeatable; default: the in-memory DirectRunner), "
                        "e.g. --beam-arg=--runner=clue_keras.data.dask_runner.DaskRunner "
                        "--beam-arg=--dask_client_address=tcp://HOST:8786")
    p.set_defaults(func=_run)
