"""The `clue` command line.

Every sub-command lives in its own module that defines
``add_parser(subparsers)``; the parser it adds sets ``func(args) -> int``.
Modules are imported only when listed here, and each imports its heavy
dependencies (TensorFlow, TFX, Beam) inside ``func`` so `clue --help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional

# (module path) — each module defines add_parser(subparsers).
COMMAND_MODULES = [
    "clue_cli.synth",
    "clue_cli.train",
    "clue_cli.pipeline",
    "clue_cli.serve",
    "clue_cli.prepare",
    "clue_cli.evaluate",
    "clue_cli.scale",
    "clue_cli.batch",
    "clue_cli.bench",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clue",
        description="CLUE on TFX: train, evaluate and serve general-purpose user embeddings.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # C++ INFO..ERROR noise (cuDNN factory, oneDNN) off
    # TFRS (evaluation) needs tf.keras to be Keras 2; CLUE code uses `import keras`
    # (Keras 3) and is unaffected. Must be set before TensorFlow is imported.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
