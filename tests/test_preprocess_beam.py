"""Preprocessing Beam transforms (clue_keras.data.preprocess) and BehaviorPreprocess's
input checks (components.behavior_preprocess.executor) on a hand-written handful of users.

Expected values are worked out by hand in the comments (dedup keeps the
earliest of an exact repeat; newest S per service, oldest first; split by
``md5(user_id) mod 100``).
"""

import json
import os

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from clue_keras.data import prepare as PR
from clue_keras.data import preprocess as pp
from clue_keras.data.records import CleanedUser, parse_user_example
from clue_keras.tokenizer import OfflineTokenizer, load_vocab_info
from components.behavior_preprocess import executor as ex
from components.jsonl_example_gen.executor import json_line_to_example

# (user_id, service, timestamp, item_text). Splits at eval=30%, test=30%
# (bucket = md5(id) mod 100; [0,30) test, [30,60) eval, else train):
# alice 17 -> test, bob 66 -> train, erin 51 -> eval, heidi 80 -> train, judy 68 -> train.
ROWS = [
    # bob: "red  shoes"@100 and "red shoes"@200 are one behaviour after normalising
    # (the later is dropped); 4 distinct shopping items > S=3 -> "old item" truncated.
    ("bob", "shopping", 300, "blue hat"),
    ("bob", "shopping", 100, "red  shoes"),
    ("bob", "shopping", 200, "red shoes"),
    ("bob", "shopping", 400, " green scarf\t"),
    ("bob", "shopping", 50, "old item"),
    ("bob", "search", 150, "running shoes"),
    # alice: a whitespace-only text is skipped.
    ("alice", "news", 30, "   "),
    ("alice", "search", 20, "q"),
    ("alice", "news", 10, "headline a"),
    # erin: two items, one service.
    ("erin", "shopping", 6, "y"),
    ("erin", "shopping", 5, "x"),
    # heidi: one item -> below min_items=2.
    ("heidi", "search", 1, "only"),
    # judy: the same text in two services is not a repeat.
    ("judy", "search", 2, "lamp"),
    ("judy", "shopping", 1, "lamp"),
]

BOB = CleanedUser(items={"search": ["running shoes"],
                         "shopping": ["red shoes", "blue hat", "green scarf"]},
                  n_rows=6, n_empty=0, n_duplicates=1, n_truncated=1)
ALICE = CleanedUser(items={"news": ["headline a"], "search": ["q"]},
                    n_rows=3, n_empty=1, n_duplicates=0, n_truncated=0)
ERIN = CleanedUser(items={"shopping": ["x", "y"]}, n_rows=2)
JUDY = CleanedUser(items={"search": ["lamp"], "shopping": ["lamp"]}, n_rows=2)

PARAMS = dict(max_items=3, max_tokens=6, vocab_size=300, min_items_per_user=2,
              min_services_per_user=1, eval_percent=30, test_percent=30,
              bpe_sample_size=1000, num_shards=1)


def _example(user_id, service, ts, text) -> bytes:
    f = tf.train.Feature
    feats = {"user_id": f(bytes_list=tf.train.BytesList(value=[user_id.encode()])),
             "service": f(bytes_list=tf.train.BytesList(value=[service.encode()])),
             "timestamp": f(int64_list=tf.train.Int64List(value=[ts]))}
    if text.strip():  # CsvExampleGen leaves empty cells out; mimic for blank text
        feats["item_text"] = f(bytes_list=tf.train.BytesList(value=[text.encode()]))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def _pipeline():
    return test_pipeline.TestPipeline(options=beam.options.pipeline_options.PipelineOptions(
        ["--direct_running_mode=in_memory", "--direct_num_workers=1"]))


def test_parse_row_reads_columns_and_keeps_blank_text_as_empty():
    assert pp.parse_row(_example("bob", "shopping", 100, "red  shoes")) == {
        "user_id": "bob", "service": "shopping", "timestamp": 100, "item_text": "red  shoes"}
    assert pp.parse_row(_example("alice", "news", 30, "   "))["item_text"] == ""
    no_ts = tf.train.Example()
    no_ts.features.feature["user_id"].bytes_list.value.append(b"zed")
    no_ts.features.feature["service"].bytes_list.value.append(b"news")
    with pytest.raises(pp.BadRow, match="'timestamp' is empty") as e:
        pp.parse_row(no_ts.SerializeToString())
    assert e.value.key == "rows_dropped_bad_timestamp"


