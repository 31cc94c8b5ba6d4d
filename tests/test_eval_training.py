"""The downstream models' training objective (sampled softmax over shared negatives), its
batches, and a Hybrid that starts from the trained T-UBM (clue_tfrs.losses, .fitting)."""

import numpy as np

import clue_tfrs  # noqa: F401  (Keras 2 for TFRS)
import tensorflow as tf

from clue_tfrs import fitting
from clue_tfrs import losses
from clue_tfrs import models
from clue_tfrs import sequence_model
from clue_tfrs import tasks


def _reference_loss(q, p, n, pos_ids, neg_ids):
    """Row by row, by hand: -log softmax of the positive among itself and the negatives
    whose id differs from it."""
    out = []
    for b in range(len(q)):
        logits = [float(q[b] @ p[b])] + [float(q[b] @ n[m]) for m in range(len(n))
                                         if neg_ids[m] != pos_ids[b]]
        out.append(np.log(np.sum(np.exp(logits))) - logits[0])
    return float(np.mean(out))


def test_sampled_softmax_equals_a_hand_computed_reference_and_drops_accidental_hits():
    rng = np.random.default_rng(0)
    q, p, n = (rng.standard_normal(s).astype(np.float32) for s in ((3, 4), (3, 4), (5, 4)))
    pos_ids, neg_ids = np.array([7, 2, 9]), np.array([1, 7, 3, 9, 4])  # rows 0 and 2 hit
    got = float(losses.sampled_softmax_loss(q, p, n, pos_ids, neg_ids))
    assert abs(got - _reference_loss(q, p, n, pos_ids, neg_ids)) < 1e-5
    no_mask = _reference_loss(q, p, n, pos_ids, np.array([0, 0, 0, 0, 0]))
    assert abs(got - no_mask) > 1e-3  # the hits were really left out
    # Two classes, no hit: the softmax is the logistic loss of the logit difference.
    one = float(losses.sampled_softmax_loss(q[:1], p[:1], n[:1], [5], [6]))
    diff = float(q[0] @ p[0] - q[0] @ n[0])
    assert abs(one - np.log1p(np.exp(-diff))) < 1e-5


def test_validation_softmax_matches_the_training_loss_and_is_stable():
    rng = np.random.default_rng(1)
    q, c = rng.standard_normal((6, 3)), rng.standard_normal((6, 4, 3))
    logits = np.einsum("nd,nkd->nk", q, c)
    want = np.mean([np.log(np.exp(r).sum()) - r[0] for r in logits])
    assert abs(losses.softmax_loss(logits) - want) < 1e-12
    shifted = losses.softmax_loss(logits + 1000.0)  # no overflow, shift-invariant
    assert abs(shifted - want) < 1e-9
    assert np.isnan(losses.softmax_loss(np.zeros((0, 4))))


def test_shared_negatives_are_distinct_uniform_catalogue_items_and_seeded():
    negs = fitting.shared_negatives(200, 50, 20, np.random.default_rng(3))
    assert negs.shape == (200, 20) and negs.min() >= 1 and negs.max() <= 50
    assert all(len(set(row)) == 20 for row in negs)
    counts = np.bincount(negs.ravel(), minlength=51)[1:]
    assert counts.min() > 0.5 * counts.mean() and counts.max() < 1.5 * counts.mean()
    again = fitting.shared_negatives(200, 50, 20, np.random.default_rng(3))
    assert np.array_equal(negs, again)
    assert fitting.shared_negatives(1, 5, 20, np.random.default_rng(0)).shape == (1, 5)


def test_a_training_batch_holds_its_positives_and_one_row_of_shared_negatives():
    histories = np.array([[0, 0, 3], [0, 4, 5], [1, 2, 3], [0, 0, 6]], np.int32)
    ex = tasks.Examples(user_ids=np.array(["a", "a", "b", "c"], object),
                        targets=np.array([4, 6, 5, 1]), histories=histories)
    inputs = fitting.ModelInputs(ex, use_sequence=True)
    negs = np.array([[7, 8], [9, 10]])
    ds = fitting._batch_dataset(inputs, ex, negs, [np.array([0, 3]), np.array([1, 2])])
    got = [(f["history"].numpy(), f["item"].numpy(), n["item"].numpy()) for f, n in ds]
    assert [g[1].tolist() for g in got] == [[4, 1], [6, 5]]
    assert [g[2].tolist() for g in got] == [[7, 8], [9, 10]]
    assert got[0][0].tolist() == [[3], [6]]  # cut to the batch's longest history
    assert got[1][0].tolist() == [[0, 4, 5], [1, 2, 3]]


