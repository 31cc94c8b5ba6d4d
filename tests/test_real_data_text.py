"""Item texts capped in UTF-8 bytes before tokenisation, identically in preprocessing,
the offline tokenizer, the in-graph tokenizer and the exported serving signatures."""

import json
import random

import numpy as np
import pytest
import tensorflow as tf

from clue_keras import text as X
from clue_keras import tokenizer as T
from clue_keras.config import PRESETS
from clue_keras.data import records as R

SERVICES = ("news", "shop")
CORPUS = ["서울 날씨 맑음 오늘", "café crème brûlée recipe", "best running shoes 2024",
          "emoji 🎉 party time", "Zürich naïve résumé"] * 20
# 1 MB of text mixing 1-, 2-, 3- and 4-byte characters and whitespace runs.
HUGE = ("Ünïcödé  텍스트 😀🇰🇷 é\t" * 40_000)[:1_000_000]


def test_cap_text_bytes_cuts_at_a_character_boundary():
    assert X.cap_text_bytes("ab한😀c", 0) == "ab한😀c"                  # 0: no cap
    assert [X.cap_text_bytes("ab한😀c", n) for n in (4, 5, 8, 9, 10, 11)] == [
        "ab", "ab한", "ab한", "ab한😀", "ab한😀c", "ab한😀c"]
    assert X.cap_text_bytes("abcd efgh", 5) == "abcd"                  # no trailing space
    assert X.clean_item_text("  a \t b  " + "x" * 100, 6) == "a b xx"
    assert len(X.clean_item_text(HUGE).encode("utf-8")) <= X.DEFAULT_MAX_TEXT_BYTES


def test_cap_text_bytes_tf_agrees_byte_for_byte():
    rng = random.Random(3)
    pool = list("ab ") + ["é", "한", "😀", "\u0301", "\u3000", "\x00"]
    texts = ["".join(rng.choice(pool) for _ in range(rng.randint(0, 30))) for _ in range(300)]
    texts += [HUGE, "abcd efgh", ""]
    for cap in (4, 7, 13, 2000, 0):
        normalized = [X.normalize_text(t) for t in texts]
        got = X.cap_text_bytes_tf(tf.constant(normalized), cap).numpy().tolist()
        assert got == [X.cap_text_bytes(n, cap).encode("utf-8") for n in normalized], cap


def test_vocab_info_records_the_cap_with_a_backward_compatible_default(tmp_path):
    info = T.train_bpe(CORPUS, SERVICES, 300, str(tmp_path / "v"), max_items=3, max_tokens=8,
                       max_text_bytes=64)
    saved = json.loads((tmp_path / "v" / "clue_vocab.json").read_text())
    assert saved["max_text_bytes"] == 64 == info.max_text_bytes
    assert T.load_vocab_info(str(tmp_path / "v")) == info
    del saved["max_text_bytes"]  # a vocabulary written before the cap existed
    assert T.VocabInfo.from_json(json.dumps(saved)).max_text_bytes == X.DEFAULT_MAX_TEXT_BYTES
    with pytest.raises(ValueError, match="max_text_bytes 0 \(no cap\) or >= 4"):
        T.VocabInfo.from_json(json.dumps({**saved, "max_text_bytes": 2}))


@pytest.mark.parametrize("cap, max_tokens", [(24, 48), (X.DEFAULT_MAX_TEXT_BYTES, 16)])
def test_offline_and_in_graph_ids_agree_on_a_huge_text(tmp_path, cap, max_tokens):
    vocab = str(tmp_path / "v")
    T.train_bpe(CORPUS, SERVICES, 300, vocab, max_items=3, max_tokens=max_tokens,
                max_text_bytes=cap)
    offline, in_graph = T.OfflineTokenizer(vocab), T.InGraphTokenizer(vocab)
    texts = [HUGE, "x" + HUGE, "café " * 1000, "short"]
    want = offline.encode_items(texts, "shop")
    sid = T.load_vocab_info(vocab).service_token_id("shop")
    got = in_graph.tokenize_items(tf.constant(texts), tf.fill([len(texts)], sid)).numpy()
    for w, g in zip(want, got):
        assert g.tolist() == w + [0] * (max_tokens - len(w))
    # The ids are those of the capped text: the cap is applied, and cut where expected.
    assert want[0] == offline.encode_item(X.cap_text_bytes(X.normalize_text(HUGE), cap), "shop")
    if cap == 24:
        assert 1 < len(want[0]) < max_tokens
        # users path (serving_default's input) too, padding rows stay zero
        users = np.array([[["", ""], [HUGE, ""]]], dtype=object)      # [B=1, P=2, S=2]
        ids = in_graph.tokenize_users(tf.constant(users)).numpy()
        assert ids[0, 1, 0].tolist() == want[0] + [0] * (max_tokens - len(want[0]))
        assert not ids[0, 0].any() and not ids[0, :, 1].any()


def test_cleaning_caps_and_counts():
    cleaned = R.clean_behaviors([("s", 1, HUGE), ("s", 2, "x" * 10 + HUGE), ("s", 3, "ok")],
                                max_items=5, max_text_bytes=16)
    assert cleaned.n_capped == 2 and all(len(t.encode()) <= 16 for t in cleaned.items["s"])
    # Texts equal up to the cap are one behaviour after capping.
    same = R.clean_behaviors([("s", 1, "a" * 20 + "1"), ("s", 2, "a" * 20 + "2")], 5, 16)
    assert same.n_duplicates == 1 and same.n_capped == 2
    assert R.clean_behaviors([("s", 1, HUGE)], 5, 0).items["s"][0] == X.normalize_text(HUGE)


def test_serving_signatures_cap_like_the_offline_tokenizer(tmp_path):
    from clue_keras.export import export_saved_model
    from clue_keras.train import build_pretrainer

    mc = PRESETS["tiny"]
    vocab = str(tmp_path / "vocab")
    T.train_bpe(CORPUS, SERVICES, 300, vocab, max_items=mc.max_items, max_tokens=mc.max_tokens,
                max_text_bytes=24)
    model = build_pretrainer(mc.replace(vocab_size=300))
    module = tf.saved_model.load(export_saved_model(model, vocab, str(tmp_path / "m" / "1")))
    offline = T.OfflineTokenizer(vocab)
    texts = np.full((1, len(SERVICES), mc.max_items), "", dtype=object)
    texts[0, 0, 0], texts[0, 1, 0] = HUGE, "é" * 100_000
    ids = np.zeros(texts.shape + (mc.max_tokens,), np.int32)
    for p, service in enumerate(SERVICES):
        row = offline.encode_item(texts[0, p, 0], service)
        ids[0, p, 0, : len(row)] = row
    by_text = module.signatures["serving_default"](item_texts=tf.constant(texts))
    by_ids = module.signatures["embed_tokens"](token_ids=tf.constant(ids))
    np.testing.assert_allclose(by_text["embedding"].numpy(), by_ids["embedding"].numpy(),
                               rtol=1e-5, atol=1e-6)
    capped = X.clean_item_text(HUGE, 24)
    items = module.signatures["embed_items"](item_texts=tf.constant([HUGE, capped]))
    np.testing.assert_allclose(*items["item_embedding"].numpy(), rtol=1e-5, atol=1e-6)
