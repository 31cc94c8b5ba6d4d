"""Serving SavedModel: signatures, text path == token path == Keras model,
op allow-list for stock TF Serving, atomic writes, the ``clue_metadata``
self-description and TF Serving's warm-up file."""

import os

import numpy as np
import pytest
import tensorflow as tf

from clue_keras.config import PRESETS
from clue_keras.export import SIGNATURES, data_fingerprint, encoder_from_export, export_saved_model
from clue_keras.serving.model_info import METADATA_SIGNATURE, ModelInfo
from clue_keras.serving.warmup import (WARMUP_FILE, read_warmup_requests, replay_warmup,
                                       signature_caller)
from clue_keras.tokenizer import (OfflineTokenizer, graph_op_names, load_vocab_info,
                                  non_core_ops, train_bpe)
from clue_keras.train import build_pretrainer

MC = PRESETS["tiny"]
SERVICES = ("news", "search", "shopping")
TEXTS = ["Galaxy S24 Ultra 256GB", "best running shoes near me", "서울 날씨 맑음",
         "Apple announces new iPad", "café crème brûlée", "  spaced   out  ", "emoji 🎉 party",
         "LG OLED TV 65인치", "how to bake bread", "Champions League final result"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    vocab = str(root / "vocab")
    train_bpe(TEXTS * 20, SERVICES, vocab_size=400, out_dir=vocab,
              max_items=MC.max_items, max_tokens=MC.max_tokens, min_frequency=1)
    model = build_pretrainer(MC.replace(vocab_size=400))
    path = export_saved_model(model, vocab, str(root / "serving" / "1"))
    return model, vocab, path


def _users():
    """3 users x 3 services x S texts; user 2 has nothing in 'search'; user 1 is shorter."""
    x = np.full((3, 3, MC.max_items), "", dtype=object)
    x[0, 0, :3] = TEXTS[:3]
    x[0, 1, :2] = TEXTS[3:5]
    x[0, 2, :1] = TEXTS[5:6]
    x[1, 0, :1] = TEXTS[6:7]
    x[1, 2, :2] = TEXTS[7:9]
    x[1, 1, :1] = TEXTS[9:10]
    x[2, 0, :2] = TEXTS[1:3]
    x[2, 2, :1] = TEXTS[0:1]
    return x


def _offline_ids(vocab, texts):
    tok = OfflineTokenizer(vocab)
    info = load_vocab_info(vocab)
    ids = np.zeros(texts.shape + (info.max_tokens,), np.int32)
    for idx in np.ndindex(texts.shape):
        if texts[idx].strip():
            row = tok.encode_item(texts[idx], info.services[idx[1]])
            ids[idx][: len(row)] = row
    return ids


def test_signatures_and_shapes(exported):
    _, _, path = exported
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == set(SIGNATURES)
    out = loaded.signatures["serving_default"](item_texts=tf.constant(_users().tolist()))
    d = MC.embedding_dim
    assert out["embedding"].shape == (3, 3 * d) and out["embedding"].dtype == tf.float32
    assert out["service_embeddings"].shape == (3, 3, d)
    np.testing.assert_allclose(np.linalg.norm(out["embedding"], axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(out["service_embeddings"].numpy()[2, 1], 0.0)
    assert sorted(os.listdir(os.path.join(path, "assets"))) == [
        "clue_model.json", "clue_vocab.json", "merges.txt", "vocab.json"]
    assert os.listdir(os.path.join(path, "assets.extra")) == ["tf_serving_warmup_requests"]


def test_metadata_signature_describes_the_model(exported):
    _, vocab, path = exported
    loaded = tf.saved_model.load(path)
    fn = loaded.signatures[METADATA_SIGNATURE]
    assert fn.structured_input_signature == ((), {})  # no inputs
    info = ModelInfo.from_outputs({k: v.numpy() for k, v in fn().items()})
    assert info == ModelInfo(
        services=list(SERVICES), max_items=MC.max_items, max_tokens=MC.max_tokens,
        embedding_dim=3 * MC.embedding_dim, service_dim=MC.embedding_dim, item_dim=MC.hidden_dim,
        vocab_size=load_vocab_info(vocab).vocab_size, preset="tiny",
        data_fingerprint=data_fingerprint(vocab), format_version=1)
    assert info.data_fingerprint.startswith("sha256:") and len(info.data_fingerprint) == 7 + 64
    # The widths it reports are the ones the signatures produce.
    out = loaded.signatures["serving_default"](item_texts=tf.constant(_users().tolist()))
    assert out["embedding"].shape[-1] == info.embedding_dim


def test_model_info_rejects_a_newer_format_and_missing_outputs():
    info = ModelInfo(["a"], 2, 3, 4, 4, 5, 300, "tiny", "sha256:00")
    assert ModelInfo.from_outputs(info.outputs()) == info
    newer = dict(info.outputs(), format_version=np.array(99, np.int32))
    with pytest.raises(ValueError, match="format version 99 is newer"):
        ModelInfo.from_outputs(newer)
    partial = {k: v for k, v in info.outputs().items() if k != "services"}
    with pytest.raises(ValueError, match="services"):
        ModelInfo.from_outputs(partial)


def test_warmup_file_has_one_predict_log_per_signature_and_replays(exported):
    from tensorflow_serving.apis import prediction_log_pb2

    _, vocab, path = exported
    records = list(tf.data.TFRecordDataset(os.path.join(path, WARMUP_FILE)).as_numpy_iterator())
    logs = [prediction_log_pb2.PredictionLog.FromString(r) for r in records]
    assert [log.WhichOneof("log_type") for log in logs] == ["predict_log"] * len(SIGNATURES)
    names = [log.predict_log.request.model_spec.signature_name for log in logs]
    assert names == list(SIGNATURES)

    requests = dict(read_warmup_requests(path))
    assert set(requests) == set(SIGNATURES) and requests[METADATA_SIGNATURE] == {}
    texts = requests["serving_default"]["item_texts"]
    assert texts.shape == (2, 3, MC.max_items) and texts[0, 0, 0] and not texts[1, 1, 0]
    # embed_tokens gets exactly the ids the graph makes of serving_default's texts.
    np.testing.assert_array_equal(requests["embed_tokens"]["token_ids"],
                                  _offline_ids(vocab, np.vectorize(bytes.decode)(texts)))

    loaded = tf.saved_model.load(path)
    call = signature_caller(loaded)
    outputs = {}
    replayed = replay_warmup(path, lambda name, inputs: outputs.setdefault(name, call(name, inputs)))
    assert [name for name, _ in replayed] == list(SIGNATURES)
    assert outputs["serving_default"]["embedding"].shape == (2, 3 * MC.embedding_dim)
    assert outputs["retrieve"]["indices"].shape == (2, 2)
    assert ModelInfo.from_outputs(outputs[METADATA_SIGNATURE]).services == list(SERVICES)
    np.testing.assert_allclose(outputs["embed_tokens"]["embedding"],
                               outputs["serving_default"]["embedding"], atol=1e-6)


def test_text_path_equals_token_path_equals_keras(exported):
    model, vocab, path = exported
    loaded = tf.saved_model.load(path)
    texts = _users()
    ids = _offline_ids(vocab, texts)
    by_text = loaded.signatures["serving_default"](item_texts=tf.constant(texts.tolist()))
    by_ids = loaded.signatures["embed_tokens"](token_ids=tf.constant(ids))
    np.testing.assert_allclose(by_text["embedding"], by_ids["embedding"], atol=1e-6)
    keras_out = model.encoder({"token_ids": ids})["user_embedding"].numpy()
    norm = keras_out / np.maximum(np.linalg.norm(keras_out, axis=-1, keepdims=True), 1e-12)
    np.testing.assert_allclose(by_ids["service_embeddings"], norm, atol=1e-5)


def test_embed_items_and_retrieve(exported):
    _, _, path = exported
    loaded = tf.saved_model.load(path)
    items = loaded.signatures["embed_items"](item_texts=tf.constant(TEXTS))["item_embedding"]
    assert items.shape == (len(TEXTS), MC.hidden_dim)
    np.testing.assert_allclose(np.linalg.norm(items, axis=-1), 1.0, rtol=1e-5)
    users = _users()
    res = loaded.signatures["retrieve"](item_texts=tf.constant(users.tolist()),
                                        candidate_texts=tf.constant(TEXTS), k=tf.constant(3))
    assert res["indices"].shape == (3, 3)
    # Reference: each candidate as a one-item history in every service, via serving_default.
    cand = np.full((len(TEXTS), 3, MC.max_items), "", dtype=object)
    cand[:, :, 0] = np.array(TEXTS, dtype=object)[:, None]
    ce = loaded.signatures["serving_default"](item_texts=tf.constant(cand.tolist()))["embedding"]
    ue = loaded.signatures["serving_default"](item_texts=tf.constant(users.tolist()))["embedding"]
    ref = np.argsort(-(ue.numpy() @ ce.numpy().T), axis=1)[:, :3]
    np.testing.assert_array_equal(res["indices"].numpy(), ref)


def test_serving_graph_uses_only_ops_stock_tf_serving_has(exported):
    _, _, path = exported
    ops = graph_op_names(path)
    assert "RegexSplitWithOffsets" in ops  # the tokenizer really is in the graph
    assert non_core_ops(ops) <= {"RegexSplitWithOffsets"}, non_core_ops(ops)


def test_export_is_atomic_and_refuses_to_overwrite(exported, tmp_path):
    model, vocab, path = exported
    assert not [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".tmp")]
    with pytest.raises(FileExistsError):
        export_saved_model(model, vocab, path)


def test_untrained_encoder_from_export_has_same_architecture(exported, tmp_path):
    model, _, path = exported
    fresh = encoder_from_export(path, seed=1)
    assert fresh.get_config()["hidden_dim"] == MC.hidden_dim
    assert len(fresh.get_weights()) == len(model.encoder.get_weights())
    assert any(not np.allclose(a, b) for a, b in zip(fresh.get_weights(), model.encoder.get_weights()))
    again = export_saved_model(fresh, os.path.join(path, "assets"), str(tmp_path / "untrained"))
    assert os.path.exists(os.path.join(again, "saved_model.pb"))
