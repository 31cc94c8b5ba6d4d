"""`clue serve` while a push is half-way: the completeness rule of
``clue_keras.serving.model_manager`` with real copies, threads and gRPC on loopback.

The Pusher (and ``cp -r``) copies a SavedModel into ``<base>/<version>/`` in
place, file by file. Here a thread does that slowly (pauses between files and
in the middle of each file, ``saved_model.pb`` first: the worst order) while
another thread sends Predict requests (a bounded number): the previous
version answers every one of them, correctly, until the copy is complete.
Every wait is bounded; nothing asserts on timing.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from clue_keras.serving.version_dirs import incomplete_reason

pytestmark = pytest.mark.skipif(bool(os.environ.get("CLUE_SERVING_ADDRESS")),
                                reason="tests this project's local server itself")

P, S = 2, 3
MANAGER_LOG = "clue_keras.serving.model_manager"


class _Scaled(tf.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = tf.Variable(scale, dtype=tf.float32, trainable=False)

    @tf.function(input_signature=[tf.TensorSpec([None, P, S], tf.string, name="item_texts")])
    def serve(self, item_texts):
        lengths = tf.cast(tf.strings.length(item_texts), tf.float32)
        return {"embedding": tf.reshape(lengths, [-1, P * S]) * self.scale}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{scale: SavedModel dir}: embedding = byte lengths * scale."""
    root = tmp_path_factory.mktemp("fault_models")
    out = {}
    for scale in (1.0, 2.0, 3.0):
        module = _Scaled(scale)
        path = str(root / f"scale{scale:g}")
        tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
        out[scale] = path
    return out


def _files_pb_first(src: str):
    """Relative paths of ``src``'s files, ``saved_model.pb`` first (``cp -r``'s worst order)."""
    rel = sorted(os.path.relpath(os.path.join(r, f), src) for r, _, fs in os.walk(src) for f in fs)
    return sorted(rel, key=lambda p: p != "saved_model.pb")