def test_a_model_started_from_trained_t_ubm_weights_scores_as_that_t_ubm():
    histories = np.array([[0, 0, 3, 7], [0, 4, 5, 2]], np.int32)
    ex = tasks.Examples(user_ids=np.array(["a", "b"], object), targets=np.array([1, 2]),
                        histories=histories)
    user_matrix, user_row = np.ones((2, 5), np.float32), {"a": 0, "b": 1}
    tf.keras.utils.set_random_seed(1)
    tubm = sequence_model.SequenceModel(num_items=9, max_history=4, hidden_size=8, num_layers=1,
                                num_heads=2)
    t_in = fitting.ModelInputs(ex, use_sequence=True)
    idx = tf.constant([0, 1], tf.int64)
    tubm.query_tower(t_in.query(idx))
    tubm.candidate_tower(t_in.candidate(idx))
    for v in tubm.trainable_weights:  # "trained": anything but its initialisation
        v.assign(v + tf.random.normal(v.shape, seed=2))
    tf.keras.utils.set_random_seed(5)  # another initialisation
    hybrid = sequence_model.SequenceModel(num_items=9, max_history=4, hidden_size=8, num_layers=1,
                                  num_heads=2, user_feature_dim=5)
    h_in = fitting.ModelInputs(ex, user_matrix, user_row, use_sequence=True)
    loaded = fitting.load_matching_weights(hybrid, h_in, fitting.named_weights(tubm))
    assert loaded == len(tubm.trainable_weights) == len(hybrid.trainable_weights) - 1  # all but W_f
    np.testing.assert_allclose(hybrid.query_tower(h_in.query(idx)).numpy(),
                               tubm.query_tower(t_in.query(idx)).numpy(), rtol=1e-6)


def test_the_warm_started_hybrid_trains_only_its_feature_weight():
    """evaluate_task's Hybrid column: the T-UBM's kept weights, then only W_f moves."""
    import dataclasses

    from clue_bench.evaluate import synthetic_task
    from clue_tfrs import evaluate as ev
    from clue_tfrs import protocol

    frame, catalogue, sets = synthetic_task(users=120, interactions=1200, items=150, topics=4,
                                            feature_dim=8)
    cfg = protocol.EvalConfig(max_history=6, seq_hidden_size=8, seq_num_layers=1,
                              seq_num_heads=2, umlp_width=8, max_epochs=2)
    task = protocol.prepare_task(frame, catalogue, cfg, 0, 100, "t")
    feats = protocol.feature_matrices(task, {"CLUE": sets["CLUE"]})
    runs = {r.column: r for r in ev.model_runs(feats, task.num_items, cfg, 0)}
    tubm = fitting.fit_and_score(runs["T-UBM (BST)"], task, feats.user_row, 2, cfg, 0)
    hybrid_run = dataclasses.replace(runs["Hybrid (BST + CLUE)"],
                                     trainable=("user_feature_projection",))
    hybrid = fitting.fit_and_score(hybrid_run, task, feats.user_row, 2, cfg, 0,
                                   start_weights=tubm.weights)
    moved = {k for k, v in hybrid.weights.items()
             if k not in tubm.weights or not np.array_equal(v, tubm.weights[k])}
    assert moved == {"user_feature_projection/kernel:0"}, moved
    assert np.abs(hybrid.weights["user_feature_projection/kernel:0"]).sum() > 0


def _fit_two_ways(build, inputs, ex, negs, batches):
    """Trained weights and train-step traces: plain compile + fit, and with prepare_train_step."""
    out = []
    for prepare in (False, True):
        tf.keras.utils.set_random_seed(3)
        model = build()
        model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
        if prepare:
            fitting.prepare_train_step(model, inputs)
        for _ in range(2):  # two epochs, as fit() calls model.fit once per epoch
            model.fit(fitting._batch_dataset(inputs, ex, negs, batches), epochs=1, verbose=0)
        out.append(([v.numpy() for v in model.weights],
                    model.train_function.experimental_get_tracing_count()))
    return out


def test_prepare_train_step_traces_once_and_trains_exactly_as_before():
    histories = np.array([[0, 0, 3, 7], [0, 4, 5, 2], [1, 2, 3, 4], [0, 0, 0, 6]], np.int32)
    ex = tasks.Examples(user_ids=np.array(["a", "b", "c", "d"], object),
                        targets=np.array([1, 2, 8, 9]), histories=histories)
    user_matrix = np.arange(20, dtype=np.float32).reshape(4, 5) / 20
    user_row = {u: k for k, u in enumerate("abcd")}
    negs = np.array([[5, 6, 7], [1, 3, 9]])
    batches = [np.array([0, 3]), np.array([1, 2])]
    seq_in = fitting.ModelInputs(ex, user_matrix, user_row, use_sequence=True)
    umlp_in = fitting.ModelInputs(ex, user_matrix, user_row, np.eye(10, 6, dtype=np.float32))
    cases = [
        (lambda: sequence_model.SequenceModel(num_items=9, max_history=4, hidden_size=8, num_layers=2,
                                      num_heads=2, dropout=0.3), seq_in),
        (lambda: sequence_model.SequenceModel(num_items=9, max_history=4, hidden_size=8, num_layers=1,
                                      num_heads=2, dropout=0.3, user_feature_dim=5), seq_in),
        (lambda: models.UMLP(width=4, num_items=9, item_bias=True), umlp_in),
    ]
    for build, inputs in cases:
        (before, traces_before), (after, traces_after) = _fit_two_ways(
            build, inputs, ex, negs, batches)
        assert (traces_before, traces_after) == (2, 1)
        assert len(before) == len(after)
        for b, a in zip(before, after):
            np.testing.assert_array_equal(a, b)
