"""Tokenizer: normalisation, BPE training, offline == in-graph ids, SavedModel ops."""

import json
import os
import random

import numpy as np
import pytest
import tensorflow as tf

from clue_keras import tokenizer as T

SERVICES = ["shopping", "news", "search"]
S, L = 3, 8

_WORDS = ["red", "running", "shoes", "wireless", "earbuds", "bluetooth", "review", "best",
          "cheap", "flight", "Seoul", "Busan", "weather", "today", "recipe", "kimchi",
          "노트북", "가방", "서울", "날씨", "뉴스", "검색", "상품", "café", "naïve", "résumé",
          "Zürich", "😀", "👍🏽", "🇰🇷", "USB-C", "4K", "2024", "10%", "$19.99", "(new)",
          "don't", "it's", "we'll", "I'M", "e-mail", "#1", "A/B", "...", "—", "«quote»"]


def _corpus(n: int, seed: int) -> list:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 7))) for _ in range(n)]


# Inputs the two libraries are known to treat differently without the BPE preparation,
# plus the usual suspects.
_EDGE = ["", " ", "   ", "\t\n", "\u3000", "a", "a  b", " a b ", "x\ty\nz", "a\xa0b",
         "a \xa0b", "x\u2009 y", "\u2000😀]", "X\u2029'll😀", "\u1680's1", "६", "a६b", "x ६६ y",
         "a\x00b", "\x00", "<item>", "<svc:news> text", "It'S", "can't!", "1,000.50$",
         "🙂🙃", "e\u0301", "mixed 한국어abc123", "A.B.C", " ...", "'s", "a 's", "\u200bY",
         "\ufeffBOM", "\U0001F9D1\u200d\U0001F4BB dev", "ｆｕｌｌ", "१२३", "x\x1cy", "\x7f"]

_POOL = (list("abcXYZ019 '.,!?-_()$%&*+/:;<=>@[]^`{|}~\"\\\t") + list("한국어가나다éüñß")
         + ["\u0301", "\u093f", "\u200b", "\u200d", "\ufeff", "\xa0", "\u2009", "\u202f",
            "\u3000", "\u1680", "\u2000", "\u2028", "\x85", "\x00", "\u096c", "😀", "👍🏽",
            "\u0660", "\u2160", "\u00bd", "\uff21", "'s", "'ll", "\u2019s", "\U0001D400",
            "\u0e01", "\u05d0", "\u0627", "\u4e2d", "\u3042"])


def _fuzz(n: int, seed: int) -> list:
    rng = random.Random(seed)
    return ["".join(rng.choice(_POOL) for _ in range(rng.randint(0, 10))) for _ in range(n)]


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("vocab"))
    T.train_bpe(_corpus(300, seed=0), SERVICES, vocab_size=300, out_dir=out, max_items=S,
                max_tokens=L)
    return out


@pytest.fixture(scope="module")
def offline(vocab_dir):
    return T.OfflineTokenizer(vocab_dir)


@pytest.fixture(scope="module")
def in_graph(vocab_dir):
    return T.InGraphTokenizer(vocab_dir)


def _pad(ids, length=L):
    return ids + [0] * (length - len(ids))


# ---------------------------------------------------------------------------- normalisation

@pytest.mark.parametrize("raw,expected", [
    ("  Red \t shoes\n\n", "Red shoes"),
    ("a\r\n\f\vb", "a b"),
    ("", ""),
    (" \t ", ""),
    ("Case Stays", "Case Stays"),
    ("a\xa0 b\u3000", "a\xa0 b\u3000"),     # only ASCII whitespace is touched
])
def test_normalize_text(raw, expected):
    assert T.normalize_text(raw) == expected


def test_normalize_text_tf_agrees_byte_for_byte():
    texts = _EDGE + _fuzz(200, seed=1) + _corpus(20, seed=2)
    got = T.normalize_text_tf(tf.constant(texts)).numpy().tolist()
    assert got == [T.normalize_text(t).encode("utf-8") for t in texts]
    # Works on any rank.
    assert T.normalize_text_tf(tf.constant([[" a "]])).numpy().tolist() == [[b"a"]]


