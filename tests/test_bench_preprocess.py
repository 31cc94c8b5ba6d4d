"""`clue bench preprocess`'s pandas baseline (clue_bench.pandas_baseline) computes the
sequences BehaviorPreprocess writes: on a hand-written input (whitespace variants,
repeats, more than S items, an empty text, an inactive user) and on synthetic logs."""

import os

import pandas as pd
import pytest
import tensorflow as tf

import clue_synth
from clue_bench import pandas_baseline as pb
from clue_bench.preprocess import per_core_ratio
from clue_keras.data.prepare import prepare_local
from clue_keras.data.records import SPLITS, parse_user_example
from clue_keras.tokenizer import OfflineTokenizer

ROWS = [
    ("bob", "shopping", 300, "blue hat"),
    ("bob", "shopping", 100, "red  shoes"),
    ("bob", "shopping", 200, "red shoes"),     # a repeat of "red  shoes" once normalised
    ("bob", "shopping", 400, " green scarf\t"),
    ("bob", "shopping", 50, "old item"),       # the 4th shopping item: over S=3
    ("bob", "search", 150, "running shoes"),
    ("alice", "news", 30, "   "),              # empty once normalised
    ("alice", "search", 20, "q"),
    ("alice", "news", 10, "headline a"),
    ("erin", "shopping", 6, "y"),
    ("erin", "shopping", 5, "x"),
    ("heidi", "search", 1, "only"),            # one item: under min_items=2
    ("judy", "search", 2, "lamp"),
    ("judy", "shopping", 1, "lamp"),
    ("judy", "shopping", 1, "a"),              # same time: ordered by text
]


def _pipeline_sequences(out):
    tok = OfflineTokenizer(os.path.join(out, "vocab"))
    users = {}
    for split in SPLITS:
        for path in tf.io.gfile.glob(os.path.join(out, f"Split-{split}", "*")):
            for raw in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
                user_id, items = parse_user_example(raw, tok.info.services)
                users[user_id] = {s: v for s, v in items.items() if v}
    return tok, users


def test_clean_table_rules():
    kept = pb.clean_table(pd.DataFrame(ROWS, columns=pb._COLUMNS), max_items=3, min_items=2)
    got = {(u, s): list(g["item_text"]) for (u, s), g in kept.groupby(["user_id", "service"])}
    assert got == {("alice", "news"): ["headline a"], ("alice", "search"): ["q"],
                   ("bob", "search"): ["running shoes"],
                   ("bob", "shopping"): ["red shoes", "blue hat", "green scarf"],
                   ("erin", "shopping"): ["x", "y"],
                   ("judy", "search"): ["lamp"], ("judy", "shopping"): ["a", "lamp"]}


def test_baseline_sequences_equal_the_pipelines_on_hand_written_rows(tmp_path):
    df = pd.DataFrame(ROWS, columns=pb._COLUMNS)
    prepare_local(df, str(tmp_path), max_items=3, max_tokens=6, vocab_size=300, min_items=2,
                  eval_percent=30, test_percent=30, shards=1)
    tok, want = _pipeline_sequences(str(tmp_path))
    assert set(want) == {"alice", "bob", "erin", "judy"}
    assert pb.pandas_sequences(df, tok, max_items=3, min_items=2) == want


def test_baseline_sequences_equal_the_pipelines_on_synthetic_logs(tmp_path):
    data = str(tmp_path / "data")
    clue_synth.generate(data, users=60, seed=3, fmt="parquet", tasks=())
    out = str(tmp_path / "out")
    prepare_local(data, out, max_items=4, max_tokens=8, vocab_size=400, min_items=3,
                  min_services=2, eval_percent=20, test_percent=20, shards=1)
    tok, want = _pipeline_sequences(out)
    got = pb.pandas_sequences(pb.read_behaviors(data), tok, max_items=4, min_items=3,
                              min_services=2)
    assert got == want


@pytest.mark.parametrize("beam_s, cores, pandas_s, want", [(30.0, 2, 10.0, 6.0),
                                                           (5.0, 1, 10.0, 0.5)])
def test_per_core_ratio(beam_s, cores, pandas_s, want):
    assert per_core_ratio(beam_s, cores, pandas_s) == pytest.approx(want)
