#!/usr/bin/env python3
"""Generate the top-level Bazel ``BUILD`` file from the source tree.

Usage::

    python scripts/gen_build.py           # (re)write BUILD
    python scripts/gen_build.py --check   # exit 1 and print a diff if BUILD is stale

What it emits (all paths relative to the repository root, all lists sorted):

* one ``py_library`` per top-level Python package (a directory with an
  ``__init__.py``: ``clue_keras``, ``components``, ...). Its ``srcs`` list
  every ``.py`` file under the directory, subpackages included, explicitly
  (no ``glob``) so ``tests/test_build.py`` can check them.
* ``deps`` derived from the ``import`` / ``from ... import`` statements of
  those files (found with :mod:`ast`, so lazy imports inside functions count
  too): first-party packages as ``":<package>"``, third-party ones as
  ``requirement("<pip name>")`` through :data:`THIRD_PARTY`. An import that
  is neither standard library, first party nor in that map is an error, so
  the map stays complete.
* one ``py_test`` per ``tests/test_*.py`` with ``tests/conftest.py`` (and any
  non-test helper module of ``tests/`` it imports) in ``srcs``; ``size =
  "large"`` and ``tags = ["slow"]`` when the file uses ``pytest.mark.slow``.
* ``py_binary(name = "clue")`` for ``clue_cli/main.py`` (or, in an older
  tree, ``tfx_pipeline/cli.py``), depending on the
  packages of the sub-command modules listed in its ``COMMAND_MODULES``
  (they are imported by name at run time, which :mod:`ast` cannot see).
* one ``py_binary`` per ``scripts/*.py`` (``bazel run //:gen_build`` works:
  the root is then taken from ``BUILD_WORKSPACE_DIRECTORY``), with the helper
  packages it imports (``scripts/<name>/__init__.py``, imported as ``<name>``)
  in its ``srcs`` and ``imports = ["scripts"]``.

The output depends only on the files in the tree, never on the order the
file system lists them in, so it is byte-for-byte reproducible.

The work is done by the ``buildgen`` package next to this file: ``scan``
(the tree), ``deps`` (imports -> deps, the third-party map) and ``render``
(the BUILD text). This file is the command line.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # loaded by path (tests) rather than run as a script
    sys.path.insert(0, _HERE)

from buildgen.deps import THIRD_PARTY, locked_distributions, normalize_dist  # noqa: E402,F401
from buildgen.render import generate  # noqa: E402
from buildgen.scan import GenBuildError, command_modules  # noqa: E402,F401

__all__ = ["GenBuildError", "THIRD_PARTY", "command_modules", "generate",
           "locked_distributions", "main", "normalize_dist"]


def default_root() -> Path:
    """The repository root: Bazel's workspace under ``bazel run``, else this file's parent's parent."""
    workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY")
    return Path(workspace) if workspace else Path(__file__).resolve().parents[1]


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None, help="repository root (default: this repo)")
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 with a diff if BUILD is stale"
    )
    args = parser.parse_args(argv)
    root = (args.root or default_root()).resolve()
    build = root / "BUILD"
    try:
        text = generate(root)
    except GenBuildError as err:
        print(f"gen_build: error: {err}", file=sys.stderr)
        return 2
    current = build.read_text(encoding="utf-8") if build.is_file() else ""
    if args.check:
        if current == text:
            return 0
        diff = difflib.unified_diff(
            current.splitlines(keepends=True),
            text.splitlines(keepends=True),
            fromfile="BUILD (committed)",
            tofile="BUILD (generated)",
        )
        sys.stdout.writelines(diff)
        print("BUILD is stale: run `python scripts/gen_build.py`", file=sys.stderr)
        return 1
    if current != text:
        _write_atomic(build, text)
        print(f"wrote {build}")
    else:
        print(f"{build} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