# ---------------------------------------------------------------------------- training

def test_train_bpe_writes_artifact_with_special_tokens_first(vocab_dir):
    info = T.load_vocab_info(vocab_dir)
    assert info.services == ("news", "search", "shopping")
    assert info.special_tokens == {"<pad>": 0, "<unk>": 1, "<item>": 2, "<svc:news>": 3,
                                   "<svc:search>": 4, "<svc:shopping>": 5}
    assert (info.max_items, info.max_tokens, info.vocab_size) == (S, L, 300)
    with open(os.path.join(vocab_dir, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    assert len(vocab) == 300 and sorted(vocab.values()) == list(range(300))
    for tok, i in info.special_tokens.items():
        assert vocab[tok] == i
    assert info.service_index("search") == 1
    assert info.service_token_id("news") == 3 and info.service_token_id(None) == 2
    assert info.service_token_ids == [3, 4, 5]
    assert T.VocabInfo.from_json(info.to_json()) == info
    assert not [f for f in os.listdir(vocab_dir) if f.startswith(".tmp")]


def test_vocab_info_errors():
    good = dict(services=("a",), max_items=2, max_tokens=4, vocab_size=300,
                special_tokens={"<pad>": 0, "<unk>": 1, "<item>": 2, "<svc:a>": 3})
    with pytest.raises(ValueError, match="'zzz'"):
        T.VocabInfo(**good).service_index("zzz")
    with pytest.raises(ValueError, match="<svc:b>"):
        T.VocabInfo(**{**good, "services": ("a", "b")})
    with pytest.raises(ValueError, match="sorted"):
        T.VocabInfo(**{**good, "services": ("b", "a")})
    with pytest.raises(ValueError, match="max_tokens"):
        T.VocabInfo.from_json(json.dumps({"services": ["a"]}), source="x.json")


def test_train_bpe_errors(tmp_path):
    with pytest.raises(ValueError, match="no non-empty training text"):
        T.train_bpe(["", "  \n"], ["a"], 300, str(tmp_path / "v"), 2, 4)
    with pytest.raises(ValueError, match="vocab_size=100"):
        T.train_bpe(["some text"], ["a"], 100, str(tmp_path / "v"), 2, 4)
    assert not (tmp_path / "v" / "clue_vocab.json").exists()
    with pytest.raises(FileNotFoundError, match="clue_vocab.json"):
        T.load_vocab_info(str(tmp_path / "v"))


# ---------------------------------------------------------------------------- offline path

def test_encode_item_layout(offline):
    ids = offline.encode_item("  wireless   earbuds ", "search")
    assert ids[0] == 4 and 2 <= len(ids) <= L
    assert ids == offline.encode_item("wireless earbuds", "search")
    assert offline.encode_item("wireless earbuds", None)[0] == 2
    assert offline.encode_item("", "news") == [3]
    assert offline.encode_item(" \t", "news") == [3]
    long = offline.encode_item(" ".join(_WORDS), "news")
    assert len(long) == L and long[0] == 3
    # All BPE ids are real, non-special vocabulary entries.
    assert all(6 <= i < 300 for i in long[1:])
    batch = offline.encode_items(["red shoes", "", "날씨"], "shopping")
    assert batch == [offline.encode_item(t, "shopping") for t in ["red shoes", "", "날씨"]]


def test_encode_item_unknown_service(offline):
    with pytest.raises(ValueError, match="'music'"):
        offline.encode_item("x", "music")


def test_special_token_text_is_ordinary_text(offline):
    ids = offline.encode_item("<item>", "news")
    assert len(ids) > 2 and 2 not in ids[1:]


# ---------------------------------------------------------------------------- offline == graph

def _agreement_texts():
    return _corpus(150, seed=3) + _EDGE + _fuzz(200, seed=4)


def test_offline_equals_in_graph(offline, in_graph):
    texts = _agreement_texts()
    services = [SERVICES[i % 3] for i in range(len(texts))] + [None]
    texts = texts + ["unseen service item"]
    expected = [_pad(offline.encode_item(t, s)) for t, s in zip(texts, services)]
    info = offline.info
    sids = tf.constant([info.service_token_id(s) for s in services], tf.int32)
    got = in_graph(tf.constant(texts), sids).numpy()
    assert got.shape == (len(texts), L) and got.dtype == np.int32
    mismatches = [(t, e, g) for t, e, g in zip(texts, expected, got.tolist()) if e != g]
    assert not mismatches, mismatches[:5]


def test_bpe_is_lossless(offline, in_graph):
    """Byte-level BPE without truncation decodes to the prepared text."""
    texts = _corpus(20, seed=5) + ["a\xa0b 한국어 😀", "x\u3000y"]
    for text, ids in zip(texts, offline.bpe(texts)):
        decoded = in_graph.bpe.detokenize(tf.constant([ids]))[0]   # eager: Python strings
        decoded = decoded.decode("utf-8") if isinstance(decoded, bytes) else decoded
        assert decoded == T.prepare_for_bpe(T.normalize_text(text))


def test_tokenize_users_layout(offline, in_graph):
    info = offline.info
    texts = [[["red shoes", "", " cheap flight "], ["\t", "", ""], ["날씨 today", "x", "😀"]],
             [["", "", ""], ["e-mail", "", ""], ["", "", "kimchi recipe"]]]
    got = in_graph.tokenize_users(tf.constant(texts)).numpy()
    assert got.shape == (2, 3, S, L) and got.dtype == np.int32
    for b in range(2):
        for p, service in enumerate(info.services):
            for s in range(S):
                text = texts[b][p][s]
                if T.normalize_text(text) == "":
                    assert not got[b, p, s].any()
                else:
                    assert got[b, p, s].tolist() == _pad(offline.encode_item(text, service))
    with pytest.raises(tf.errors.InvalidArgumentError, match="P=3"):
        in_graph.tokenize_users(tf.constant([[["a"], ["b"]]]))


def test_in_graph_tokenizer_usable_as_temporary(vocab_dir, in_graph):
    """The tf.functions keep their tokenizer alive (no weak reference to self)."""
    x = tf.constant([[["red shoes"], [""], ["news"]]])
    np.testing.assert_array_equal(T.InGraphTokenizer(vocab_dir).tokenize_users(x).numpy(),
                                  in_graph.tokenize_users(x).numpy())


def test_saved_model_round_trip_and_allowed_ops(offline, in_graph, tmp_path):
    module = tf.Module()
    module.tokenizer = in_graph
    module.users = tf.function(lambda t: {"ids": module.tokenizer.tokenize_users(t)},
                               input_signature=[tf.TensorSpec([None, 3, None], tf.string)])
    module.items = tf.function(
        lambda t: {"ids": module.tokenizer(t, tf.fill(tf.shape(t), 2))},
        input_signature=[tf.TensorSpec([None], tf.string)])
    path = str(tmp_path / "sm")
    tf.saved_model.save(module, path, signatures={
        "users": module.users.get_concrete_function(),
        "items": module.items.get_concrete_function()})

    ops = T.graph_op_names(path)
    assert "RegexSplitWithOffsets" in ops and "LookupTableFindV2" in ops
    assert T.non_core_ops(ops) <= T.ALLOWED_TFTEXT_OPS, T.non_core_ops(ops)
    assert T.non_core_ops(["RegexSplitWithOffsets", "MatMul", "WordpieceTokenizeWithOffsets"]) \
        == {"RegexSplitWithOffsets", "WordpieceTokenizeWithOffsets"}

    reloaded = tf.saved_model.load(path)
    texts = _agreement_texts()[:60]
    items = reloaded.signatures["items"](tf.constant(texts))["ids"].numpy()
    assert items.tolist() == [_pad(offline.encode_item(t, None)) for t in texts]
    users = tf.constant([[["red shoes", ""], ["", ""], ["", "날씨 😀"]]])
    want = in_graph.tokenize_users(users).numpy()
    np.testing.assert_array_equal(reloaded.signatures["users"](users)["ids"].numpy(), want)
    np.testing.assert_array_equal(reloaded.users(users)["ids"].numpy(), want)
