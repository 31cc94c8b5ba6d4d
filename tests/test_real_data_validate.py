"""Pre-flight validation (clue_keras.data.validate) on hand-written, export-shaped files.

Each case that stops the pre-flight is one that makes ExampleGen itself crash
inside Beam: the CSV cases are also run through CsvExampleGen's own transform to
show that it does.
"""

import datetime as dt
import json
import os

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions
from tfx.components.example_gen.csv_example_gen.executor import _CsvToExample

from clue_keras.data.validate import DataValidationError, validate_logs, validate_task

HEADER = b"user_id,service,timestamp,item_text\n"


def _csv_example_gen(folder) -> None:
    """CsvExampleGen's CSV -> tf.Example transform over ``folder/*.csv`` (raises on what it cannot read)."""
    with beam.Pipeline(options=PipelineOptions(["--direct_running_mode=in_memory",
                                                "--direct_num_workers=1"])) as p:
        _ = p | _CsvToExample({"input_base": str(folder)}, "*.csv") | beam.Map(lambda e: None)


@pytest.mark.parametrize("body, match", [
    (b"1,news,5,ok\n2,news,6,a,b\n", r"ratings\.csv:3: expected 4 fields .*got 5"),
    (b"1,news,5,ok\n2,news\n", r"ratings\.csv:3: expected 4 fields .*got 2"),
    (b"1,news,5,ok\n2,news,6,caf\xe9\n", r"ratings\.csv:3: column 'item_text' is not valid UTF-8"),
    (b'1,news,5,ok\n2,news,6,"never closed\n', r"ratings\.csv:3: a quoted field .*never closed"),
    (b"1,news,5,ok\n2,news,6," + "é".encode() * 140_000 + b"\n",
     r"ratings\.csv:3: a field is longer than 131,072 characters"),
], ids=["too_many_fields", "too_few_fields", "bad_utf8", "unbalanced_quotes", "field_over_limit"])
def test_what_crashes_csv_example_gen_stops_the_preflight_with_file_and_line(tmp_path, body, match):
    (tmp_path / "ratings.csv").write_bytes(HEADER + body)
    with pytest.raises(Exception):  # CsvExampleGen: a stack trace from inside Beam
        _csv_example_gen(tmp_path)
    with pytest.raises(DataValidationError, match=match) as e:
        validate_logs(str(tmp_path))
    assert len(e.value.problems) == 1


def test_csv_header_problems(tmp_path):
    (tmp_path / "a.csv").write_bytes(b"\xef\xbb\xbf" + HEADER + b"1,news,5,ok\n")
    with pytest.raises(DataValidationError, match=r"a\.csv:1: starts with a UTF-8 byte-order mark"):
        validate_logs(str(tmp_path / "a.csv"))
    (tmp_path / "b.csv").write_bytes(b"user_id,service,when,item_text\n1,news,5,ok\n")
    with pytest.raises(DataValidationError, match=r"b\.csv:1: missing column\(s\) \['timestamp'\]"):
        validate_logs(str(tmp_path / "b.csv"))
    (tmp_path / "c.csv").write_bytes(HEADER + b"1,news,5,ok\n")
    (tmp_path / "d.csv").write_bytes(b"service,user_id,timestamp,item_text\nnews,1,5,ok\n")
    with pytest.raises(DataValidationError, match=r"d\.csv:1: header .* differs from"):
        validate_logs([str(tmp_path / "c.csv"), str(tmp_path / "d.csv")])


