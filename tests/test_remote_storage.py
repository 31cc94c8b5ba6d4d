"""Every path may be a URI: the library on ``gs://`` paths of a GCS emulator.

A patched gcp-storage-emulator (tests/gcs_emulator.py, docs/research/remote_storage.md)
runs on a free loopback port for this module. The gs:// work runs in child
processes that get the emulator's environment before TensorFlow is imported,
each under a timeout (google-cloud-cpp may retry a failing call for 15 minutes),
and a child that crashes (the plugin's libcurl can corrupt its heap on large
reads; the emulator paces downloads to avoid it) fails its test, not pytest.

* the atomic helpers (``clue_keras.atomic``) round-trip on gs:// and never
  expose a partial file or directory, and ``clue_keras.uri.glob`` matches a
  wildcard in a directory (which the TF GCS plugin does not);
* ``export_saved_model`` to gs:// loads back with the same embeddings as the
  same model exported locally;
* `clue export-embeddings` with model, data and output on gs:// gives the
  same table (and lookup model) as the run on local paths;
* `clue evaluate` with model, task and output on gs:// gives the same
  results as on local paths.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gcs_emulator import GcsEmulator  # noqa: E402
from processes import kill, stop  # noqa: E402

pytest.importorskip("gcp_storage_emulator")

slow = pytest.mark.slow
BUCKET = "clue"
CLUE = [sys.executable, "-m", "clue_cli.main"]


@pytest.fixture(scope="module")
def gcs():
    with GcsEmulator([BUCKET]) as emu:
        yield emu


def _python(gcs: GcsEmulator, code: str, timeout_s: float = 600.0) -> str:
    """Runs ``code`` in a child with the emulator's environment; its stdout.
    A crash, an exception or a timeout fails the test with the child's output."""
    try:
        r = gcs.run_python(textwrap.dedent(code), timeout_s=timeout_s)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"gs:// child timed out after {timeout_s} s:\n{(e.stderr or '')[-3000:]}")
    assert r.returncode == 0, f"rc {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-5000:]}"
    return r.stdout


def _clue(gcs: GcsEmulator, args, timeout_s: float = 900.0) -> subprocess.CompletedProcess:
    try:
        r = gcs.run(CLUE + list(args), timeout_s=timeout_s)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"clue {args[0]} timed out after {timeout_s} s:\n{(e.stderr or '')[-3000:]}")
    assert r.returncode == 0, f"clue {' '.join(args)}: rc {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-5000:]}"
    return r


