"""Downstream task data, models and the evaluation table (clue_tfrs).

The learning tests use a synthetic task with a known ground truth, without
any CLUE model: every user has a hidden topic and mostly interacts with that
topic's items. An "oracle" feature set (user = one-hot topic + noise, item =
one-hot topic) must let the U-MLP beat TopPop and a "random" feature set by a
wide margin.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import clue_tfrs  # noqa: F401  (Keras 2 for TFRS)
import tensorflow as tf

from clue_tfrs import evaluate as ev
from clue_tfrs import models
from clue_tfrs import sequence_model
from clue_tfrs import protocol
from clue_tfrs import reporting
from clue_tfrs import tasks


# --------------------------------------------------------------------------
# Synthetic ground truth
# --------------------------------------------------------------------------

N_TOPICS, PER_TOPIC = 20, 10  # catalogue of 200 items


def synthetic_task(n_users=300, n_interactions=8, p_topic=0.9, seed=0):
    """Interactions, catalogue and {oracle, random} feature sets."""
    rng = np.random.default_rng(seed)
    items = [f"i{t}_{j}" for t in range(N_TOPICS) for j in range(PER_TOPIC)]
    topic_of = {it: t for t in range(N_TOPICS) for it in items[t * PER_TOPIC : (t + 1) * PER_TOPIC]}
    catalogue = pd.DataFrame(
        {"item_id": items, "item_text": [f"text of {i}" for i in items], "topic": [topic_of[i] for i in items]}
    )
    rows, user_topic = [], {}
    for u in range(n_users):
        uid = f"u{u:04d}"
        user_topic[uid] = t = int(rng.integers(N_TOPICS))
        for k in range(n_interactions):
            if rng.random() < p_topic:
                item = items[t * PER_TOPIC + int(rng.integers(PER_TOPIC))]
            else:
                item = items[int(rng.integers(len(items)))]
            rows.append((uid, item, f"text of {item}", 1_000 + 10 * k))
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "item_text", "timestamp"])
    eye = np.eye(N_TOPICS, dtype=np.float32)
    oracle = (
        {u: eye[t] + 0.1 * rng.standard_normal(N_TOPICS).astype(np.float32) for u, t in user_topic.items()},
        {i: eye[topic_of[i]] for i in items},
    )
    random = (
        {u: rng.standard_normal(N_TOPICS).astype(np.float32) for u in user_topic},
        {i: rng.standard_normal(N_TOPICS).astype(np.float32) for i in items},
    )
    return interactions, catalogue, {"oracle": oracle, "random": random}


TINY = protocol.EvalConfig(
    umlp_width=32,
    learning_rate=1e-2,
    batch_size=256,
    max_history=8,
    seq_hidden_size=16,
    seq_num_layers=1,
    seq_num_heads=2,
    seq_dropout=0.0,
    hybrid_feature_set="oracle",
)


# --------------------------------------------------------------------------
# Task data: splits, examples, negatives, loading
# --------------------------------------------------------------------------


def test_split_users_disjoint_complete_and_deterministic():
    users = [f"u{i}" for i in range(1000)] * 2  # duplicates are fine
    split = tasks.split_users(users, seed=3)
    sets = [set(split.train), set(split.val), set(split.test)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert set.union(*sets) == set(users)
    assert [len(s) for s in sets] == [800, 100, 100]
    # Same seed, shuffled input -> same split; another seed -> another split.
    again = tasks.split_users(list(reversed(users)), seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(split, again))
    assert not np.array_equal(split.test, tasks.split_users(users, seed=4).test)


def test_split_users_rejects_bad_fractions():
    with pytest.raises(ValueError, match="fractions"):
        tasks.split_users(["a", "b"], seed=0, fractions=(0.5, 0.6, 0.1))


def test_build_examples_history_protocol():
    interactions = pd.DataFrame(
        {  # user a's rows are out of time order on purpose
            "user_id": ["a", "a", "a", "b", "a"],
            "item_id": ["x", "y", "z", "x", "w"],
            "timestamp": [30, 10, 20, 5, 40],
        }
    )
    catalogue = pd.DataFrame({"item_id": ["w", "x", "y", "z"]})  # indices 1..4
    interactions, catalogue = tasks.validate_task(interactions, catalogue)
    index = tasks.ItemIndex(catalogue["item_id"])
    ex = tasks.build_examples(interactions, ["a", "b"], index, max_history=2)
    # a's timeline: y(3) z(4) x(2) w(1); b has a single interaction -> no example.
    assert list(ex.user_ids) == ["a", "a", "a"]
    assert ex.targets.tolist() == [4, 2, 1]
    assert ex.histories.tolist() == [[0, 3], [3, 4], [4, 2]]


def test_eval_negatives_exclude_positives_and_are_deterministic():
    interactions, catalogue, _ = synthetic_task(n_users=60)
    interactions, catalogue = tasks.validate_task(interactions, catalogue)
    index = tasks.ItemIndex(catalogue["item_id"])
    positives = tasks.user_positive_items(interactions, index)
    ex = tasks.build_examples(interactions, interactions["user_id"].unique(), index, max_history=4)
    negs = tasks.sample_eval_negatives(ex.user_ids, positives, index.num_items, 100, seed=7)
    assert negs.shape == (len(ex), 100)
    assert negs.min() >= 1 and negs.max() <= index.num_items
    for user, row in zip(ex.user_ids, negs):
        assert len(set(row.tolist())) == 100
        assert not set(row.tolist()) & set(positives[user].tolist())
    same = tasks.sample_eval_negatives(ex.user_ids, positives, index.num_items, 100, seed=7)
    other = tasks.sample_eval_negatives(ex.user_ids, positives, index.num_items, 100, seed=8)
    assert np.array_equal(negs, same) and not np.array_equal(negs, other)


def test_eval_negatives_error_when_catalogue_too_small():
    with pytest.raises(ValueError, match="cannot sample 100 negatives"):
        tasks.sample_eval_negatives(np.array(["u"], object), {"u": np.array([1, 2])}, 50, 100)


def test_training_negatives_exclude_positives():
    rng = np.random.default_rng(0)
    # User "a" owns items 1..8 of 10: collisions are frequent and must be redrawn.
    positives = {"a": np.arange(1, 9), "b": np.array([10])}
    users = np.array(["a", "b"] * 50, dtype=object)
    negs = tasks.sample_training_negatives(users, positives, 10, 4, rng)
    assert negs.shape == (100, 4)
    assert set(negs[users == "a"].ravel().tolist()) <= {9, 10}
    assert 10 not in set(negs[users == "b"].ravel().tolist())


@pytest.mark.parametrize(
    "drop, match",
    [("timestamp", r"lack column\(s\) \['timestamp'\]"), ("item_id", "item_id")],
)
def test_validate_task_names_missing_column(drop, match):
    interactions, catalogue, _ = synthetic_task(n_users=5)
    with pytest.raises(ValueError, match=match):
        tasks.validate_task(interactions.drop(columns=[drop]), catalogue, source="task.csv")


def test_validate_task_rejects_items_outside_catalogue():
    interactions, catalogue, _ = synthetic_task(n_users=5)
    gone = interactions["item_id"].iloc[0]
    with pytest.raises(ValueError, match=f"missing from the catalogue, e.g. \\['{gone}'"):
        tasks.validate_task(interactions, catalogue[catalogue["item_id"] != gone])


def test_load_task_round_trip(tmp_path):
    interactions, catalogue, _ = synthetic_task(n_users=10)
    interactions.to_csv(tmp_path / "interactions.csv", index=False)
    catalogue.to_json(tmp_path / "catalogue.jsonl", orient="records", lines=True)
    got_inter, got_cat = tasks.load_task(str(tmp_path))
    pd.testing.assert_frame_equal(got_inter, interactions.astype({"timestamp": np.int64}))
    assert got_cat["item_id"].tolist() == catalogue["item_id"].tolist()
    os.remove(tmp_path / "catalogue.jsonl")
    # Without a catalogue it is the distinct items of the interactions, each with
    # its newest non-empty text (the task contract in README).
    _, derived = tasks.load_task(str(tmp_path))
    assert sorted(derived["item_id"]) == sorted(interactions["item_id"].astype(str).unique())
    newest = interactions.sort_values("timestamp").groupby("item_id")["item_text"].last()
    assert dict(zip(derived["item_id"], derived["item_text"])) == {
        str(k): v for k, v in newest.items()}


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


def test_sequence_model_ignores_padding():
    tf.keras.utils.set_random_seed(0)
    model = sequence_model.SequenceModel(num_items=9, max_history=4, hidden_size=8, num_layers=2, num_heads=2)
    history = tf.constant([[0, 0, 5, 7]])
    before = model.query_tower({"history": history}).numpy()
    # Scramble the padding row of the shared embedding table: a correct
    # attention mask and masked pooling make the output independent of it.
    table = model.item_embedding.embeddings
    table.assign(tf.tensor_scatter_nd_update(table, [[0]], 100.0 * tf.ones([1, 8])))
    after = model.query_tower({"history": history}).numpy()
    np.testing.assert_allclose(before, after, atol=1e-5)
    assert before.shape == (1, 9)  # [B, H + 1]: the bias slot
    assert before[0, -1] == 1.0


def test_toppop_scores_are_train_counts():
    pop = models.TopPop(num_items=4).fit(np.array([1, 3, 3, 4, 3]))
    np.testing.assert_array_equal(pop.candidate_embeddings(np.arange(5))[:, 0], [0, 1, 0, 3, 1])
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        pop.fit(np.array([5]))


# --------------------------------------------------------------------------
# End to end on the synthetic ground truth
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def umlp_table():
    """TopPop and U-MLP on oracle / random features (no sequence models)."""
    interactions, catalogue, feature_sets = synthetic_task()
    # Five test users lose their oracle feature: cold start, counted.
    split = tasks.split_users(interactions["user_id"], seed=0, fractions=TINY.fractions)
    oracle_users = dict(feature_sets["oracle"][0])
    for u in split.test[:5]:
        del oracle_users[u]
    feature_sets["oracle"] = (oracle_users, feature_sets["oracle"][1])
    cfg = protocol.EvalConfig(**{**TINY.__dict__, "run_sequence_models": False})
    return ev.evaluate_task(interactions, catalogue, feature_sets, seed=0, epochs=3, config=cfg, task_name="synthetic")


def test_oracle_features_beat_toppop_and_random(umlp_table):
    t = umlp_table
    assert t.columns == ["TopPop", "U-MLP (oracle)", "U-MLP (random)"]
    assert t.rows == list(protocol.METRIC_ROWS)
    oracle, random, pop = (t.value(c, "MRR") for c in t.columns[1:] + t.columns[:1])
    # Chance level with 100 negatives is H(101)/101 = 0.052; the oracle ranks
    # the positive among ~5 same-topic negatives (expected MRR ~ 0.4-0.55).
    assert oracle > 0.35
    assert oracle > random + 0.25
    assert oracle > pop + 0.2
    assert random < 0.1
    assert t.value("U-MLP (oracle)", protocol.TOP_K_ROW) > t.value("U-MLP (random)", protocol.TOP_K_ROW) + 0.3
    for row in t.rows:
        for c in t.columns:
            assert 0.0 <= t.value(c, row) <= 1.0
    losses = t.info["training"]["U-MLP (oracle)"]["loss"]
    assert losses[-1] < losses[0]


def test_cold_start_users_are_counted(umlp_table):
    info = umlp_table.info
    assert info["cold_start_users"]["oracle"] == {"train": 0, "val": 0, "test": 5}
    assert info["cold_start_users"]["random"] == {"train": 0, "val": 0, "test": 0}
    assert info["cold_items"] == {"oracle": 0, "random": 0}
    assert info["num_users"] == {"train": 240, "val": 30, "test": 30}
    assert info["num_test_positives"] == 30 * 7  # every interaction but the first


def test_table_keeps_aligned_per_example_ranks_and_the_epochs_used(umlp_table):
    t = umlp_table
    pe = t.per_example
    assert len(pe.users) == t.info["num_test_positives"] and pe.num_negatives == 100
    assert pe.users.max() + 1 == t.info["num_users"]["test"]
    for column in t.columns:  # the table's means are the per-positive values' means
        for row in ("HR@1", "NDCG@10", "MRR"):
            assert pe.values(column, row).mean() == pytest.approx(t.value(column, row), abs=1e-12)
    trained = ["U-MLP (oracle)", "U-MLP (random)"]
    assert set(t.info["epochs_used"]) == set(trained)
    for column in trained:
        assert 1 <= t.info["best_epoch"][column] <= t.info["epochs_used"][column] <= 3
        assert len(t.info["training"][column]["val_loss"]) == t.info["epochs_used"][column]
    c = t.compare("U-MLP (oracle)", "U-MLP (random)")
    assert c["lower"] > 0.2 and c["groups"] == 30
    assert c in t.info["paired"]


def test_write_results_round_trip(umlp_table, tmp_path):
    paths = reporting.write_results(umlp_table, str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path / "out")) == ["results.json", "results.md", "results.png"]
    with open(paths["json"]) as f:
        back = reporting.ResultsTable.from_dict(json.load(f))
    assert back.columns == umlp_table.columns and back.values == umlp_table.values
    md = open(paths["md"]).read().splitlines()
    assert md[0] == "| Metric | TopPop | U-MLP (oracle) | U-MLP (random) |"
    mrr_line = next(line for line in md if line.startswith("| MRR |"))
    assert f"**{umlp_table.value('U-MLP (oracle)', 'MRR'):.4f}**" in mrr_line
    with open(paths["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_feature_set_with_wrong_dimension_is_rejected():
    interactions, catalogue, feature_sets = synthetic_task(n_users=20)
    users, items = feature_sets["oracle"]
    users = dict(users, u0003=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="'oracle'.*u0003.*expected \\(20,\\)"):
        ev.evaluate_task(interactions, catalogue, {"oracle": (users, items)}, config=TINY)


@pytest.mark.slow  # about 25 s on 2 cores
def test_sequence_models_train():
    """T-UBM and Hybrid train from scratch: the loss goes down and both learn
    the topic structure (T-UBM from the histories alone)."""
    interactions, catalogue, feature_sets = synthetic_task(seed=1)
    table = ev.evaluate_task(
        interactions, catalogue, {"oracle": feature_sets["oracle"]}, seed=1, epochs=3, config=TINY
    )
    assert table.columns == ["TopPop", "U-MLP (oracle)", "T-UBM (BST)", "Hybrid (BST + oracle)"]
    for column in ("T-UBM (BST)", "Hybrid (BST + oracle)"):
        loss = table.info["training"][column]["loss"]
        assert len(loss) == 3 and loss[-1] < loss[0] - 0.02, (column, loss)
    assert table.info["hybrid"]["selected"] == "Hybrid (BST + oracle)"
    # Seen: TopPop 0.04, T-UBM 0.21, Hybrid 0.34, U-MLP (oracle) 0.53.
    assert table.value("T-UBM (BST)", "MRR") > table.value("TopPop", "MRR") + 0.08
    assert table.value("Hybrid (BST + oracle)", "MRR") > table.value("TopPop", "MRR") + 0.2


def test_import_fails_clearly_when_tf_keras_is_already_keras3():
    code = (
        "import tensorflow as tf; tf.keras.layers\n"  # resolves tf.keras to Keras 3
        "import os; os.environ['TF_USE_LEGACY_KERAS'] = '1'\n"
        "import clue_tfrs\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert proc.returncode != 0
    assert "ImportError: clue_tfrs needs tf.keras to be Keras 2" in proc.stderr
    assert "TF_USE_LEGACY_KERAS=1" in proc.stderr
