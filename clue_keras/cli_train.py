"""`clue train`, `clue presets`, and `add_bench_parser` for `clue bench train`."""

from __future__ import annotations

import argparse
import json
import os


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help="model preset (see `clue presets`)")
    p.add_argument("--precision", default="auto",
                   choices=["auto", "float32", "mixed_float16", "mixed_bfloat16"])
    p.add_argument("--cpu-replicas", type=int, default=1,
                   help="MirroredStrategy over N logical CPU devices when there is no GPU")


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
    p.add_argument("--users", type=int, default=2000, help="synthetic users when --data is omitted")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64, help="global batch")
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    _add_model_args(p)
    p.set_defaults(func=_train)


def add_bench_parser(bsub) -> None:
    """`clue bench train` (the `bench` group itself is tfx_pipeline/cli_bench.py)."""
    b = bsub.add_parser("train", help="training throughput and FLOP/s vs a matmul in the same run")
    b.add_argument("--steps", type=int, default=20)
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--fill", type=float, default=0.5,
                   help="share of item/token slots that hold real data in the synthetic batch")
    b.add_argument("--json", help="also write the figures to this JSON file")
    _add_model_args(b)
    b.set_defaults(func=_bench_train)


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

    strategy = get_strategy(args.cpu_replicas)
    import numpy as np

    from clue_keras import synth
    from clue_keras.config import TrainConfig, get_preset, param_count
    from clue_keras.cross_service import cross_service_top1
    from clue_keras.data import load_split_arrays
    from clue_keras.export import export_saved_model
    from clue_keras.prepare import prepare_local
    from clue_keras.tokenizer import load_vocab_info
    from clue_keras.train import train

    mc = get_preset(args.preset)
    data = args.data
    if not data:
        data = os.path.join(args.out, "data")
        if not os.path.exists(os.path.join(data, "manifest.json")):
            print(f"generating {args.users} synthetic users into {data}")
            synth.generate(data, users=args.users, seed=args.seed)
    records = os.path.join(args.out, "records")
    stats = prepare_local(data, records, max_items=mc.max_items, max_tokens=mc.max_tokens,
                          vocab_size=mc.vocab_size)
    print("preprocessing:", json.dumps(stats, sort_keys=True))
    tc = TrainConfig(batch_size=args.batch_size, train_steps=args.train_steps, seed=args.seed,
                     checkpoint_every=args.checkpoint_every or args.train_steps)
    if args.learning_rate:
        tc = tc.replace(learning_rate=args.learning_rate)
    vocab_dir = os.path.join(records, "vocab")
    result = train(os.path.join(records, "Split-train", "*"), vocab_dir, mc, tc,
                   os.path.join(args.out, "model"),
                   eval_files=os.path.join(records, "Split-eval", "*"), strategy=strategy,
                   precision=args.precision)
    from clue_keras.train import load_pretrainer

    model = load_pretrainer(os.path.join(args.out, "model", "pretrainer.keras"))
    arrays = load_split_arrays(os.path.join(records, "Split-test", "*"), load_vocab_info(vocab_dir))
    out = model.encoder.predict({"token_ids": arrays["token_ids"]}, batch_size=128, verbose=0)
    check = cross_service_top1(np.asarray(out["user_embedding"]), np.asarray(out["service_mask"]))
    export_dir = os.path.join(args.out, "export")
    if os.path.exists(export_dir):
        import shutil
        shutil.rmtree(export_dir)
    export_saved_model(model, vocab_dir, export_dir)
    print(f"\nparameters        {param_count(mc):,} ({args.preset})")
    print(f"final train loss  {result.final_loss:.4f}   held-out loss {result.eval_loss:.4f}")
    print(f"cross-service top-1 on {check['queries']} held-out queries: {check['top1']:.3f} "
          f"(chance {check['chance']:.4f}, {check['top1'] / max(check['chance'], 1e-12):.1f}x)")
    print(f"SavedModel        {export_dir}")
    return 0


def _bench_train(args) -> int:
    from clue_keras.bench import bench_train

    from clue_keras.distribute import get_strategy

    strategy = get_strategy(args.cpu_replicas)
    res = bench_train(args.preset, steps=args.steps, batch_size=args.batch_size,
                      fill=args.fill, precision=args.precision, strategy=strategy)
    for k, v in res.items():
        print(f"{k:<34} {v:,.4g}" if isinstance(v, float) else f"{k:<34} {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0
