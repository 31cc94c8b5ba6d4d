"""A real-export-shaped data set end to end through the library (not the TFX pipeline):

``ratings_export_2021.csv`` — integer ids, ISO timestamps with and without a zone,
an extra column, two malformed rows, a non-UTF-8 byte, one 1 MB text, empty cells,
half the users in one service only — and a downstream task ``clicks.parquet`` with
integer ids and no catalogue. Written by hand here, not by clue_synth.

validate_logs names the malformed lines; once they are removed, prepare_local and
the component path (CsvExampleGen's transform + the same Beam graph) give the same
records and stats, user ids are decimal strings, the drops are counted as the
pre-flight predicted, and the task reads without a catalogue.
"""

import json
import os
import re

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions
from tfx.components.example_gen.csv_example_gen.executor import _CsvToExample

from clue_keras.data import preprocess as pp
from clue_keras.data import tables
from clue_keras.data.prepare import IN_PROCESS_OPTIONS, prepare_local
from clue_keras.data.records import SPLITS, parse_user_example
from clue_keras.data.validate import DataValidationError, validate_logs, validate_task
from clue_keras.tokenizer import load_vocab_info

MOVIES = ["The Quiet Harbour", "Spring in Seoul", "Neon Nights", "Le Voyage", "Iron Valley",
          "A Winter Tale", "Deep Blue Line", "서울의 봄"]
BOOKS = ["Gardening for Beginners", "The Last Algorithm", "Cooking with Kimchi",
         "Mountains and Rivers", "Zürich Stories"]
# Python's csv module (so CsvExampleGen) stops on a field over 131,072 characters:
# the long review below (~250 kB of UTF-8) passes, the 1 MB one is a named error.
LONG_TEXT = ("Ünïcödé review 😀 한국어 리뷰 " * 5_000)[:100_000]
HUGE_TEXT = ("Ünïcödé review 😀 한국어 리뷰 " * 30_000)[:1_000_000]
PARAMS = dict(max_items=4, max_tokens=12, vocab_size=320, min_items=2, min_services=2,
              eval_percent=20, test_percent=20, max_text_bytes=256)


def _export_lines():
    """The export, line by line (bytes, no newline); line 1 is the header."""
    lines = [b"user_id,service,timestamp,item_text,rating"]
    for u in range(40):
        uid = 1000 + u
        for j in range(2 + u % 3):
            ts = f"2021-0{1 + j}-1{u % 10}T0{j}:30:00Z" if u % 2 else f"2021-0{1 + j}-1{u % 10}"
            lines.append(f'{uid},movies,{ts},"{MOVIES[(u + j) % len(MOVIES)]}",4'.encode())
        if u % 2 == 0:  # half the users also read books; the rest are in one service only
            for j in range(2):
                lines.append(f'{uid},books,2021-03-0{j + 1} 10:00:00+09:00,'
                             f'"{BOOKS[(u + j) % len(BOOKS)]}",5'.encode())
    lines += [
        b'1001,movies,2021-05-01,"Neon Nights, Director\'s Cut",3',     # comma inside quotes
        b',movies,2021-05-02,Anonymous visit,1',                         # empty user id
        b'1002,movies,n/a,Unknown date,2',                               # bad timestamp
        b'1003,books,2021-05-03,,4',                                     # empty text
        b'1004,movies,2021-05-04,The Quiet Harbour,5,extra',             # wrong field count
        b'1005,books,2021-05-05,Caf\xe9 Stories,4',                      # Latin-1 byte
        b'1006,movies,2021-06-01T00:00:00Z,"' + HUGE_TEXT.encode() + b'",5',
        b'1008,movies,2021-06-02T00:00:00Z,"' + LONG_TEXT.encode() + b'",5',
    ]
    return lines


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    raw = root / "raw"
    raw.mkdir()
    lines = _export_lines()
    (raw / "ratings_export_2021.csv").write_bytes(b"\n".join(lines) + b"\n")
    # The downstream task: integer ids, unix seconds, titles joined in, no catalogue.
    users = [1000 + u for u in range(40)] * 2
    pq.write_table(pa.table({
        "user_id": pa.array(users, pa.int64()),
        "item_id": pa.array([70_000 + (i * 7) % 23 for i in range(80)], pa.int64()),
        "timestamp": pa.array([1_620_000_000 + 3600 * i for i in range(80)], pa.int64()),
        "item_text": [f"Gadget {(i * 7) % 23}" for i in range(80)],
    }), root / "clicks.parquet")
    return root, lines