def test_csv_report_counts_drops_users_services_and_warns(tmp_path):
    (tmp_path / "export.csv").write_bytes(HEADER + (
        b"0042,news,2021-03-04T05:06:07Z,Budget vote\n"
        b"0042,shop,2021-03-04,Red shoes\n"
        b"7,news,1614834367,Weather\n"          # a plain number among ISO dates
        b",news,5,anonymous\n"                  # empty user
        b"8,,5,no service\n"                    # empty service
        b"8,news,next week,Sports\n"            # bad timestamp
        b"9,news,2021-03-05,   \n"              # empty text
        b"9,news,2021-03-06,Tech\n"))
    r = validate_logs(str(tmp_path))
    assert (r.format, r.rows, r.users, r.services) == ("csv", 8, 3, {"news": 3, "shop": 1})
    assert r.users_single_service == 2  # 7 and 9; 0042 has two services
    assert {k: v for k, v in r.dropped.items() if v} == {
        "rows_dropped_empty_user": 1, "rows_dropped_empty_service": 1,
        "rows_dropped_bad_timestamp": 1, "rows_dropped_empty_text": 1}
    path = str(tmp_path / "export.csv")
    assert f"{path}:5: rows_dropped_empty_user: column 'user_id' is empty" in r.examples
    assert any(e.startswith(f"{path}:7: rows_dropped_bad_timestamp: column 'timestamp': "
                            f"not a timestamp: 'next week'") for e in r.examples)
    assert any("mix ISO-8601 dates" in w for w in r.warnings)
    # Every user id is an integer: CsvExampleGen reads the column as INT.
    assert any("'0042' becomes user '42'" in w for w in r.warnings)
    assert "rows preprocessing will drop" in "\n".join(r.lines())
    assert json.dumps(r.to_dict())
    sampled = validate_logs(path, max_rows_per_file=2)
    assert sampled.rows == 2 and sampled.sampled


def test_csv_warnings_for_what_csv_example_gen_changes(tmp_path):
    (tmp_path / "x.csv").write_bytes(HEADER + b"007,news,1614834367.5,a\n8,news,1614834368,b\n")
    warnings = validate_logs(str(tmp_path)).warnings
    assert any("'007' becomes user '7'" in w for w in warnings)
    assert any("'timestamp' holds numbers with a fraction: ExampleGen stores them as float32" in w
               for w in warnings)


def test_jsonl_problems_and_drops(tmp_path):
    lines = [b'{"user_id": 1, "service": "news", "timestamp": "2021-03-04", "item_text": "a"}',
             b'{"user_id": 2, "service": "news", "timestamp": 5, "item_text": "caf\xe9"}',
             b'{"user_id": 3, "service": "news", "timestamp": 5',
             b'{"user_id": 4, "service": "news", "timestamp": 5, "item_text": "b", "seen": true}',
             b'[1, 2]', b'',
             b'{"user_id": null, "service": "news", "timestamp": 5, "item_text": "c"}']
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataValidationError) as e:
        validate_logs(str(tmp_path))
    path = str(tmp_path / "events.jsonl")
    assert [p.split(": ")[0] for p in e.value.problems] == [f"{path}:{i}" for i in (2, 3, 4, 5)]
    assert "not valid UTF-8" in e.value.problems[0] and "'seen' holds a boolean" in e.value.problems[2]
    (tmp_path / "events.jsonl").write_bytes(lines[0] + b"\n" + lines[-1] + b"\n")
    r = validate_logs(str(tmp_path))
    assert (r.rows, r.users, r.dropped["rows_dropped_empty_user"]) == (2, 1, 1)
    assert r.examples == [f"{path}:2: rows_dropped_empty_user: column 'user_id' is empty"]


def test_parquet_types_tfx_cannot_convert_stop_the_preflight(tmp_path):
    from tfx.components.example_gen.utils import dict_to_example

    when = dt.datetime(2021, 3, 4, 5, 6, 7)
    pq.write_table(pa.table({"user_id": [1], "service": ["news"], "item_text": ["a"],
                             "timestamp": pa.array([when], pa.timestamp("ms"))}),
                   tmp_path / "p.parquet")
    with pytest.raises(Exception):  # what tfx's Parquet ExampleGen does with such a cell
        dict_to_example({"timestamp": when})
    with pytest.raises(DataValidationError,
                       match=r"p\.parquet: column 'timestamp' has Arrow type timestamp\[ms\]"):
        validate_logs(str(tmp_path))


