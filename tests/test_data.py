"""tf.data input pipeline (clue_keras.data.input) and in-process preprocessing
(clue_keras.data.prepare)."""

import glob
import json
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from clue_keras import tokenizer as T
from clue_keras.data import input as D
from clue_keras.data import prepare as PR
from clue_keras.data.records import build_user_example

SERVICES = ("news", "shop")
INFO = T.VocabInfo(services=SERVICES, max_items=3, max_tokens=4, vocab_size=300,
                   special_tokens={"<pad>": 0, "<unk>": 1, "<item>": 2, "<svc:news>": 3,
                                   "<svc:shop>": 4})

USERS = {
    # 4 news items (> S = 3: the oldest is dropped), one item longer than L = 4.
    "u1": {"news": [[3, 10], [3, 11, 12], [3, 13], [3, 14, 15, 16, 17, 18]],
           "shop": [[4, 20]]},
    "u2": {"shop": [[4, 21, 22, 23], [4, 24]]},          # no news at all
    "u3": {"news": [[3, 30]], "shop": [[4, 31]]},
}
# Expected dense [P, S, L] per user.
EXPECTED = {
    "u1": [[[3, 11, 12, 0], [3, 13, 0, 0], [3, 14, 15, 16]],
           [[4, 20, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]],
    "u2": [[[0, 0, 0, 0]] * 3,
           [[4, 21, 22, 23], [4, 24, 0, 0], [0, 0, 0, 0]]],
    "u3": [[[3, 30, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
           [[4, 31, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]],
}


def _write(path, examples):
    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        for ex in examples:
            w.write(ex.SerializeToString())


@pytest.fixture
def record_dir(tmp_path):
    _write(str(tmp_path / "a.tfrecord.gz"),
           [build_user_example(u, USERS[u], SERVICES) for u in ("u1", "u2")])
    _write(str(tmp_path / "b.tfrecord.gz"), [build_user_example("u3", USERS["u3"], SERVICES)])
    return tmp_path


def test_make_dataset_values(record_dir):
    ds = D.make_dataset(str(record_dir / "*.tfrecord.gz"), INFO, batch_size=3, shuffle=False,
                        repeat=False)
    assert ds.element_spec["token_ids"] == tf.TensorSpec([3, 2, 3, 4], tf.int32)
    assert ds.element_spec["user_id"] == tf.TensorSpec([3], tf.string)
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == 1
    users = [u.decode() for u in batches[0]["user_id"]]
    assert users == ["u1", "u2", "u3"]
    for i, u in enumerate(users):
        np.testing.assert_array_equal(batches[0]["token_ids"][i], np.array(EXPECTED[u]))


def test_make_dataset_batching_shuffle_repeat(record_dir):
    files = sorted(glob.glob(str(record_dir / "*")))
    ds = D.make_dataset(files, INFO, batch_size=2, shuffle=False, repeat=False,
                        drop_remainder=True)
    assert [len(b["user_id"]) for b in ds.as_numpy_iterator()] == [2]
    ds = D.make_dataset(files, INFO, batch_size=2, shuffle=False, repeat=False,
                        drop_remainder=False)
    assert [len(b["user_id"]) for b in ds.as_numpy_iterator()] == [2, 1]

    def first_users(seed):
        ds = D.make_dataset(files, INFO, batch_size=2, shuffle=True, repeat=True, seed=seed)
        return [u.decode() for b in ds.take(6).as_numpy_iterator() for u in b["user_id"]]

    seq = first_users(7)
    assert seq == first_users(7)                      # deterministic for a seed
    assert sorted(seq) == ["u1"] * 4 + ["u2"] * 4 + ["u3"] * 4   # 4 epochs, each user once


def test_min_services_keeps_only_users_with_a_pair(record_dir):
    """u2 has one service: no loss term, so pre-training batches leave it out."""
    pattern = str(record_dir / "*")
    ds = D.make_dataset(pattern, INFO, batch_size=1, shuffle=False, repeat=False,
                        min_services=2)
    batches = list(ds.as_numpy_iterator())
    assert [b["user_id"][0].decode() for b in batches] == ["u1", "u3"]
    for b in batches:
        np.testing.assert_array_equal(b["token_ids"][0], np.array(EXPECTED[b["user_id"][0].decode()]))
    ds = D.make_dataset(pattern, INFO, batch_size=2, shuffle=True, repeat=True, seed=3,
                        min_services=2)
    seen = [u.decode() for b in ds.take(5).as_numpy_iterator() for u in b["user_id"]]
    assert sorted(set(seen)) == ["u1", "u3"] and len(seen) == 10
    assert D.count_users(pattern, INFO, 2) == (2, 3)
    assert D.count_users(pattern, INFO, 1) == (3, 3)
    assert D.count_users(pattern, INFO, 3) == (0, 3)


def test_load_split_arrays(record_dir):
    arrays = D.load_split_arrays(str(record_dir / "*"), INFO, batch_size=2)
    assert arrays["token_ids"].shape == (3, 2, 3, 4) and arrays["token_ids"].dtype == np.int32
    assert arrays["user_id"].tolist() == ["u1", "u2", "u3"]
    np.testing.assert_array_equal(arrays["token_ids"][1], np.array(EXPECTED["u2"]))
    assert D.load_split_arrays(str(record_dir / "*"), INFO, max_users=2)["user_id"].tolist() \
        == ["u1", "u2"]


def test_no_files_error(tmp_path):
    pattern = str(tmp_path / "nothing-*.gz")
    with pytest.raises(FileNotFoundError, match="nothing-"):
        D.make_dataset(pattern, INFO, batch_size=2)


def test_missing_service_feature_error(tmp_path):
    _write(str(tmp_path / "x.gz"), [build_user_example("u", {"news": [[3, 5]]}, ["news"])])
    with pytest.raises(ValueError, match="lengths/shop"):
        D.make_dataset(str(tmp_path / "*.gz"), INFO, batch_size=1)


# ---------------------------------------------------------------------------- prepare_local

def _behaviors(n_users=40):
    """Two services; user i has i % 3 + 1 shop items plus one repeat and one empty row."""
    rows = []
    for i in range(n_users):
        u = f"user{i:03d}"
        for j in range(i % 3 + 1):
            rows.append((u, "shop", 100 + j, f"item {j} red shoes size {i % 7}"))
        rows.append((u, "shop", 500, "item 0 red shoes size %d" % (i % 7)))   # repeat
        rows.append((u, "news", 50, f"headline {i % 5} about Seoul weather"))
        rows.append((u, "news", 60, "  "))                                     # empty
    rows.append(("lonely", "news", 1, "only one item"))                        # inactive
    return pd.DataFrame(rows, columns=["user_id", "service", "timestamp", "item_text"])


def test_prepare_local_end_to_end(tmp_path, monkeypatch):
    trained_on = []
    real_train = T.train_bpe

    def spy(texts, *args, **kw):
        texts = list(texts)
        trained_on.extend(texts)
        return real_train(texts, *args, **kw)

    monkeypatch.setattr(T, "train_bpe", spy)
    df = _behaviors()
    out = str(tmp_path / "out")
    stats = PR.prepare_local(df, out, max_items=2, max_tokens=6, vocab_size=300, min_items=2,
                             eval_percent=20, test_percent=20, shards=2)
    n_shop = sum(i % 3 + 1 for i in range(40))
    assert stats["rows_read"] == len(df) == n_shop + 3 * 40 + 1
    assert stats["rows_dropped_empty_text"] == 40 and stats["rows_duplicate"] == 40
    assert stats["items_truncated"] == sum(max(0, i % 3 + 1 - 2) for i in range(40))
    assert (stats["users_read"], stats["users_kept"]) == (41, 40)
    assert stats["services"] == ["news", "shop"]
    users = {s: stats[f"users_{s}"] for s in ("train", "eval", "test")}
    assert sum(users.values()) == 40 and min(users.values()) > 0
    assert sum(stats[f"items_{s}"] for s in users) == 40 + sum(min(2, i % 3 + 1)
                                                               for i in range(40))
    with open(os.path.join(out, "stats.json")) as f:
        assert json.load(f) == stats

    info = T.load_vocab_info(os.path.join(out, "vocab"))
    assert (info.services, info.max_items, info.max_tokens) == (("news", "shop"), 2, 6)
    for split in ("train", "eval", "test"):
        files = sorted(os.listdir(os.path.join(out, f"Split-{split}")))
        assert files == ["data_tfrecord-00000-of-00002.gz", "data_tfrecord-00001-of-00002.gz"]

    # BPE saw exactly the train users' kept items.
    train_arrays = D.load_split_arrays(os.path.join(out, "Split-train", "*"), info)
    train_users = set(train_arrays["user_id"])
    assert len(train_users) == stats["users_train"]
    expected_texts = []
    for u in sorted(train_users):
        i = int(u[4:])
        expected_texts.append(f"headline {i % 5} about Seoul weather")
        expected_texts += [f"item {j} red shoes size {i % 7}" for j in range(i % 3 + 1)][-2:]
    assert sorted(trained_on) == sorted(expected_texts)

    # Records hold exactly the OfflineTokenizer ids of the cleaned items.
    tok = T.OfflineTokenizer(os.path.join(out, "vocab"))
    held_out = D.load_split_arrays(os.path.join(out, "Split-test", "*"), info)
    for arrays in (train_arrays, held_out):
        for u, ids in zip(arrays["user_id"], arrays["token_ids"]):
            i = int(u[4:])
            shop = [f"item {j} red shoes size {i % 7}" for j in range(i % 3 + 1)][-2:]
            want_shop = tok.encode_items(shop, "shop")
            want_news = tok.encode_items([f"headline {i % 5} about Seoul weather"], "news")
            for p, want in enumerate([want_news, want_shop]):
                for s in range(2):
                    row = want[s] + [0] * (6 - len(want[s])) if s < len(want) else [0] * 6
                    assert ids[p, s].tolist() == row, (u, p, s)
    assert int((train_arrays["token_ids"][..., 0] != 0).sum()) == stats["items_train"]

    # A re-run with fewer shards replaces the old shards.
    PR.prepare_local(df, out, max_items=2, max_tokens=6, vocab_size=300, shards=1,
                     eval_percent=20, test_percent=20)
    assert os.listdir(os.path.join(out, "Split-eval")) == ["data_tfrecord-00000-of-00001.gz"]


def test_prepare_local_errors(tmp_path):
    df = _behaviors(4).drop(columns=["timestamp"])
    with pytest.raises(ValueError, match=r"\['timestamp'\]"):
        PR.prepare_local(df, str(tmp_path), 2, 6, 300)
    # Unparseable timestamps are dropped and counted; with every row dropped, the
    # error says so (and no stats.json is left to mark a complete output).
    df = _behaviors(4).assign(timestamp="yesterday")
    with pytest.raises(ValueError, match=r"no train users left: 20 rows read, 0 users.*"
                                         r"'rows_dropped_bad_timestamp': 20"):
        PR.prepare_local(df, str(tmp_path), 2, 6, 300)
    assert not os.path.exists(os.path.join(tmp_path, "stats.json"))
    with pytest.raises(ValueError, match="no train users.*'users_dropped_few_items': 5"):
        PR.prepare_local(_behaviors(4), str(tmp_path), 2, 6, 300, min_items=99)
    with pytest.raises(ValueError, match="no train users.*'users_dropped_few_items': 1, 'users_dropped_few_services': 4"):
        PR.prepare_local(_behaviors(4), str(tmp_path), 2, 6, 300, min_services=3)
    with pytest.raises(ValueError, match="has no rows"):
        PR.prepare_local(_behaviors(4).head(0), str(tmp_path), 2, 6, 300)
