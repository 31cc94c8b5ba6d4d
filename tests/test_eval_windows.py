"""One-pass training of the causal sequence models (clue_tfrs.windows,
SequenceModel(causal=True)): the windows hold every example's target once, a
window's column queries equal the per-example queries, and the window loss is
the per-example loss."""

import types

import numpy as np
import pandas as pd
import pytest

import clue_tfrs  # noqa: F401  (Keras 2 for TFRS)
import tensorflow as tf

from clue_tfrs import fitting
from clue_tfrs import losses
from clue_tfrs import tasks
from clue_tfrs.model_inputs import ModelInputs
from clue_tfrs.protocol import EvalConfig
from clue_tfrs.sequence_model import SequenceModel
from clue_tfrs.windows import WindowInputs, build_windows, query_windows


def _examples(lengths, max_history, min_history=1):
    """Users u0, u1, ... with ``lengths`` interactions each, over items 1..9 by hand."""
    rows = [{"user_id": f"u{u}", "item_id": f"i{(3 * u + 2 * t) % 9 + 1}", "timestamp": t}
            for u, n in enumerate(lengths) for t in range(n)]
    frame = pd.DataFrame(rows)
    index = tasks.ItemIndex([f"i{k}" for k in range(1, 10)])
    return tasks.build_examples(frame, frame["user_id"].unique(), index, max_history,
                                min_history)


def test_windows_cover_every_target_once_cut_from_the_newest():
    ex = _examples([3, 8, 1, 5], max_history=3)
    w = build_windows(ex)
    # u0: 2 targets, one window; u1: 7 targets, windows of 3 from the newest (3, 3, 1);
    # u2 has no target; u3: 4 targets, two windows (3, 1).
    assert list(w.user_ids) == ["u0", "u1", "u1", "u1", "u3", "u3"]
    assert w.num_positives == len(ex)
    for user in ("u0", "u1", "u3"):
        mine = ex.user_ids == user
        got = w.next_items[w.user_ids == user]
        assert sorted(got[got > 0].tolist()) == sorted(ex.targets[mine].tolist())
    # Each window's newest positive reads exactly that example's full history.
    for h, nxt in zip(w.histories, w.next_items):
        match = [i for i in range(len(ex)) if np.array_equal(ex.histories[i], h)
                 and ex.targets[i] == nxt[-1]]
        assert match, (h, nxt)
    # Within u1's newest window the columns are the items and their successors.
    u1 = w.histories[1], w.next_items[1]
    assert np.array_equal(u1[0][1:], u1[1][:-1])


def test_windows_leave_out_items_before_min_history():
    ex = _examples([6], max_history=4, min_history=3)
    w = build_windows(ex)
    assert w.num_positives == len(ex) == 3
    assert sorted(w.next_items[w.next_items > 0].tolist()) == sorted(ex.targets.tolist())


def _causal(dropout=0.0, **kw):
    tf.keras.utils.set_random_seed(5)
    return SequenceModel(num_items=9, max_history=4, hidden_size=8, num_layers=2, num_heads=2,
                         dropout=dropout, causal=True, **kw)


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_a_window_column_scores_as_the_example_history_alone(pooling):
    ex = _examples([5, 4, 2, 9], max_history=4)
    w = build_windows(ex)
    model = _causal(pooling=pooling)
    wins = WindowInputs(w)
    queries = model.sequence_queries(wins.query(tf.range(len(w), dtype=tf.int64))).numpy()
    per_example = model.query_tower(
        ModelInputs(ex, use_sequence=True).query(tf.range(len(ex), dtype=tf.int64))).numpy()
    checked = 0
    for r in range(len(w)):
        real = np.flatnonzero(w.histories[r])
        for c in range(len(real)):
            col = real[c]
            if w.next_items[r, col] == 0:
                continue
            prefix = np.zeros(4, np.int32)
            prefix[4 - c - 1:] = w.histories[r, real[0]:col + 1]
            i = [k for k in range(len(ex)) if np.array_equal(ex.histories[k], prefix)
                 and ex.targets[k] == w.next_items[r, col] and ex.user_ids[k] == w.user_ids[r]]
            if i:  # every column of a user with <= T + 1 items, the newest of any window
                np.testing.assert_allclose(queries[r, col], per_example[i[0]], atol=1e-5)
                checked += 1
    assert checked >= len(ex) - 4  # only u3's cut windows' earlier columns read less


def test_a_causal_model_is_not_the_bidirectional_one():
    ex = _examples([5], max_history=4)
    inputs = ModelInputs(ex, use_sequence=True)
    causal = _causal()
    tf.keras.utils.set_random_seed(5)
    both = SequenceModel(num_items=9, max_history=4, hidden_size=8, num_layers=2, num_heads=2,
                         dropout=0.0)
    q = inputs.query(tf.range(len(ex), dtype=tf.int64))
    assert not np.allclose(causal.query_tower(q).numpy(), both.query_tower(q).numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="causal"):
        both.sequence_queries(q)


