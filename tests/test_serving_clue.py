"""The real CLUE serving SavedModel behind the TF Serving-compatible server.

An untrained ``tiny`` CLUE model (BPE trained on a few hundred synthetic item
texts) is exported as version 1 of a model base directory and served by
``clue_keras.serving.server`` in-process on 127.0.0.1:0, or by the server at
``CLUE_SERVING_ADDRESS`` (model ``CLUE_SERVING_MODEL``, base directory
``CLUE_SERVING_BASE_PATH`` as seen from here), as in tests/test_serving.py.
Everything the server answers must equal calling the SavedModel directly.
"""

from __future__ import annotations

import functools
import os
import shutil
import time

import numpy as np
import pytest
import tensorflow as tf

from clue_keras import synth
from clue_keras.batch_embed import read_model_layout, user_text_row
from clue_keras.bench_serve import export_untrained_model
from clue_keras.config import PRESETS
from clue_keras.records import clean_behaviors
from clue_keras.serving.client import CLUEClient, ServingError
from clue_keras.serving.server import list_versions, serve
from clue_keras.tokenizer import register_text_ops

# Two model exports plus the server: about a minute on two cores.
pytestmark = pytest.mark.slow

EXTERNAL_ADDRESS = os.environ.get("CLUE_SERVING_ADDRESS")
ATOL = 1e-5
D = PRESETS["tiny"].embedding_dim


def push_version(base_path: str, source: str, version: int) -> str:
    """What the Pusher does: copy under a temporary name, rename into place."""
    tmp = os.path.join(base_path, f".tmp-push-{version}")
    shutil.copytree(source, tmp)
    final = os.path.join(base_path, str(version))
    os.rename(tmp, final)
    return final


def wait_until(predicate, timeout_s: float = 120.0, what: str = "condition"):
    """Polls ``predicate`` until truthy (bounded wait, no timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def served_version(client: CLUEClient):
    try:
        return client.served_version()
    except ServingError:
        return None


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two untrained tiny CLUE exports (different seeds) + the synthetic users."""
    root = tmp_path_factory.mktemp("clue_serving")
    synth.generate(str(root / "data"), users=40, seed=3, tasks=())
    behaviors = synth.read_behaviors(str(root / "data"))
    paths = {seed: export_untrained_model(str(root / f"model{seed}"), behaviors, seed=seed)
             for seed in (0, 1)}
    return paths, behaviors


@pytest.fixture(scope="module")
def target(models, tmp_path_factory):
    paths, _ = models
    if EXTERNAL_ADDRESS:
        base = os.environ.get("CLUE_SERVING_BASE_PATH")
        if not base:
            pytest.skip("CLUE_SERVING_ADDRESS set without CLUE_SERVING_BASE_PATH")
        name = os.environ.get("CLUE_SERVING_MODEL", "clue")
        version = max(list_versions(base), default=0) + 1
        push_version(base, paths[0], version)
        with CLUEClient(EXTERNAL_ADDRESS, name) as c:
            wait_until(lambda: served_version(c) == version, what=f"version {version}")
        yield EXTERNAL_ADDRESS, name, base, None
        return
    base = str(tmp_path_factory.mktemp("base"))
    push_version(base, paths[0], 1)
    server = serve(base, "clue", port=0, poll_seconds=0.05)
    yield server.address, "clue", base, server
    server.stop(grace=0)


def _users(behaviors, services):
    """Client users ({"user_id", "items"}) from the cleaned histories, sorted by id."""
    users = []
    for uid, g in behaviors.groupby("user_id", sort=True):
        cleaned = clean_behaviors(zip(g["service"], g["timestamp"], g["item_text"]), max_items=10**6)
        items = {s: t for s, t in cleaned.items.items() if s in services}
        users.append({"user_id": uid, "items": items})
    return users


@functools.lru_cache(maxsize=None)
def _load(model_dir: str):
    register_text_ops()
    return tf.saved_model.load(model_dir)


def _direct(model_dir: str, signature: str, **inputs):
    fn = _load(model_dir).signatures[signature]
    return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


def _expected_users(model_dir, users, services, max_items):
    texts = np.stack([
        user_text_row([(s, i, t) for s, ts in u["items"].items() for i, t in enumerate(ts)],
                      services, max_items) for u in users])
    return _direct(model_dir, "serving_default", item_texts=texts.tolist())["embedding"]


def test_embed_users_equals_saved_model(models, target):
    paths, behaviors = models
    address, name, _, _ = target
    services, max_items = read_model_layout(paths[0])
    users = _users(behaviors, services)
    assert len(users) >= 30
    # Histories longer than S exist, so the client's "newest S" matters.
    assert max(len(t) for u in users for t in u["items"].values()) > max_items
    with CLUEClient(address, name) as client:
        got, errors = client.embed_users(users, services=services, batch_size=16)
        version = client.last_model_version
    assert errors == {}
    want = _expected_users(paths[0], users, services, max_items)
    assert got.shape == want.shape == (len(users), len(services) * D)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert version == max(list_versions(target[2]))


def test_embed_items_signature_equals_saved_model(models, target):
    paths, behaviors = models
    address, name, _, _ = target
    texts = np.array(sorted(set(behaviors["item_text"]))[:25] + ["", "  spaced   out  "], dtype=object)
    with CLUEClient(address, name) as client:
        got = client.predict({"item_texts": texts}, signature="embed_items")
    assert set(got) == {"item_embedding"}
    want = _direct(paths[0], "embed_items", item_texts=texts.tolist())["item_embedding"]
    assert got["item_embedding"].shape == want.shape == (len(texts), PRESETS["tiny"].hidden_dim)
    np.testing.assert_allclose(got["item_embedding"], want, atol=ATOL, rtol=0)


def test_pushed_version_with_new_weights_is_served(models, target):
    """Runs last: it replaces the served version."""
    paths, behaviors = models
    address, name, base, _ = target
    services, max_items = read_model_layout(paths[1])
    users = _users(behaviors, services)[:8]
    old = _expected_users(paths[0], users, services, max_items)
    new = _expected_users(paths[1], users, services, max_items)
    assert np.abs(old - new).max() > 1e-2  # really different weights
    version = max(list_versions(base)) + 1
    push_version(base, paths[1], version)
    with CLUEClient(address, name) as client:
        wait_until(lambda: served_version(client) == version, what=f"version {version}")
        got, errors = client.embed_users(users, services=services)
        assert client.last_model_version == version
    assert errors == {}
    np.testing.assert_allclose(got, new, atol=ATOL, rtol=0)
