"""`clue serve` (a real process) under load and abuse, with a version pushed mid-load.

* ``test_load_abuse_and_swap``: 6 client threads, 1,000-2,000 requests in five
  phases (warm-up 200; "swap", "swap2", "swap3": paced, while version 2, 3, then
  4 is copied in slowly and loaded, until it answers; steady 300), 20% of them
  malformed in every way ``malformed_requests`` lists. No
  crash, no wrong answer (each OK answer equals the SavedModel of the version
  that answered, computed in this process), TF Serving's status code for each
  bad request, and the server's RSS (``/proc/PID/status`` VmRSS) bounded.
* ``test_bpe_cache_keeps_rss_bounded``: ~0.5 M distinct random words through a
  tokenizer graph whose BPE cache holds 1,000 words: ids equal keras-hub's
  unbounded tokenizer, RSS flat.

Every loop is bounded in count and time; the latency figures are printed
(``-s``) for docs/PERFORMANCE.md, never asserted.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import shutil
import string
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from processes import stop

from clue_keras.tokenizer import register_text_ops

pytestmark = [
    pytest.mark.slow,  # two CLUE exports and two `clue serve` processes: minutes on two cores
    pytest.mark.skipif(bool(os.environ.get("CLUE_SERVING_ADDRESS")),
                       reason="tests this project's local server process itself"),
]

ATOL = 1e-5
MAX_BATCH = 16
MAX_REQUEST_BYTES = 256 << 10
THREADS = 6
#: (phase, most requests); the swap phases run paced until the new version answers.
PHASES = (("warm-up", 200), ("swap", 1500), ("swap2", 1500), ("swap3", 1500), ("steady", 300))
#: RSS growth allowed. A swap holds two versions for a moment, and the freed
#: memory stays with the process: the first two swaps raise RSS by ~300-420 MB
#: each for a tiny CLUE model, later ones do not (a 4-swap probe: +420, +320,
#: +5, +1 MB). So: the first two swaps together, the third, the steady phase.
FIRST_TWO_SWAPS_RSS_GROWTH_MB = 1200
THIRD_SWAP_RSS_GROWTH_MB = 150  # a leaked version would add ~300-400
STEADY_RSS_GROWTH_MB = 64
BPE_RSS_GROWTH_MB = 8  # ~0.5 M new words; keras-hub's unbounded cache grows ~25 MB here


# ------------------------------------------------------------- processes --


def start_clue_serve(base: str, *flags: str, log_path: str):
    """``clue serve`` in a subprocess on 127.0.0.1:0: (process, address)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clue_cli.main", "serve", "--model-base-path", base,
             "--model-name", "clue", "--port", "0", *flags],
            stdout=subprocess.PIPE, stderr=log, env=env, text=True)
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    if not selector.select(timeout=300):
        proc.kill()
        raise AssertionError("clue serve printed nothing in 300 s")
    line = proc.stdout.readline()
    assert " on 127.0.0.1:" in line, line
    return proc, line.rsplit(" on ", 1)[-1].strip()


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def copy_slowly(src: str, dst: str, pause_s: float) -> float:
    """Copies ``src`` into ``dst`` in place, file by file (``saved_model.pb`` first),
    each in two halves with pauses; returns when the last byte is written."""
    files = sorted((os.path.relpath(os.path.join(r, f), src) for r, _, fs in os.walk(src) for f in fs),
                   key=lambda p: (p != "saved_model.pb", p))
    for rel in files:
        os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
        with open(os.path.join(src, rel), "rb") as f:
            data = f.read()
        with open(os.path.join(dst, rel), "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(pause_s)
            f.write(data[len(data) // 2:])
        time.sleep(pause_s)
    return time.monotonic()


def percentiles(values):
    if not values:
        return None, None
    return float(np.percentile(values, 50)) * 1e3, float(np.percentile(values, 99)) * 1e3


# --------------------------------------------------------------- requests --


def _tensor(value, dtype=None):
    return tf.make_tensor_proto(value, dtype=dtype)


def _request(inputs: dict, model: str = "clue", signature: str = "", version=None, outputs=("embedding",)):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for name, proto in inputs.items():
        request.inputs[name].CopyFrom(proto)
    request.output_filter.extend(outputs)
    return request


def malformed_requests(good: np.ndarray):
    """[(kind, request, expected status code)]: every way a request can be wrong."""
    B, P, S = good.shape
    codes = grpc.StatusCode
    huge = tf.make_tensor_proto(np.array([b"x"], dtype=object))
    huge.tensor_shape.dim[0].size = 10**9  # declares 1e9 strings, carries one
    undecodable = tf.make_tensor_proto(np.int32(3))
    undecodable.ClearField("int_val")
    undecodable.tensor_content = b"\x01\x02\x03"  # 3 bytes for a 4-byte int32
    big_text = np.full((8, P, S), b"y" * 2000, dtype=object)  # ~400 KB > 256 KiB
    return [
        ("wrong_dtype", _request({"item_texts": _tensor(np.zeros((B, P, S), np.float32))}), codes.INVALID_ARGUMENT),
        ("wrong_rank", _request({"item_texts": _tensor(good[:, :, 0])}), codes.INVALID_ARGUMENT),
        ("unknown_model", _request({"item_texts": _tensor(good)}, model="nope"), codes.NOT_FOUND),
        ("unknown_signature", _request({"item_texts": _tensor(good)}, signature="nope"), codes.FAILED_PRECONDITION),
        ("unknown_version", _request({"item_texts": _tensor(good)}, version=987654), codes.NOT_FOUND),
        ("unknown_output", _request({"item_texts": _tensor(good)}, outputs=("nope",)), codes.INVALID_ARGUMENT),
        ("missing_input", _request({}), codes.INVALID_ARGUMENT),
        ("extra_input", _request({"item_texts": _tensor(good), "x": _tensor(np.zeros(1))}), codes.INVALID_ARGUMENT),
        ("empty_batch", _request({"item_texts": _tensor(np.full((0, P, S), b"", dtype=object))}),
         codes.INVALID_ARGUMENT),
        ("over_batch_cap", _request({"item_texts": _tensor(np.full((MAX_BATCH + 1, P, S), b"a", dtype=object))}),
         codes.INVALID_ARGUMENT),
        ("declared_huge", _request({"item_texts": _tensor(good[:1]), "candidate_texts": huge,
                                    "k": _tensor(np.int32(1))}, signature="retrieve", outputs=()),
         codes.INVALID_ARGUMENT),
        ("undecodable", _request({"item_texts": _tensor(good[:1]), "candidate_texts": _tensor(good[0, 0]),
                                  "k": undecodable}, signature="retrieve", outputs=()),
         codes.INVALID_ARGUMENT),
        ("oversized", _request({"item_texts": _tensor(big_text)}), codes.RESOURCE_EXHAUSTED),
    ]


def good_batches(behaviors, services, max_items, n: int, seed: int):
    """``n`` [b, P, S] text batches of real item texts ("" padding); the last
    few carry invalid UTF-8, which the graph drops (answers stay OK)."""
    rng = np.random.default_rng(seed)
    texts = behaviors["item_text"].astype(str).tolist()
    out = []
    for i in range(n):
        b = int(rng.integers(1, 5))
        batch = np.empty((b, len(services), max_items), dtype=object)
        for idx in np.ndindex(batch.shape):
            batch[idx] = texts[int(rng.integers(len(texts)))].encode() if rng.random() < 0.7 else b""
        if i >= n - 4:
            batch[0, 0, 0] = b"caf\xc3 \xff\xfe broken \xe2\x82 utf8"
        out.append(batch)
    return out


def expected_outputs(model_dir: str, batches):
    register_text_ops()
    fn = tf.saved_model.load(model_dir).signatures["serving_default"]
    return [fn(item_texts=tf.constant(b))["embedding"].numpy() for b in batches]


# ------------------------------------------------------------------ test --


def test_load_abuse_and_swap(tiny_clue, tmp_path):
    from clue_keras.embeddings.user_rows import read_model_layout

    paths = {1: tiny_clue.export(0), 2: tiny_clue.export(1)}
    paths[3], paths[4] = paths[1], paths[2]  # versions 3 and 4 alternate the two weights
    services, max_items = read_model_layout(paths[1])
    batches = good_batches(tiny_clue.behaviors, services, max_items, n=24, seed=3)
    expected = {v: expected_outputs(paths[v], batches) for v in (1, 2)}
    expected[3], expected[4] = expected[1], expected[2]
    heavy = np.concatenate([batches[0]] * MAX_BATCH)[:MAX_BATCH]  # for the deadline case
    expected_heavy = {v: np.concatenate([e[0]] * MAX_BATCH)[:MAX_BATCH] for v, e in expected.items()}
    bad = malformed_requests(batches[0])

    base = tmp_path / "base"
    base.mkdir()
    shutil.copytree(paths[1], base / "1")
    log_path = str(tmp_path / "serve.log")
    proc, address = start_clue_serve(
        str(base), "--poll-seconds", "0.2", "--max-batch", str(MAX_BATCH),
        "--max-request-bytes", str(MAX_REQUEST_BYTES), "--threads", "8", log_path=log_path)
    records = []  # (phase, thread, kind, sent, latency, code, version, ok)
    lock = threading.Lock()

    def client_thread(phase: str, index: int, count: int, stop_event: threading.Event, pace_s: float):
        rng = random.Random(f"{phase}-{index}")
        with grpc.insecure_channel(address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for i in range(count):
                if stop_event.is_set():
                    return
                time.sleep(pace_s)
                kind, timeout = "good", 300.0  # generous: two cores shared with other jobs
                if rng.random() < 0.2:  # 20% malformed, every kind in turn
                    j = (i + index) % (len(bad) + 1)
                    kind = bad[j][0] if j < len(bad) else "deadline"
                if kind == "good":
                    k = rng.randrange(len(batches))
                    request = _request({"item_texts": _tensor(batches[k])})
                    kind = "invalid_utf8" if k >= len(batches) - 4 else "good"
                elif kind == "deadline":
                    request, timeout = _request({"item_texts": _tensor(heavy)}), 0.005
                else:
                    request, want_code = bad[j][1], bad[j][2]
                sent = time.monotonic()
                version, ok = None, False
                try:
                    response = stub.Predict(request, timeout=timeout)
                    code = grpc.StatusCode.OK
                    version = response.model_spec.version.value
                    if kind in ("good", "invalid_utf8", "deadline") and version in expected:
                        want = expected_heavy[version] if kind == "deadline" else expected[version][k]
                        got = tf.make_ndarray(response.outputs["embedding"])
                        ok = got.shape == want.shape and np.allclose(got, want, atol=ATOL, rtol=0)
                except grpc.RpcError as e:
                    code = e.code()
                    ok = (code == grpc.StatusCode.DEADLINE_EXCEEDED if kind == "deadline"
                          else kind not in ("good", "invalid_utf8") and code == want_code)
                with lock:
                    records.append((phase, index, kind, sent, time.monotonic() - sent, code, version, ok))

    def run_phase(phase: str, total: int, until=None, pace_s: float = 0.0):
        """``total`` requests from THREADS threads; with ``until``, stops 1 s after
        it holds (waiting at most 600 s), or at ``total``."""
        stop_event = threading.Event()
        threads = [threading.Thread(target=client_thread,
                                    args=(phase, i, total // THREADS, stop_event, pace_s))
                   for i in range(THREADS)]
        for t in threads:
            t.start()
        if until is not None:
            deadline = time.monotonic() + 600
            while not until() and time.monotonic() < deadline and any(t.is_alive() for t in threads):
                time.sleep(0.1)
            time.sleep(1.0)
            stop_event.set()
        for t in threads:
            t.join(timeout=600)
        assert not any(t.is_alive() for t in threads), f"{phase}: client threads still running"
        assert proc.poll() is None, f"clue serve died in phase {phase}; see {log_path}"

    rss, copied, swap_window = {}, {}, {}

    def swap_to(phase: str, version: int, total: int):
        """Copies ``version`` in slowly while clients run, paced, until it answers."""
        copier = threading.Thread(target=lambda: copied.setdefault(
            version, copy_slowly(paths[version], str(base / str(version)), pause_s=0.1)))
        start = time.monotonic()
        copier.start()
        run_phase(phase, total, pace_s=0.6, until=lambda: any(r[6] == version for r in list(records)))
        copier.join(timeout=120)
        swap_window[phase] = (start, min((r[3] + r[4] for r in records if r[6] == version), default=None))

    try:
        run_phase(*PHASES[0])
        rss["warm-up"] = rss_mb(proc.pid)
        for version, (phase, total) in zip((2, 3, 4), PHASES[1:4]):
            swap_to(phase, version, total)
            rss[phase] = rss_mb(proc.pid)
        run_phase(*PHASES[4])
        rss["steady"] = rss_mb(proc.pid)
    finally:
        rc = stop(proc)
    assert rc == 0, f"clue serve exited {rc}; see {log_path}"

    good = [r for r in records if r[5] == grpc.StatusCode.OK and r[2] != "deadline"]
    during = {phase: [r[4] for r in good if start <= r[3] <= (end or start)]
              for phase, (start, end) in swap_window.items()}
    summary = {
        "requests": len(records), "threads": THREADS,
        "malformed_share": round(sum(r[2] not in ("good", "invalid_utf8") for r in records) / len(records), 3),
        "deadline_expired": sum(r[2] == "deadline" and r[5] == grpc.StatusCode.DEADLINE_EXCEEDED
                                for r in records),
        "requests_per_phase": {phase: sum(r[0] == phase for r in records) for phase, _ in PHASES},
        "p50_p99_ms": {phase: percentiles([r[4] for r in good if r[0] == phase]) for phase, _ in PHASES},
        "p50_p99_ms_during_swap": {phase: percentiles(v) for phase, v in during.items()},
        "swap_seconds": {phase: None if end is None else round(end - start, 1)
                         for phase, (start, end) in swap_window.items()},
        "rss_mb": {k: round(v, 1) for k, v in rss.items()},
    }
    print("\nLOAD", json.dumps(summary))

    wrong = [r for r in records if not r[7]]
    assert not wrong, [(r[2], r[5], r[6]) for r in wrong[:5]]
    kinds = {r[2] for r in records}
    assert kinds >= {k for k, _, _ in bad} | {"good", "invalid_utf8", "deadline"}, kinds
    # A version answered only requests sent after its copy had finished, and no
    # thread saw an older version again after a newer one.
    for version in (2, 3, 4):
        answered = [r[3] for r in records if r[6] == version]
        assert answered and min(answered) >= copied[version], version
    for index in range(THREADS):
        versions = [r[6] for r in sorted(records, key=lambda r: r[3]) if r[1] == index and r[6]]
        assert versions == sorted(versions), f"thread {index} went back to an older version"
    # Memory (see the bounds above): swaps stop raising RSS after the second.
    assert rss["swap2"] - rss["warm-up"] < FIRST_TWO_SWAPS_RSS_GROWTH_MB, rss
    assert rss["swap3"] - rss["swap2"] < THIRD_SWAP_RSS_GROWTH_MB, rss
    assert rss["steady"] - rss["swap3"] < STEADY_RSS_GROWTH_MB, rss


def test_bpe_cache_keeps_rss_bounded(tmp_path):
    from clue_keras import tokenizer as T

    rng = random.Random(0)

    def word():
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(4, 10)))

    vocab = str(tmp_path / "vocab")
    T.train_bpe([" ".join(word() for _ in range(10)) for _ in range(500)], ["a", "b"], vocab_size=400,
                out_dir=vocab, max_items=3, max_tokens=8, min_frequency=1)

    class Tokens(tf.Module):
        def __init__(self):
            super().__init__()
            self.tok = T.InGraphTokenizer(vocab, cache_words=1000)

        @tf.function(input_signature=[tf.TensorSpec([None, 2, 3], tf.string, name="item_texts")])
        def serve(self, item_texts):
            return {"embedding": self.tok.tokenize_users(item_texts)}

    module = Tokens()
    tf.saved_model.save(module, str(tmp_path / "base" / "1"), signatures={"serving_default": module.serve})
    reference = T.InGraphTokenizer(vocab, cache_words=None)  # keras-hub's own, unbounded
    log_path = str(tmp_path / "serve.log")
    proc, address = start_clue_serve(str(tmp_path / "base"), log_path=log_path)
    rss, words = {}, 0
    try:
        with grpc.insecure_channel(address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for i in range(100):
                texts = np.array([[[" ".join(word() for _ in range(60)) for _ in range(3)] for _ in range(2)]
                                  for _ in range(16)], dtype=object)
                words += texts.size * 60
                response = stub.Predict(_request({"item_texts": _tensor(texts)}), timeout=120)
                if i % 10 == 0:
                    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["embedding"]),
                                                  reference.tokenize_users(tf.constant(texts)).numpy())
                if i == 9:
                    rss["after 10 requests"] = rss_mb(proc.pid)
            rss["end"] = rss_mb(proc.pid)
            assert proc.poll() is None
    finally:
        assert stop(proc) == 0, f"see {log_path}"
    print("\nBPE", json.dumps({"distinct_words": words, "rss_mb": rss}))
    assert rss["end"] - rss["after 10 requests"] < BPE_RSS_GROWTH_MB, rss
    # The unbounded reference cache really grew: the bound is what keeps RSS flat.
    assert int(reference.bpe.cache.id2value.size()) > 10 * 1000
