"""The Bazel BUILD file matches the tree, and scripts/gen_build.py behaves.

BUILD is Starlark, whose syntax is a subset of Python's, so it is read with
:func:`ast.parse`. Bazel is not run here; these checks are what keep BUILD
honest: every source file is in exactly one library, every test has a target,
nothing listed is missing, and the committed text is exactly what the
generator makes from the current tree (run ``python scripts/gen_build.py``
after adding files or imports). No TensorFlow is imported by this file.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "BUILD"
PACKAGES = ("clue_keras", "clue_tfrs", "components", "tfx_pipeline")
STALE_HINT = "BUILD is stale: run `python scripts/gen_build.py` and commit the result"


def _load_gen_build():
    spec = importlib.util.spec_from_file_location("gen_build", ROOT / "scripts" / "gen_build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_build"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


gen_build = _load_gen_build()


def _value(node: ast.AST) -> Any:
    """Starlark literal -> Python: strings, lists, and requirement("x") -> "@pypi:x"."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.List):
        return [_value(e) for e in node.elts]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "requirement"
        and len(node.args) == 1
    ):
        return "@pypi:" + _value(node.args[0])
    raise AssertionError(f"BUILD: unexpected expression {ast.dump(node)}")


def parse_build(text: str) -> Dict[str, Any]:
    """Parse BUILD text into {"loads": [...], "rules": [{"kind":..., attrs...}]}."""
    tree = ast.parse(text, filename="BUILD")
    loads: List[List[str]] = []
    rules: List[Dict[str, Any]] = []
    for stmt in tree.body:
        assert isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call), ast.dump(stmt)
        call = stmt.value
        kind = call.func.id
        if kind == "load":
            loads.append([_value(a) for a in call.args])
            continue
        attrs = {kw.arg: _value(kw.value) for kw in call.keywords}
        attrs["kind"] = kind
        attrs["_positional"] = [_value(a) for a in call.args]
        rules.append(attrs)
    return {"loads": loads, "rules": rules}


@pytest.fixture(scope="module")
def build() -> Dict[str, Any]:
    assert BUILD.is_file(), "BUILD is missing: run `python scripts/gen_build.py`"
    return parse_build(BUILD.read_text(encoding="utf-8"))


def _rules(build, kind):
    return {r["name"]: r for r in build["rules"] if r["kind"] == kind}


def _tree_py_files(package: str) -> List[str]:
    return sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / package).rglob("*.py")
        if "__pycache__" not in p.parts
    )


# --------------------------------------------------------------------------
# The committed BUILD file against the tree.
# --------------------------------------------------------------------------


def test_build_is_what_the_generator_makes_from_the_tree():
    expected = gen_build.generate(ROOT)
    actual = BUILD.read_text(encoding="utf-8")
    if actual != expected:
        import difflib

        diff = "".join(
            difflib.unified_diff(
                actual.splitlines(True), expected.splitlines(True), "BUILD", "generated", n=1
            )
        )
        pytest.fail(f"{STALE_HINT}\n{diff[:4000]}")


def test_loads_rules_python_and_pip_hub(build):
    assert ["@rules_python//python:defs.bzl", "py_binary", "py_library", "py_test"] in build["loads"]
    assert ["@pypi//:requirements.bzl", "requirement"] in build["loads"]
    assert "glob" not in BUILD.read_text(encoding="utf-8"), "srcs must be explicit lists"


def test_every_package_file_is_in_exactly_one_library(build):
    libraries = _rules(build, "py_library")
    assert set(PACKAGES) <= set(libraries), f"missing py_library targets: {set(PACKAGES) - set(libraries)}"
    owners: Dict[str, List[str]] = {}
    for name, rule in libraries.items():
        assert rule["srcs"] == sorted(rule["srcs"]), f"py_library {name}: srcs not sorted"
        for src in rule["srcs"]:
            owners.setdefault(src, []).append(name)
    doubled = {src: names for src, names in owners.items() if len(names) > 1}
    assert not doubled, f"files in more than one py_library: {doubled}"
    for package in set(PACKAGES) | set(libraries):
        files = _tree_py_files(package)
        assert files, f"package {package} has no .py files"
        missing = [f for f in files if f not in owners]
        assert not missing, f"{STALE_HINT}; not in any py_library: {missing}"
        assert libraries[package]["srcs"] == files, f"py_library {package}: srcs differ from the tree"


def test_every_test_file_has_a_py_test(build):
    tests = _rules(build, "py_test")
    files = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").glob("test_*.py"))
    assert files and "tests/test_build.py" in files
    for path in files:
        name = Path(path).stem
        assert name in tests, f"{STALE_HINT}; no py_test for {path}"
        rule = tests[name]
        # Every py_test runs pytest (tests/pytest_main.py) on its own file.
        assert rule["main"] == "tests/pytest_main.py"
        assert rule["args"] == [f"$(location {path})"]
        assert rule["srcs"][:3] == [path, "tests/conftest.py", "tests/pytest_main.py"], (
            f"py_test {name}: srcs {rule['srcs']}")
    assert sorted(f"tests/{n}.py" for n in tests) == files, "py_test without a test file"


