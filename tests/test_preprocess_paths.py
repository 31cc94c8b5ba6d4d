"""The two preprocessing paths give the same result on the same logs.

* component path: the CSV logs go through CsvExampleGen's own CSV -> tf.Example
  transform (what the pipeline's ExampleGen writes), then through
  `clue_keras.data.preprocess.build_pipeline` on the DirectRunner, as
  BehaviorPreprocess's executor runs it (``num_shards`` 0: the runner decides);
* prepare path: `clue_keras.data.prepare.prepare_local` on the same data directory.

Records (parsed, per user and split), the vocabulary files and ``stats.json``
must be identical; only how the records are cut into shards may differ.
"""

import json
import os

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions
from tfx.components.example_gen.csv_example_gen.executor import _CsvToExample

import clue_synth
from clue_keras.config import get_preset
from clue_keras.data import preprocess as pp
from clue_keras.data.prepare import IN_PROCESS_OPTIONS, prepare_local
from clue_keras.data.records import SPLITS, parse_user_example
from clue_keras.tokenizer import load_vocab_info

USERS = 300
VOCAB_FILES = ("vocab.json", "merges.txt", "clue_vocab.json")


def _component_path(data_dir, out, params):
    raw = os.path.join(os.path.dirname(out), "raw")
    with beam.Pipeline(options=PipelineOptions(list(IN_PROCESS_OPTIONS))) as p:
        _ = (p
             | "CsvToExample" >> _CsvToExample({"input_base": os.path.join(data_dir, "behaviors")},
                                               "*.csv")
             | "Serialize" >> beam.Map(lambda e: e.SerializeToString())
             | "WriteRaw" >> beam.io.WriteToTFRecord(
                 os.path.join(raw, "data_tfrecord"), file_name_suffix=".gz",
                 compression_type=beam.io.filesystem.CompressionTypes.GZIP))
    with beam.Pipeline(options=PipelineOptions(list(IN_PROCESS_OPTIONS))) as p:
        pp.build_pipeline(p, os.path.join(raw, "*"), out, dict(params, num_shards=0))


def _records(out, services):
    per_split = {}
    for split in SPLITS:
        users = {}
        for path in tf.io.gfile.glob(os.path.join(out, f"Split-{split}", "*")):
            for raw in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
                user_id, items = parse_user_example(raw, services)
                assert user_id not in users
                users[user_id] = items
        per_split[split] = users
    return per_split


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("paths")
    data = str(root / "data")
    clue_synth.generate(data, users=USERS, seed=11, tasks=())
    mc = get_preset("tiny")
    params = {"max_items": mc.max_items, "max_tokens": mc.max_tokens,
              "vocab_size": mc.vocab_size, "min_items_per_user": 3, "min_services_per_user": 2,
              "eval_percent": 20, "test_percent": 20, "bpe_sample_size": 200_000}
    component = str(root / "component" / "user_examples")
    _component_path(data, component, params)
    prepared = str(root / "prepare")
    stats = prepare_local(data, prepared, max_items=mc.max_items, max_tokens=mc.max_tokens,
                          vocab_size=mc.vocab_size, min_items=3, min_services=2,
                          eval_percent=20, test_percent=20, shards=3,
                          bpe_sample_size=params["bpe_sample_size"])
    return component, prepared, stats


def test_stats_are_identical(outputs):
    component, prepared, returned = outputs
    with open(os.path.join(component, pp.STATS_FILENAME)) as f:
        a = json.load(f)
    with open(os.path.join(prepared, pp.STATS_FILENAME)) as f:
        b = json.load(f)
    assert a == b == returned
    # The thresholds did something: some users dropped, every split populated.
    assert a["users_kept"] < a["users_read"] and min(a[f"users_{s}"] for s in SPLITS) > 0
    assert a["rows_dropped_empty_text"] > 0 and a["rows_duplicate"] > 0


def test_vocabularies_are_identical(outputs):
    component, prepared, _ = outputs
    for name in VOCAB_FILES:
        with open(os.path.join(component, pp.VOCAB_DIRNAME, name), "rb") as f:
            a = f.read()
        with open(os.path.join(prepared, pp.VOCAB_DIRNAME, name), "rb") as f:
            assert f.read() == a, name


def test_records_are_identical_per_user(outputs):
    component, prepared, stats = outputs
    services = load_vocab_info(os.path.join(prepared, pp.VOCAB_DIRNAME)).services
    a, b = _records(component, services), _records(prepared, services)
    for split in SPLITS:
        assert len(a[split]) == stats[f"users_{split}"] > 0
        assert a[split] == b[split], split
    assert len(os.listdir(os.path.join(prepared, "Split-train"))) == 3
