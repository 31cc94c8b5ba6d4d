"""`clue train` (training without TFX) and `clue presets`."""

from __future__ import annotations

import argparse
import os

from clue_cli._args import add_model_args, non_negative_int
from clue_keras.config import LOCAL_TRAIN

#: `clue train` without --data: synthetic users generated into OUT/data.
SYNTH_USERS = 2000


def _epochs(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def add_schedule_args(p: argparse.ArgumentParser) -> None:
    """--epochs, --eval-every, --patience (`clue train`, `clue run`, `clue compile`);
    defaults from `clue_keras.config.LOCAL_TRAIN`."""
    p.add_argument("--epochs", type=_epochs, default=LOCAL_TRAIN.epochs, metavar="E",
                   help="train E passes over the pre-training users (users with >= 2 "
                        "services in the train split, counted in the records) instead of "
                        "--train-steps: steps = ceil(E * users / batch)")
    p.add_argument("--eval-every", type=non_negative_int, default=LOCAL_TRAIN.eval_every,
                   metavar="N", help="held-out contrastive loss every N steps (default 0: "
                                     "a tenth of the steps)")
    p.add_argument("--patience", type=non_negative_int, default=LOCAL_TRAIN.patience,
                   metavar="N", help="stop after N held-out evaluations without a better "
                                     "loss; the best step's weights are exported (0: train "
                                     "every step; default %(default)s)")


def add_parser(sub) -> None:
    p = sub.add_parser("presets", help="list model presets and their parameter counts")
    p.set_defaults(func=_presets)

    p = sub.add_parser(
        "train", help="train CLUE on behaviour logs without TFX (local preprocessing)",
        description="Prepares per-user records in-process (same code as the pipeline's "
                    "BehaviorPreprocess), trains, exports the serving SavedModel and reports "
                    "held-out cross-service retrieval.")
    p.add_argument("--data", help="behaviour-log directory (as written by `clue synth`); "
                                  "synthetic data is generated when omitted")
    p.add_argument("--out", default="clue_runs/train", help="output directory")
    p.add_argument("--users", type=int, default=SYNTH_USERS,
                   help="synthetic users when --data is omitted")
    p.add_argument("--train-steps", type=int, default=LOCAL_TRAIN.train_steps)
    p.add_argument("--batch-size", type=int, default=LOCAL_TRAIN.batch_size, help="global batch")
    p.add_argument("--learning-rate", type=float, default=LOCAL_TRAIN.learning_rate)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    add_schedule_args(p)
    add_model_args(p)
    p.set_defaults(func=_train)


def _presets(args) -> int:
    from clue_keras.config import PRESETS, param_count

    print(f"{'preset':<12} {'params':>14}  S    L    D    layers(c+p)  heads  ff")
    for name, mc in PRESETS.items():
        print(f"{name:<12} {param_count(mc):>14,}  {mc.max_items:<4} {mc.max_tokens:<4} "
              f"{mc.hidden_dim:<4} {mc.child_layers}+{mc.parent_layers:<10} {mc.num_heads:<6} "
              f"{mc.intermediate_dim}")
    return 0


def _train(args) -> int:
    from clue_keras.distribute import get_strategy

    strategy = get_strategy(args.cpu_replicas)  # before anything else initialises TensorFlow

    from clue_cli._data import synthetic_data
    from clue_keras.config import TrainConfig, get_preset, param_count
    from clue_keras.workflow import train_local

    mc = get_preset(args.preset)
    data = args.data or synthetic_data(os.path.join(args.out, "data"), args.users, args.seed)
    tc = TrainConfig(batch_size=args.batch_size, train_steps=args.train_steps, seed=args.seed,
                     checkpoint_every=args.checkpoint_every or 0, epochs=args.epochs,
                     eval_every=args.eval_every, patience=args.patience)
    if args.learning_rate:
        tc = tc.replace(learning_rate=args.learning_rate)
    res = train_local(data, args.out, mc, tc, precision=args.precision, strategy=strategy)
    check = res.retrieval
    print(f"\nparameters        {param_count(mc):,} ({args.preset})")
    eval_loss = res.train.eval_loss  # None: fewer eval users than one batch
    print(f"final train loss  {res.train.final_loss:.4f}   held-out loss "
          + ("n/a" if eval_loss is None else
             f"{eval_loss:.4f} (step {res.train.best_step} of {res.train.steps} kept)"))
    for note in res.train.warnings:
        print(f"warning           {note}")
    print(f"cross-service top-1 on {check['queries']} held-out queries: {check['top1']:.3f} "
          f"(chance {check['chance']:.4f}, {check['top1'] / max(check['chance'], 1e-12):.1f}x)")
    print(f"SavedModel        {res.export_dir}")
    return 0
