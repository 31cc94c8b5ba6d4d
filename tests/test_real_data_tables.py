"""Real exports through the table layer: ids as they come, any timestamp, named errors,
a task as one table of any name (clue_keras.data.values / formats / tables / csvfile).

Every fixture is written by hand here, shaped like a public export (integer ids,
the publisher's file names, unix seconds / ISO dates / ordinals), not by clue_synth.
"""

import datetime as dt
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clue_keras.data import csvfile, formats, tables, values

T0 = 1614834367  # 2021-03-04T05:06:07Z


# ------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize("raw, want", [
    (T0, T0), (np.int64(T0), T0), ("1614834367", T0), (b"1614834367", T0), (" 42 ", 42),
    (3, 3), (-5, -5),                                        # ordinals, as they are
    (1614834367.9, T0), ("1.6e9", 1600000000),               # floats: floored
    ("2021-03-04", 1614816000),
    ("2021-03-04T05:06:07Z", T0), ("2021-03-04T05:06:07", T0), ("2021-03-04 05:06:07", T0),
    ("2021-03-04T05:06:07.123456Z", T0), ("2021-03-04T05:06:07,5Z", T0),
    ("2021-03-04 05:06:07+09:00", T0 - 9 * 3600), ("2021-03-04T05:06:07+0900", T0 - 9 * 3600),
    ("2021-03-04T05:06:07-05:30", T0 + 5 * 3600 + 1800), ("2021-03-04T05:06", T0 - 7),
    (dt.datetime(2021, 3, 4, 5, 6, 7), T0),
    (dt.datetime(2021, 3, 4, 14, 6, 7, tzinfo=dt.timezone(dt.timedelta(hours=9))), T0),
    (dt.date(2021, 3, 4), 1614816000), (pd.Timestamp("2021-03-04T05:06:07Z"), T0),
    (np.datetime64("2021-03-04T05:06:07"), T0),
])
def test_normalize_timestamp_accepts_seconds_ordinals_and_iso(raw, want):
    assert values.normalize_timestamp(raw) == want


@pytest.mark.parametrize("raw", [None, "", " ", "yesterday", "2021-02-30", "2021-13-01",
                                 "2021-03-04T25:00:00", "04/03/2021", True, float("nan"),
                                 float("inf"), b"\xff", [1], "2021-03-04T05:06:07+24:00"])
def test_normalize_timestamp_rejects_the_rest_with_a_named_error(raw):
    with pytest.raises(values.TimestampError, match="not a timestamp"):
        values.normalize_timestamp(raw)


def test_id_string():
    assert [values.id_string(v) for v in (1042, np.int64(7), 7.0, 2.5, "007", b"u1", None)] == [
        "1042", "7", "7", "2.5", "007", "u1", ""]
    with pytest.raises(UnicodeDecodeError):
        values.id_string(b"caf\xe9")


def test_behavior_row_drop_reasons_in_order():
    assert values.behavior_row(5, "news", "2021-03-04", None) == ("5", "news", 1614816000, "")
    for cells, key in [
        ((None, None, None, None), "rows_dropped_empty_user"),
        (("u", "", 1, "t"), "rows_dropped_empty_service"),
        (("u", "s", "soon", "t"), "rows_dropped_bad_timestamp"),
        (("u", "s", 1, b"\xff"), "rows_dropped_bad_utf8"),
        (([b"a", b"b"], "s", 1, "t"), "rows_dropped_bad_value"),
    ]:
        with pytest.raises(values.BadRow) as e:
            values.behavior_row(*cells)
        assert e.value.key == key and e.value.key == values.DROP_KEYS[e.value.reason]


# ----------------------------------------------------------------------------- read_table


def test_read_table_numeric_ids_are_decimal_strings_in_every_format(tmp_path):
    (tmp_path / "r.csv").write_text("user_id,item_id,timestamp\n17,100234,1614834367\n"
                                    "3,5,2021-03-04T05:06:07Z\n")
    (tmp_path / "r.jsonl").write_text('{"user_id": 17, "item_id": 100234, "timestamp": 1614834367}\n'
                                      '{"user_id": 3, "item_id": 5, "timestamp": "2021-03-04T05:06:07Z"}\n')
    pq.write_table(pa.table({"user_id": pa.array([17, 3], pa.int64()),
                             "item_id": pa.array([100234, 5], pa.int32()),
                             "timestamp": pa.array([T0, T0], pa.int64())}), tmp_path / "r.parquet")
    pq.write_table(pa.table({"user_id": [17, 3], "item_id": [100234, 5],
                             "timestamp": pa.array([dt.datetime(2021, 3, 4, 5, 6, 7)] * 2,
                                                   pa.timestamp("ms"))}), tmp_path / "t.parquet")
    for name in ("r.csv", "r.jsonl", "r.parquet", "t.parquet"):
        df = tables.read_interactions(str(tmp_path / name))
        assert df.to_dict("list") == {"user_id": ["17", "3"], "item_id": ["100234", "5"],
                                      "timestamp": [T0, T0]}, name
        assert df["timestamp"].dtype == np.int64


