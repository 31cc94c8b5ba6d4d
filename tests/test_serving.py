"""Local TF Serving-compatible server, CLUEClient, `clue embed`, models.config.

By default every test starts ``clue_keras.serving.server`` in-process on port
0 over a temporary model base directory (conftest's ``start_serving``). To run the same client tests against
a real ``tensorflow_model_server`` instead, set

* ``CLUE_SERVING_ADDRESS``: ``host:port`` of its gRPC endpoint;
* ``CLUE_SERVING_MODEL``: the model name it serves;
* ``CLUE_SERVING_BASE_PATH``: this machine's path of that model's base
  directory (e.g. the directory mounted at ``/models/NAME``); the tests push
  their SavedModels there as new versions and wait until they are served.

Tests of this server's own behaviour (batch limits, request cap, loading
rules) are skipped then.

The test model (built here, deterministic): ``serving_default`` maps
``item_texts`` string [B, 2, 3] to ``embedding`` = byte lengths * scale
float32 [B, 6] and ``service_embeddings`` = per-service sums * scale
[B, 2, 1]; it rejects (INVALID_ARGUMENT) any text of 40 bytes or more.
``score`` maps ``x`` float32 [B, 3] and ``w`` float32 [3] to ``y`` = x @ w [B]
and ``doubled`` = 2 x [B, 3].
"""

from __future__ import annotations

import json
import os
import shutil

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from processes import kill, stop

from clue_keras.serving import models_config
from clue_keras.serving.client import CLUEClient, ServingError
from clue_keras.serving.version_dirs import list_versions

EXTERNAL_ADDRESS = os.environ.get("CLUE_SERVING_ADDRESS")
EXTERNAL = bool(EXTERNAL_ADDRESS)
local_only = pytest.mark.skipif(EXTERNAL, reason="tests this project's local server itself")

P, S = 2, 3
SERVICES = ["news", "shopping"]
MAX_TEXT_BYTES = 40


# ---------------------------------------------------------------- helpers --


class _TestModel(tf.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = tf.Variable(scale, dtype=tf.float32, trainable=False)

    @tf.function(input_signature=[tf.TensorSpec([None, P, S], tf.string, name="item_texts")])
    def serve(self, item_texts):
        lengths = tf.cast(tf.strings.length(item_texts), tf.float32)  # [B, P, S] bytes
        check = tf.debugging.assert_less(
            lengths, float(MAX_TEXT_BYTES), message=f"item text of {MAX_TEXT_BYTES}+ bytes"
        )
        with tf.control_dependencies([check]):
            embedding = tf.reshape(lengths, [-1, P * S]) * self.scale
        return {
            "embedding": embedding,
            "service_embeddings": tf.reduce_sum(lengths, axis=2, keepdims=True) * self.scale,
        }

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 3], tf.float32, name="x"),
            tf.TensorSpec([3], tf.float32, name="w"),
        ]
    )
    def score(self, x, w):
        return {"y": tf.linalg.matvec(x, w) * self.scale, "doubled": 2.0 * x}


def save_test_model(path: str, scale: float) -> str:
    module = _TestModel(scale)
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve, "score": module.score})
    return path


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """The test model at scale 1 and 2: {scale: SavedModel dir}."""
    root = tmp_path_factory.mktemp("saved_models")
    return {scale: save_test_model(str(root / f"scale{scale}"), scale) for scale in (1.0, 2.0)}


@pytest.fixture(scope="module")
def target(saved_models, start_serving):
    """One server for the read-only tests: the newest version = scale 1."""
    t = start_serving(saved_models[1.0], "clue_test", max_batch=64)
    yield t
    t.stop()


@pytest.fixture
def fresh_target(saved_models, start_serving, tmp_path):
    """A server of its own, for tests that push or break versions."""
    base = tmp_path / "base"
    base.mkdir()
    t = start_serving(saved_models[1.0], "clue_test", base_path=str(base), stalled_seconds=2.0)
    yield t
    t.stop()


def reference(saved_model_dir: str, signature: str, **inputs):
    fn = tf.saved_model.load(saved_model_dir).signatures[signature]
    return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


