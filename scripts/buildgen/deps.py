"""Import names -> BUILD deps: first-party packages, pinned third-party distributions.

``THIRD_PARTY`` maps import names to the distributions of requirements.lock;
an import that is neither standard library, first party, a local helper nor
in that map is an error, so the map stays complete. Package dependencies must
form no cycle (Bazel forbids it).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set

from buildgen.scan import LOCK_FILE, TESTS_DIR, GenBuildError, PyFile

# Import name (module or dotted prefix) -> distribution name in requirements.lock.
# Longest dotted prefix wins, so "google.protobuf" is found for
# "google.protobuf.text_format". Keep sorted.
THIRD_PARTY: Dict[str, str] = {
    "absl": "absl-py",
    "apache_beam": "apache-beam",
    "cryptography": "cryptography",
    "dask": "dask",
    "distributed": "distributed",
    "google.protobuf": "protobuf",
    "grpc": "grpcio",
    "gcp_storage_emulator": "gcp-storage-emulator",
    "keras": "keras",
    "keras_hub": "keras-hub",
    "keras_nlp": "keras-nlp",
    "kfp.pipeline_spec": "kfp-pipeline-spec",
    "matplotlib": "matplotlib",
    "ml_metadata": "ml-metadata",
    "numpy": "numpy",
    "pandas": "pandas",
    "PIL": "pillow",
    "pyarrow": "pyarrow",
    "pytest": "pytest",
    "scipy": "scipy",
    "sklearn": "scikit-learn",
    "tensorflow": "tensorflow",
    "tensorflow_data_validation": "tensorflow-data-validation",
    "tensorflow_hub": "tensorflow-hub",
    "tensorflow_metadata": "tensorflow-metadata",
    "tensorflow_model_analysis": "tensorflow-model-analysis",
    "tensorflow_recommenders": "tensorflow-recommenders",
    "tensorflow_serving": "tensorflow-serving-api",
    "tensorflow_text": "tensorflow-text",
    "tensorflow_transform": "tensorflow-transform",
    "tf_keras": "tf-keras",
    "tfx": "tfx",
    "tfx_bsl": "tfx-bsl",
    "tokenizers": "tokenizers",
    "tqdm": "tqdm",
    "yaml": "PyYAML",
}


def _third_party(module: str) -> Optional[str]:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        dist = THIRD_PARTY.get(".".join(parts[:n]))
        if dist is not None:
            return dist
    return None


def normalize_dist(name: str) -> str:
    """PEP 503 name normalisation (what rules_python's ``requirement()`` does)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_distributions(root: Path) -> Set[str]:
    """Normalised names of the distributions pinned in ``requirements.lock``."""
    path = root / LOCK_FILE
    if not path.is_file():
        raise GenBuildError(f"{LOCK_FILE} not found under {root}")
    names: Set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*==", line)
        if match:
            names.add(normalize_dist(match.group(1)))
    return names


@dataclasses.dataclass
class Deps:
    """Deps of one target, collected from several files."""

    first_party: Set[str] = dataclasses.field(default_factory=set)
    third_party: Set[str] = dataclasses.field(default_factory=set)
    local_modules: Set[str] = dataclasses.field(default_factory=set)  # tests/ or scripts/ helpers

    def labels(self, self_name: Optional[str] = None) -> List[str]:
        fp = sorted(f'":{p}"' for p in self.first_party if p != self_name)
        tp = sorted(f'requirement("{d}")' for d in self.third_party)
        return fp + tp


class Resolver:
    """Maps import names to BUILD deps, remembering unknown names."""

    def __init__(self, packages: Sequence[str], local_modules: Iterable[str] = (),
                 script_packages: Iterable[str] = ()):
        self.packages = set(packages)
        self.local_modules = set(local_modules)
        self.script_packages = set(script_packages)
        self.unknown: Dict[str, Set[str]] = {}

    def add(self, deps: Deps, pyfile: PyFile, local_ok: bool = False,
            script_ok: bool = False) -> None:
        """Adds ``pyfile``'s imports to ``deps``. ``local_ok``: a test (tests/
        helpers are local modules); ``script_ok``: a script (scripts/<package>/
        helpers are local modules)."""
        stdlib = getattr(sys, "stdlib_module_names", None)
        if stdlib is None:
            raise GenBuildError("Python >= 3.10 is needed (sys.stdlib_module_names)")
        for module in pyfile.imports:
            top = module.split(".")[0]
            if top in self.packages:
                deps.first_party.add(top)
            elif top in stdlib or top == "__future__":
                continue
            elif script_ok and top in self.script_packages:
                deps.local_modules.add(top)
            elif local_ok and (top in self.local_modules or top == TESTS_DIR):
                name = module.split(".")[1] if top == TESTS_DIR and "." in module else top
                if name in self.local_modules:
                    deps.local_modules.add(name)
            else:
                dist = _third_party(module)
                if dist is not None:
                    deps.third_party.add(dist)
                elif module.rsplit(".", 1)[0] == module or module.rsplit(".", 1)[0] not in pyfile.imports:
                    # "from x import y" records x and x.y: report only x.
                    self.unknown.setdefault(module, set()).add(pyfile.path)

    def check(self) -> None:
        if self.unknown:
            lines = [
                f"  {name} (imported by {', '.join(sorted(files))})"
                for name, files in sorted(self.unknown.items())
            ]
            raise GenBuildError(
                "unknown third-party import names; add them to THIRD_PARTY in "
                "scripts/buildgen/deps.py (import name -> requirements.lock name):\n" + "\n".join(lines)
            )


def check_acyclic(graph: Dict[str, Set[str]]) -> None:
    """Raise if the package dependency graph has a cycle (Bazel rejects cycles)."""
    state: Dict[str, int] = {}  # 1 = on stack, 2 = done
    stack: List[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise GenBuildError(
                    "packages import each other in a cycle, which Bazel forbids: "
                    + " -> ".join(cycle)
                )
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
