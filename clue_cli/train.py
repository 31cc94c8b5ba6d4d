"""`clue train` (training without TFX) and `clue presets`."""

from __future__ import annotations

import os

from clue_cli._args import add_model_args

#: `clue train` without --data: synthetic users generated into OUT/data.
SYNTH_USERS = 2000


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
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64, help="global batch")
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
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
                     checkpoint_every=args.checkpoint_every or args.train_steps)
    if args.learning_rate:
        tc = tc.replace(learning_rate=args.learning_rate)
    res = train_local(data, args.out, mc, tc, precision=args.precision, strategy=strategy)
    check = res.retrieval
    print(f"\nparameters        {param_count(mc):,} ({args.preset})")
    eval_loss = res.train.eval_loss  # None: fewer eval users than one batch
    print(f"final train loss  {res.train.final_loss:.4f}   held-out loss "
          + ("n/a" if eval_loss is None else f"{eval_loss:.4f}"))
    print(f"cross-service top-1 on {check['queries']} held-out queries: {check['top1']:.3f} "
          f"(chance {check['chance']:.4f}, {check['top1'] / max(check['chance'], 1e-12):.1f}x)")
    print(f"SavedModel        {res.export_dir}")
    return 0
