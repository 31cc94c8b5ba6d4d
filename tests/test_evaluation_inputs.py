"""What the downstream evaluation reads: the task from ExampleGen records
(`clue_tfrs.task_examples`) and the users from per-user records
(`clue_tfrs.user_records`, `clue_tfrs.features.record_features`).

Fast tests use hand-written records shaped as TFX's ExampleGens write them; the
slow ones a tiny untrained CLUE export with the vocabulary of `clue prepare`'s
records, as the pipeline's Trainer exports one with BehaviorPreprocess's.
"""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from clue_keras.data.errors import ReadError
from clue_tfrs.task_examples import load_task_examples

TASK = "movies"


def _feature(value):
    if value is None:  # an empty CSV cell: CsvExampleGen writes a feature without values
        return tf.train.Feature(bytes_list=tf.train.BytesList())
    if isinstance(value, int):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))


def _write_examples(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path), options="GZIP") as w:
        for row in rows:
            w.write(tf.train.Example(features=tf.train.Features(
                feature={k: _feature(v) for k, v in row.items()})).SerializeToString())
    return str(path)


INTERACTIONS = [  # integer ids (INT64 features), ISO and integer timestamps (as CsvExampleGen
    # types a mixed column: bytes), an empty text cell
    {"user_id": 7, "item_id": 100, "timestamp": "2021-03-04T05:06:07Z", "item_text": "Old title"},
    {"user_id": 7, "item_id": 101, "timestamp": "1614900000", "item_text": "Second film"},
    {"user_id": 8, "item_id": 100, "timestamp": "2021-03-06", "item_text": "New title"},
    {"user_id": 8, "item_id": 101, "timestamp": "1615000000", "item_text": None},
]


def test_task_from_example_gen_records_without_a_catalogue(tmp_path):
    files = [_write_examples(tmp_path / "Split-all" / "data_tfrecord-00000-of-00001.gz",
                             INTERACTIONS)]
    inter, cat = load_task_examples(files)
    assert inter["user_id"].tolist() == ["7", "7", "8", "8"]  # INT64 ids as decimal strings
    assert inter["item_id"].tolist() == ["100", "101", "100", "101"]
    assert inter["timestamp"].tolist() == [1614834367, 1614900000, 1614988800, 1615000000]
    assert inter["item_text"].tolist() == ["Old title", "Second film", "New title", ""]
    # The catalogue: distinct items, each with its newest non-empty text.
    assert cat.set_index("item_id")["item_text"].to_dict() == {"100": "New title",
                                                               "101": "Second film"}


def test_task_from_example_gen_records_with_a_catalogue(tmp_path):
    files = [_write_examples(tmp_path / "task.gz", INTERACTIONS)]
    catalogue = [_write_examples(tmp_path / "catalogue.gz", [
        {"item_id": 100, "item_text": "Catalogue title", "topic": 3},
        {"item_id": 101, "item_text": None, "topic": 4},   # blank: the newest interaction text
        {"item_id": 102, "item_text": "Never clicked", "topic": 3},
    ])]
    _, cat = load_task_examples(files, catalogue)
    assert cat.set_index("item_id")["item_text"].to_dict() == {
        "100": "Catalogue title", "101": "Second film", "102": "Never clicked"}
    assert cat["topic"].tolist() == [3, 4, 3]


def test_bad_task_records_name_the_file_record_and_column(tmp_path):
    bad_user = [dict(INTERACTIONS[0]), dict(INTERACTIONS[1], user_id=None)]
    path = _write_examples(tmp_path / "a.gz", bad_user)
    with pytest.raises(ReadError, match=f"{path}: record 2: column 'user_id' is empty"):
        load_task_examples([path])
    path = _write_examples(tmp_path / "b.gz", [dict(INTERACTIONS[0], timestamp="yesterday")])
    with pytest.raises(ReadError, match=f"{path}: record 1: column 'timestamp': not a timestamp"):
        load_task_examples([path])
    path = _write_examples(tmp_path / "c.gz", [{k: v for k, v in INTERACTIONS[0].items()
                                                if k != "item_id"}])
    with pytest.raises(ReadError, match=r"record 1: missing column\(s\) \['item_id'\]"):
        load_task_examples([path])
    path = _write_examples(tmp_path / "d.gz", [dict(INTERACTIONS[3])])  # no text anywhere
    with pytest.raises(ReadError, match="1 of 1 item.* have no text, e.g. item_id"):
        load_task_examples([path])


