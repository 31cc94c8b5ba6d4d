"""`clue bench serve`: online latency / throughput and batch-export throughput.

    clue bench serve [--users 2000] [--requests 300] [--preset tiny | --model DIR]
                     [--concurrency 1,8,32] [--max-seconds 60] [--json OUT]

1. Generates ``--users`` synthetic users (``clue synth``) in a temporary
   directory; without ``--model`` exports an *untrained* ``--preset`` model
   (weights do not change its speed) with a BPE vocabulary trained on them.
2. Starts the local TF Serving-compatible server on ``127.0.0.1:0`` and, for
   each concurrency c, runs ``--requests`` Predict calls of one user each
   (``serving_default``, [1, P, S] texts, ``output_filter=["embedding"]``)
   from c threads; each thread has its own ``CLUEClient`` on one shared gRPC
   channel. Reports p50 / p99 latency (ms, per request, client side) and
   throughput (users/s = requests / wall time). Each level stops early after
   ``--max-seconds``; the number actually run is reported.
3. Times ``export_embeddings`` (the Beam batch export, DirectRunner
   multi-processing unless ``--beam-arg`` says otherwise) over all users:
   users/s including pipeline start-up, and bytes per user on disk.
4. First-request latency (before 2, with the machine otherwise idle): in a
   fresh process, load the model as ``clue serve`` does
   (``model_manager.load_version``), then time the first call of every
   signature (one synthetic user, its ids, three items, eight candidates,
   none of them in the warm-up file), once straight after loading ("cold") and
   once after replaying the export's TF Serving warm-up file
   (``clue_keras.serving.warmup.replay_warmup``, "warmed"), plus the second
   call of the cold process ("steady"); median of ``first_request_repeats``
   process pairs. gRPC is not included: this is the model's own first-run cost.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple


def export_untrained_model(export_dir: str, behaviors, preset: str = "tiny", seed: int = 0,
                           vocab_size: int = 400, bpe_texts: int = 2000) -> str:
    """Exports an untrained CLUE model (``preset``) with a BPE trained on ``behaviors``.

    Args:
      export_dir: the SavedModel directory to write (e.g. ``<base>/1``).
      behaviors: DataFrame of behaviour rows (``service``, ``item_text``).
      preset: model preset; its ``vocab_size`` is replaced by the trained one.
      seed: Keras seed of the random weights (different seeds, different models).
      vocab_size: requested BPE size (at least 256 + special tokens).
      bpe_texts: item texts used to train the BPE.
    """
    import keras

    from clue_keras.config import get_preset
    from clue_keras.export import export_saved_model
    from clue_keras.tokenizer import train_bpe
    from clue_keras.train import build_pretrainer

    mc = get_preset(preset)
    work = tempfile.mkdtemp(prefix="clue-vocab-")  # the vocab ends up in <export>/assets
    try:
        vocab = os.path.join(work, "vocab")
        info = train_bpe(list(behaviors["item_text"][:bpe_texts]), sorted(behaviors["service"].unique()),
                         vocab_size=max(vocab_size, 300), out_dir=vocab, max_items=mc.max_items,
                         max_tokens=mc.max_tokens, min_frequency=1)
        keras.utils.set_random_seed(seed)
        model = build_pretrainer(mc.replace(vocab_size=info.vocab_size))
        return export_saved_model(model, vocab, export_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _percentile(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def measure_online(address: str, model_name: str, texts, requests: int, concurrency: int,
                   max_seconds: float, channel=None) -> Dict[str, float]:
    """Runs up to ``requests`` one-user Predict calls from ``concurrency`` threads.

    Args:
      texts: object [N, P, S] user histories; request i sends row i mod N.
      channel: a shared ``grpc.Channel`` (one per thread's client otherwise).

    Returns:
      ``{"concurrency", "requests", "seconds", "users_per_s", "p50_ms", "p99_ms", "mean_ms"}``.
    """
    from clue_keras.serving.client import CLUEClient

    latencies: List[float] = []
    lock = threading.Lock()
    counter = {"next": 0}
    errors: List[BaseException] = []
    deadline = time.monotonic() + max_seconds

    def worker():
        try:
            with CLUEClient(address, model_name, channel=channel, timeout_s=30) as client:
                while time.monotonic() < deadline:
                    with lock:
                        i = counter["next"]
                        if i >= requests:
                            return
                        counter["next"] += 1
                    row = texts[i % len(texts)][None]
                    t0 = time.perf_counter()
                    client.predict({"item_texts": row}, output_filter=["embedding"])
                    dt = time.perf_counter() - t0
                    with lock:
                        latencies.append(dt)
        except BaseException as e:  # reported after join
            errors.append(e)

    threads = [threading.Thread(target=worker, name=f"bench-{k}") for k in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"benchmark client failed: {errors[0]!r}") from errors[0]
    ms = [x * 1000 for x in latencies]
    return {"concurrency": concurrency, "requests": len(ms), "seconds": round(wall, 3),
            "users_per_s": len(ms) / wall if wall > 0 else float("nan"),
            "p50_ms": _percentile(ms, 50), "p99_ms": _percentile(ms, 99),
            "mean_ms": sum(ms) / len(ms) if ms else float("nan")}


def bench_serve(users: int = 2000, requests: int = 300, concurrency: Sequence[int] = (1, 8, 32),
                max_seconds: float = 60.0, preset: str = "tiny", model: Optional[str] = None,
                server_threads: int = 32, export: bool = True, export_dtype: str = "float32",
                beam_args: Optional[Sequence[str]] = None, seed: int = 0,
                workdir: Optional[str] = None, first_request_repeats: int = 3,
                log=print) -> Dict[str, object]:
    """The benchmark of the module docstring; returns the figures as a dict."""
    import grpc
    import numpy as np

    import clue_synth as synth
    from clue_keras.data.tables import read_behaviors
    from clue_keras.embeddings.batch import export_embeddings
    from clue_keras.embeddings.user_rows import read_model_layout, user_text_row
    from clue_keras.serving.server import serve

    own_dir = workdir is None
    work = tempfile.mkdtemp(prefix="clue-bench-serve-") if own_dir else os.path.abspath(workdir)
    os.makedirs(work, exist_ok=True)
    result: Dict[str, object] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "users": users, "preset": None if model else preset,
    }
    try:
        data = os.path.join(work, "data")
        if not os.path.exists(os.path.join(data, "manifest.json")):
            log(f"generating {users} synthetic users ...")
            synth.generate(data, users=users, seed=seed)
        behaviors = read_behaviors(data)
        base = os.path.join(work, "models", "clue")
        if model:
            model_dir = os.path.join(base, "1")  # the server loads only real dirs inside its base
            if not os.path.exists(model_dir):
                read_model_layout(model)
                shutil.copytree(model, model_dir)
        else:
            model_dir = os.path.join(base, "1")
            if not os.path.exists(os.path.join(model_dir, "saved_model.pb")):
                log(f"exporting an untrained {preset!r} model ...")
                export_untrained_model(model_dir, behaviors, preset=preset, seed=seed)
        result["model"] = model_dir
        services, max_items = read_model_layout(model_dir)
        known = behaviors[behaviors["service"].isin(services)]
        texts = [user_text_row(zip(g["service"], g["timestamp"], g["item_text"]), services, max_items)
                 for _, g in known.groupby("user_id", sort=True)]
        texts = np.stack(texts)
        result["layout"] = {"P": len(services), "S": max_items}
        if first_request_repeats > 0:
            log(f"first-request latency, cold and after the warm-up replay ({first_request_repeats} x 2 processes) ...")
            result["first_request"] = measure_first_requests(model_dir, texts[0], first_request_repeats)

        server = serve(base, "clue", port=0, host="127.0.0.1", threads=server_threads)
        online = []
        try:
            channel = grpc.insecure_channel(server.address)
            try:
                measure_online(server.address, "clue", texts, min(20, requests), 1, max_seconds, channel)  # warm-up
                for c in concurrency:
                    log(f"online: {requests} one-user requests at concurrency {c} ...")
                    online.append(measure_online(server.address, "clue", texts, requests, c,
                                                 max_seconds, channel))
            finally:
                channel.close()
        finally:
            server.stop(grace=1.0)
        result["online"] = online

        if export:
            out = os.path.join(work, "embeddings")
            shutil.rmtree(out, ignore_errors=True)
            log(f"batch export of {len(texts)} users ({export_dtype}) ...")
            t0 = time.perf_counter()
            manifest = export_embeddings(model_dir, data, out, dtype=export_dtype, beam_args=beam_args)
            wall = time.perf_counter() - t0
            size = sum(os.path.getsize(os.path.join(out, s["file"])) for s in manifest["shards"])
            result["batch_export"] = {
                "users": manifest["count"], "seconds": round(wall, 3),
                "users_per_s": manifest["count"] / wall, "dtype": export_dtype, "dim": manifest["dim"],
                "bytes_per_user": size / max(manifest["count"], 1),
                "beam_args": list(beam_args) if beam_args else "default (DirectRunner multi_processing)",
            }
    finally:
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)
    return result


def _first_request_inputs(model_dir: str, row) -> List[Tuple[str, Dict[str, object]]]:
    """One request per signature of a CLUE export from one user's [P, S] texts."""
    import numpy as np

    from clue_keras.tokenizer import OfflineTokenizer

    tokenizer = OfflineTokenizer(os.path.join(model_dir, "assets"))
    services, max_tokens = tokenizer.info.services, tokenizer.info.max_tokens
    texts = np.array([[t.encode("utf-8") if isinstance(t, str) else t for t in r] for r in row],
                     dtype=object)[None]                                             # [1, P, S]
    ids = np.zeros(texts.shape + (max_tokens,), np.int32)
    for _, p, s in np.ndindex(texts.shape):
        if texts[0, p, s]:
            encoded = tokenizer.encode_item(texts[0, p, s].decode("utf-8"), services[p])
            ids[0, p, s, : len(encoded)] = encoded
    items = [t for t in texts.reshape(-1) if t]
    candidates = np.array((items * 8)[:8], dtype=object)
    return [("serving_default", {"item_texts": texts}), ("embed_tokens", {"token_ids": ids}),
            ("embed_items", {"item_texts": np.array(items[:3], dtype=object)}),
            ("retrieve", {"item_texts": texts, "candidate_texts": candidates, "k": np.array(3, np.int32)}),
            ("clue_metadata", {})]


def _first_calls(model_dir: str, row, warmup: bool) -> Dict[str, object]:
    """Runs in a fresh process: load, optionally replay the warm-up file, time each
    signature's first call (and, without warm-up, its second)."""
    import tensorflow as tf

    from clue_keras.serving.model_manager import load_version
    from clue_keras.serving.warmup import replay_warmup

    import inspect

    start = time.perf_counter()
    # The server's loader may replay the warm-up itself: here it is timed apart.
    no_warmup = {"warm_up": False} if "warm_up" in inspect.signature(load_version).parameters else {}
    loaded = load_version(1, model_dir, **no_warmup)
    out: Dict[str, object] = {"load_s": time.perf_counter() - start, "first_ms": {}, "second_ms": {}}

    def call(name, inputs):
        result = loaded.signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in result.items()}

    if warmup:
        start = time.perf_counter()
        out["warmup_requests"] = len(replay_warmup(model_dir, call))
        out["warmup_s"] = time.perf_counter() - start
    for name, inputs in _first_request_inputs(model_dir, row):
        if name not in loaded.signatures:
            continue
        for key in ("first_ms", "second_ms") if not warmup else ("first_ms",):
            start = time.perf_counter()
            call(name, inputs)
            out[key][name] = (time.perf_counter() - start) * 1000
    return out