def test_atomic_helpers_round_trip_and_hide_partial_files(gcs):
    out = _python(gcs, """
        import json, os
        import tensorflow as tf
        from clue_keras import atomic
        from clue_keras.atomic import atomic_dir, atomic_file, publish_dir, write_json_atomic
        from clue_keras.uri import glob

        G = tf.io.gfile
        d = "gs://clue/atomic"
        write_json_atomic(d + "/a.json", {"x": [1, 2]})
        write_json_atomic(d + "/a.json", {"x": 3})           # replaces
        assert json.loads(G.GFile(d + "/a.json").read()) == {"x": 3}

        payload = bytes(range(256)) * 1200                     # 300 KiB: a chunked download
        with atomic_file(d + "/big.bin") as tmp:
            assert "://" not in tmp                            # a local file for any writer
            with open(tmp, "wb") as f:
                f.write(payload[:1000])
                assert not G.exists(d + "/big.bin")            # nothing published mid-write
                f.write(payload[1000:])
            assert not G.exists(d + "/big.bin")
        assert G.GFile(d + "/big.bin", "rb").read() == payload
        try:
            with atomic_file(d + "/failed.bin") as tmp:
                open(tmp, "wb").write(b"half")
                raise RuntimeError("writer died")
        except RuntimeError:
            pass
        assert not G.exists(d + "/failed.bin")
        assert sorted(G.listdir(d)) == ["a.json", "big.bin"]   # no temporary names left

        copies = []
        real_copy = G.copy
        def recording_copy(src, dst, overwrite=False):
            assert not G.exists("gs://clue/sm/saved_model.pb"), "marker before the rest"
            copies.append(dst)
            return real_copy(src, dst, overwrite=overwrite)
        G.copy = recording_copy
        with atomic_dir("gs://clue/sm") as tmp:
            assert "://" not in tmp
            os.makedirs(os.path.join(tmp, "variables"))
            for name in ("saved_model.pb", "variables/v.index", "fingerprint.pb"):
                open(os.path.join(tmp, name), "w").write(name)
            assert not G.exists("gs://clue/sm")
        G.copy = real_copy
        assert copies[-1] == "gs://clue/sm/saved_model.pb", copies
        assert G.GFile("gs://clue/sm/variables/v.index").read() == "variables/v.index"
        try:
            with atomic_dir("gs://clue/sm"):
                pass
            raise AssertionError("overwrote a non-empty directory")
        except FileExistsError:
            pass
        try:
            with atomic_dir("gs://clue/never") as tmp:
                open(os.path.join(tmp, "saved_model.pb"), "w").write("x")
                raise RuntimeError("builder died")
        except RuntimeError:
            pass
        assert not G.exists("gs://clue/never")
        with atomic_dir("gs://clue/sm", overwrite=True) as tmp:
            open(os.path.join(tmp, "manifest.json"), "w").write("{}")
        assert sorted(G.listdir("gs://clue/sm")) == ["manifest.json"]  # old files gone

        local = atomic.tempfile.mkdtemp()
        open(os.path.join(local, "f"), "w").write("F")
        publish_dir(local, "gs://clue/pub")
        assert G.GFile("gs://clue/pub/f").read() == "F" and not os.path.exists(local)

        for split, name in (("Split-a", "x.gz"), ("Split-b", "y.gz"), ("other", "z.gz")):
            write_json_atomic(f"gs://clue/rec/{split}/{name}", {})
        print(json.dumps([glob("gs://clue/rec/Split-*/*"), glob("gs://clue/rec/Split-?"),
                          glob("gs://clue/rec/other/z.gz"), glob("gs://clue/rec/nothing/*")]))
    """)
    files, dirs, exact, none = json.loads(out.strip().splitlines()[-1])
    assert files == ["gs://clue/rec/Split-a/x.gz", "gs://clue/rec/Split-b/y.gz"]
    assert dirs == ["gs://clue/rec/Split-a", "gs://clue/rec/Split-b"]
    assert exact == ["gs://clue/rec/other/z.gz"] and none == []


@pytest.fixture(scope="module")
def models(gcs, tmp_path_factory):
    """Synthetic data (with a ``movies`` task) locally and at gs://clue/data; the same
    untrained tiny model exported to a local directory and to gs://clue/model."""
    root = str(tmp_path_factory.mktemp("remote"))
    data, model = os.path.join(root, "data"), os.path.join(root, "model")
    _python(gcs, f"""
        import clue_synth
        from clue_bench.serve import export_untrained_model
        from clue_keras.atomic import upload_dir
        from clue_keras.data.tables import read_behaviors

        clue_synth.generate({data!r}, users=60, seed=5, tasks=("movies",), users_per_shard=25)
        upload_dir({data!r}, "gs://clue/data")
        behaviors = read_behaviors({data!r})
        export_untrained_model({model!r}, behaviors, seed=3)
        export_untrained_model("gs://clue/model", behaviors, seed=3)
    """)
    return root, data, model