def slow_copy(src: str, dst: str, pause_s: float, stop_after: int = None, skip=()) -> float:
    """Copies ``src`` to ``dst`` file by file, each file in two halves, sleeping
    ``pause_s`` between halves and files; stops after ``stop_after`` files when
    given. Returns the monotonic time the last byte was written."""
    os.makedirs(dst, exist_ok=True)
    for d in sorted({os.path.dirname(p) for p in _files_pb_first(src)} - {""}):
        os.makedirs(os.path.join(dst, d), exist_ok=True)
    files = [p for p in _files_pb_first(src) if p not in skip][:stop_after]
    for i, rel in enumerate(files):
        with open(os.path.join(src, rel), "rb") as f:
            data = f.read()
        with open(os.path.join(dst, rel), "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(pause_s)
            f.write(data[len(data) // 2:])
        if i + 1 < len(files):
            time.sleep(pause_s)
    return time.monotonic()


def _request(model: str, n: int = 3) -> predict_pb2.PredictRequest:
    texts = np.array([[[b"x" * ((i + p + s) % 7) for s in range(S)] for p in range(P)]
                      for i in range(n)], dtype=object)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["item_texts"].CopyFrom(tf.make_tensor_proto(texts))
    return request, np.vectorize(len)(texts).reshape(n, P * S).astype(np.float32)


def _hammer(address: str, model: str, stop: threading.Event, max_requests: int, results: list):
    """Predict until ``stop`` or ``max_requests``: appends (sent_at, version, ok, detail)."""
    request, lengths = _request(model)
    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(max_requests):
            if stop.is_set():
                return
            sent = time.monotonic()
            try:
                response = stub.Predict(request, timeout=60)
            except grpc.RpcError as e:
                results.append((sent, None, False, f"{e.code().name}: {e.details()}"))
                continue
            version = response.model_spec.version.value
            got = tf.make_ndarray(response.outputs["embedding"])
            results.append((sent, version, np.array_equal(got, lengths * version), ""))
            time.sleep(0.01)


@pytest.mark.parametrize("with_fingerprint", [True, False], ids=["fingerprint", "no-fingerprint"])
def test_half_copied_push_is_never_served(models, start_serving, tmp_path, with_fingerprint):
    # Version v serves scale v, so an answer names the model that computed it.
    base = tmp_path / "base"
    base.mkdir()
    shutil.copytree(models[1.0], base / "1")
    target = start_serving(None, "m", base_path=str(base), poll_seconds=0.05, stalled_seconds=60)
    stop = threading.Event()
    results: list = []
    hammer = threading.Thread(target=_hammer, args=(target.address, "m", stop, 3000, results))
    hammer.start()
    try:
        target.wait_until(lambda: len(results) >= 5, what="first answers")
        skip = () if with_fingerprint else ("fingerprint.pb",)
        copied_at = slow_copy(models[2.0], str(base / "2"), pause_s=0.15, skip=skip)
        target.wait_served(2)
        target.wait_until(lambda: any(v == 2 for _, v, _, _ in results[-3:]), what="answers of version 2")
    finally:
        stop.set()
        hammer.join(timeout=120)
    target.stop()
    errors = [r for r in results if r[1] is None]
    assert not errors, errors[:3]
    assert all(ok for _, _, ok, _ in results), [r for r in results if not r[2]][:3]
    versions = [v for _, v, _, _ in results]
    assert set(versions) == {1, 2}
    # Version 2 answered only requests sent after its copy had finished.
    assert min(sent for sent, v, _, _ in results if v == 2) >= copied_at
    first_two = versions.index(2)
    assert set(versions[first_two:]) == {2}, "went back to version 1 after the swap"


def test_stopped_copy_is_reported_once_skipped_then_loaded_when_finished(
        models, start_serving, tmp_path, caplog):
    base = tmp_path / "base"
    base.mkdir()
    shutil.copytree(models[1.0], base / "1")
    caplog.set_level(logging.INFO, logger=MANAGER_LOG)
    target = start_serving(None, "m", base_path=str(base), poll_seconds=0.05, stalled_seconds=0.5)
    # A copy that stops after saved_model.pb and fingerprint.pb: never completes on its own.
    slow_copy(models[3.0], str(base / "3"), pause_s=0, stop_after=2)
    assert incomplete_reason(str(base / "3")) is not None
    # A complete copy below it is served meanwhile: the incomplete one does not block it.
    shutil.copytree(models[2.0], base / "2")
    with target.client() as client:
        target.wait_served(2, client)
        status = target.wait_until(
            lambda: {v: (s, e) for v, s, e in client.status()}.get(3), what="version 3 reported")
        assert status[0] == "END" and "incomplete" in status[1] and "variables" in status[1]
        time.sleep(1.0)  # 20 more polls: no more reports, still version 2.
        assert client.served_version() == 2
        warnings = [r for r in caplog.records
                    if r.name == MANAGER_LOG and r.levelno >= logging.WARNING and "version 3" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        # The copy resumes and finishes: version 3 is served.
        slow_copy(models[3.0], str(base / "3"), pause_s=0)
        target.wait_served(3, client)
        request, lengths = _request("m")
        out = client.predict({"item_texts": tf.make_ndarray(request.inputs["item_texts"])})
        np.testing.assert_array_equal(out["embedding"], 3.0 * lengths)
    target.stop()


def test_corrupt_variables_fail_to_load_once_and_previous_version_serves(
        models, start_serving, tmp_path, caplog):
    base = tmp_path / "base"
    base.mkdir()
    shutil.copytree(models[1.0], base / "1")
    caplog.set_level(logging.INFO, logger=MANAGER_LOG)
    target = start_serving(None, "m", base_path=str(base), poll_seconds=0.05, stalled_seconds=0.5)
    # Structurally complete, no fingerprint.pb, a flipped byte in the variables
    # data (the file keeps its size): only the load's checksum can tell.
    staging = tmp_path / "staging"
    shutil.copytree(models[2.0], staging)
    os.remove(staging / "fingerprint.pb")
    data = staging / "variables" / "variables.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF
    data.write_bytes(bytes(raw))
    assert incomplete_reason(str(staging)) is None
    os.rename(staging, base / "2")
    with target.client() as client:
        status = target.wait_until(
            lambda: {v: (s, e) for v, s, e in client.status()}.get(2, ("", ""))[0] == "END"
            and client.status(), what="version 2 failed")
        message = {v: e for v, _, e in status}[2]
        assert "loading" in message and "failed" in message
        time.sleep(1.0)
        assert client.served_version() == 1
    errors = [r for r in caplog.records if r.name == MANAGER_LOG and r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    target.stop()


def test_bpe_cache_is_bounded_and_ids_unchanged(tmp_path):
    """A serving graph's BPE cache (clue_keras.bpe_cache) holds at most ``cache_words``
    words however many distinct words pass, with ids equal to keras-hub's unbounded
    tokenizer and to the offline one; ``cache_words=0`` caches nothing."""
    import random
    import string

    from clue_keras import tokenizer as T

    rng = random.Random(1)

    def word():
        return "".join(rng.choice(string.ascii_letters + "éü한😀") for _ in range(rng.randint(1, 9)))

    vocab = str(tmp_path / "vocab")
    T.train_bpe([" ".join(word() for _ in range(8)) for _ in range(300)], ["a", "b"], vocab_size=400,
                out_dir=vocab, max_items=3, max_tokens=12, min_frequency=1)
    unbounded, bounded, uncached = (T.InGraphTokenizer(vocab, cache_words=n) for n in (None, 50, 0))
    offline = T.OfflineTokenizer(vocab)
    sid = offline.info.service_token_id("a")
    for _ in range(15):
        texts = [" ".join(word() for _ in range(rng.randint(0, 6))) for _ in range(40)]
        texts += texts[:4]  # repeated words within a batch
        ids = tf.constant([sid] * len(texts), tf.int32)
        want = unbounded.tokenize_items(tf.constant(texts), ids).numpy()
        for tok in (bounded, uncached):
            np.testing.assert_array_equal(tok.tokenize_items(tf.constant(texts), ids).numpy(), want)
        for row, expected in zip(want, offline.encode_items(texts, "a")):
            assert list(row[: len(expected)]) == expected and not row[len(expected):].any()
        assert int(bounded.bpe.cache.id2value.size()) <= 50
        assert int(uncached.bpe.cache.id2value.size()) == 0
    assert int(unbounded.bpe.cache.id2value.size()) > 500
