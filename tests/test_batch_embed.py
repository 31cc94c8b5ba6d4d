"""Beam batch embedding export, storage dtypes and the id-lookup SavedModel.

Reference: ``clue_tfrs.features.user_features`` (cleaning by
``user_text_tensor`` + direct ``serving_default`` calls): the same per-user
cleaning (``user_text_row``) but its own reading, grouping and batching, with
no Beam. Pipelines run on the in-memory DirectRunner to keep the
test fast on two cores; `clue bench serve` runs the multi-processing default.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from clue_keras.embeddings.batch import export_embeddings
from clue_keras.embeddings.table import (MANIFEST_FILE, dequantize, max_error_bound, quantize,
                                         read_embeddings)

slow = pytest.mark.slow  # shared fixture: synth + export + three Beam runs, ~1 min on 2 cores

BEAM = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
BEAM_CLI = [f"--beam-arg={a}" for a in BEAM]


# ------------------------------------------------------------------ quantisation --


def test_int8_quantisation_by_hand():
    x = np.array([[1.0, -0.5, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0], [0.1, -0.2, 0.0, 0.05]], np.float32)
    q, s = quantize(x, "int8")
    assert q.dtype == np.int8 and s.dtype == np.float32
    # Row 0: s = 1; q = round([127, -63.5, 31.75, 0]) (half to even: -63.5 -> -64).
    np.testing.assert_array_equal(q[0], [127, -64, 32, 0])
    # Row 1: all zero -> s = 0, q = 0, decodes to zeros (no division by zero).
    assert s[1] == 0 and not q[1].any()
    # Row 2: s = 0.2; q = round([63.5, -127, 0, 31.75]) = [64, -127, 0, 32].
    np.testing.assert_array_equal(q[2], [64, -127, 0, 32])
    np.testing.assert_allclose(s, [1.0, 0.0, 0.2], rtol=1e-7)
    back = dequantize(q, s, "int8")
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back[1], 0.0)
    assert (np.abs(back - x) <= max_error_bound("int8", s)[:, None] + 1e-7).all()


def test_float_dtypes_and_bad_dtype():
    x = np.array([[0.123456789, -1.0]], np.float32)
    v, s = quantize(x, "float16")
    assert v.dtype == np.float16 and s.tolist() == [1.0]
    assert np.abs(dequantize(v, s, "float16") - x).max() <= 2.0 ** -12
    v, s = quantize(x, "float32")
    np.testing.assert_array_equal(dequantize(v, s, "float32"), x)
    with pytest.raises(ValueError, match="unknown embedding dtype 'bfloat8'"):
        quantize(x, "bfloat8")


# ------------------------------------------------------------------ the pipeline --


@pytest.fixture(scope="module")
def setup(tiny_clue, tmp_path_factory):
    """100 synthetic users in 3 behaviour shards, an untrained tiny export (conftest's
    ``tiny_clue``), and the reference embeddings."""
    from clue_tfrs.features import user_features

    root = tmp_path_factory.mktemp("batch_embed")
    model = tiny_clue.export(seed=0)
    reference = user_features(model, tiny_clue.behaviors)
    return root, tiny_clue.data_dir, model, reference


@pytest.fixture(scope="module")
def exports(setup):
    """float32 via the Python API (2 shards); float16 and int8 (+ lookup model) via the CLI."""
    from clue_cli.main import main

    root, data, model, _ = setup
    out = {"float32": str(root / "out" / "emb_f32")}
    export_embeddings(model, data, out["float32"], dtype="float32", num_shards=2, batch_size=16,
                      beam_args=BEAM)
    for dtype in ("float16", "int8"):
        out[dtype] = str(root / "out" / f"emb_{dtype}")
        args = ["export-embeddings", "--model", model, "--data", data, "--out", out[dtype],
                "--dtype", dtype, "--batch-size", "32", *BEAM_CLI]
        if dtype == "int8":
            args += ["--lookup-model", str(root / "lookup" / "1")]
        assert main(args) == 0
    return out


def _check_layout(out_dir, manifest):
    files = sorted(os.listdir(out_dir))
    assert files == sorted([MANIFEST_FILE] + [s["file"] for s in manifest["shards"]])
    leftovers = [n for n in os.listdir(os.path.dirname(out_dir)) if n.startswith(".")]
    assert leftovers == []


@slow
@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_export_matches_direct_serving_calls(setup, exports, dtype, record_property):
    _, _, model, reference = setup
    table = read_embeddings(exports[dtype])
    manifest = table.manifest
    # Every user with behaviours in a known service, exactly once.
    assert len(table.user_ids) == len(set(table.user_ids)) == len(reference)
    assert set(table.user_ids) == set(reference)
    dim = next(iter(reference.values())).shape[0]
    assert manifest["count"] == len(reference) and manifest["dim"] == dim == 96
    assert manifest["dtype"] == dtype and manifest["model"] == os.path.abspath(model)
    assert manifest["services"] == ["news", "search", "shopping"] and manifest["max_items"] == 8
    assert sum(s["rows"] for s in manifest["shards"]) == manifest["count"]
    if dtype == "float32":
        assert len(manifest["shards"]) == 2
    assert table.values.dtype == np.dtype({"float32": "<f4", "float16": "<f2", "int8": "i1"}[dtype])
    _check_layout(exports[dtype], manifest)

    got = table.as_dict()
    want = np.stack([reference[u] for u in table.user_ids])
    have = np.stack([got[u] for u in table.user_ids])
    err = np.abs(have - want)
    record_property(f"max_abs_error_{dtype}", float(err.max()))
    print(f"{dtype}: max reconstruction error {err.max():.3g}")
    if dtype == "float32":
        np.testing.assert_allclose(have, want, atol=1e-5, rtol=0)
    elif dtype == "float16":
        assert err.max() <= 1e-3
    else:
        max_abs = np.abs(want).max(axis=1)
        np.testing.assert_allclose(table.scale, max_abs, rtol=1e-6)
        assert (err <= max_abs[:, None] / 127 + 1e-7).all()  # within 1/127 of max, relative
        assert (err <= max_error_bound("int8", table.scale)[:, None] + 1e-6).all()  # half a step


@slow
def test_lookup_model_direct_and_served(setup, exports, start_serving):
    import tensorflow as tf

    root, _, _, _ = setup
    base = str(root / "lookup")
    table = read_embeddings(exports["int8"])
    rows = table.dequantized()
    ids = [table.user_ids[7], "no-such-user", table.user_ids[0], "", table.user_ids[-1]]
    want = np.stack([rows[7], np.zeros_like(rows[0]), rows[0], np.zeros_like(rows[0]), rows[-1]])
    want_found = [True, False, True, False, True]

    fn = tf.saved_model.load(os.path.join(base, "1")).signatures["serving_default"]
    out = fn(user_id=tf.constant(ids))
    assert out["embedding"].dtype == tf.float32 and out["found"].dtype == tf.bool
    np.testing.assert_allclose(out["embedding"].numpy(), want, atol=1e-6, rtol=0)
    assert out["found"].numpy().tolist() == want_found

    served = start_serving(None, "lookup", base_path=base, local=True)  # version 1 is there
    try:
        with served.client() as client:
            got = client.predict({"user_id": np.array(ids, dtype=object)})
            everyone = client.predict({"user_id": np.array(table.user_ids, dtype=object)})
    finally:
        served.stop()
    np.testing.assert_allclose(got["embedding"], want, atol=1e-6, rtol=0)
    assert got["found"].tolist() == want_found
    assert everyone["found"].all()
    np.testing.assert_allclose(everyone["embedding"], rows, atol=1e-6, rtol=0)


@slow
def test_failed_runs_leave_no_output(setup, tmp_path, capsys):
    from clue_cli.main import main

    _, data, model, _ = setup
    out = tmp_path / "emb"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_embeddings(str(tmp_path / "missing"), data, str(out), beam_args=BEAM)
    assert main(["export-embeddings", "--model", str(tmp_path / "missing"), "--data", data,
                 "--out", str(out), *BEAM_CLI]) == 2
    assert "does not exist" in capsys.readouterr().err

    # A model that passes the layout check but cannot load: fails inside the pipeline.
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    with pytest.raises(Exception):
        export_embeddings(str(broken), data, str(out), beam_args=BEAM)
    assert sorted(os.listdir(tmp_path)) == ["broken"]  # no output, no temporary directory

    # An existing export is never clobbered without --overwrite.
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        export_embeddings(model, data, str(out), beam_args=BEAM)
    assert os.listdir(out) == ["keep.txt"]


@slow
def test_lookup_model_rejects_bad_exports(setup, exports, tmp_path):
    from clue_keras.embeddings.lookup_model import build_lookup_model

    src = exports["float16"]
    with pytest.raises(FileNotFoundError, match="no manifest"):
        build_lookup_model(str(tmp_path), str(tmp_path / "m"))
    # Duplicate ids (e.g. two exports merged by hand) are refused, naming the id.
    dup = tmp_path / "dup"
    shutil.copytree(src, dup)
    manifest = json.loads((dup / MANIFEST_FILE).read_text())
    first = manifest["shards"][0]
    copy = dict(first, file="embeddings-copy.parquet")
    shutil.copyfile(dup / first["file"], dup / copy["file"])
    manifest["shards"].append(copy)
    manifest["count"] += copy["rows"]
    (dup / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="appears more than once"):
        build_lookup_model(str(dup), str(tmp_path / "m"))
    assert not (tmp_path / "m").exists()
