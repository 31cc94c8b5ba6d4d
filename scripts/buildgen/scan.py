"""Reading the tree: packages, their files, each file's imports, the CLI's command modules.

Everything here depends only on the files under the root, never on the order
the file system lists them in.
"""

from __future__ import annotations

import ast
import dataclasses
import os
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

# Directories never scanned (virtualenvs, run outputs, build outputs, caches).
IGNORED_DIRS = frozenset(
    {
        ".git",
        ".venv",
        "venv",
        "__pycache__",
        ".pytest_cache",
        "clue_runs",
        "build",
        "dist",
        "docs",
        "scripts",
        "tests",
        "tmp",
    }
)
IGNORED_DIR_SUFFIXES = (".egg-info",)
TESTS_DIR = "tests"
SCRIPTS_DIR = "scripts"
CONFTEST = "tests/conftest.py"
PYTEST_MAIN = "tests/pytest_main.py"  # the main of every py_test; runs pytest on its args
#: The `clue` command's main module, the first that exists (clue_cli since the
#: CLI moved out of tfx_pipeline).
CLI_FILES = ("clue_cli/main.py", "tfx_pipeline/cli.py")
CLI_BINARY = "clue"
LOCK_FILE = "requirements.lock"


class GenBuildError(Exception):
    """The tree cannot be described by a BUILD file (message says why)."""


@dataclasses.dataclass(frozen=True)
class PyFile:
    """One parsed source file: its path and what it imports.

    Attributes:
      path: path relative to the repository root, "/"-separated.
      imports: absolute dotted module names imported (``from a.b import c``
        gives ``a.b`` and ``a.b.c``; relative imports are dropped: they stay
        inside the file's own package).
      uses_slow_mark: the file references ``pytest.mark.slow`` (or
        ``mark.slow``).
    """

    path: str
    imports: Tuple[str, ...]
    uses_slow_mark: bool


def is_ignored_dir(name: str) -> bool:
    return name in IGNORED_DIRS or name.startswith(".") or name.endswith(IGNORED_DIR_SUFFIXES)


def rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def find_packages(root: Path) -> List[str]:
    """Top-level package directories of ``root`` (those with an ``__init__.py``), sorted."""
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and not is_ignored_dir(p.name) and (p / "__init__.py").is_file()
    )


def package_files(root: Path, package: str) -> List[str]:
    """Every ``.py`` file under ``root/package`` (subpackages included), sorted."""
    found: List[str] = []
    for dirpath, dirnames, filenames in os.walk(root / package):
        dirnames[:] = [d for d in dirnames if not is_ignored_dir(d)]
        for name in filenames:
            if name.endswith(".py"):
                found.append(rel(root, Path(dirpath) / name))
    return sorted(found)


#: Non-Python files a package reads at run time (shipped as package data).
DATA_SUFFIXES = (".json", ".txt", ".yaml", ".pbtxt")


def package_data_files(root: Path, package: str) -> List[str]:
    """Data files under ``root/package`` (``DATA_SUFFIXES``), sorted."""
    found: List[str] = []
    for dirpath, dirnames, filenames in os.walk(root / package):
        dirnames[:] = [d for d in dirnames if not is_ignored_dir(d)]
        found += [rel(root, Path(dirpath) / n) for n in filenames if n.endswith(DATA_SUFFIXES)]
    return sorted(found)


def _is_slow_mark(node: ast.AST) -> bool:
    if not (isinstance(node, ast.Attribute) and node.attr == "slow"):
        return False
    value = node.value
    if isinstance(value, ast.Name):
        return value.id == "mark"
    return (
        isinstance(value, ast.Attribute)
        and value.attr == "mark"
        and isinstance(value.value, ast.Name)
        and value.value.id == "pytest"
    )


def parse_file(root: Path, rel_path: str) -> PyFile:
    """Parse one file; a syntax error names the file."""
    source = (root / rel_path).read_text(encoding="utf-8")
    try:
        tree = ast.parse(source, filename=rel_path)
    except SyntaxError as err:
        raise GenBuildError(f"{rel_path}:{err.lineno}: cannot parse: {err.msg}") from err
    imports: Set[str] = set()
    slow = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                imports.add(node.module)
                imports.update(f"{node.module}.{a.name}" for a in node.names if a.name != "*")
        elif _is_slow_mark(node):
            slow = True
    return PyFile(rel_path, tuple(sorted(imports)), slow)


def cli_file(root: Path) -> Optional[str]:
    """The CLI main module of the tree (``CLI_FILES``), or None."""
    return next((f for f in CLI_FILES if (Path(root) / f).is_file()), None)


def command_modules(root: Path) -> List[str]:
    """The strings of ``COMMAND_MODULES = [...]`` in the CLI file."""
    path = cli_file(root)
    if path is None:
        raise GenBuildError(f"no CLI module ({' or '.join(CLI_FILES)}) under {root}")
    tree = ast.parse((Path(root) / path).read_text(encoding="utf-8"), filename=path)
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        if any(isinstance(t, ast.Name) and t.id == "COMMAND_MODULES" for t in targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError as err:
                raise GenBuildError(f"{path}: COMMAND_MODULES must be a literal list") from err
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise GenBuildError(f"{path}: COMMAND_MODULES must be a list of strings")
            return value
    raise GenBuildError(f"{path}: no COMMAND_MODULES list found")


def module_exists(root: Path, module: str) -> bool:
    base = root.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def script_packages(root: Path) -> Dict[str, List[str]]:
    """Helper packages of the scripts: ``{name: its .py files}`` for every
    ``scripts/<name>/__init__.py`` (imported by the scripts as top-level ``<name>``)."""
    scripts = Path(root) / SCRIPTS_DIR
    if not scripts.is_dir():
        return {}
    return {p.name: package_files(Path(root), f"{SCRIPTS_DIR}/{p.name}")
            for p in sorted(scripts.iterdir())
            if p.is_dir() and not is_ignored_dir(p.name) and (p / "__init__.py").is_file()}