def test_nothing_listed_is_missing_from_the_tree(build):
    for rule in build["rules"]:
        for attr in ("srcs", "data"):
            for item in rule.get(attr, []):
                if item.startswith(("@", ":", "//")):
                    continue
                assert (ROOT / item).is_file(), f"{rule['kind']} {rule['name']}: {attr} lists missing {item}"
        if "main" in rule:
            assert rule["main"] in rule["srcs"], f"{rule['name']}: main not in srcs"


def test_labels_point_at_targets_and_requirements_are_locked(build):
    names = {r["name"] for r in build["rules"] if "name" in r}
    locked = gen_build.locked_distributions(ROOT)
    for rule in build["rules"]:
        for item in rule.get("deps", []) + rule.get("data", []):
            if item.startswith(":"):
                assert item[1:] in names, f"{rule['name']}: unknown label {item}"
            elif item.startswith("@pypi:"):
                dist = item[len("@pypi:"):]
                assert gen_build.normalize_dist(dist) in locked, f"{dist} not in requirements.lock"


def test_test_deps_cover_the_first_party_packages_they_import(build):
    """Independent of the generator: scan each test's imports with ast."""
    tests = _rules(build, "py_test")
    conftest = ast.parse((ROOT / "tests" / "conftest.py").read_text(encoding="utf-8"))
    for name, rule in tests.items():
        tree = ast.parse((ROOT / rule["srcs"][0]).read_text(encoding="utf-8"))
        imported = set()
        for t in (tree, conftest):
            for node in ast.walk(t):
                if isinstance(node, ast.Import):
                    imported |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
        wanted = {f":{p}" for p in imported & set(PACKAGES)}
        assert wanted <= set(rule["deps"]), f"py_test {name}: deps lack {wanted - set(rule['deps'])}"
        assert "@pypi:pytest" in rule["deps"]
        slow = any(
            isinstance(n, ast.Attribute) and ast.unparse(n) == "pytest.mark.slow" for n in ast.walk(tree)
        )
        if slow:  # a mention inside a string (as in this file) does not count
            assert rule.get("size") == "large" and rule.get("tags") == ["slow"], name
        else:
            assert "tags" not in rule and rule.get("size") != "large", name


def test_clue_binary_covers_cli_command_modules(build):
    binaries = _rules(build, "py_binary")
    clue = binaries["clue"]
    assert clue["main"] == "clue_cli/main.py"
    for module in gen_build.command_modules(ROOT):
        assert f":{module.split('.')[0]}" in clue["deps"], module


def test_module_bazel_declares_pip_hub_over_the_lock():
    text = (ROOT / "MODULE.bazel").read_text(encoding="utf-8")
    calls = {}
    for stmt in ast.parse(text, filename="MODULE.bazel").body:
        node = stmt.value if isinstance(stmt, (ast.Expr, ast.Assign)) else None
        if isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            calls.setdefault(func, []).append({kw.arg: _value(kw.value) for kw in node.keywords})
    assert any(c.get("name") == "rules_python" for c in calls["bazel_dep"])
    assert {"python_version": "3.10", "is_default": True} in calls["python.toolchain"]
    (parse,) = calls["pip.parse"]
    assert parse["hub_name"] == "pypi"
    assert parse["requirements_lock"] == "//:requirements.lock"
    assert parse["python_version"] == "3.10"


# --------------------------------------------------------------------------
# The generator on tiny synthetic trees.
# --------------------------------------------------------------------------


