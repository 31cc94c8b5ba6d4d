"""The real CLUE serving SavedModel behind the TF Serving-compatible server.

An untrained ``tiny`` CLUE model (conftest's ``tiny_clue``: BPE trained on the
synthetic item texts) is exported as version 1 of a model base directory and
served by ``clue_keras.serving.server`` in-process on 127.0.0.1:0 (conftest's
``start_serving``), or by the server at
``CLUE_SERVING_ADDRESS`` (model ``CLUE_SERVING_MODEL``, base directory
``CLUE_SERVING_BASE_PATH`` as seen from here), as in tests/test_serving.py.
Everything the server answers must equal calling the SavedModel directly.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import tensorflow as tf

from clue_keras.config import PRESETS
from clue_keras.data.records import clean_behaviors
from clue_keras.embeddings.user_rows import read_model_layout, user_text_row
from clue_keras.tokenizer import register_text_ops

# Two model exports plus the server: about a minute on two cores.
pytestmark = pytest.mark.slow

ATOL = 1e-5
D = PRESETS["tiny"].embedding_dim


@pytest.fixture(scope="module")
def models(tiny_clue):
    """Two untrained tiny CLUE exports (different seeds) + the synthetic users."""
    return {seed: tiny_clue.export(seed) for seed in (0, 1)}, tiny_clue.behaviors


@pytest.fixture(scope="module")
def target(models, start_serving):
    """Version 1 (or, on an external server, the next version) = the seed-0 export."""
    paths, _ = models
    t = start_serving(paths[0], "clue")
    yield t
    t.stop()


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
    services, max_items = read_model_layout(paths[0])
    users = _users(behaviors, services)
    assert len(users) >= 30
    # Histories longer than S exist, so the client's "newest S" matters.
    assert max(len(t) for u in users for t in u["items"].values()) > max_items
    with target.client() as client:
        got, errors = client.embed_users(users, services=services, batch_size=16)
        version = client.last_model_version
    assert errors == {}
    want = _expected_users(paths[0], users, services, max_items)
    assert got.shape == want.shape == (len(users), len(services) * D)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert version == max(target.base.versions())


def test_embed_items_signature_equals_saved_model(models, target):
    paths, behaviors = models
    texts = np.array(sorted(set(behaviors["item_text"]))[:25] + ["", "  spaced   out  "], dtype=object)
    with target.client() as client:
        got = client.predict({"item_texts": texts}, signature="embed_items")
    assert set(got) == {"item_embedding"}
    want = _direct(paths[0], "embed_items", item_texts=texts.tolist())["item_embedding"]
    assert got["item_embedding"].shape == want.shape == (len(texts), PRESETS["tiny"].hidden_dim)
    np.testing.assert_allclose(got["item_embedding"], want, atol=ATOL, rtol=0)


def test_pushed_version_with_new_weights_is_served(models, target):
    """Runs last: it replaces the served version."""
    paths, behaviors = models
    services, max_items = read_model_layout(paths[1])
    users = _users(behaviors, services)[:8]
    old = _expected_users(paths[0], users, services, max_items)
    new = _expected_users(paths[1], users, services, max_items)
    assert np.abs(old - new).max() > 1e-2  # really different weights
    version = target.push(paths[1])
    with target.client() as client:
        got, errors = client.embed_users(users, services=services)
        assert client.last_model_version == version
    assert errors == {}
    np.testing.assert_allclose(got, new, atol=ATOL, rtol=0)
