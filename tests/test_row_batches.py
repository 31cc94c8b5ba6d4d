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


def test_packed_rows_round_trip_and_clean_like_lists():
    rows = [("u1", "news", 3, "b"), ("u2", "shop", 1, "café"), ("u1", "news", 2, "a")]
    block = rb.pack_rows(rows)
    assert isinstance(block, bytes) and rb.unpack_rows(block) == rows
    assert rb.unpack_rows(rows) is rows
    packed = dict(rb.clean_shard((0, [rb.pack_rows(rows[:1]), rb.pack_rows(rows[1:])]), 5))
    assert packed == dict(rb.clean_shard((0, [rows]), 5))
    assert packed["u1"].items == {"news": ["a", "b"]}
    # Columns of ids, services and texts compress (the DirectRunner holds them all).
    many = [(f"user-{i // 40}", "news", 1600000000 + i, f"an item text {i % 300}")
            for i in range(4096)]
    assert rb.unpack_rows(rb.pack_rows(many)) == many
    assert len(rb.pack_rows(many)) < len(__import__("pickle").dumps(many)) / 3
    assert rb.unpack_rows(rb.pack_rows([])) == []


def test_read_parts_of_a_file_share_its_batches_exactly_once(tmp_path):
    path = str(tmp_path / "r.tfrecord.gz")
    records = [f"rec{i}".encode() for i in range(11)]
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for r in records:
            w.write(r)
    parts = [list(rb.read_part((path, i, 3), batch_rows=2)) for i in range(3)]
    assert [len(p) for p in parts] == [2, 2, 2]          # batches 0,3 / 1,4 / 2,5
    assert parts[1][0] == records[2:4] and parts[2][1] == records[10:]
    assert sorted(r for p in parts for b in p for r in b) == sorted(records)


