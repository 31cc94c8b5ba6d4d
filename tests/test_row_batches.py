"""Batched parsing and per-shard cleaning (clue_keras.data.row_batches) give, row by
row and user by user, what the per-row functions of clue_keras.data.preprocess give."""

import gzip
import os

import pytest
import tensorflow as tf

from clue_keras.data import preprocess as pp
from clue_keras.data import row_batches as rb
from clue_keras.data.prepare import behavior_example
from clue_keras.data.values import BadRow

CELLS = [
    ("bob", "shopping", 300, "blue hat"),
    (7, "news", "2021-03-04T05:06:07Z", "x"),
    ("u", "news", 5.5, None),
    (None, "news", 5, "a"),
    ("u", None, 5, "a"),
    ("u", "news", "yesterday", "a"),
    ("u", "news", 5, b"caf\xe9"),
    ("u", "news", 5, "  spaced\ttext "),
    (b"bytes-user", "search", 12, b"t"),
]


def _per_row(serialized):
    rows, bad = [], []
    for s in serialized:
        try:
            r = pp.parse_row(s)
            rows.append((r["user_id"], r["service"], r["timestamp"], r["item_text"]))
        except BadRow as e:
            bad.append(e.key)
    return rows, bad


@pytest.mark.parametrize("cells", [CELLS, [c for c in CELLS if isinstance(c[2], int)
                                           and isinstance(c[0], str)]])
def test_parse_batch_equals_parse_row_per_row(cells):
    serialized = [behavior_example(*c) for c in cells]
    rows, bad = rb.parse_batch(serialized)
    assert (rows, [e.key for e in bad]) == _per_row(serialized)


def test_several_values_in_a_cell_are_a_bad_value():
    f = tf.train.Feature
    ex = tf.train.Example(features=tf.train.Features(feature={
        "user_id": f(bytes_list=tf.train.BytesList(value=[b"a", b"b"])),
        "service": f(bytes_list=tf.train.BytesList(value=[b"s"])),
        "timestamp": f(int64_list=tf.train.Int64List(value=[1])),
        "item_text": f(bytes_list=tf.train.BytesList(value=[b"t"]))})).SerializeToString()
    good = behavior_example("u", "s", 2, "t")
    rows, bad = rb.parse_batch([good, ex, good])
    assert rows == [("u", "s", 2, "t")] * 2
    assert [e.key for e in bad] == ["rows_dropped_bad_value"]


def test_clean_shard_equals_build_history_per_user():
    rows = [("bob", "shop", 3, "b"), ("amy", "news", 1, "a"), ("bob", "shop", 1, "a  "),
            ("bob", "shop", 2, "a"), ("amy", "news", 2, "")]
    got = dict(rb.clean_shard((0, [rows[:2], rows[2:]]), max_items=5))
    for user in ("amy", "bob"):
        want = pp.build_history((user, [dict(zip(("user_id", "service", "timestamp",
                                                   "item_text"), r))
                                         for r in rows if r[0] == user]), 5)
        assert got[user] == want[1]


def test_user_shard_is_stable_and_in_range():
    assert rb.user_shard("alice", 64) == rb.user_shard("alice", 64)
    assert {rb.user_shard(f"u{i}", 8) for i in range(200)} == set(range(8))
    assert rb.user_shard("alice", 64) == __import__("zlib").crc32(b"alice") % 64


@pytest.mark.parametrize("gz", [True, False])
def test_read_batches_reads_every_record_in_order(tmp_path, gz):
    path = str(tmp_path / ("r.tfrecord" + (".gz" if gz else "")))
    records = [f"rec{i}".encode() for i in range(10)]
    with tf.io.TFRecordWriter(path, options="GZIP" if gz else None) as w:
        for r in records:
            w.write(r)
    batches = list(rb.read_batches(path, batch_rows=4))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert [r for b in batches for r in b] == records
    if gz:
        with gzip.open(path) as f:
            assert f.read(1)  # really gzipped
    assert os.path.getsize(path) > 0
