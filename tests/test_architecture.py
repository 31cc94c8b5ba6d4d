"""The shape of the code: small modules, no import cycles, packages in layers.

Checked on the source text with :mod:`ast` (nothing is imported), counting
every import, including the lazy ones inside functions:

* no Python module of the project packages is longer than ``MAX_LINES``
  (except the generated files in ``LONG_FILES_ALLOWED``);
* the module import graph has no cycle (strongly connected components);
* a package imports only the packages the layering of the plan allows below
  it (``LAYERS``; ``clue_keras`` imports none of ours).

Each checker is also run on a small synthetic tree that breaks its rule, so
these tests can fail.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Set, Tuple

ROOT = Path(__file__).resolve().parents[1]

#: Project packages (directories under the root). ``scripts`` holds scripts run
#: with scripts/ on sys.path, so its modules are named relative to it.
PACKAGES = ("clue_cli", "clue_bench", "clue_scaling", "tfx_pipeline", "components",
            "clue_synth", "clue_tfrs", "clue_keras", "scripts")
SCRIPTS = "scripts"

MAX_LINES = 400
#: Generated files allowed to be longer (path relative to the root). Keep empty.
LONG_FILES_ALLOWED: Set[str] = set()

#: Package -> the packages of ours it may import (ISSUE9 plan, "Target layout").
#: Listed top to bottom; a package may only import packages listed after it.
LAYERS: Dict[str, Set[str]] = {
    "clue_cli": {"clue_bench", "clue_scaling", "tfx_pipeline", "components", "clue_synth",
                 "clue_tfrs", "clue_keras"},
    "clue_bench": {"tfx_pipeline", "components", "clue_synth", "clue_tfrs", "clue_keras"},
    "clue_scaling": {"clue_synth", "clue_tfrs", "clue_keras"},
    "tfx_pipeline": {"components", "clue_tfrs", "clue_keras"},
    "components": {"clue_tfrs", "clue_keras"},
    "clue_synth": {"clue_keras"},
    "clue_tfrs": {"clue_keras"},
    "clue_keras": set(),
}


# --------------------------------------------------------------------------
# Checkers (pure functions of a tree or a graph).
# --------------------------------------------------------------------------


def module_files(root: Path, packages: Iterable[str] = PACKAGES) -> Dict[str, Path]:
    """``{dotted module name: file}`` of every .py file of ``packages`` under ``root``.

    ``pkg/__init__.py`` is module ``pkg``; files under ``scripts/`` are named
    relative to it (``scripts/buildgen/scan.py`` is ``buildgen.scan``).
    """
    modules: Dict[str, Path] = {}
    for package in packages:
        base = root / package
        if not base.is_dir():
            continue
        top = base if package == SCRIPTS else root
        for path in sorted(base.rglob("*.py")):
            if "__pycache__" in path.parts or any(p.startswith(".") for p in path.parts):
                continue
            parts = list(path.relative_to(top).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if parts:
                modules[".".join(parts)] = path
    return modules


def long_files(root: Path, max_lines: int = MAX_LINES, allowed: Set[str] = frozenset(),
               packages: Iterable[str] = PACKAGES) -> Dict[str, int]:
    """``{relative path: lines}`` of the modules over ``max_lines`` lines."""
    out = {}
    for path in module_files(root, packages).values():
        rel = path.relative_to(root).as_posix()
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > max_lines and rel not in allowed:
            out[rel] = lines
    return dict(sorted(out.items()))


def _resolve(name: str, modules: Mapping[str, object]) -> Optional[str]:
    """The longest prefix of ``name`` that is one of ``modules`` (None: not ours)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def _imports(module: str, path: Path, modules: Mapping[str, object]) -> Set[str]:
    """The modules of ours that ``module`` imports anywhere in its file (functions too).

    ``import a.b`` and ``from a import b`` (b a module) depend on ``a.b``, not on
    the package ``a`` that Python initialises on the way; ``from a import x``
    (x not a module) depends on ``a``.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: Set[Optional[str]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(_resolve(alias.name, modules) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            for alias in node.names:
                full = f"{prefix}.{alias.name}" if prefix else alias.name
                found.add(full if full in modules else _resolve(prefix, modules))
    return {m for m in found if m is not None and m != module}


def import_graph(root: Path, packages: Iterable[str] = PACKAGES) -> Dict[str, Set[str]]:
    """``{module: modules of ours it imports}`` (explicit imports, lazy ones included)."""
    modules = module_files(root, packages)
    return {module: _imports(module, path, modules) for module, path in modules.items()}


def cycles(graph: Mapping[str, Iterable[str]]) -> List[List[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    out: List[List[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(out)


def layer_violations(graph: Mapping[str, Iterable[str]],
                     layers: Mapping[str, Set[str]] = LAYERS) -> List[Tuple[str, str]]:
    """``(module, imported module)`` pairs where a package imports one it may not."""
    bad = []
    for module in sorted(graph):
        package = module.split(".")[0]
        if package not in layers:
            continue  # scripts and anything outside the layering
        for target in sorted(graph[module]):
            other = target.split(".")[0]
            if other != package and other in layers and other not in layers[package]:
                bad.append((module, target))
    return bad


# --------------------------------------------------------------------------
# The real tree.
# --------------------------------------------------------------------------


def test_no_module_is_over_400_lines():
    too_long = long_files(ROOT, allowed=LONG_FILES_ALLOWED)
    assert not too_long, (
        f"modules over {MAX_LINES} lines (split them by job): "
        + ", ".join(f"{p} ({n})" for p, n in too_long.items()))


def test_no_import_cycles_between_modules():
    found = cycles(import_graph(ROOT))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_packages_import_only_the_layers_below_them():
    bad = layer_violations(import_graph(ROOT))
    assert not bad, "imports against the package layering:\n" + "\n".join(
        f"  {m} imports {t}" for m, t in bad)


def test_layer_table_lists_each_package_above_what_it_imports():
    order = list(LAYERS)
    for package, allowed in LAYERS.items():
        assert package not in allowed
        for other in allowed:
            assert order.index(other) > order.index(package), (package, other)
    assert set(LAYERS) == set(PACKAGES) - {SCRIPTS}


# --------------------------------------------------------------------------
# The checkers on synthetic trees and graphs: they can fail.
# --------------------------------------------------------------------------


def _tree(tmp_path: Path, files: Dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return tmp_path


def test_cycles_finds_strongly_connected_components():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"},
             "g": {"a"}}
    assert cycles(graph) == [["a", "b", "c"], ["e", "f"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_import_graph_sees_lazy_relative_and_from_imports(tmp_path):
    root = _tree(tmp_path, {
        "clue_keras/__init__.py": "",
        "clue_keras/one.py": "from clue_keras import two\n",
        "clue_keras/two.py": "def f():\n    from . import three  # lazy and relative\n",
        "clue_keras/three.py": "import clue_keras.one as one\nimport numpy\n",
        "clue_keras/sub/__init__.py": "from .inner import x\n",
        "clue_keras/sub/inner.py": "from ..one import something\nx = 1\n",
        "scripts/tool.py": "from helper.core import run\n",
        "scripts/helper/__init__.py": "",
        "scripts/helper/core.py": "import tool\n",
    })
    graph = import_graph(root)
    assert graph["clue_keras.one"] == {"clue_keras.two"}
    assert graph["clue_keras.two"] == {"clue_keras.three"}
    assert graph["clue_keras.three"] == {"clue_keras.one"}
    assert graph["clue_keras.sub"] == {"clue_keras.sub.inner"}
    assert graph["clue_keras.sub.inner"] == {"clue_keras.one"}
    assert cycles(graph) == [["clue_keras.one", "clue_keras.three", "clue_keras.two"],
                             ["helper.core", "tool"]]


def test_layer_violations_catch_an_upward_import(tmp_path):
    root = _tree(tmp_path, {
        "clue_keras/__init__.py": "",
        "clue_keras/low.py": "def f():\n    from clue_tfrs import high  # upward, lazy\n",
        "clue_tfrs/__init__.py": "",
        "clue_tfrs/high.py": "from clue_keras import low\n",
        "clue_synth/__init__.py": "import clue_tfrs.high\n",
    })
    graph = import_graph(root)
    assert layer_violations(graph) == [("clue_keras.low", "clue_tfrs.high"),
                                       ("clue_synth", "clue_tfrs.high")]
    assert layer_violations({"clue_tfrs.x": {"clue_keras.y"}}) == []


def test_long_files_are_reported_unless_allowed(tmp_path):
    root = _tree(tmp_path, {
        "clue_keras/__init__.py": "",
        "clue_keras/big.py": "x = 1\n" * 401,
        "clue_keras/ok.py": "x = 1\n" * 400,
        "scripts/gen.py": "x = 1\n" * 500,
    })
    assert long_files(root) == {"clue_keras/big.py": 401, "scripts/gen.py": 500}
    assert long_files(root, allowed={"scripts/gen.py"}) == {"clue_keras/big.py": 401}
