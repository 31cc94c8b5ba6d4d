"""Models that describe themselves, and a forgiving `clue embed`, against `clue serve`.

The server is conftest's ``start_serving`` (in-process ``clue serve`` on
127.0.0.1:0, or the TF Serving behind ``CLUE_SERVING_ADDRESS``, see
tests/test_serving.py). The fast tests serve a small hand-made model with the
real export's ``serving_default`` / ``clue_metadata`` contract
(``embedding`` = byte lengths of the [B, 2, 3] texts); the slow one serves a
real untrained ``tiny`` CLUE export (conftest's ``tiny_clue``).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from clue_cli.main import main
from clue_keras.serving.model_info import METADATA_SIGNATURE, ModelInfo

SERVICES = ["news", "shopping"]
P, S = 2, 3
INFO = ModelInfo(services=SERVICES, max_items=S, max_tokens=4, embedding_dim=P * S, service_dim=S,
                 item_dim=S, vocab_size=300, preset="custom", data_fingerprint="sha256:" + "ab" * 32)


def _save_model(path: str, describe: bool) -> str:
    """``serving_default``: item_texts string [B, 2, 3] -> embedding = byte lengths [B, 6];
    with ``describe``, also ``clue_metadata`` (INFO as constants)."""
    module = tf.Module()
    module.serving_default = tf.function(
        lambda item_texts: {"embedding": tf.reshape(
            tf.cast(tf.strings.length(item_texts), tf.float32), [-1, P * S])},
        input_signature=[tf.TensorSpec([None, P, S], tf.string, name="item_texts")])
    signatures = {"serving_default": module.serving_default.get_concrete_function()}
    if describe:
        module.clue_metadata = tf.function(
            lambda: {k: tf.constant(v) for k, v in INFO.outputs().items()}, input_signature=[])
        signatures[METADATA_SIGNATURE] = module.clue_metadata.get_concrete_function()
    tf.saved_model.save(module, path, signatures=signatures)
    return path


def _expected(user) -> np.ndarray:
    out = np.zeros((P, S), np.float32)
    for p, service in enumerate(SERVICES):
        texts = [t for t in user["items"].get(service, []) if t.strip()][-S:]
        out[p, : len(texts)] = [len(t.encode("utf-8")) for t in texts]
    return out.reshape(-1)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{"described": path, "older": path}: the same model with and without clue_metadata."""
    root = tmp_path_factory.mktemp("self_describing")
    return {name: _save_model(str(root / name), describe)
            for name, describe in (("described", True), ("older", False))}


@pytest.fixture(scope="module")
def described(saved, start_serving):
    target = start_serving(saved["described"], "clue")
    yield target
    target.stop()


@pytest.fixture(scope="module")
def older(saved, start_serving):
    target = start_serving(saved["older"], "clue")
    yield target
    target.stop()


def _write_users(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                            for line in lines), encoding="utf-8")
    return str(path)


def _embed(target, input_path, out, *extra):
    return main(["embed", "--server", target.address, "--model", target.model_name,
                 "--input", input_path, "--out", str(out), *extra])


GOOD = [{"user_id": f"u{i}", "items": {"news": ["n" * (i + 1)], "shopping": ["s", "ss" * i]}}
        for i in range(4)]


def test_client_reads_layout_from_the_model(described):
    with described.client() as client:
        assert client.model_info() == INFO
        assert client.resolve_layout(None, None) == (SERVICES, S)
        with pytest.raises(ValueError, match="--services shopping,news differ"):
            client.resolve_layout(["shopping", "news"], None)
        with pytest.raises(ValueError, match="--max-items 5 differs"):
            client.resolve_layout(None, 5)


def test_embed_needs_only_server_model_input_out(described, tmp_path, capsys):
    users = _write_users(tmp_path / "users.jsonl", GOOD)
    out = tmp_path / "emb.parquet"
    assert _embed(described, users, out) == 0
    printed = capsys.readouterr().out
    assert "preset custom, services news,shopping (S=3" in printed
    assert "embedded 4 of 4 users" in printed
    table = pd.read_parquet(out)
    assert list(table["user_id"]) == [u["user_id"] for u in GOOD]
    np.testing.assert_array_equal(np.stack(table["embedding"]), np.stack([_expected(u) for u in GOOD]))
    assert not os.path.exists(tmp_path / "emb.errors.jsonl")


BAD_LINES = [
    GOOD[0],                                                    # line 1
    "{not json",                                                # 2
    {"items": {"news": ["x"]}},                                 # 3: no user_id
    "",                                                         # 4: blank, skipped
    {"user_id": "b1", "items": ["news", "x"]},                  # 5: items not an object
    GOOD[1],                                                    # 6
    {"user_id": "b2", "items": {"news": ["ok", 7]}},            # 7: non-text item
    {"user_id": "b3", "items": {"sports": ["x"]}},              # 8: unknown service
    "[1, 2]",                                                   # 9: not an object
    GOOD[2],                                                    # 10
]


