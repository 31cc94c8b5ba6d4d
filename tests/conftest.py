"""Test-wide setup: quiet TensorFlow, Keras 2 for TFRS, two logical CPU devices.

Must run before TensorFlow is imported anywhere: TF_USE_LEGACY_KERAS makes
``tf.keras`` the Keras 2 that TFRS needs (``import keras`` stays Keras 3), and
two logical CPUs let the MirroredStrategy tests run on this machine.

Shared fixtures (set-up that several test files need):

* ``model_base``: an empty TF Serving model base directory (``ModelBase``:
  push a SavedModel as a new version the way the Pusher does);
* ``start_serving``: starts ``clue_keras.serving.server`` in-process on a free
  loopback port over a model base (``ServingTarget``), or, when
  ``CLUE_SERVING_ADDRESS`` is set, pushes to the real TF Serving behind it
  (``CLUE_SERVING_MODEL``, ``CLUE_SERVING_BASE_PATH``, see tests/test_serving.py);
* ``tiny_clue``: 100 synthetic users in 3 behaviour shards and untrained
  ``tiny`` CLUE serving SavedModels exported from them, one per seed.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402,F401

from clue_keras.distribute import configure_logical_cpus  # noqa: E402

configure_logical_cpus(2)

import dataclasses  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from typing import Callable, Dict, Optional  # noqa: E402

import pytest  # noqa: E402

#: ``host:port`` of an external TF Serving to test against instead of the local server.
EXTERNAL_SERVING_ADDRESS = os.environ.get("CLUE_SERVING_ADDRESS")


def wait_until(predicate: Callable[[], object], timeout_s: float = 120.0,
               what: str = "condition"):
    """Polls ``predicate`` until truthy and returns its value (bounded wait, no timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


@dataclasses.dataclass
class ModelBase:
    """A model base directory: ``<path>/<integer version>/saved_model.pb``."""

    path: str

    def versions(self) -> Dict[int, str]:
        from clue_keras.serving.version_dirs import list_versions

        return list_versions(self.path)

    def push(self, source: str, version: Optional[int] = None) -> int:
        """What the Pusher does: copy under a temporary name, rename into place.

        ``version`` defaults to one above the highest there. Returns it.
        """
        if version is None:
            version = max(self.versions(), default=0) + 1
        tmp = os.path.join(self.path, f".tmp-push-{version}")
        shutil.copytree(source, tmp)
        os.rename(tmp, os.path.join(self.path, str(version)))
        return version


@dataclasses.dataclass
class ServingTarget:
    """A server under test (in-process, or external when ``server`` is None)."""

    address: str
    model_name: str
    base: ModelBase
    server: object = None  # clue_keras.serving.server.ServingServer

    wait_until = staticmethod(wait_until)

    @property
    def base_path(self) -> str:
        return self.base.path

    def client(self, **kwargs):
        from clue_keras.serving.client import CLUEClient

        return CLUEClient(self.address, self.model_name, **kwargs)

    @staticmethod
    def served_version(client) -> Optional[int]:
        """The version ``client``'s server serves, None while it serves none."""
        from clue_keras.serving.client import ServingError

        try:
            return client.served_version()
        except ServingError:
            return None

    def wait_served(self, version: int, client=None) -> None:
        """Waits until ``version`` answers."""
        if client is None:
            with self.client() as c:
                return self.wait_served(version, c)
        wait_until(lambda: self.served_version(client) == version, what=f"version {version}")

    def push(self, source: str, version: Optional[int] = None) -> int:
        """Pushes ``source`` as a new version (default: the next) and waits until it is served."""
        version = self.base.push(source, version)
        self.wait_served(version)
        return version

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=0)
            self.server = None


@pytest.fixture
def model_base(tmp_path) -> ModelBase:
    """An empty model base directory of this test."""
    path = tmp_path / "model_base"
    path.mkdir()
    return ModelBase(str(path))


@pytest.fixture
def model_base_factory(tmp_path) -> Callable[[str], ModelBase]:
    """``make(name)``: a model base ``<tmp>/<name>`` of this test (not created yet)."""
    return lambda name: ModelBase(str(tmp_path / name))


@pytest.fixture(scope="session")
def start_serving(tmp_path_factory):
    """``start(source, model_name="clue", base_path=None, local=False, **server_kwargs)``.

    Starts ``clue_keras.serving.server.serve`` on 127.0.0.1, port 0, polling
    every 0.05 s (``server_kwargs`` override), over ``base_path`` (default: a
    new directory) with ``source`` (a SavedModel directory, or None to serve
    what is there) pushed as the next version; returns a ``ServingTarget``.
    With ``CLUE_SERVING_ADDRESS`` set and not ``local``, pushes ``source`` to
    the external server's base directory instead and waits until it serves it.
    Servers still running at the end of the session are stopped.
    """
    started = []

    def start(source: Optional[str], model_name: str = "clue", base_path: Optional[str] = None,
              local: bool = False, **server_kwargs) -> ServingTarget:
        if EXTERNAL_SERVING_ADDRESS and not local:
            base = os.environ.get("CLUE_SERVING_BASE_PATH")
            if not base:
                pytest.skip("CLUE_SERVING_ADDRESS set without CLUE_SERVING_BASE_PATH")
            target = ServingTarget(EXTERNAL_SERVING_ADDRESS,
                                   os.environ.get("CLUE_SERVING_MODEL", "clue"), ModelBase(base))
            if source is not None:
                target.push(source)
            return target
        from clue_keras.serving.server import serve

        base = ModelBase(base_path or str(tmp_path_factory.mktemp("model_base")))
        if source is not None:
            base.push(source)
        server_kwargs.setdefault("poll_seconds", 0.05)
        server = serve(base.path, model_name, port=0, host="127.0.0.1", **server_kwargs)
        target = ServingTarget(server.address, model_name, base, server)
        started.append(target)
        return target

    yield start
    for target in started:
        target.stop()


@dataclasses.dataclass
class TinyClue:
    """Synthetic behaviour logs and untrained tiny CLUE exports of them."""

    root: str
    data_dir: str
    behaviors: object  # pandas.DataFrame
    _exports: Dict[int, str] = dataclasses.field(default_factory=dict)

    def export(self, seed: int = 0) -> str:
        """The serving SavedModel of an untrained ``tiny`` CLUE (weights from ``seed``,
        BPE trained on the behaviours); exported once per seed per session."""
        if seed not in self._exports:
            from clue_bench.serve import export_untrained_model

            self._exports[seed] = export_untrained_model(
                os.path.join(self.root, f"model{seed}"), self.behaviors, seed=seed)
        return self._exports[seed]


@pytest.fixture(scope="session")
def tiny_clue(tmp_path_factory) -> TinyClue:
    """100 synthetic users (seed 5, no downstream tasks) in 3 behaviour shards."""
    import clue_synth
    from clue_keras.data.tables import read_behaviors

    root = str(tmp_path_factory.mktemp("tiny_clue"))
    data = os.path.join(root, "data")
    clue_synth.generate(data, users=100, seed=5, tasks=(), users_per_shard=40)
    return TinyClue(root, data, read_behaviors(data))