def _typed_example(**cells) -> bytes:
    """A raw tf.Example with each cell's feature kind as ExampleGen infers it."""
    e = tf.train.Example()
    for k, v in cells.items():
        f = e.features.feature[k]
        if isinstance(v, int):
            f.int64_list.value.append(v)
        elif isinstance(v, float):
            f.float_list.value.append(v)
        elif isinstance(v, list):
            f.bytes_list.value.extend(v)
        elif v is not None:
            f.bytes_list.value.append(v if isinstance(v, bytes) else v.encode())
    return e.SerializeToString()


@pytest.mark.parametrize("cells, want", [
    # Integer ids (CsvExampleGen / JSONL infer INT): the decimal string.
    (dict(user_id=1042, service="news", timestamp=5, item_text="a"), ("1042", 5)),
    # A NaN-promoted integer column (float): still the integer's string.
    (dict(user_id=7.0, service="news", timestamp=5, item_text="a"), ("7", 5)),
    # ISO-8601 timestamps (ExampleGen: BYTES): unix seconds, UTC.
    (dict(user_id="u", service="news", timestamp="2021-03-04", item_text="a"), ("u", 1614816000)),
    (dict(user_id="u", service="news", timestamp="2021-03-04T05:06:07Z", item_text="a"),
     ("u", 1614834367)),
    (dict(user_id="u", service="news", timestamp="2021-03-04 05:06:07+09:00", item_text="a"),
     ("u", 1614834367 - 9 * 3600)),
    (dict(user_id="u", service="news", timestamp="17", item_text="a"), ("u", 17)),
])
def test_parse_row_accepts_integer_ids_and_any_timestamp(cells, want):
    row = pp.parse_row(_typed_example(**cells))
    assert (row["user_id"], row["timestamp"]) == want


@pytest.mark.parametrize("cells, key", [
    (dict(user_id=None, service="news", timestamp=5, item_text="a"), "rows_dropped_empty_user"),
    (dict(user_id=" ", service="news", timestamp=5, item_text="a"), "rows_dropped_empty_user"),
    (dict(user_id="u", service=None, timestamp=5, item_text="a"), "rows_dropped_empty_service"),
    (dict(user_id="u", service="news", timestamp="yesterday", item_text="a"),
     "rows_dropped_bad_timestamp"),
    (dict(user_id="u", service="news", timestamp=5, item_text=b"caf\xe9"), "rows_dropped_bad_utf8"),
    (dict(user_id=[b"a", b"b"], service="news", timestamp=5, item_text="a"),
     "rows_dropped_bad_value"),
])
def test_parse_row_names_the_drop_reason(cells, key):
    with pytest.raises(pp.BadRow) as e:
        pp.parse_row(_typed_example(**cells))
    assert e.value.key == key


@pytest.mark.parametrize("min_services, expected", [
    (1, [("alice", ALICE), ("bob", BOB), ("erin", ERIN), ("judy", JUDY)]),
    (2, [("alice", ALICE), ("bob", BOB), ("judy", JUDY)]),
])
def test_build_user_histories_dedup_order_truncate_and_activity(min_services, expected):
    with _pipeline() as p:
        users = (p | beam.Create([_example(*r) for r in ROWS])
                 | pp.ParseRows())["rows"] | pp.BuildUserHistories(
                     max_items=3, min_items=2, min_services=min_services)
        assert_that(users["active"], equal_to(expected), label="active")
        assert_that(users["all"] | beam.Keys(),
                    equal_to(["alice", "bob", "erin", "heidi", "judy"]), label="all")


def test_split_by_user_is_a_hash_of_the_user_id():
    users = [("alice", ALICE), ("bob", BOB), ("erin", ERIN), ("judy", JUDY)]
    with _pipeline() as p:
        splits = pp.split_by_user(p | beam.Create(users), eval_percent=30, test_percent=30)
        ids = {k: v | f"Ids{k}" >> beam.Map(lambda u: u[0]) for k, v in splits.items()}
        assert_that(ids["train"], equal_to(["bob", "judy"]), label="train")
        assert_that(ids["eval"], equal_to(["erin"]), label="eval")
        assert_that(ids["test"], equal_to(["alice"]), label="test")


def _read_records(pattern):
    out = []
    for path in sorted(tf.io.gfile.glob(pattern)):
        out += list(tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator())
    return out