# ------------------------------------------------------------ users: per-user records

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """150 synthetic users (movies task), `clue prepare` records, and an untrained tiny
    CLUE export with the records' vocabulary."""
    import clue_synth as synth
    from clue_keras.config import PRESETS
    from clue_keras.data.prepare import prepare_local
    from clue_keras.export import export_saved_model
    from clue_keras.tokenizer import load_vocab_info
    from clue_keras.train import build_pretrainer

    root = tmp_path_factory.mktemp("evaluation_inputs")
    data = str(root / "data")
    synth.generate(data, users=150, seed=4, tasks=(TASK,))
    mc = PRESETS["tiny"]
    records = str(root / "records")
    stats = prepare_local(data, records, max_items=mc.max_items, max_tokens=mc.max_tokens,
                          vocab_size=400)
    vocab = os.path.join(records, "vocab")
    model = build_pretrainer(mc.replace(vocab_size=load_vocab_info(vocab).vocab_size))
    export = export_saved_model(model, vocab, str(root / "model"))
    return root, data, records, export, stats


def _records_by_user(files, services):
    from clue_keras.data.records import parse_user_example

    out = {}
    for path in files:
        for raw in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
            uid, items = parse_user_example(raw, services)
            out[uid] = items
    return out


@pytest.mark.slow
def test_raw_logs_are_encoded_as_preprocessing_encodes_them(tiny):
    """`encode_behaviors` (raw logs, the model's vocabulary) writes the records
    `clue prepare` wrote for every kept user, of every split."""
    from clue_keras.tokenizer import load_vocab_info
    from clue_tfrs.user_records import encode_behaviors, record_files

    root, data, records, export, stats = tiny
    services = load_vocab_info(os.path.join(export, "assets")).services
    out = str(root / "encoded" / "users.tfrecord.gz")
    counts = encode_behaviors(data, export, out)
    assert counts["users_kept"] == stats["users_kept"] == counts["users_read"] - (
        stats["users_dropped_few_items"] + stats["users_dropped_few_services"])
    prepared = _records_by_user(record_files(records), services)
    assert len(prepared) == stats["users_kept"]  # all three splits
    assert _records_by_user([out], services) == prepared


@pytest.mark.slow
def test_record_features_equal_the_serving_path_and_refuse_another_vocabulary(tiny):
    """embed_tokens on the records == serving_default on the users' raw texts; records
    tokenised with another vocabulary are refused, naming both."""
    from clue_keras.data.tables import read_behaviors
    from clue_tfrs.features import record_features, user_features
    from clue_tfrs.user_records import check_vocabulary, record_files

    root, data, records, export, _ = tiny
    files = record_files(records)
    from_records = record_features(export, files)
    from_texts = user_features(export, read_behaviors(data))
    assert set(from_records) <= set(from_texts) and len(from_records) > 100
    for user, vector in from_records.items():
        np.testing.assert_allclose(vector, from_texts[user], atol=2e-5, err_msg=user)
    some = sorted(from_records)[:3]
    assert sorted(record_features(export, files, users=some + ["nobody"])) == some

    check_vocabulary(records, export)  # the model's own: fine
    other = root / "other"
    shutil.copytree(records, other)
    with open(other / "vocab" / "merges.txt", "a", encoding="utf-8") as f:
        f.write("x y\n")
    with pytest.raises(ValueError, match=f"records in {other} were tokenised with another "
                                         f"vocabulary than the model {export} "
                                         r"\(merges.txt differ\)"):
        check_vocabulary(str(other), export)


@pytest.mark.slow
def test_clue_evaluate_from_records_and_from_raw_logs_gives_one_table(tiny, capsys):
    """`clue evaluate --records DIR` and `--data DIR` embed the same records, so with one
    seed they print the same table; the task may be a single file of any name."""
    from clue_cli import main as cli

    root, data, records, export, _ = tiny
    task_dir = os.path.join(data, "downstream", TASK)
    single = root / "views_2021.csv"  # a task file of any name, without a catalogue
    shutil.copy(os.path.join(task_dir, "interactions.csv"), single)
    tables = {}
    for name, users in (("records", ["--records", records]), ("data", ["--data", data])):
        out = root / f"eval_{name}"
        assert cli.main(["evaluate", "--model", export, "--task", str(single), *users,
                         "--epochs", "1", "--no-sequence-models", "--out", str(out),
                         "--margin-over-toppop=-1", "--margin-over-untrained=-1"]) == 0
        printed = capsys.readouterr().out
        assert "| MRR |" in printed
        # Fitting progress, as plain lines (no terminal here): every trained model's epoch.
        for column in ("U-MLP (CLUE)", "U-MLP (Untrained)"):
            assert f"{column}: epoch 1/1  loss " in printed
        with open(out / "results.json") as f:
            tables[name] = json.load(f)
    a, b = tables["records"], tables["data"]
    assert a["info"]["task"] == "views_2021"
    assert a["info"]["cold_start_users"] == b["info"]["cold_start_users"]
    assert a["values"] == b["values"]