@slow
def test_export_saved_model_to_gcs_loads_back_like_local(gcs, models):
    _, _, model = models
    out = _python(gcs, f"""
        import json
        import numpy as np
        import tensorflow as tf
        from clue_keras.export import encoder_from_export
        from clue_keras.serving.warmup import sample_user_texts
        from clue_keras.tokenizer import register_text_ops

        register_text_ops()
        G = tf.io.gfile
        files = sorted(f for f in G.walk("gs://clue/model") for f in f[2])
        assert {{"saved_model.pb", "fingerprint.pb", "variables.index", "clue_vocab.json",
                 "tf_serving_warmup_requests", "clue_model.json"}} <= set(files), files
        assert not [n for n in G.listdir("gs://clue/") if n.startswith(".")]
        users = tf.constant(sample_user_texts(3, 8))
        got = {{}}
        for where in ({model!r}, "gs://clue/model"):
            sig = tf.saved_model.load(where).signatures["serving_default"]
            got[where] = sig(item_texts=users)["embedding"].numpy()
        a, b = got.values()
        assert a.shape[0] == 2 and np.isfinite(a).all()
        np.testing.assert_array_equal(a, b)
        def unnamed(c):  # the two exports ran in one process: Keras numbered their names
            if isinstance(c, dict):
                return {{k: unnamed(v) for k, v in c.items() if k != "name"}}
            return [unnamed(v) for v in c] if isinstance(c, list) else c
        local = unnamed(encoder_from_export({model!r}).get_config())
        remote = unnamed(encoder_from_export("gs://clue/model").get_config())
        assert local == remote and local["hidden_dim"] > 0, (local, remote)
        print("OK", a.shape)
    """)
    assert "OK (2," in out


@slow
def test_export_embeddings_on_gcs_matches_local(gcs, models):
    root, data, model = models
    local_out, local_lookup = os.path.join(root, "emb"), os.path.join(root, "lookup")
    common = ["--dtype", "float32", "--shards", "2", "--batch-size", "16"]
    _clue(gcs, ["export-embeddings", "--model", model, "--data", data, "--out", local_out,
                "--lookup-model", local_lookup, *common])
    _clue(gcs, ["export-embeddings", "--model", "gs://clue/model", "--data", "gs://clue/data",
                "--out", "gs://clue/emb", "--lookup-model", "gs://clue/lookup", *common])
    out = _python(gcs, f"""
        import numpy as np
        import tensorflow as tf
        from clue_keras.embeddings.table import read_embeddings

        local, remote = read_embeddings({local_out!r}), read_embeddings("gs://clue/emb")
        assert remote.manifest["model"] == "gs://clue/model"
        assert len(remote.user_ids) == len(local.user_ids) > 0
        assert sorted(remote.user_ids) == sorted(local.user_ids)
        a, b = local.as_dict(), remote.as_dict()
        for u in a:
            np.testing.assert_allclose(a[u], b[u], atol=1e-6, rtol=0)
        ids = sorted(a)[:5] + ["nobody"]
        lookup = tf.saved_model.load("gs://clue/lookup").signatures["serving_default"]
        res = lookup(user_id=tf.constant(ids))
        assert res["found"].numpy().tolist() == [True] * 5 + [False]
        np.testing.assert_allclose(res["embedding"].numpy()[:5], np.stack([a[u] for u in ids[:5]]),
                                   atol=1e-6, rtol=0)
        print("OK", len(a))
    """)
    assert "OK" in out.split()


@slow
def test_evaluate_on_gcs_matches_local(gcs, models):
    root, data, model = models
    task = os.path.join(data, "downstream", "movies")
    common = ["--epochs", "1", "--no-sequence-models", "--seed", "0"]
    _clue(gcs, ["evaluate", "--model", model, "--task", task,
                "--out", os.path.join(root, "eval"), *common])
    _clue(gcs, ["evaluate", "--model", "gs://clue/model", "--task", "gs://clue/data/downstream/movies",
                "--out", "gs://clue/eval", *common])
    out = _python(gcs, f"""
        import json
        import tensorflow as tf
        G = tf.io.gfile
        names = sorted(G.listdir("gs://clue/eval"))
        assert {{"results.json", "results.md", "results.png"}} <= set(names), names
        remote = json.loads(G.GFile("gs://clue/eval/results.json").read())
        local = json.load(open({os.path.join(root, "eval", "results.json")!r}))
        print(json.dumps([local, remote]))
    """)
    local, remote = json.loads(out.strip().splitlines()[-1])
    assert remote["rows"] == local["rows"] and remote["columns"] == local["columns"]
    assert local["values"] and remote["values"].keys() == local["values"].keys()
    for column, values in local["values"].items():
        assert remote["values"][column] == pytest.approx(values, abs=1e-6), column