@pytest.mark.parametrize("content, match", [
    # wrong number of fields (too many, too few): FILE:LINE
    ("user_id,item_id,timestamp\n1,2,3\n4,5,6,7\n", r"x\.csv:3: expected 3 fields .*got 4"),
    ("user_id,item_id,timestamp\n1,2,3\n4,5\n", r"x\.csv:3: expected 3 fields .*got 2"),
    # text that is not UTF-8: FILE:LINE and the column
    (b"user_id,item_id,timestamp\n1,2,3\n1,caf\xe9,4\n", r"x\.csv:3: column 'item_id' is not valid UTF-8"),
    # unparseable timestamp: file, row, column
    ("user_id,item_id,timestamp\n1,2,3\n1,2,last tuesday\n",
     r"x\.csv: row 2: column 'timestamp': not a timestamp: 'last tuesday'"),
    # empty id
    ("user_id,item_id,timestamp\n1,2,3\n,2,4\n", r"x\.csv: row 2: column 'user_id' is empty"),
    ("user_id,item_id,timestamp\n1,2,3\n", None),
])
def test_read_table_bad_rows_are_named_errors(tmp_path, content, match):
    path = tmp_path / "x.csv"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    if match is None:
        assert len(tables.read_interactions(str(path))) == 1
        return
    with pytest.raises(formats.ReadError, match=match):
        tables.read_interactions(str(path))


def test_read_table_jsonl_bad_utf8_names_the_line(tmp_path):
    (tmp_path / "x.jsonl").write_bytes(b'{"user_id": 1, "item_id": 2, "timestamp": 3}\n'
                                       b'{"user_id": 1, "item_id": "caf\xe9", "timestamp": 3}\n')
    with pytest.raises(formats.ReadError, match=r"x\.jsonl:2: not valid UTF-8"):
        tables.read_interactions(str(tmp_path / "x.jsonl"))


def test_read_behaviors_drops_and_counts_like_preprocessing(tmp_path):
    (tmp_path / "logs.csv").write_text(
        "user_id,service,timestamp,item_text\n"
        "11,news,2021-03-04,Budget vote\n"
        ",news,5,anonymous visit\n"            # empty user -> dropped
        "12,news,soon,Weather\n"               # bad timestamp -> dropped
        "12,shop,7,\n")                         # empty text: kept here, cleaning skips it
    df = tables.read_behaviors(str(tmp_path / "logs.csv"))
    assert df.to_dict("list") == {"user_id": ["11", "12"], "service": ["news", "shop"],
                                  "timestamp": [1614816000, 7], "item_text": ["Budget vote", ""]}
    assert df.attrs["rows_dropped"]["rows_dropped_empty_user"] == 1
    assert df.attrs["rows_dropped"]["rows_dropped_bad_timestamp"] == 1


# ---------------------------------------------------------------------------------- tasks


def test_task_is_one_table_of_any_name_without_catalogue(tmp_path):
    # An export as published: integer ids, ISO dates, titles joined in, some missing.
    pq.write_table(pa.table({
        "user_id": [501, 502, 501, 503], "item_id": [9001, 9002, 9001, 9003],
        "timestamp": ["2020-01-02", "2020-01-03", "2020-02-01T10:00:00Z", "2020-01-05"],
        "item_text": ["Old title", "Second film", "New title", "Third film"],
        "rating": [4.0, 3.5, 5.0, 2.0]}), tmp_path / "clicks.parquet")
    for spec in (tmp_path / "clicks.parquet", tmp_path):        # the file, or its folder
        inter, cat = tables.read_task(str(spec))
        assert inter["user_id"].tolist() == ["501", "502", "501", "503"]
        assert inter["timestamp"].tolist()[:2] == [1577923200, 1578009600]
        assert cat.to_dict("list") == {"item_id": ["9001", "9002", "9003"],
                                       "item_text": ["New title", "Second film", "Third film"]}
        assert tables.read_catalogue(str(spec)).equals(cat)
    assert tables.task_files(str(tmp_path)) == (str(tmp_path / "clicks.parquet"), None)