@pytest.mark.parametrize("n_files,read_tasks", [(1, 3), (3, 2), (2, 8)])
def test_read_row_batches_reads_every_record_once_without_a_shuffle(tmp_path, n_files,
                                                                    read_tasks):
    """Files are cut into at least ``read_tasks`` read tasks; together they read each
    record once, and the pipeline holds no Reshuffle of records (only of the tasks:
    a shuffle of raw records kept them all in the DirectRunner's memory)."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    records, rows = [], []
    for f in range(n_files):
        with tf.io.TFRecordWriter(str(tmp_path / f"part-{f}.gz"), options="GZIP") as w:
            for i in range(7):
                rows.append((f"u{f}", "news", 100 * f + i, f"text {f} {i}"))
                records.append(behavior_example(*rows[-1]))
                w.write(records[-1])
    with beam.Pipeline() as p:
        batches = p | pp.ReadRowBatches(str(tmp_path / "part-*.gz"), batch_rows=2,
                                        read_tasks=read_tasks)
        assert_that(batches | beam.FlatMap(lambda b: b), equal_to(records))
        parsed = batches | pp.ParseRowBatches(num_shards=4)
        assert_that(parsed["rows"] | beam.FlatMap(lambda kv: rb.unpack_rows(kv[1])),
                    equal_to(rows), label="Rows")
    labels = []

    class Visitor(beam.pipeline.PipelineVisitor):
        def enter_composite_transform(self, node):
            labels.append(node.full_label)

    p.visit(Visitor())
    assert not [label for label in labels if label.endswith("Spread")]


# --------------------------------------------------------------------------
# The vectorised fast path (clue_keras.data.fast_rows) against behavior_row.
# --------------------------------------------------------------------------

def _example(*cells) -> bytes:
    """A raw tf.Example with explicit features: per column ``None`` (no feature),
    ``"kindless"`` (a feature of no kind) or a list of values (bytes / str ->
    bytes_list, int -> int64_list, float -> float_list; ``[]`` an empty bytes_list)."""
    f = tf.train.Feature
    feats = {}
    for name, cell in zip(("user_id", "service", "timestamp", "item_text"), cells):
        if cell is None:
            continue
        if cell == "kindless":
            feats[name] = f()
        elif cell and all(isinstance(v, int) for v in cell):
            feats[name] = f(int64_list=tf.train.Int64List(value=cell))
        elif cell and all(isinstance(v, float) for v in cell):
            feats[name] = f(float_list=tf.train.FloatList(value=cell))
        else:
            feats[name] = f(bytes_list=tf.train.BytesList(
                value=[v.encode("utf-8") if isinstance(v, str) else v for v in cell]))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def _typed(rows):
    return [tuple((type(v).__name__, v) for v in r) for r in rows]


def _reference(serialized):
    """behavior_row row by row over example_cells: the rule parse_batch must match."""
    from clue_keras.data.values import behavior_row

    rows, bad = [], []
    for cells in rb.example_cells(serialized):
        try:
            rows.append(behavior_row(*cells))
        except BadRow as e:
            bad.append((e.reason, e.key, str(e)))
    return _typed(rows), bad


def _parsed(serialized):
    rows, bad = rb.parse_batch(serialized)
    return _typed(rows), [(e.reason, e.key, str(e)) for e in bad]


WELL_FORMED = [_example([str(1000 + i)], [("news", "shop", "검색")[i % 3]], [1614834367 + i],
                        [f"item {i} " + "가나다 text é" * (i % 4)]) for i in range(50)]
WS = [" ", "\t", "\n", "\x0b", "\x0c", "\r", "\x1c", "\x1f", "\x85", "\xa0", "\u1680", "\u2000",
      "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000", "  \t\u3000 "]
NOT_WS = ["\u200b", "\ufeff", "\x00", "\x7f", " x ", "\u3000y", "\x1b", "é"]
BAD_UTF8 = [b"caf\xe9", b"\xff", b"\xed\xa0\x80", b"\xc0\x80", b"\xe0\x80\x80", b"\xf4\x90\x80\x80",
            b"\xf5\x80\x80\x80", b"ok\xc3", b"\xe2\x82"]
BATCHES = {
    "well_formed": WELL_FORMED,
    "empty_ids": [_example([""], ["s"], [1], ["t"]), _example(["u"], [""], [2], ["t"]),
                  _example([], ["s"], [3], ["t"]), _example(None, ["s"], [4], ["t"]),
                  _example("kindless", ["s"], [5], ["t"]), _example(["u"], None, [6], ["t"]),
                  _example(["u"], [], [6], ["t"]), *WELL_FORMED[:3]],
    "whitespace_ids": [_example([w], ["s"], [i], ["t"]) for i, w in enumerate(WS + NOT_WS)]
    + [_example(["u"], [w], [i], ["t"]) for i, w in enumerate(WS + NOT_WS)],
    "missing_text": [_example(["u"], ["s"], [1], t) for t in (None, [], [""], "kindless", ["x"])],
    "no_text_at_all": [_example(["u"], ["s"], [i], None) for i in range(3)],
    "missing_timestamp": [_example(["u"], ["s"], t, ["x"]) for t in (None, "kindless", [9])],
    "no_timestamp_at_all": [_example(["u"], ["s"], None, ["x"]) for _ in range(3)],
    "string_timestamps": [_example(["u"], ["s"], [t], ["x"]) for t in
                          ("2021-03-04T05:06:07Z", "12", " 13 ", " ", "", "yesterday", "1.5e9")],
    "float_timestamps": [_example(["u"], ["s"], [t], ["x"]) for t in
                         (5.5, 1e9, -2.5, float("nan"), float("inf"))],
    "multi_valued": [_example(["a", "b"], ["s"], [1], ["t"]),
                     _example(["u"], ["s", "r"], [1], ["t"]), _example(["u"], ["s"], [1, 2], ["t"]),
                     _example(["u"], ["s"], [1], ["t", "v"]),
                     _example(["a", "b"], ["s", "r"], [1, 2, 3], ["t", "v"]), WELL_FORMED[0]],
    "bad_utf8": [_example([b], ["s"], [1], ["t"]) for b in BAD_UTF8]
    + [_example(["u"], [b], [1], ["t"]) for b in BAD_UTF8]
    + [_example(["u"], ["s"], [1], [b]) for b in BAD_UTF8] + WELL_FORMED[:2],
    "int_ids": [_example([7], [3], [1], ["t"]), _example([-8], [0], [2], ["u"]),
                _example([2**63 - 1], [-2**63], [3], None), _example([1, 2], [5], [4], ["v"]),
                _example(None, [5], [5], ["w"]), _example("kindless", [5], [6], ["x"])],
    "int_text": [_example(["u"], ["s"], [1], [5]), _example(["u"], ["s"], [2], None)],
    "mixed_kinds": [_example([7], ["s"], [1], ["t"]),
                    _example(["u"], ["s"], ["2021-03-04"], ["t"]), *WELL_FORMED[:2]],
    "all_bad": [_example([""], ["s"], [1], ["t"]), _example(["u"], ["s"], None, ["t"])],
    "empty": [],
}


@pytest.mark.parametrize("name", sorted(BATCHES))
def test_parse_batch_equals_behavior_row_per_row(name):
    serialized = BATCHES[name]
    assert _parsed(serialized) == _reference(serialized)


def test_parse_batch_equals_behavior_row_on_a_random_mix():
    import random

    rng = random.Random(14)
    ids = ["u1", "", " ", "\u3000", "42", "é", b"\xff", ["a", "b"], [], None, "kindless"]
    texts = ["x", "", None, [], b"\xe9", ["a", "b"], "가나다", "kindless", " t "]
    stamps = [[1], [2**40], [-3], None, [1, 2], "kindless"]  # ([] is a bytes_list)

    def cell(choices, common):
        if rng.random() >= 0.2:
            return common
        c = rng.choice(choices)
        return c if isinstance(c, list) or c is None or c == "kindless" else [c]

    serialized = [_example(cell(ids, [str(rng.randrange(99))]), cell(ids, ["svc"]),
                           cell(stamps, [rng.randrange(10**9)]), cell(texts, ["some text"]))
                  for _ in range(2000)]
    got, want = _parsed(serialized), _reference(serialized)
    assert got == want
    assert len(want[1]) > 100 and len(want[0]) > 1000
    ok, _ = rb.fast_rows(rb._decode(serialized))
    assert 1000 < ok.sum() < len(ok) - 100  # both paths really ran


def test_the_fast_path_takes_the_well_formed_rows_and_only_those():
    ok, rows = rb.fast_rows(rb._decode(WELL_FORMED))
    assert ok.all() and _typed(rows) == _reference(WELL_FORMED)[0]
    ok, _ = rb.fast_rows(rb._decode(BATCHES["multi_valued"]))
    assert ok.tolist() == [False] * 5 + [True]
    ok, _ = rb.fast_rows(rb._decode(BATCHES["bad_utf8"]))
    assert ok.tolist() == [False] * (3 * len(BAD_UTF8)) + [True, True]
    ok, _ = rb.fast_rows(rb._decode(BATCHES["int_ids"]))
    assert ok.tolist() == [True] * 3 + [False] * 3
    ok, _ = rb.fast_rows(rb._decode(BATCHES["whitespace_ids"]))
    assert ok.tolist() == ([False] * len(WS) + [True] * len(NOT_WS)) * 2


def test_parse_batch_of_well_formed_rows_never_calls_behavior_row(monkeypatch):
    def fail(*cells):
        raise AssertionError(f"per-row path taken for {cells}")

    want = _reference(WELL_FORMED)
    monkeypatch.setattr(rb, "behavior_row", fail)
    assert _parsed(WELL_FORMED) == want


def test_blank_is_what_str_strip_removes():
    from clue_keras.data.fast_rows import BLANK

    assert set(BLANK) == {c for c in range(0x110000) if not chr(c).strip()}


@pytest.mark.parametrize("name", ["well_formed", "whitespace_ids", "bad_utf8", "empty_ids",
                                  "int_ids"])
def test_any_split_between_the_paths_gives_the_same_rows(monkeypatch, name):
    """Rows the fast path could take but leaves to behavior_row are merged back in order."""
    real = rb.fast_rows

    def every_third_only(batch):
        ok, rows = real(batch)
        keep = ok.copy()
        keep[::3] = False
        return keep, [r for r, k in zip(rows, keep[ok]) if k]

    want = _reference(BATCHES[name])
    monkeypatch.setattr(rb, "fast_rows", every_third_only)
    assert _parsed(BATCHES[name]) == want
