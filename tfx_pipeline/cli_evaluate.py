"""`clue evaluate`: the paper's Table 3 for one downstream task."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="downstream evaluation (TFRS): CLUE vs TopPop, untrained encoder, BST",
        description="Trains U-MLP on frozen CLUE features and the baselines on one downstream "
                    "task and prints HR@1, NDCG@10, MRR (uni100) and top-10 accuracy.")
    p.add_argument("--model", required=True, help="CLUE serving SavedModel directory")
    p.add_argument("--task", required=True, help="task directory (interactions + catalogue.jsonl)")
    p.add_argument("--data", help="behaviour-log directory for user features "
                                  "(default: two levels above --task, the `clue synth` layout)")
    p.add_argument("--out", help="write results.json / results.md / results.png / blessing.json here")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--margin-over-toppop", type=float, default=0.0)
    p.add_argument("--margin-over-untrained", type=float, default=0.0)
    p.add_argument("--no-sequence-models", action="store_true",
                   help="skip T-UBM (BST) and Hybrid (faster)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from clue_tfrs.run import run_evaluation

    outcome = run_evaluation(args.model, args.task, out_dir=args.out, data_dir=args.data,
                             epochs=args.epochs, seed=args.seed,
                             margin_over_toppop=args.margin_over_toppop,
                             margin_over_untrained=args.margin_over_untrained,
                             sequence_models=not args.no_sequence_models)
    print(outcome.table.to_markdown())
    print()
    print(outcome.reason)
    for name, path in outcome.paths.items():
        print(f"{name:<10} {path}")
    return 0
