"""RESOURCE_EXHAUSTED, busy or too big: ``CLUEClient`` retries the one and splits or
reports the other.

A real server (``clue_keras.serving.server.serve``) on loopback with one worker
thread, a cap of one concurrent RPC and a 2,048-byte request limit. Its Predict is
slowed by a gate the test holds: a request held in the server takes the only slot,
so the next one is answered ``RESOURCE_EXHAUSTED`` "Concurrent RPC limit exceeded!"
by gRPC. Every wait is bounded; nothing asserts on timing.
"""

from __future__ import annotations

import logging
import os
import threading

import grpc
import numpy as np
import pytest
import tensorflow as tf

from clue_keras.serving import servicers
from clue_keras.serving.client import CLUEClient, ServingError
from clue_keras.serving.errors import is_server_busy
from clue_keras.serving.server import serve

pytestmark = pytest.mark.skipif(bool(os.environ.get("CLUE_SERVING_ADDRESS")),
                                reason="tests this project's local server itself")

P, S = 2, 3
MAX_REQUEST_BYTES = 2048
WAIT_S = 30  # bound of every wait on the gate or on a thread


class _Lengths(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, P, S], tf.string, name="item_texts")])
    def serve(self, item_texts):
        return {"embedding": tf.reshape(tf.cast(tf.strings.length(item_texts), tf.float32), [-1, P * S])}


class _Gate:
    """Holds the next Predict in the server (after ``hold_next``) until ``release``."""

    def __init__(self):
        self._armed = threading.Event()
        self.entered = threading.Event()
        self._release = threading.Event()

    def hold_next(self):
        self.entered.clear()
        self._release.clear()
        self._armed.set()

    def release(self):
        self._release.set()

    def wrap(self, predict):
        def slowed(servicer, request, context):
            if self._armed.is_set():
                self._armed.clear()
                self.entered.set()
                assert self._release.wait(WAIT_S), "the test never released the held request"
            return predict(servicer, request, context)
        return slowed


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory):
    """(server, gate): one worker, one concurrent RPC, requests up to 2,048 bytes."""
    base = tmp_path_factory.mktemp("busy_base")
    module = _Lengths()
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.serve})
    gate = _Gate()
    original = servicers.PredictionServicer.Predict
    servicers.PredictionServicer.Predict = gate.wrap(original)
    try:
        handle = serve(str(base), "m", port=0, threads=1, max_concurrent_rpcs=1,
                       max_request_bytes=MAX_REQUEST_BYTES, poll_seconds=0.05)
    finally:
        servicers.PredictionServicer.Predict = original  # bound at registration already
    yield handle, gate
    gate.release()
    handle.stop(grace=0)


def _texts(rows, text="ab"):
    return np.full((rows, P, S), text, dtype=object)


def _client(address, **kwargs):
    kwargs.setdefault("timeout_s", 10)
    kwargs.setdefault("initial_backoff_s", 0.05)
    kwargs.setdefault("max_backoff_s", 0.5)
    return CLUEClient(address, "m", **kwargs)


class _Retries(logging.Handler):
    """The client's retry warnings; ``on_busy`` is called (in the client's thread) at each."""

    def __init__(self, on_busy=None):
        super().__init__(logging.WARNING)
        self.messages, self.on_busy = [], on_busy

    def emit(self, record):
        message = record.getMessage()
        self.messages.append(message)
        if "server busy" in message and self.on_busy:
            self.on_busy()


@pytest.fixture
def retries():
    handlers = []

    def attach(on_busy=None):
        handler = _Retries(on_busy)
        logging.getLogger("clue_keras.serving.client").addHandler(handler)
        handlers.append(handler)
        return handler

    yield attach
    for handler in handlers:
        logging.getLogger("clue_keras.serving.client").removeHandler(handler)


def _hold_one_request(handle, gate):
    """Starts a Predict that the server holds (taking its only slot); returns its thread
    and the list its answer lands in."""
    answers = []
    gate.hold_next()

    def send():
        with _client(handle.address) as client:
            answers.append(client.predict({"item_texts": _texts(1, "abc")})["embedding"])

    holder = threading.Thread(target=send, daemon=True)
    holder.start()
    assert gate.entered.wait(WAIT_S), "the held request never reached the servicer"
    return holder, answers