def test_parquet_integer_ids_and_zeros(tmp_path):
    pq.write_table(pa.table({
        "user_id": pa.array([101, 102, 0, 101], pa.int64()),
        "service": ["news", "news", "news", "shop"],
        "timestamp": pa.array([3, 0, 1, 2], pa.int64()),       # ordinals, one 0
        "item_text": ["a", "b", "c", None]}), tmp_path / "logs.parquet")
    r = validate_logs(str(tmp_path))
    assert r.rows == 4 and r.users == 1 and r.users_single_service == 1  # 101: shop text empty
    assert r.dropped["rows_dropped_empty_user"] == 1  # user 0: ExampleGen reads it as missing
    assert r.dropped["rows_dropped_bad_timestamp"] == 1
    assert r.dropped["rows_dropped_empty_text"] == 1
    assert any("user_id = 0" in w for w in r.warnings)
    assert any("timestamp = 0" in w for w in r.warnings)


def test_tfrecord_bad_utf8_is_a_counted_drop(tmp_path):
    with tf.io.TFRecordWriter(str(tmp_path / "x.tfrecord")) as w:
        for text in (b"ok", b"caf\xe9"):
            e = tf.train.Example()
            e.features.feature["user_id"].int64_list.value.append(5)
            e.features.feature["service"].bytes_list.value.append(b"news")
            e.features.feature["timestamp"].bytes_list.value.append(b"2021-03-04")
            e.features.feature["item_text"].bytes_list.value.append(text)
            w.write(e.SerializeToString())
    r = validate_logs(str(tmp_path))
    assert (r.rows, r.users, r.dropped["rows_dropped_bad_utf8"]) == (2, 1, 1)
    assert r.examples[0].startswith(f"{tmp_path / 'x.tfrecord'}: record 2: rows_dropped_bad_utf8")


def test_no_usable_row_stops_the_preflight(tmp_path):
    (tmp_path / "x.csv").write_bytes(HEADER)
    with pytest.raises(DataValidationError, match=r"no usable row \(0 rows; dropped: none\)"):
        validate_logs(str(tmp_path))
    (tmp_path / "x.csv").write_bytes(HEADER + b"1,news,04/03/2021,a\n2,news,05/03/2021,b\n")
    with pytest.raises(DataValidationError,
                       match=r"no usable row \(2 rows; dropped: \{'rows_dropped_bad_timestamp': 2\}\)"
                             r"\n  .*x\.csv:2: rows_dropped_bad_timestamp"):
        validate_logs(str(tmp_path))


def test_mixed_formats_and_missing_files(tmp_path):
    (tmp_path / "a.csv").write_bytes(HEADER)
    (tmp_path / "b.jsonl").write_text("")
    with pytest.raises(DataValidationError, match="mixes formats"):
        validate_logs(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        validate_logs(str(tmp_path / "nope" / "*.csv"))


def test_validate_task(tmp_path):
    (tmp_path / "purchases_v2.csv").write_text(
        "user_id,item_id,timestamp,item_text\n1,10,2021-01-01,Kettle\n2,11,2021-01-02,Toaster\n"
        "2,10,2021-01-03,\n")
    r = validate_task(str(tmp_path))
    assert (r.rows, r.users, r.items, r.catalogue) == (3, 2, 2, None)
    assert r.items_text_from_interactions == 2 and os.path.basename(r.interactions) == "purchases_v2.csv"
    (tmp_path / "catalogue.jsonl").write_text('{"item_id": 10, "item_text": "Kettle"}\n')
    with pytest.raises(DataValidationError, match=r"1 interaction\(s\) refer to items missing .*\['11'\]"):
        validate_task(str(tmp_path))
    (tmp_path / "catalogue.jsonl").unlink()
    (tmp_path / "purchases_v2.csv").write_text("user_id,item_id,timestamp\n1,10,2021-01-01\n")
    with pytest.raises(DataValidationError, match=r"1 of 1 item\(s\) have no text"):
        validate_task(str(tmp_path / "purchases_v2.csv"))
    (tmp_path / "purchases_v2.csv").write_text("user_id,item_id,timestamp\n1,10,2021-01-01,x\n")
    with pytest.raises(DataValidationError, match=r"purchases_v2\.csv:2: expected 3 fields"):
        validate_task(str(tmp_path))