@pytest.mark.parametrize("fusion", ["residual", "concat"])
def test_the_window_loss_is_the_mean_per_example_loss(fusion):
    ex = _examples([5, 3, 4], max_history=4)
    w = build_windows(ex)
    user_matrix = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    user_row = {"u0": 0, "u1": 1, "u2": 2}
    model = _causal(user_feature_dim=6, fusion=fusion)
    if fusion == "residual":  # a non-zero feature weight, so the feature counts
        model.query_tower(ModelInputs(ex, user_matrix, user_row, use_sequence=True)
                          .query(tf.constant([0], tf.int64)))
        model.user_feature_projection.kernel.assign(tf.fill((6, 8), 0.3))
    wins = WindowInputs(w, user_matrix, user_row)
    neg_ids = tf.constant([1, 4, 6, 8], tf.int64)
    negatives = wins.candidate(neg_ids)
    got = float(model.compute_loss((wins.query(tf.range(len(w), dtype=tf.int64)), negatives)))
    per = ModelInputs(ex, user_matrix, user_row, use_sequence=True)
    q = model.query_tower(per.query(tf.range(len(ex), dtype=tf.int64)))
    want = float(losses.sampled_softmax_loss(
        q, model.candidate_tower({"item": ex.targets}), model.candidate_tower(negatives),
        ex.targets, neg_ids))
    assert abs(got - want) < 1e-5


def test_a_causal_t_ubm_trains_on_windows_and_learns_the_next_item():
    # Every user walks the catalogue in order from a random start: the next item is the
    # last one + 1, which only a model reading the history can rank first.
    rng = np.random.default_rng(0)
    rows = []
    for u in range(120):
        start = int(rng.integers(0, 30))
        rows += [{"user_id": f"u{u}", "item_id": f"i{(start + t) % 30}", "timestamp": t}
                 for t in range(8)]
    frame = pd.DataFrame(rows)
    index = tasks.ItemIndex([f"i{k}" for k in range(30)])
    ex = tasks.build_examples(frame, frame["user_id"].unique(), index, 6)
    model = SequenceModel(num_items=30, max_history=6, hidden_size=16, num_layers=1,
                          num_heads=2, dropout=0.0, causal=True)
    run = fitting.ModelRun(column="T-UBM (BST)", build=lambda: model, init_seed=0,
                           use_sequence=True)
    assert fitting._trains_on_windows(model, run, ex)
    wins = WindowInputs(build_windows(ex))
    cfg = EvalConfig(seq_window_batch=8, train_negatives=10, learning_rate=1e-2)
    task = types.SimpleNamespace(num_items=30, train=ex)  # what fit reads without val users
    hist = fitting.fit(model, wins, None, task, epochs=15, cfg=cfg, seed=0)
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    q = model.query_tower(ModelInputs(ex, use_sequence=True)
                          .query(tf.range(len(ex), dtype=tf.int64)))
    scores = q.numpy() @ model.candidate_tower({"item": tf.range(31)}).numpy().T
    scores[:, 0] = -np.inf
    top1 = float(np.mean(scores.argmax(axis=1) == ex.targets))
    assert top1 > 0.8, top1


def test_query_windows_share_one_pass_per_user_for_short_histories():
    ex = _examples([5, 9, 1, 3], max_history=4)  # u1: 4 examples with a full-width history
    windows, rep, rows, cols = query_windows(ex.histories, ex.user_ids)
    full = int(np.sum(np.count_nonzero(ex.histories, axis=1) == 4))
    assert len(windows) == 3 + full  # u0, u1 and u3 share one each; u2 has no example
    for i in range(len(ex)):  # column cols[i] of window rows[i] ends with example i's history
        real = np.count_nonzero(ex.histories[i])
        assert np.array_equal(windows[rows[i], cols[i] - real + 1:cols[i] + 1],
                              ex.histories[i, 4 - real:])
        assert ex.user_ids[rep[rows[i]]] == ex.user_ids[i]
    assert list(np.count_nonzero(windows, axis=1)) == sorted(np.count_nonzero(windows, axis=1))


@pytest.mark.parametrize("part", ["query", "sequence"])
def test_causal_queries_from_shared_passes_equal_one_pass_per_example(part):
    ex = _examples([5, 9, 1, 3, 6], max_history=4)
    user_matrix = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32)
    user_row = {f"u{k}": k for k in range(5)}
    model = _causal(user_feature_dim=6)
    inputs = ModelInputs(ex, user_matrix, user_row, use_sequence=True)
    model.query_tower(inputs.query(tf.constant([0], tf.int64)))
    model.user_feature_projection.kernel.assign(tf.fill((6, 8), 0.2))
    got = fitting._embed_queries(model, inputs, len(ex), part, batch=2)
    tower = model.query_tower if part == "query" else model.sequence_vector
    want = tower(inputs.query(tf.range(len(ex), dtype=tf.int64))).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