def _first_calls_cli(spec_path: str) -> None:
    """Entry point of the probe process: ``_first_calls`` from a JSON spec, result to JSON."""
    import json

    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    result = _first_calls(spec["model_dir"], spec["row"], spec["warmup"])
    with open(spec["out"], "w", encoding="utf-8") as f:
        json.dump(result, f)


def _probe(model_dir: str, row, warmup: bool) -> Dict[str, object]:
    """``_first_calls`` in a fresh Python process (a cold TensorFlow)."""
    import json
    import subprocess
    import sys

    with tempfile.TemporaryDirectory(prefix="clue-first-request-") as tmp:
        spec, out = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
        rows = [[t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in r] for r in row]
        with open(spec, "w", encoding="utf-8") as f:
            json.dump({"model_dir": model_dir, "row": rows, "warmup": warmup, "out": out}, f)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        code = "import sys; from clue_bench.serve import _first_calls_cli; _first_calls_cli(sys.argv[1])"
        proc = subprocess.run([sys.executable, "-c", code, spec], env=env, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"first-request probe failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
        with open(out, encoding="utf-8") as f:
            return json.load(f)


def measure_first_requests(model_dir: str, row, repeats: int = 3) -> Dict[str, object]:
    """First-request latency of every signature, cold and after the warm-up replay.

    Args:
      model_dir: a CLUE serving SavedModel (with its warm-up file).
      row: one user's [P, S] texts ("" = padding).
      repeats: pairs of fresh processes (cold, warmed); medians are reported.

    Returns:
      ``{"signatures": {name: {"cold_ms", "warmed_ms", "steady_ms"}}, "load_s",
      "warmup_s", "warmup_requests", "repeats"}``.
    """
    import numpy as np

    runs: Dict[bool, List[Dict[str, object]]] = {False: [], True: []}
    for _ in range(repeats):
        for warmup in (False, True):
            runs[warmup].append(_probe(model_dir, row, warmup))

    def median(values):
        return float(np.median(values)) if values else float("nan")

    names = list(runs[False][0]["first_ms"])
    return {
        "signatures": {name: {"cold_ms": median([r["first_ms"][name] for r in runs[False]]),
                              "warmed_ms": median([r["first_ms"][name] for r in runs[True]]),
                              "steady_ms": median([r["second_ms"][name] for r in runs[False]])}
                       for name in names},
        "load_s": median([r["load_s"] for r in runs[False] + runs[True]]),
        "warmup_s": median([r["warmup_s"] for r in runs[True]]),
        "warmup_requests": runs[True][0]["warmup_requests"],
        "repeats": repeats,
    }


def format_table(result: Dict[str, object]) -> str:
    lines = []
    first = result.get("first_request")
    if first:
        lines.append(f"first request after loading (fresh process, median of {first['repeats']}): "
                     f"load {first['load_s']:.1f} s, warm-up replay of {first['warmup_requests']} "
                     f"requests {first['warmup_s']:.1f} s")
        lines.append(f"{'signature':>16} {'cold ms':>9} {'warmed ms':>10} {'steady ms':>10}")
        for name, row in first["signatures"].items():
            lines.append(f"{name:>16} {row['cold_ms']:>9.1f} {row['warmed_ms']:>10.1f} {row['steady_ms']:>10.1f}")
    lines.append(f"{'concurrency':>11} {'requests':>9} {'p50 ms':>9} {'p99 ms':>9} {'users/s':>9}")
    for row in result["online"]:
        lines.append(f"{row['concurrency']:>11} {row['requests']:>9} {row['p50_ms']:>9.2f} "
                     f"{row['p99_ms']:>9.2f} {row['users_per_s']:>9.1f}")
    be = result.get("batch_export")
    if be:
        lines.append(f"batch export: {be['users']} users in {be['seconds']:.1f} s = "
                     f"{be['users_per_s']:.1f} users/s ({be['dtype']}, dim {be['dim']}, "
                     f"{be['bytes_per_user']:.0f} bytes/user on disk)")
    return "\n".join(lines)