def test_build_pipeline_writes_records_vocab_and_stats(tmp_path):
    raw = tmp_path / "raw" / "data_tfrecord-00000-of-00001.gz"
    raw.parent.mkdir()
    with tf.io.TFRecordWriter(str(raw), options="GZIP") as w:
        for r in ROWS:
            w.write(_example(*r))
    out = str(tmp_path / "out")
    with _pipeline() as p:
        pp.build_pipeline(p, str(raw.parent / "*"), out, PARAMS)

    with open(os.path.join(out, pp.STATS_FILENAME)) as f:
        stats = json.load(f)
    assert stats == {
        "rows_read": 14, "users_read": 5, "users_kept": 4,
        "rows_dropped_empty_text": 1, "rows_duplicate": 1, "items_truncated": 1,
        "rows_dropped_empty_user": 0, "rows_dropped_empty_service": 0,
        "rows_dropped_bad_timestamp": 0, "rows_dropped_bad_utf8": 0,
        "rows_dropped_bad_value": 0, "rows_text_capped": 0,
        # heidi has one item (< min_items 2); erin one service (min_services 1: kept).
        "users_dropped_few_items": 1, "users_dropped_few_services": 0,
        "users_kept_single_service": 1,
        "users_train": 2, "users_eval": 1, "users_test": 1,
        "items_train": 4 + 2, "items_eval": 2, "items_test": 2,
        "services": ["news", "search", "shopping"],
    }
    vocab_dir = os.path.join(out, pp.VOCAB_DIRNAME)
    info = load_vocab_info(vocab_dir)
    assert info.services == ("news", "search", "shopping")
    assert (info.max_items, info.max_tokens) == (3, 6)
    assert 256 + 6 <= info.vocab_size <= 300
    tok = OfflineTokenizer(vocab_dir)

    expected = {"train": {"bob": BOB, "judy": JUDY}, "eval": {"erin": ERIN},
                "test": {"alice": ALICE}}
    for split, users in expected.items():
        records = _read_records(os.path.join(out, f"Split-{split}", "data_tfrecord-*.gz"))
        got = dict(parse_user_example(r, info.services) for r in records)
        assert sorted(got) == sorted(users), split
        for uid, cleaned in users.items():
            for service in info.services:
                texts = cleaned.items.get(service, [])
                want = tok.encode_items(texts, service) if texts else []
                assert got[uid][service] == want, (split, uid, service)
                for item in got[uid][service]:
                    assert 1 <= len(item) <= 6
                    assert item[0] == info.service_token_id(service)


def test_train_vocab_writes_nothing_for_an_empty_train_split(tmp_path):
    # No stack trace from inside Beam: users_train = 0 in stats.json, the callers say why.
    assert pp._train_vocab([], ["news"], str(tmp_path / "v"), 300, 3, 6) is None
    assert not (tmp_path / "v").exists()


# --------------------------------------------------------------------------- input checks

def _schema(**types):
    s = schema_pb2.Schema()
    for name, t in types.items():
        s.feature.add(name=name, type=t)
    return s


GOOD_SCHEMA = dict(user_id=schema_pb2.BYTES, service=schema_pb2.BYTES,
                   timestamp=schema_pb2.INT, item_text=schema_pb2.BYTES)


def _stats(num_examples=10, missing=None):
    d = statistics_pb2.DatasetFeatureStatistics(num_examples=num_examples)
    for name, n in (missing or {}).items():
        f = d.features.add()
        f.path.step.append(name)
        f.string_stats.common_stats.num_missing = n
    return {"all": d}


def _props(tmp_path, fmt="csv"):
    return {"input_base": str(tmp_path), "input_format": fmt, "file_pattern": "*." + fmt}


def test_validate_inputs_accepts_good_input():
    assert ex.validate_inputs(_schema(**GOOD_SCHEMA), _stats(7), {}, {}) == 7


def test_validate_inputs_empty_input_names_the_directory(tmp_path):
    with pytest.raises(ex.InputValidationError, match=f"empty: 0 rows in {tmp_path}"):
        ex.validate_inputs(_schema(**GOOD_SCHEMA), _stats(0), {}, _props(tmp_path))


def test_validate_inputs_missing_column_names_column_and_file(tmp_path):
    (tmp_path / "good.csv").write_text("user_id,service,timestamp,item_text\nu,s,1,t\n")
    (tmp_path / "bad.csv").write_text("user_id,service,timestamp\nu,s,1\n")
    schema = _schema(**{k: v for k, v in GOOD_SCHEMA.items() if k != "item_text"})
    with pytest.raises(ex.InputValidationError) as e:
        ex.validate_inputs(schema, _stats(), {}, _props(tmp_path))
    msg = str(e.value)
    assert "'item_text' is missing" in msg and str(tmp_path / "bad.csv") in msg
    assert "good.csv" not in msg


def test_validate_inputs_accepts_integer_ids_and_string_timestamps():
    # What ExampleGen infers for numeric ids (INT) and ISO timestamps (BYTES).
    schema = _schema(**dict(GOOD_SCHEMA, user_id=schema_pb2.INT, timestamp=schema_pb2.BYTES))
    assert ex.validate_inputs(schema, _stats(3), {}, {}) == 3
    schema = _schema(**dict(GOOD_SCHEMA, user_id=schema_pb2.FLOAT, timestamp=schema_pb2.FLOAT))
    assert ex.validate_inputs(schema, _stats(3), {}, {}) == 3