def test_validate_logs_names_the_malformed_lines(export):
    root, lines = export
    path = str(root / "raw" / "ratings_export_2021.csv")
    with pytest.raises(DataValidationError) as e:
        validate_logs(str(root / "raw"))
    bad = [len(lines) - 3, len(lines) - 2, len(lines) - 1]  # the three malformed rows (1-based)
    assert [p.split(": ")[0] for p in e.value.problems] == [f"{path}:{n}" for n in bad]
    assert "expected 5 fields" in e.value.problems[0]
    assert "column 'item_text' is not valid UTF-8 (byte 0xe9" in e.value.problems[1]
    assert "a field is longer than 131,072 characters" in e.value.problems[2]
    # prepare_local stops on the same first line (CsvExampleGen would crash on it).
    with pytest.raises(DataValidationError, match=re.escape(f"{path}:{bad[0]}:")):
        prepare_local(str(root / "raw"), str(root / "never"), **PARAMS)


@pytest.fixture(scope="module")
def cleaned(export):
    """The export with the lines validate_logs named removed, and its report."""
    root, lines = export
    with pytest.raises(DataValidationError) as e:
        validate_logs(str(root / "raw"))
    drop = {int(p.split(": ")[0].rsplit(":", 1)[1]) for p in e.value.problems}
    keep = [line for n, line in enumerate(lines, 1) if n not in drop]
    folder = root / "clean"
    folder.mkdir()
    (folder / "ratings_export_2021.csv").write_bytes(b"\n".join(keep) + b"\n")
    return root, str(folder), validate_logs(str(folder))


def test_report_predicts_the_drops(cleaned):
    _, _, report = cleaned
    assert {k: v for k, v in report.dropped.items() if v} == {
        "rows_dropped_empty_user": 1, "rows_dropped_bad_timestamp": 1,
        "rows_dropped_empty_text": 1}
    # movies: sum(2 + u % 3) = 119 rows, + 1001's cut, + the long review
    assert report.users == 40 and report.services == {"books": 40, "movies": 121}
    assert report.users_single_service == 20


def _component_path(data_dir, out):
    raw = os.path.join(os.path.dirname(out), "raw-examples")
    with beam.Pipeline(options=PipelineOptions(list(IN_PROCESS_OPTIONS))) as p:
        _ = (p | _CsvToExample({"input_base": data_dir}, "*.csv")
             | beam.Map(lambda e: e.SerializeToString())
             | beam.io.WriteToTFRecord(os.path.join(raw, "data_tfrecord"), file_name_suffix=".gz",
                                       compression_type=beam.io.filesystem.CompressionTypes.GZIP))
    params = dict(PARAMS, min_items_per_user=PARAMS["min_items"],
                  min_services_per_user=PARAMS["min_services"], bpe_sample_size=10_000,
                  num_shards=0)
    with beam.Pipeline(options=PipelineOptions(list(IN_PROCESS_OPTIONS))) as p:
        pp.build_pipeline(p, os.path.join(raw, "*"), out, params)


def _records(out, services):
    users = {}
    for split in SPLITS:
        for path in tf.io.gfile.glob(os.path.join(out, f"Split-{split}", "*")):
            for raw in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
                uid, items = parse_user_example(raw, services)
                users[uid] = (split, items)
    return users


def test_prepare_local_and_component_path_agree(cleaned):
    root, folder, report = cleaned
    stats = prepare_local(folder, str(root / "prepared"), shards=1, bpe_sample_size=10_000,
                          **PARAMS)
    for key, n in report.dropped.items():
        assert stats[key] == n, key
    assert stats["rows_read"] == report.rows
    assert stats["users_read"] == 40 and stats["users_kept"] == 20
    assert stats["users_dropped_few_services"] == 20 and stats["users_dropped_few_items"] == 0
    assert stats["users_kept_single_service"] == 0 and stats["rows_text_capped"] == 1
    info = load_vocab_info(str(root / "prepared" / pp.VOCAB_DIRNAME))
    assert info.services == ("books", "movies") and info.max_text_bytes == 256
    prepared = _records(str(root / "prepared"), info.services)
    assert sorted(prepared) == [str(1000 + u) for u in range(0, 40, 2)]  # decimal strings

    component = str(root / "component" / "user_examples")
    _component_path(folder, component)
    with open(os.path.join(component, pp.STATS_FILENAME)) as f:
        assert json.load(f) == stats
    assert _records(component, info.services) == prepared


def test_task_without_catalogue(cleaned):
    root, _, _ = cleaned
    task = str(root / "clicks.parquet")
    report = validate_task(task)
    assert (report.rows, report.users, report.items, report.catalogue) == (80, 40, 23, None)
    interactions, catalogue = tables.read_task(task)
    assert interactions["user_id"].iloc[0] == "1000" and catalogue["item_id"].iloc[0] == "70000"
    assert catalogue.set_index("item_id")["item_text"]["70007"] == "Gadget 7"
    from clue_tfrs.tasks import load_task

    inter, cat = load_task(task)
    assert len(inter) == 80 and len(cat) == 23
