"""The dataset layer: formats, file discovery and table readers (clue_keras.data.formats / tables)."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from clue_keras.data import formats, tables

ROWS = [("u1", "news", 5, "héllo, \"world\""), ("u2", "search", 7, "")]


def _write_all_formats(folder, rows=ROWS, columns=formats.BEHAVIOR_COLUMNS):
    folder.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows, columns=list(columns))
    df.to_csv(folder / "t.csv", index=False)
    (folder / "t.jsonl").write_text(
        "".join(json.dumps(dict(zip(columns, r)), ensure_ascii=False) + "\n" for r in rows),
        encoding="utf-8")
    pq.write_table(pa.Table.from_pandas(df), folder / "t.parquet")
    with tf.io.TFRecordWriter(str(folder / "t.tfrecord.gz"), options="GZIP") as w:
        for r in rows:
            e = tf.train.Example()
            for c, v in zip(columns, r):
                if isinstance(v, int):
                    e.features.feature[c].int64_list.value.append(v)
                else:
                    e.features.feature[c].bytes_list.value.append(v.encode("utf-8"))
            w.write(e.SerializeToString())
    return df


def test_format_of_uses_the_longest_extension():
    assert formats.format_of("a/b.CSV") == "csv"
    assert formats.format_of("x.json") == formats.format_of("x.jsonl") == "jsonl"
    assert formats.format_of("x.tfrecord.gz") == formats.format_of("x.gz") == "tfrecord"
    with pytest.raises(ValueError, match=r"x\.txt: unknown file type"):
        formats.format_of("x.txt")


def test_read_table_gives_the_same_frame_in_every_format(tmp_path):
    want = _write_all_formats(tmp_path)
    for name in ("t.csv", "t.jsonl", "t.parquet", "t.tfrecord.gz"):
        got = formats.read_table(str(tmp_path / name), formats.BEHAVIOR_COLUMNS)
        assert got["timestamp"].dtype == np.int64
        pd.testing.assert_frame_equal(got, want.astype({"timestamp": np.int64}), obj=name)


def test_read_table_optional_columns_and_errors(tmp_path):
    (tmp_path / "i.csv").write_text("item_id,user_id,timestamp\nx,u,3\n", encoding="utf-8")
    got = formats.read_table(str(tmp_path / "i.csv"), formats.INTERACTION_TABLE_COLUMNS,
                             optional=formats.INTERACTION_OPTIONAL_COLUMNS)
    assert list(got.columns) == ["user_id", "item_id", "timestamp"]
    with pytest.raises(ValueError, match=r"i\.csv: missing column\(s\) \['item_text'\]"):
        formats.read_table(str(tmp_path / "i.csv"), formats.INTERACTION_TABLE_COLUMNS)
    (tmp_path / "n.jsonl").write_text('{"item_id": null}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"n\.jsonl: column 'item_id' has missing values"):
        formats.read_table(str(tmp_path / "n.jsonl"), ["item_id"])
    with tf.io.TFRecordWriter(str(tmp_path / "m.tfrecord")) as w:
        e = tf.train.Example()
        e.features.feature["user_id"].bytes_list.value.extend([b"a", b"b"])
        w.write(e.SerializeToString())
    with pytest.raises(ValueError, match=r"m\.tfrecord: record 1: feature 'user_id' must hold exactly one"):
        formats.read_table(str(tmp_path / "m.tfrecord"), ["user_id"])


def test_find_files_takes_a_directory_a_glob_or_a_list(tmp_path):
    _write_all_formats(tmp_path / "d")
    (tmp_path / "d" / "README.md").write_text("not data")
    (tmp_path / "d" / ".hidden.csv").write_text("not data")
    every = sorted(str(tmp_path / "d" / n) for n in ("t.csv", "t.jsonl", "t.parquet", "t.tfrecord.gz"))
    assert formats.find_files(str(tmp_path / "d")) == every
    assert formats.find_files(str(tmp_path / "d" / "*.csv")) == [every[0]]
    assert formats.find_files([every[1], str(tmp_path / "d" / "*.csv"), every[1]]) == every[:2]
    with pytest.raises(FileNotFoundError, match="nope"):
        formats.find_files([every[0], str(tmp_path / "nope" / "*.csv")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no data files"):
        formats.find_files(str(tmp_path / "empty"))


def test_behavior_files_need_one_format(tmp_path):
    _write_all_formats(tmp_path / "d" / "behaviors")
    with pytest.raises(ValueError, match="mixes formats"):
        tables.read_behaviors(str(tmp_path / "d"))
    # A list or glob is read as given; one directory of one format too.
    df = tables.read_behaviors([str(tmp_path / "d" / "behaviors" / "t.csv"),
                                str(tmp_path / "d" / "behaviors" / "t.parquet")])
    assert len(df) == 2 * len(ROWS)
    for name in ("t.jsonl", "t.parquet", "t.tfrecord.gz"):
        (tmp_path / "d" / "behaviors" / name).unlink()
    assert tables.behavior_files(str(tmp_path / "d")) == [str(tmp_path / "d" / "behaviors" / "t.csv")]


def test_task_tables(tmp_path):
    task = tmp_path / "downstream" / "movies"
    task.mkdir(parents=True)
    pq.write_table(pa.table({"user_id": ["u"], "item_id": ["m1"], "timestamp": [4]}),
                   task / "interactions.parquet")
    (task / "catalogue.jsonl").write_text('{"item_id": "m1", "item_text": "Film", "topic": 2}\n')
    assert tables.task_dir(str(tmp_path), "movies") == str(task)
    inter = tables.read_interactions(str(task))
    assert list(inter.columns) == ["user_id", "item_id", "timestamp"]
    cat = tables.read_catalogue(str(task))
    assert cat.to_dict("records") == [{"item_id": "m1", "item_text": "Film", "topic": 2}]
    with pytest.raises(FileNotFoundError, match=r"no downstream task 'books'; tasks present: \['movies'\]"):
        tables.task_dir(str(tmp_path), "books")
    (task / "interactions.csv").write_text("user_id,item_id,timestamp\n")
    with pytest.raises(ValueError, match="several interactions files"):
        tables.read_interactions(str(task))
    (task / "interactions.csv").unlink()
    # Without a catalogue, the items need a text from the interactions.
    (task / "catalogue.jsonl").unlink()
    with pytest.raises(formats.ReadError, match=r"interactions.parquet .*1 of 1 item\(s\) have no text"):
        tables.read_catalogue(str(task))


def test_iter_raw_rows_reports_untyped_values(tmp_path):
    _write_all_formats(tmp_path)
    csv_rows = list(formats.iter_raw_rows(str(tmp_path / "t.csv")))
    assert csv_rows[0] == {None: list(formats.BEHAVIOR_COLUMNS)}
    assert csv_rows[2] == {"user_id": "u2", "service": "search", "timestamp": "7", "item_text": None}
    tf_rows = list(formats.iter_raw_rows(str(tmp_path / "t.tfrecord.gz"), limit=1))
    assert tf_rows == [{"user_id": b"u1", "service": b"news", "timestamp": 5,
                        "item_text": "héllo, \"world\"".encode()}]