def test_busy_and_too_big_are_told_apart_by_the_status_details():
    busy, big = grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.RESOURCE_EXHAUSTED
    assert is_server_busy(busy, "Concurrent RPC limit exceeded!")  # grpcio's server
    assert is_server_busy(busy, "Server Threadpool Exhausted")  # gRPC C++ (TF Serving)
    assert not is_server_busy(big, "Received message larger than max (5000 vs. 2048)")
    assert not is_server_busy(big, "Sent message larger than max (5000 vs. 2048)")
    assert not is_server_busy(big, "OOM when allocating tensor with shape[1000000000]")
    assert not is_server_busy(grpc.StatusCode.UNAVAILABLE, "Concurrent RPC limit exceeded!")
    assert not is_server_busy(busy, None)


def test_a_busy_server_is_retried_with_backoff_and_the_request_succeeds(busy_server, retries):
    handle, gate = busy_server
    holder, held_answers = _hold_one_request(handle, gate)

    def free_the_slot():  # at the first busy answer: let the held request finish
        gate.release()
        holder.join(WAIT_S)

    log = retries(on_busy=free_the_slot)
    with _client(handle.address, max_attempts=6) as client:
        out = client.predict({"item_texts": _texts(2)})["embedding"]
    np.testing.assert_array_equal(out, np.full((2, P * S), 2.0, np.float32))
    busy = [m for m in log.messages if "server busy" in m]
    assert busy and all("RESOURCE_EXHAUSTED" in m and "Predict of 'm' rows 0-1" in m for m in busy)
    assert not holder.is_alive()
    np.testing.assert_array_equal(held_answers[0], np.full((1, P * S), 3.0, np.float32))


def test_a_server_busy_on_every_attempt_gives_a_clear_error_without_splitting(busy_server, retries):
    handle, gate = busy_server
    holder, held_answers = _hold_one_request(handle, gate)
    log = retries()
    try:
        with _client(handle.address, max_attempts=3, initial_backoff_s=0.01) as client, \
                pytest.raises(ServingError) as info:
            client.predict({"item_texts": _texts(2)})
    finally:
        gate.release()
        holder.join(WAIT_S)
    error = info.value
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.busy
    assert error.rows == [0, 1]  # the whole batch: a busy answer is never split
    assert f"server {handle.address} busy" in error.details
    assert "Predict of 'm' rows 0-1: gave up after 3 attempts" in error.details
    assert len([m for m in log.messages if "server busy" in m]) == 2  # 3 attempts, 2 retries
    assert held_answers and not holder.is_alive()

    # embed_users does not bisect a batch the server was too busy for: each user gets the error.
    holder, held_answers = _hold_one_request(handle, gate)
    log.messages.clear()
    results, errors = {}, {}
    try:
        with _client(handle.address, max_attempts=2, initial_backoff_s=0.01) as client:
            client._embed_rows([0, 1], _texts(2), "item_texts", "embedding", results, errors)
    finally:
        gate.release()
        holder.join(WAIT_S)
    assert not results and sorted(errors) == [0, 1]
    assert all(e.startswith("RESOURCE_EXHAUSTED: server ") and " busy " in e for e in errors.values())
    assert len([m for m in log.messages if "server busy" in m]) == 1  # one request, 2 attempts


def test_a_message_too_big_is_split_or_reported_never_retried_as_busy(busy_server, retries):
    handle, _ = busy_server
    log = retries()
    with _client(handle.address, max_attempts=6) as client:
        # ~3 KB in one request: the server refuses it as too big; halves go through.
        texts = _texts(40, "abcdefghij")
        out = client.predict({"item_texts": texts})["embedding"]
        np.testing.assert_array_equal(out, np.full((40, P * S), 10.0, np.float32))
        # One row over the server's limit: reported as too big, at once.
        with pytest.raises(ServingError) as info:
            client.predict({"item_texts": _texts(1, "x" * 1000)})
    error = info.value
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and not error.busy
    assert "larger than max" in error.details and error.rows == [0]
    assert "gave up" not in error.details
    assert log.messages == []  # nothing was retried
