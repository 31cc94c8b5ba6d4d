"""`clue evaluate`: the paper's Table 3 for one downstream task.

User features come from per-user records through the model's ``embed_tokens``
signature: ``--records DIR`` (BehaviorPreprocess's ``user_examples`` or `clue
prepare`'s output, every split; tokenised with the model's vocabulary), or
``--data DIR`` (raw behaviour logs, cleaned and tokenised with the model's
vocabulary by the preprocessing's functions first). Without either, the logs of
the task's `clue synth` data directory (two levels above ``--task``).
"""

from __future__ import annotations

import dataclasses
import sys

from clue_cli._args import confidence
from tfx_pipeline.config import PipelineConfig

#: The same default as `clue run` (PipelineConfig.eval_epochs).
EVAL_EPOCHS = {f.name: f.default for f in dataclasses.fields(PipelineConfig)}["eval_epochs"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="downstream evaluation (TFRS): CLUE vs TopPop, untrained encoder, BST",
        description="Trains U-MLP on frozen CLUE features and the baselines on one downstream "
                    "task and prints HR@1, NDCG@10, MRR (uni100) and top-10 accuracy.")
    p.add_argument("--model", required=True, help="CLUE serving SavedModel directory")
    p.add_argument("--task", required=True, metavar="PATH",
                   help="the task's interactions file (any name and format) or a directory "
                        "holding it and optionally catalogue.<fmt> (without a catalogue: the "
                        "distinct items of the interactions with their newest text)")
    users = p.add_mutually_exclusive_group()
    users.add_argument("--records", metavar="DIR",
                       help="per-user records (BehaviorPreprocess's user_examples or `clue "
                            "prepare --out DIR`; every Split-*/ file) made with the model's "
                            "vocabulary")
    users.add_argument("--data", metavar="DIR",
                       help="raw behaviour logs (a data directory, folder or glob), cleaned and "
                            "tokenised with the model's vocabulary first (default: two levels "
                            "above --task, the `clue synth` layout)")
    p.add_argument("--min-items", type=int, default=2,
                   help="with --data: users with fewer items are cold-start, as in "
                        "preprocessing (default %(default)s)")
    p.add_argument("--out", help="write results.json / results.md / results.png / blessing.json here")
    p.add_argument("--epochs", type=int, default=EVAL_EPOCHS,
                   help="epochs per downstream model (default %(default)s, as `clue run`)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--margin-over-toppop", type=float, default=0.0)
    p.add_argument("--margin-over-untrained", type=float, default=0.0)
    p.add_argument("--blessing-confidence", type=confidence, default=0.95, metavar="C",
                   help="confidence of the paired bootstrap bound the blessing needs above "
                        "each margin (default %(default)s)")
    p.add_argument("--no-sequence-models", action="store_true",
                   help="skip T-UBM (BST) and Hybrid (faster)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from components.clue_evaluator.blessing import evaluate_and_bless

    outcome = evaluate_and_bless(args.model, args.task, out_dir=args.out, data_dir=args.data,
                                 records=args.records, min_items=args.min_items,
                                 epochs=args.epochs, seed=args.seed,
                                 margin_over_toppop=args.margin_over_toppop,
                                 margin_over_untrained=args.margin_over_untrained,
                                 sequence_models=not args.no_sequence_models,
                                 confidence=args.blessing_confidence,
                                 progress=sys.stdout)  # a bar per model, or lines
    print(outcome.table.to_markdown())
    print()
    print(outcome.reason)
    for name, path in outcome.paths.items():
        print(f"{name:<10} {path}")
    return 0