def user_texts(n: int, seed: int = 0) -> np.ndarray:
    """[n, P, S] object array of texts of 0..12 bytes ('' = padding)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 13, size=(n, P, S))
    return np.vectorize(lambda k: ("ab c" * 4)[:k], otypes=[object])(lengths)


def stubs(address: str):
    channel = grpc.insecure_channel(address)
    return (
        channel,
        prediction_service_pb2_grpc.PredictionServiceStub(channel),
        model_service_pb2_grpc.ModelServiceStub(channel),
    )


def predict_request(model: str, signature: str = "", **inputs) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


# ------------------------------------------------------------ round trips --


def test_predict_matches_saved_model_and_reports_version(target, saved_models):
    texts = user_texts(5)
    want = reference(saved_models[1.0], "serving_default", item_texts=texts.astype(bytes))
    with target.client() as client:
        got = client.predict({"item_texts": texts})
        assert client.last_model_version == client.served_version()
    assert set(got) == {"embedding", "service_embeddings"}
    np.testing.assert_array_equal(got["embedding"], want["embedding"])
    np.testing.assert_array_equal(got["service_embeddings"], want["service_embeddings"])
    # By hand: embedding = byte lengths; "" -> 0, "ab c"[:3] -> 3.
    lengths = np.vectorize(len)(texts).reshape(5, P * S)
    np.testing.assert_array_equal(got["embedding"], lengths.astype(np.float32))

    channel, predict_stub, _ = stubs(target.address)
    with channel:
        response = predict_stub.Predict(predict_request(target.model_name, item_texts=texts.astype(bytes)))
    assert response.model_spec.name == target.model_name
    assert response.model_spec.signature_name == "serving_default"
    assert response.model_spec.version.value == client.last_model_version


def test_second_signature_unbatched_input_and_output_filter(target, saved_models):
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    w = np.array([1.0, -1.0, 0.5], np.float32)
    with target.client() as client:
        got = client.predict({"x": x, "w": w}, signature="score", unbatched=["w"], output_filter=["y"])
    assert set(got) == {"y"}
    np.testing.assert_allclose(got["y"], x @ w)  # scale 1
    np.testing.assert_allclose(got["y"], reference(saved_models[1.0], "score", x=x, w=w)["y"])


def test_chunking_splits_and_reassembles_in_order(target):
    texts = user_texts(150, seed=3)
    # Each row is ~30 bytes of proto; 1 KiB messages force several chunks.
    with target.client(max_message_bytes=1024, max_batch=None) as client:
        request = client._request(
            {"item_texts": texts.astype(bytes)}, slice(0, 150), set(), "serving_default", None
        )
        assert request.ByteSize() > 4 * 1024  # Really more than one message.
        sent = []
        real_predict = client._predict_stub.Predict

        def spy(request, timeout):
            sent.append((request.ByteSize(), request.inputs["item_texts"].tensor_shape.dim[0].size))
            return real_predict(request, timeout=timeout)

        client._predict_stub.Predict = spy
        got = client.predict({"item_texts": texts})["embedding"]
    assert len(sent) >= 5 and all(size <= 1024 for size, _ in sent), sent
    assert sum(rows for _, rows in sent) == 150
    want = np.vectorize(len)(texts).reshape(150, P * S).astype(np.float32)
    np.testing.assert_array_equal(got, want)


def test_chunks_answered_by_two_versions_are_redone(target):
    texts = user_texts(4, seed=5)
    calls = []
    with target.client(max_batch=2) as client:
        real_predict = client._predict_stub.Predict

        def swapped_once(request, timeout):
            response = real_predict(request, timeout=timeout)
            calls.append(response.model_spec.version.value)
            if len(calls) == 1:  # As if a new version answered the second chunk.
                response.model_spec.version.value += 100
            return response

        client._predict_stub.Predict = swapped_once
        got = client.predict({"item_texts": texts})["embedding"]
        assert len(calls) == 4  # Two chunks, twice.
        assert client.last_model_version == calls[-1]
    np.testing.assert_array_equal(got, np.vectorize(len)(texts).reshape(4, P * S).astype(np.float32))


def test_metadata_signature_defs_and_status(target):
    with target.client() as client:
        signature_defs = client.metadata()
        assert {"serving_default", "score"} <= set(signature_defs.signature_def)
        sig = signature_defs.signature_def["serving_default"]
        assert sig.inputs["item_texts"].dtype == tf.string.as_datatype_enum
        assert client.input_shape("item_texts") == [None, P, S]
        assert set(sig.outputs) == {"embedding", "service_embeddings"}
        version = client.served_version()
        statuses = client.status()
    assert (version, "AVAILABLE", "") in statuses


def test_embed_users_bisects_to_the_bad_user(target):
    users = [
        {"user_id": f"u{i}", "items": {"news": ["x" * (i % 5)], "shopping": ["a", "bb", "ccc", "dddd"]}}
        for i in range(9)
    ]
    users[4]["items"]["news"] = ["y" * MAX_TEXT_BYTES]  # Rejected by the model.
    users[6]["items"]["sports"] = ["unknown service"]  # Rejected by the client.
    with target.client() as client:
        embeddings, errors = client.embed_users(users, services=SERVICES, batch_size=8)
    assert set(errors) == {"u4", "u6"}
    assert errors["u4"].startswith("INVALID_ARGUMENT") and f"{MAX_TEXT_BYTES}+ bytes" in errors["u4"]
    assert "unknown services ['sports']" in errors["u6"]
    assert embeddings.shape == (9, P * S)
    assert np.isnan(embeddings[[4, 6]]).all()
    for i in (0, 1, 2, 3, 5, 7, 8):
        # news: one text of i % 5 bytes; shopping: newest S=3 kept -> "bb","ccc","dddd".
        np.testing.assert_array_equal(embeddings[i], [i % 5, 0, 0, 2, 3, 4])


# ------------------------------------------------------- bad requests --


def _code(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_bad_requests_get_tf_serving_status_codes(target):
    texts = user_texts(2).astype(bytes)
    channel, predict_stub, model_stub = stubs(target.address)
    name = target.model_name
    with channel:
        cases = [
            (predict_request("no_such_model", item_texts=texts), grpc.StatusCode.NOT_FOUND, "no_such_model"),
            (predict_request(name, "nope", item_texts=texts), grpc.StatusCode.FAILED_PRECONDITION, '"nope"'),
            (predict_request(name, item_texts=np.zeros((2, P, S), np.float32)),
             grpc.StatusCode.INVALID_ARGUMENT, "string"),
            # TF Serving's own shape message need not name the input.
            (predict_request(name, item_texts=user_texts(2, S + 1).astype(bytes)[:, :, :2]),
             grpc.StatusCode.INVALID_ARGUMENT, "" if EXTERNAL else "item_texts"),
            (predict_request(name, "score", x=np.zeros((2, 3), np.float32)),
             grpc.StatusCode.INVALID_ARGUMENT, "Missing but required: {w}"),
            (predict_request(name, item_texts=texts, extra=np.zeros(2, np.float32)),
             grpc.StatusCode.INVALID_ARGUMENT, "Sent extra: {extra}"),
        ]
        wrong_version = predict_request(name, item_texts=texts)
        wrong_version.model_spec.version.value = 987654
        cases.append((wrong_version, grpc.StatusCode.NOT_FOUND, "987654"))
        bad_filter = predict_request(name, item_texts=texts)
        bad_filter.output_filter.append("nope")
        cases.append((bad_filter, grpc.StatusCode.INVALID_ARGUMENT, "nope"))
        for request, code, fragment in cases:
            got_code, details = _code(lambda: predict_stub.Predict(request, timeout=30))
            assert got_code == code, (request.model_spec, details)
            assert fragment in details, details
        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = "no_such_model"
        assert _code(lambda: model_stub.GetModelStatus(status_request))[0] == grpc.StatusCode.NOT_FOUND
        # Still serving afterwards.
        ok = predict_stub.Predict(predict_request(name, item_texts=texts), timeout=30)
        assert tf.make_ndarray(ok.outputs["embedding"]).shape == (2, P * S)


@local_only
def test_local_server_messages_and_limits(target):
    channel, predict_stub, _ = stubs(target.address)
    name = target.model_name
    with channel:
        code, details = _code(lambda: predict_stub.Predict(
            predict_request(name, item_texts=np.zeros((2, P, S), np.float32))))
        assert details == "input 'item_texts' of signature 'serving_default': expected dtype string, got float32"
        code, details = _code(lambda: predict_stub.Predict(
            predict_request(name, item_texts=np.full((2, P, 2), b"a", dtype=object))))
        assert details == "input 'item_texts' of signature 'serving_default': expected shape [?,2,3], got [2,2,2]"
        code, details = _code(lambda: predict_stub.Predict(
            predict_request(name, item_texts=np.full((0, P, S), b"", dtype=object))))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "empty batch" in details
        code, details = _code(lambda: predict_stub.Predict(
            predict_request(name, item_texts=np.full((65, P, S), b"", dtype=object))))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "batch size 65" in details and "64" in details
        label = predict_request(name, item_texts=np.full((1, P, S), b"", dtype=object))
        label.model_spec.version_label = "stable"
        assert _code(lambda: predict_stub.Predict(label))[0] == grpc.StatusCode.INVALID_ARGUMENT
        # The client splits by its max_batch, so the same 65 rows go through.
    with target.client(max_batch=64) as client:
        out = client.predict({"item_texts": np.full((65, P, S), "a", dtype=object)})["embedding"]
    np.testing.assert_array_equal(out, np.ones((65, P * S), np.float32))


@local_only
def test_request_size_cap(saved_models, start_serving):
    t = start_serving(saved_models[1.0], "clue_test", max_request_bytes=2048)
    try:
        texts = np.full((40, P, S), b"abcdefghij", dtype=object)  # ~40 * 6 * 12 bytes
        channel, predict_stub, _ = stubs(t.address)
        with channel:
            code, _ = _code(lambda: predict_stub.Predict(predict_request(t.model_name, item_texts=texts)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        # A client that thinks the limit is 4 MiB is halved down by the server's refusals.
        with t.client() as client:
            out = client.predict({"item_texts": texts})["embedding"]
        np.testing.assert_array_equal(out, np.full((40, P * S), 10.0, np.float32))
    finally:
        t.stop()


# ----------------------------------------------------------- versions --


def test_new_version_is_served_without_restart(fresh_target, saved_models):
    texts = user_texts(3, seed=7)
    lengths = np.vectorize(len)(texts).reshape(3, P * S).astype(np.float32)
    with fresh_target.client() as client:
        before = client.served_version()
        np.testing.assert_array_equal(client.predict({"item_texts": texts})["embedding"], lengths)
        version = fresh_target.push(saved_models[2.0])
        assert version > before
        got = client.predict({"item_texts": texts})
        assert client.last_model_version == version
        np.testing.assert_array_equal(got["embedding"], 2.0 * lengths)
        states = {v: state for v, state, _ in client.status()}
    assert states[version] == "AVAILABLE"


@local_only
def test_only_saved_models_under_the_base_path_are_loaded(fresh_target, saved_models, tmp_path):
    base = fresh_target.base_path
    # Not versions: non-integer names, a temp dir, a dir without saved_model.pb,
    # and a symlink to a SavedModel outside the base path.
    shutil.copytree(saved_models[2.0], os.path.join(base, "junk"))
    shutil.copytree(saved_models[2.0], os.path.join(base, "tmp-12"))
    os.makedirs(os.path.join(base, "13", "variables"))
    outside = str(tmp_path / "outside")
    shutil.copytree(saved_models[2.0], outside)
    os.symlink(outside, os.path.join(base, "14"))
    # A broken SavedModel: loading fails, version 1 keeps serving, status says why.
    os.makedirs(os.path.join(base, "9"))
    with open(os.path.join(base, "9", "saved_model.pb"), "wb") as f:
        f.write(b"this is not a SavedModel")
    assert sorted(list_versions(base)) == [1, 9]
    with fresh_target.client() as client:
        status = fresh_target.wait_until(lambda: {v: (s, e) for v, s, e in client.status()}.get(9), what="version 9 status")
        assert status[0] == "END" and "failed" in status[1]
        assert client.served_version() == 1
        texts = user_texts(2)
        np.testing.assert_array_equal(
            client.predict({"item_texts": texts})["embedding"],
            np.vectorize(len)(texts).reshape(2, P * S).astype(np.float32),
        )
        # A good version above the broken one is still picked up.
        fresh_target.base.push(saved_models[2.0], 10)
        fresh_target.wait_served(10, client)


# ------------------------------------------------------- CLI and config --


def test_cli_embed_writes_parquet_and_errors(target, tmp_path, capsys):
    import pandas as pd

    from clue_cli.main import main

    users = [{"user_id": f"u{i}", "items": {"news": ["n" * i], "shopping": ["s", "ss"]}} for i in range(6)]
    users[2]["items"]["news"] = ["z" * MAX_TEXT_BYTES]
    users_path = tmp_path / "users.jsonl"
    users_path.write_text("\n".join(json.dumps(u) for u in users) + "\n")
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "clue_vocab.json").write_text(json.dumps({"services": SERVICES, "max_items": S}))
    out = tmp_path / "emb" / "embeddings.parquet"
    rc = main([
        "embed", "--server", target.address, "--model", target.model_name, "--input", str(users_path),
        "--out", str(out), "--vocab", str(tmp_path / "vocab"), "--batch-size", "4",
    ])
    assert rc == 1  # Finished, but one user failed.
    assert "embedded 5 of 6 users" in capsys.readouterr().out
    table = pd.read_parquet(out)
    assert list(table["user_id"]) == ["u0", "u1", "u3", "u4", "u5"]
    for uid, vector in zip(table["user_id"], table["embedding"]):
        i = int(uid[1:])
        np.testing.assert_array_equal(vector, np.array([i, 0, 0, 1, 2, 0], np.float32))
    errors = [json.loads(line) for line in (tmp_path / "emb" / "embeddings.errors.jsonl").read_text().splitlines()]
    assert [e["user_id"] for e in errors] == ["u2"] and "INVALID_ARGUMENT" in errors[0]["error"]
    assert sorted(os.listdir(tmp_path / "emb")) == ["embeddings.errors.jsonl", "embeddings.parquet"]

    # With --strict a malformed input line is an input error naming file and line
    # (without it, tests/test_self_describing.py: reported in the errors file).
    users_path.write_text('{"user_id": "a", "items": {}}\n{not json\n')
    rc = main(["embed", "--server", target.address, "--model", target.model_name, "--input", str(users_path),
               "--out", str(out), "--services", ",".join(SERVICES), "--strict"])
    assert rc == 2
    assert f"{users_path}:2: not valid JSON" in capsys.readouterr().err


def test_client_retries_unavailable_then_reports(tmp_path):
    # Nothing listens on this port: every attempt is UNAVAILABLE.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = CLUEClient(f"127.0.0.1:{port}", "m", timeout_s=2, max_attempts=3, initial_backoff_s=0.01)
    with client, pytest.raises(ServingError) as info:
        client.predict({"x": np.zeros((1, 3), np.float32)})
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert "gave up after 3 attempts" in info.value.details


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code):
        self._code = code

    def code(self):
        return self._code

    def details(self):
        return f"fake {self._code.name}"


def test_client_retries_transient_errors_with_backoff():
    client = CLUEClient("127.0.0.1:1", "m", timeout_s=3, max_attempts=4, initial_backoff_s=0.01)
    calls = []

    def flaky(request, timeout):
        calls.append(timeout)
        if len(calls) <= 2:
            raise _FakeRpcError([grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED][len(calls) - 1])
        return "response"

    def invalid(request, timeout):
        calls.append(timeout)
        raise _FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT)

    with client:
        assert client._call(flaky, None) == "response"
        assert calls == [3, 3, 3]  # Every attempt carries the deadline.
        calls.clear()
        with pytest.raises(ServingError) as info:
            client._call(invalid, None)
    assert len(calls) == 1 and info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_models_config_parses_back(tmp_path):
    from clue_cli.main import main

    out = tmp_path / "models.config"
    assert main(["serving-config", "--model-name", "clue", "--base-path", "/models/clue",
                 "--model-name", "other", "--base-path", "/models/other", "--out", str(out)]) == 0
    config = models_config.parse_models_config(out.read_text())
    entries = config.model_config_list.config
    assert [(c.name, c.base_path, c.model_platform) for c in entries] == [
        ("clue", "/models/clue", "tensorflow"), ("other", "/models/other", "tensorflow")]
    assert entries[0].model_version_policy.latest.num_versions == 1
    assert text_format.MessageToString(config) == out.read_text()
    with pytest.raises(ValueError, match="must be absolute"):
        models_config.models_config_text([("clue", "models/clue")])
    with pytest.raises(ValueError, match="appears twice"):
        models_config.models_config_text([("a", "/m/a"), ("a", "/m/b")])


@local_only
def test_clue_serve_binds_loopback_and_stops_on_sigterm(saved_models, model_base, tmp_path):
    import selectors
    import subprocess
    import sys

    from clue_cli.main import main

    assert main(["serve", "--model-base-path", str(tmp_path / "missing"), "--model-name", "m"]) == 2

    model_base.push(saved_models[1.0], 3)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "clue_cli.main", "serve", "--model-base-path", model_base.path,
         "--model-name", "m", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True,
    )
    try:
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        assert selector.select(timeout=120), "clue serve printed nothing"
        line = proc.stdout.readline()
        address = line.rsplit(" on ", 1)[-1].strip()
        assert address.startswith("127.0.0.1:"), line
        with CLUEClient(address, "m") as client:
            out = client.predict({"item_texts": np.full((1, P, S), "abc", dtype=object)})
            assert client.last_model_version == 3
        np.testing.assert_array_equal(out["embedding"], np.full((1, P * S), 3.0, np.float32))
        assert stop(proc) == 0
    finally:
        kill(proc)
