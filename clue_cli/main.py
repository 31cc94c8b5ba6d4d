"""The `clue` command line.

Every sub-command lives in its own module that defines
``add_parser(subparsers)``; the parser it adds sets ``func(args) -> int``.
Modules are imported only when listed here, and each imports its heavy
dependencies (TensorFlow, TFX, Beam) inside ``func`` so `clue --help` is fast.

Quiet start: before any sub-command module is imported, `quiet_warnings`
hides the FutureWarning / DeprecationWarning / PendingDeprecationWarning that
third-party packages print when imported (google-api-core's "non-supported
Python version", pyparsing's renamed functions, ...): nothing a user can act
on. It also passes the same filter to child processes (Beam workers, the
evaluator's child) through ``PYTHONWARNINGS``. ``--verbose`` anywhere on the
command line or ``CLUE_VERBOSE=1`` shows every warning (DeprecationWarning
included); the user's own ``-W`` / ``PYTHONWARNINGS`` are left to rule. Other
warnings (UserWarning, ...) and our own modules' are never hidden.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from typing import List, Optional, Sequence

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


#: Set to 1 (or pass --verbose) to see every Python warning.
VERBOSE_ENV = "CLUE_VERBOSE"
#: Warning categories third-party imports emit that say nothing to a user.
QUIET_CATEGORIES = (FutureWarning, DeprecationWarning, PendingDeprecationWarning)
#: Modules whose warnings are never hidden (ours), as a regex for ``module=``.
_THIRD_PARTY = r"(?!(clue_|components|tfx_pipeline)).*"


def quiet_warnings(argv: Sequence[str]) -> bool:
    """Hides `QUIET_CATEGORIES` raised by third-party modules; returns whether it did.

    With warning options of the user's own (``python -W``, ``PYTHONWARNINGS``)
    it changes nothing. With ``--verbose`` in ``argv`` or ``CLUE_VERBOSE`` set
    (not empty, not 0) it shows every warning once per place, DeprecationWarning
    included. Otherwise it hides them and sets ``PYTHONWARNINGS`` for child
    processes.
    """
    if sys.warnoptions or os.environ.get("PYTHONWARNINGS"):
        return False
    if "--verbose" in argv or os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
        warnings.simplefilter("default")
        return False
    for category in QUIET_CATEGORIES:
        warnings.filterwarnings("ignore", category=category, module=_THIRD_PARTY)
    os.environ["PYTHONWARNINGS"] = ",".join(f"ignore::{c.__name__}" for c in QUIET_CATEGORIES)
    return True


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
    quiet_warnings(sys.argv[1:] if argv is None else argv)  # before any heavy import
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # C++ INFO..ERROR noise (cuDNN factory, oneDNN) off
    # TFRS (evaluation) needs tf.keras to be Keras 2; CLUE code uses `import keras`
    # (Keras 3) and is unaffected. Must be set before TensorFlow is imported.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
