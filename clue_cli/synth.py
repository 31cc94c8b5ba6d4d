"""`clue synth`: write a synthetic multi-service data set (see `clue_synth`).

Example::

    clue synth --users 100000 --seed 0 --out data/synth --format parquet \\
        --services news,search,shopping --tasks movies,books --shard-users 50000
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, List, Sequence

# Light package (numpy only); pyarrow / pandas / tqdm load inside generate().
import clue_synth as synth


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _name_list(known: Sequence[str], allow_empty: bool) -> Callable[[str], List[str]]:
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


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "synth",
        help="write synthetic behaviour logs and downstream tasks with known ground truth",
        description=(
            "Writes pre-training behaviour logs (user_id, service, timestamp, item_text) for "
            "several services, interaction files for downstream tasks not used in pre-training, "
            "and the ground truth (users' latent topics) under --out. Same --seed, same bytes."
        ),
    )
    p.add_argument("--users", type=_positive_int, required=True, help="number of users (>= 1)")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default 0)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", choices=synth.OUTPUT_FORMATS, default="csv", help="file format (default csv)")
    p.add_argument(
        "--services", type=_name_list(synth.KNOWN_SERVICES, False), default=list(synth.KNOWN_SERVICES),
        help=f"comma-separated pre-training services (default {','.join(synth.KNOWN_SERVICES)})")
    p.add_argument(
        "--tasks", type=_name_list(synth.KNOWN_TASKS, True), default=["movies", "books"],
        help=f"comma-separated downstream tasks from {','.join(synth.KNOWN_TASKS)} (default movies,books; '' for none)")
    p.add_argument("--shard-users", type=_positive_int, default=50_000,
                   help="users per behaviour shard file (default 50000)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    start = time.time()
    try:
        manifest = synth.generate(
            args.out, users=args.users, seed=args.seed, fmt=args.format, services=args.services,
            tasks=args.tasks, users_per_shard=args.shard_users, progress=not args.quiet)
    except (ValueError, OSError) as e:
        print(f"clue synth: error: {e}", file=sys.stderr)
        return 2
    behaviors = sum(n for f, n in manifest["files"].items() if f.startswith("behaviors/"))
    tasks = ", ".join(f"{t}: {manifest['files'][f'downstream/{t}/interactions.{args.format}']} clicks"
                      for t in manifest["tasks"]) or "no downstream tasks"
    print(f"clue synth: {manifest['users']} users, {behaviors} behaviours in {manifest['num_shards']} "
          f"shard(s), {tasks}; wrote {args.out} in {time.time() - start:.1f} s")
    return 0
