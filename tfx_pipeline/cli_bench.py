"""`clue bench train|preprocess|serve`: the benchmarks behind docs/PERFORMANCE.md."""

from __future__ import annotations


def add_parser(sub) -> None:
    from clue_keras.bench_serve import add_bench_parser as add_serve
    from clue_keras.cli_train import add_bench_parser as add_train
    from tfx_pipeline.bench_preprocess import add_bench_parser as add_preprocess

    bench = sub.add_parser("bench", help="benchmarks (see docs/PERFORMANCE.md)")
    bsub = bench.add_subparsers(dest="bench", metavar="WHAT")
    bsub.required = True
    add_train(bsub)        # clue bench train
    add_preprocess(bsub)   # clue bench preprocess
    add_serve(bsub)        # clue bench serve
