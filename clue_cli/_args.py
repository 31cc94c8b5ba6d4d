"""argparse value types and option groups shared by the `clue` command modules."""

from __future__ import annotations

import argparse
from typing import Callable, List, Optional, Sequence

from clue_keras.config import PRECISIONS


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def name_list(known: Sequence[str], allow_empty: bool) -> Callable[[str], List[str]]:
    """argparse type: comma-separated names, each one of ``known``."""

    def parse(text: str) -> List[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown name(s) {unknown}; choose from {','.join(known)}")
        if not names and not allow_empty:
            raise argparse.ArgumentTypeError(f"give at least one of {','.join(known)}")
        return names

    return parse


def margin(text: str) -> Optional[float]:
    """argparse type: a float, or ``none`` (skip that comparison)."""
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def confidence(text: str) -> float:
    """argparse type: a confidence level in (0.5, 1), e.g. 0.95."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.5 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0.5, 1), e.g. 0.95; got {text}")
    return value


def comma_ints(text: str) -> List[int]:
    """Comma-separated integers (empty items ignored); ValueError on anything else."""
    return [int(c) for c in text.split(",") if c.strip()]


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--preset, --precision, --cpu-replicas (`clue train`, `clue bench train`)."""
    p.add_argument("--preset", default="tiny", help="model preset (see `clue presets`)")
    p.add_argument("--precision", default="auto", choices=list(PRECISIONS))
    p.add_argument("--cpu-replicas", type=int, default=1,
                   help="MirroredStrategy over N logical CPU devices when there is no GPU")


BEAM_ARG_HELP = ("a Beam pipeline option, e.g. --beam-arg=--direct_num_workers=2 (repeatable; "
                 "replaces the multi-processing DirectRunner default)")


def add_beam_arg(p, help_text: str = BEAM_ARG_HELP, metavar: Optional[str] = None) -> None:
    """--beam-arg (repeatable): one Beam pipeline option per use; None when not given."""
    p.add_argument("--beam-arg", action="append", default=None, metavar=metavar, help=help_text)