@slow
def test_clue_run_with_pipeline_root_data_and_serving_on_gcs(gcs, models, tmp_path):
    """ROOT (the run lock, metadata.db, logs) stays local: SQLite and the lock need a
    local file system. Everything else -- the data, every component's output, the
    serving directory -- is on gs://."""
    _clue(gcs, ["run", "--root", str(tmp_path / "root"), "--data", "gs://clue/data",
                "--pipeline-root", "gs://clue/pipeline", "--serving-dir", "gs://clue/serving",
                "--preset", "tiny", "--train-steps", "4", "--batch-size", "16",
                "--eval-epochs", "1", "--no-sequence-models",
                # push whatever 4 steps give: this test is about storage, not quality
                "--margin-over-toppop", "none", "--margin-over-untrained", "none"],
          timeout_s=2400)
    out = _python(gcs, """
        import json
        import numpy as np
        import tensorflow as tf
        from clue_keras.serving.warmup import sample_user_texts
        from clue_keras.tokenizer import register_text_ops

        register_text_ops()
        G = tf.io.gfile
        versions = [v.rstrip("/") for v in G.listdir("gs://clue/serving")]
        model = "gs://clue/serving/" + max(v for v in versions if v.isdigit())
        emb = tf.saved_model.load(model).signatures["serving_default"](
            item_texts=tf.constant(sample_user_texts(3, 8)))["embedding"].numpy()
        assert emb.shape[0] == 2 and np.isfinite(emb).all()
        lookups = [v.rstrip("/") for v in G.listdir("gs://clue/serving_user_lookup")]
        assert any(v.isdigit() for v in lookups), lookups
        runs = [r for r in G.walk("gs://clue/pipeline") if "train_result.json" in r[2]]
        assert runs, "no train_result.json under the pipeline root"
        result = json.loads(G.GFile(runs[0][0].rstrip("/") + "/train_result.json").read())
        print(json.dumps({"versions": versions, "steps": result["steps"]}))
    """)
    got = json.loads(out.strip().splitlines()[-1])
    assert got["steps"] == 4 and got["versions"]


@slow
def test_clue_serve_polls_a_gcs_model_base_path(gcs, models):
    """`clue serve --model-base-path gs://...`: lists versions, checks completeness and
    loads through tf.io.gfile; answers equal the local SavedModel's; a version copied
    later (markers last, as the Pusher's atomic_dir does) is picked up."""
    import selectors

    import numpy as np
    import tensorflow as tf

    from clue_keras.serving.client import CLUEClient
    from clue_keras.serving.warmup import sample_user_texts
    from clue_keras.tokenizer import register_text_ops

    _, _, model = models
    base = "gs://clue/serve_base"
    _python(gcs, f"""
        from clue_keras.atomic import upload_dir
        upload_dir({model!r}, {base + '/1'!r})
        upload_dir({model!r}, {base + '/tmp-7'!r})   # not a version: ignored
    """)
    proc = gcs.popen(CLUE + ["serve", "--model-base-path", base, "--model-name", "clue",
                             "--port", "0", "--poll-seconds", "0.2"])
    try:
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        assert selector.select(timeout=300), "clue serve printed nothing"
        line = proc.stdout.readline()
        assert f"from {base} on 127.0.0.1:" in line, line + proc.stdout.read()[-3000:]
        address = line.rsplit(" on ", 1)[-1].strip()
        users = sample_user_texts(3, 8)
        register_text_ops()
        expected = tf.saved_model.load(model).signatures["serving_default"](
            item_texts=tf.constant(users))["embedding"].numpy()
        with CLUEClient(address, "clue") as client:
            got = client.predict({"item_texts": users})["embedding"]
            assert client.last_model_version == 1
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
            _python(gcs, f"""
                from clue_keras.atomic import upload_dir
                upload_dir({model!r}, {base + '/2'!r})
            """)
            deadline = time.monotonic() + 300
            while client.last_model_version != 2 and time.monotonic() < deadline:
                time.sleep(0.5)
                got = client.predict({"item_texts": users})["embedding"]
            assert client.last_model_version == 2
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        assert stop(proc) == 0
    finally:
        kill(proc)