def test_bad_lines_are_reported_with_line_numbers_and_the_rest_goes_on(described, tmp_path, capsys):
    users = _write_users(tmp_path / "users.jsonl", BAD_LINES)
    with open(users, "ab") as f:
        f.write(b'{"user_id": "\xff"}\n')                     # 11: not UTF-8
        f.write((json.dumps(GOOD[3]) + "\n").encode())           # 12
    out = tmp_path / "emb.parquet"
    assert _embed(described, users, out) == 1  # finished, some lines failed
    printed = capsys.readouterr().out
    assert "embedded 4 of 11 users" in printed
    assert "7 failed (7 bad input lines: 2, 3, 5, 7, 8, ...)" in printed
    table = pd.read_parquet(out)
    assert list(table["user_id"]) == ["u0", "u1", "u2", "u3"]
    errors = [json.loads(line) for line in (tmp_path / "emb.errors.jsonl").read_text().splitlines()]
    assert [e["line"] for e in errors] == [2, 3, 5, 7, 8, 9, 11]
    assert [e["user_id"] for e in errors] == [None, None, "b1", "b2", "b3", None, None]
    assert all(e["error"].startswith("bad input line: ") for e in errors)
    for e, words in zip(errors, ["not valid JSON", "'user_id'", "'items' must be an object",
                                 "items['news'][1] is int", "unknown services ['sports']",
                                 "'user_id'", "not valid UTF-8"]):
        assert words in e["error"], e


def test_strict_stops_at_the_first_bad_line(described, tmp_path, capsys):
    users = _write_users(tmp_path / "users.jsonl", BAD_LINES)
    out = tmp_path / "emb.parquet"
    assert _embed(described, users, out, "--strict") == 2
    assert f"clue embed: {users}:2: not valid JSON" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["users.jsonl"]  # nothing half-written
    # Strict and clean input: as without --strict.
    clean = _write_users(tmp_path / "clean.jsonl", GOOD)
    assert _embed(described, clean, out, "--strict") == 0


def test_older_model_needs_vocab(older, tmp_path, capsys):
    """Runs after the tests of ``described`` (an external server then serves this one)."""
    with older.client() as client:
        assert client.model_info() is None
        with pytest.raises(ValueError) as info:
            client.resolve_layout(None, None)
    message = str(info.value)
    assert "--vocab" in message and "--services" in message and "services=[" not in message
    users = _write_users(tmp_path / "users.jsonl", GOOD)
    out = tmp_path / "emb.parquet"
    assert _embed(older, users, out) == 2
    err = capsys.readouterr().err
    assert "--vocab" in err and "--services" in err and not out.exists()
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "clue_vocab.json").write_text(json.dumps({"services": SERVICES, "max_items": S}))
    assert _embed(older, users, out, "--vocab", str(tmp_path / "vocab")) == 0
    assert "embedded 4 of 4 users" in capsys.readouterr().out


@pytest.mark.slow
def test_real_export_served_without_local_files(tiny_clue, start_serving, tmp_path, capsys):
    """An exported CLUE model: `clue embed` with only --server/--model/--input/--out equals
    calling the SavedModel; the server's loader replays the export's warm-up requests."""
    from clue_keras.embeddings.user_rows import read_model_layout
    from clue_keras.serving.model_manager import load_version
    from clue_keras.serving.warmup import replay_warmup

    path = tiny_clue.export(0)
    services, max_items = read_model_layout(path)
    target = start_serving(path, "clue")
    try:
        with target.client() as client:
            info = client.model_info()
        assert (info.services, info.max_items, info.preset) == (services, max_items, "tiny")
        rows = tiny_clue.behaviors.sort_values(["user_id", "timestamp"])
        users = [{"user_id": uid, "items": {s: list(t["item_text"]) for s, t in g.groupby("service")}}
                 for uid, g in rows.groupby("user_id", sort=True)][:20]
        users[3]["items"] = "oops"
        input_path = _write_users(tmp_path / "users.jsonl", users)
        out = tmp_path / "emb.parquet"
        assert _embed(target, input_path, out) == 1
        printed = capsys.readouterr().out
        assert "preset tiny" in printed and "embedded 19 of 20 users" in printed
        errors = [json.loads(x) for x in (tmp_path / "emb.errors.jsonl").read_text().splitlines()]
        assert [(e["line"], e["user_id"]) for e in errors] == [(4, users[3]["user_id"])]

        loaded = load_version(1, path)  # what `clue serve` loads
        texts = np.stack([UserTexts.row(u, services, max_items) for u in users if u is not users[3]])
        want = loaded.signatures["serving_default"](item_texts=tf.constant(texts))["embedding"].numpy()
        np.testing.assert_allclose(np.stack(pd.read_parquet(out)["embedding"]), want, atol=1e-5, rtol=0)
        replayed = replay_warmup(path, lambda name, inputs: loaded.signatures[name](
            **{k: tf.constant(v) for k, v in inputs.items()}))
        assert sorted(name for name, _ in replayed) == sorted(loaded.signatures)
    finally:
        target.stop()


class UserTexts:
    """The client's [P, S] row of a user (what `clue embed` sends)."""

    @staticmethod
    def row(user, services, max_items):
        from clue_keras.serving.user_embedding import UserEmbedding

        return UserEmbedding.user_texts(user, services, max_items)