def test_validate_inputs_unusable_type_names_column_and_file(tmp_path):
    (tmp_path / "b.csv").write_text("user_id,service,timestamp,item_text\nu,s,1,\n")
    schema = _schema(**dict(GOOD_SCHEMA, item_text=schema_pb2.TYPE_UNKNOWN))
    with pytest.raises(ex.InputValidationError) as e:
        ex.validate_inputs(schema, _stats(), {}, _props(tmp_path))
    msg = str(e.value)
    assert "column 'item_text' has type unknown (no values) but must be one of" in msg
    assert "b.csv (row 1" in msg


def test_validate_inputs_empty_values_are_drops_not_errors(tmp_path):
    # Empty user ids / timestamps / texts: the Beam graph drops and counts the rows.
    missing = {"user_id": 1, "timestamp": 1, "service": 1, "item_text": 1}
    assert ex.validate_inputs(_schema(**GOOD_SCHEMA), _stats(2, missing), {}, {}) == 2


def test_validate_inputs_reports_example_validator_anomalies():
    a = anomalies_pb2.Anomalies()
    a.anomaly_info["service"].description = "Examples contain values missing from the schema: x."
    with pytest.raises(ex.InputValidationError,
                       match="column 'service' \\(split all\\): Examples contain values"):
        ex.validate_inputs(_schema(**GOOD_SCHEMA), _stats(), {"all": a}, {})


def test_locate_problem_reads_parquet_and_tfrecord(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"user_id": ["u"], "service": ["s"], "timestamp": [1]}),
                   tmp_path / "a.parquet")
    assert ex.locate_problem(str(tmp_path), "*.parquet", "parquet", "item_text", "missing") == [
        f"{tmp_path / 'a.parquet'} (columns: user_id, service, timestamp)"]
    with tf.io.TFRecordWriter(str(tmp_path / "r.tfrecord.gz"), options="GZIP") as w:
        w.write(_example("u", "s", 5, "t"))
    assert ex.locate_problem(str(tmp_path), "*.gz", "tfrecord", "item_text", "missing") == []
    found = ex.locate_problem(str(tmp_path), "*.gz", "tfrecord", "rating", "missing")
    assert len(found) == 1 and found[0].startswith(f"{tmp_path / 'r.tfrecord.gz'} (row 1")


# --------------------------------------------------------------------------- JSONL ExampleGen

def test_json_line_to_example_types():
    e = json_line_to_example(("f.jsonl", '{"user_id": "u1", "timestamp": 7, "w": 0.5, '
                                         '"tags": ["a", "b"], "item_text": "맛집", "x": null}'))
    f = e.features.feature
    assert f["user_id"].bytes_list.value == [b"u1"]
    assert f["timestamp"].int64_list.value == [7]
    assert f["w"].float_list.value == [0.5]
    assert f["tags"].bytes_list.value == [b"a", b"b"]
    assert f["item_text"].bytes_list.value == ["맛집".encode()]
    assert f["x"].WhichOneof("kind") is None


@pytest.mark.parametrize("line, match", [
    ("{not json", "d/f.jsonl: not valid JSON"),
    ("[1, 2]", "d/f.jsonl: expected a JSON object"),
    ('{"a": {"b": 1}}', "d/f.jsonl: key 'a' has unsupported value"),
    ('{"a": true}', "d/f.jsonl: key 'a' holds a boolean"),
])
def test_json_line_to_example_errors_name_the_file(line, match):
    with pytest.raises(ValueError, match=match):
        json_line_to_example(("d/f.jsonl", line))


def test_behavior_example_is_the_inverse_of_parse_row():
    for row in ROWS:
        user_id, service, ts, text = row
        got = pp.parse_row(PR.behavior_example(*row))
        # An empty cell is left out (as ExampleGen does) and read back as "".
        assert got == {"user_id": user_id, "service": service, "timestamp": ts,
                       "item_text": text}
    assert pp.parse_row(PR.behavior_example("u", "s", 1, "")) == {
        "user_id": "u", "service": "s", "timestamp": 1, "item_text": ""}
    # Cells are stored as ExampleGen stores them: ints as int64, empty cells left out.
    e = tf.train.Example.FromString(PR.behavior_example(7, "s", "2021-03-04", None))
    assert e.features.feature["user_id"].int64_list.value == [7]
    assert e.features.feature["timestamp"].bytes_list.value == [b"2021-03-04"]
    assert "item_text" not in e.features.feature or not e.features.feature["item_text"].WhichOneof("kind")