def test_task_catalogue_file_and_text_fill(tmp_path):
    (tmp_path / "events_2021.csv").write_text(
        "user_id,item_id,timestamp,item_text\n1,10,1,Alpha\n2,11,2,\n3,11,3,Beta\n")
    (tmp_path / "catalogue.jsonl").write_text(
        '{"item_id": 10, "item_text": ""}\n{"item_id": 11, "item_text": "Beta (catalogue)"}\n'
        '{"item_id": 12, "item_text": "Gamma"}\n')
    inter, cat = tables.read_task(str(tmp_path))
    assert tables.task_files(str(tmp_path)) == (str(tmp_path / "events_2021.csv"),
                                                str(tmp_path / "catalogue.jsonl"))
    assert cat.to_dict("list") == {"item_id": ["10", "11", "12"],
                                   "item_text": ["Alpha", "Beta (catalogue)", "Gamma"]}
    (tmp_path / "more.csv").write_text("user_id,item_id,timestamp\n")
    with pytest.raises(ValueError, match=r"several table files \['events_2021.csv', 'more.csv'\]"):
        tables.read_task(str(tmp_path))


def test_task_items_without_any_text_are_a_named_error(tmp_path):
    (tmp_path / "x.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in [
            {"user_id": 1, "item_id": 7, "timestamp": 1, "item_text": "Seven"},
            {"user_id": 1, "item_id": 8, "timestamp": 2, "item_text": "  "},
            {"user_id": 2, "item_id": 9, "timestamp": 3}]))
    with pytest.raises(formats.ReadError,
                       match=r"x\.jsonl .*2 of 3 item\(s\) have no text, e\.g\. item_id \['8', '9'\]"):
        tables.read_task(str(tmp_path / "x.jsonl"))
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match="unknown file type"):
        tables.task_files(str(tmp_path / "x.txt"))
    with pytest.raises(FileNotFoundError, match="no such task"):
        tables.task_files(str(tmp_path / "nope.csv"))


def test_load_task_of_clue_tfrs_reads_a_single_file(tmp_path):
    from clue_tfrs.tasks import load_task

    (tmp_path / "views.csv").write_text(
        "user_id,item_id,timestamp,item_text\n1,10,2021-01-01,A\n2,11,2021-01-02,B\n")
    inter, cat = load_task(str(tmp_path / "views.csv"))
    assert inter["user_id"].tolist() == ["1", "2"] and cat["item_id"].tolist() == ["10", "11"]


# ------------------------------------------------------------------------ csv as ExampleGen


def test_csv_records_split_as_csv_example_gen(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(b'user_id,service,timestamp,item_text\n'
                     b'1,news,5,"two\nlines"\n'          # quoted newline: one record, line 2
                     b'\n'                               # blank line: skipped
                     b'2,news,6,"say ""hi"""\n'
                     b'3,news,7,x,y\n'                   # 5 fields
                     b'4,news,8,caf\xe9\n'               # bad UTF-8
                     b'5,news,9,"never closed\n')
    found = []
    rows = list(csvfile.iter_records(str(path), on_error=found.append))
    assert rows == [(2, ["1", "news", "5", "two\nlines"]), (5, ["2", "news", "6", 'say "hi"'])]
    assert [f.split(": ")[0] for f in found] == [f"{path}:6", f"{path}:7", f"{path}:8"]
    assert "expected 4 fields" in found[0] and "column 'item_text' is not valid UTF-8" in found[1]
    assert "never closed" in found[2]
    with pytest.raises(formats.DataValidationError, match=r"x\.csv:6: expected 4 fields"):
        list(csvfile.iter_records(str(path)))


def test_csv_types_as_csv_example_gen(tmp_path):
    (tmp_path / "a.csv").write_text("user_id,service,timestamp,item_text\n007,1,5,x\n8,2,6.5,\n")
    rows, types = csvfile.read_typed_rows([str(tmp_path / "a.csv")], ["user_id", "timestamp", "item_text"])
    assert types == {"user_id": "INT", "timestamp": "FLOAT", "item_text": "STRING"}
    assert [r[2] for r in rows] == [{"user_id": 7, "timestamp": 5.0, "item_text": "x"},
                                    {"user_id": 8, "timestamp": 6.5, "item_text": None}]
    (tmp_path / "b.csv").write_bytes(b"\xef\xbb\xbfuser_id,service\n")
    with pytest.raises(formats.DataValidationError, match="byte-order mark"):
        csvfile.read_header(str(tmp_path / "b.csv"))
    (tmp_path / "c.csv").write_text('"user_id","service"\n')
    with pytest.raises(formats.DataValidationError, match="quoted column names"):
        csvfile.read_header(str(tmp_path / "c.csv"))