def _write(root: Path, files: Dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


@pytest.fixture
def tree(tmp_path) -> Path:
    _write(
        tmp_path,
        {
            "requirements.lock": "numpy==1.26.4\ntensorflow==2.16.2\npytest==8.3.4\nPyYAML==6.0.3\nprotobuf==3.20.3\n",
            "alpha/__init__.py": "",
            "alpha/core.py": "import os\nimport numpy as np\n",
            "alpha/sub/__init__.py": "",
            "alpha/sub/deep.py": "def f():\n    import yaml  # lazy import still counts\n",
            "beta/__init__.py": "from alpha.core import np\nfrom . import tools\n",
            "beta/tools.py": "from google.protobuf import text_format\n",
            ".venv/lib/junk/__init__.py": "import not_a_dep\n",
            "clue_runs/x.py": "import not_a_dep\n",
            "alpha/__pycache__/core.py": "import not_a_dep\n",
            "tests/conftest.py": "import alpha\n",
            "tests/helpers.py": "import tensorflow as tf\n",
            "tests/test_fast.py": "import pytest\nimport helpers\nfrom beta import tools\n",
            "tests/test_slow.py": "import pytest\n\n@pytest.mark.slow\ndef test_x():\n    pass\n",
        },
    )
    return tmp_path


def test_generator_derives_srcs_and_deps(tree):
    parsed = parse_build(gen_build.generate(tree))
    libs = _rules(parsed, "py_library")
    assert sorted(libs) == ["alpha", "beta"]
    assert libs["alpha"]["srcs"] == [
        "alpha/__init__.py",
        "alpha/core.py",
        "alpha/sub/__init__.py",
        "alpha/sub/deep.py",
    ]
    assert libs["alpha"]["deps"] == ["@pypi:PyYAML", "@pypi:numpy"]
    assert libs["beta"]["deps"] == [":alpha", "@pypi:protobuf"]
    tests = _rules(parsed, "py_test")
    assert tests["test_fast"]["srcs"] == ["tests/test_fast.py", "tests/conftest.py",
                                          "tests/pytest_main.py", "tests/helpers.py"]
    assert tests["test_fast"]["deps"] == [":alpha", ":beta", "@pypi:pytest", "@pypi:tensorflow"]
    assert tests["test_fast"]["size"] == "medium" and "tags" not in tests["test_fast"]
    assert tests["test_slow"]["size"] == "large" and tests["test_slow"]["tags"] == ["slow"]
    assert tests["test_slow"]["deps"] == [":alpha", "@pypi:pytest"]


def test_generator_output_does_not_depend_on_file_creation_order(tree, tmp_path_factory):
    files = sorted(p for p in tree.rglob("*") if p.is_file())
    twin = tmp_path_factory.mktemp("twin")
    for path in reversed(files):  # different directory listing order
        _write(twin, {path.relative_to(tree).as_posix(): path.read_text(encoding="utf-8")})
    first = gen_build.generate(tree)
    assert gen_build.generate(tree) == first
    assert gen_build.generate(twin) == first


def test_unknown_third_party_import_is_an_error_naming_it(tree):
    _write(tree, {"alpha/bad.py": "import shiny_new_lib\nfrom other.pkg import thing\n"})
    with pytest.raises(gen_build.GenBuildError) as err:
        gen_build.generate(tree)
    message = str(err.value)
    assert "shiny_new_lib (imported by alpha/bad.py)" in message
    assert "other.pkg (imported by alpha/bad.py)" in message
    assert "other.pkg.thing" not in message
    assert "not_a_dep" not in message  # ignored directories are not scanned


def test_mapped_but_unlocked_distribution_is_an_error(tree):
    _write(tree, {"alpha/plot.py": "import matplotlib.pyplot as plt\n"})
    with pytest.raises(gen_build.GenBuildError, match="not pinned in requirements.lock: matplotlib"):
        gen_build.generate(tree)


def test_package_cycle_is_an_error(tree):
    _write(tree, {"alpha/back.py": "import beta\n"})
    with pytest.raises(gen_build.GenBuildError, match="cycle.*alpha -> beta -> alpha"):
        gen_build.generate(tree)


def test_cli_command_module_must_exist(tree):
    _write(
        tree,
        {
            "clue_cli/__init__.py": "",
            "clue_cli/main.py": 'COMMAND_MODULES = ["alpha.core", "beta.nope"]\n',
        },
    )
    with pytest.raises(gen_build.GenBuildError, match="'beta.nope', which does not exist"):
        gen_build.generate(tree)
    _write(tree, {"clue_cli/main.py": 'COMMAND_MODULES = ["alpha.core", "beta.tools"]\n'})
    clue = _rules(parse_build(gen_build.generate(tree)), "py_binary")["clue"]
    assert clue["deps"] == [":alpha", ":beta", ":clue_cli"]


def test_script_helper_package_goes_into_the_binary(tree):
    """scripts/<pkg>/ is imported by the scripts as top-level <pkg>: it is in the
    binary's srcs (not a binary, not unknown), its imports are the binary's deps."""
    _write(tree, {
        "scripts/tool.py": "import helperpkg.core\n",
        "scripts/helperpkg/__init__.py": "",
        "scripts/helperpkg/core.py": "import yaml\nfrom alpha import core\n",
    })
    binaries = _rules(parse_build(gen_build.generate(tree)), "py_binary")
    assert sorted(binaries) == ["tool"]
    tool = binaries["tool"]
    assert tool["srcs"] == ["scripts/tool.py", "scripts/helperpkg/__init__.py",
                            "scripts/helperpkg/core.py"]
    assert tool["imports"] == ["scripts"] and tool["main"] == "scripts/tool.py"
    assert tool["deps"] == [":alpha", "@pypi:PyYAML"]


def test_cli_writes_then_check_detects_staleness(tree):
    script = str(ROOT / "scripts" / "gen_build.py")
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, script, "--root", str(tree), *a], capture_output=True, text=True
    )
    assert run("--check").returncode == 1  # no BUILD yet
    assert run().returncode == 0
    assert (tree / "BUILD").read_text(encoding="utf-8") == gen_build.generate(tree)
    assert run("--check").returncode == 0
    _write(tree, {"beta/extra.py": ""})
    stale = run("--check")
    assert stale.returncode == 1
    assert '+        "beta/extra.py",' in stale.stdout
    assert "run `python scripts/gen_build.py`" in stale.stderr
    assert not list(tree.glob(".BUILD.*")), "temporary file left behind"
    _write(tree, {"beta/broken.py": "import shiny_new_lib\n"})
    bad = run()
    assert bad.returncode == 2 and "shiny_new_lib" in bad.stderr


if __name__ == "__main__":  # `bazel test //:test_build` runs this file as main
    sys.exit(pytest.main([__file__, "-q"]))
