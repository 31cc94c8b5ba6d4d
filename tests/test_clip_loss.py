"""CLIP loss: NumPy reference, hand-checkable values, 1 vs 2 replicas."""

import numpy as np
import tensorflow as tf

from clue_keras.clip_loss import clip_loss
from clue_keras.distribute import get_strategy
from clue_keras.config import PRESETS
from clue_keras.train import build_pretrainer


def numpy_clip_loss(f, mask, tau):
    """Loop-by-loop reference of paper eq. (4) over all ordered service pairs."""
    b, p, _ = f.shape
    terms = []
    for a in range(p):
        for c in range(p):
            if a == c:
                continue
            cols = [j for j in range(b) if mask[j, c]]
            for i in range(b):
                if not (mask[i, a] and mask[i, c]):
                    continue
                logits = np.array([tau * f[i, a] @ f[j, c] for j in cols], np.float64)
                m = logits.max()
                lse = m + np.log(np.exp(logits - m).sum())
                terms.append(lse - tau * f[i, a] @ f[i, c])
    return float(np.mean(terms)) if terms else 0.0, len(terms)


def _normalised(rng, shape):
    x = rng.normal(size=shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_matches_numpy_reference_with_missing_services():
    rng = np.random.default_rng(0)
    f = _normalised(rng, (6, 3, 8))
    mask = np.ones((6, 3), bool)
    mask[0, 1] = mask[3, 2] = mask[5, 0] = mask[5, 2] = False  # user 5 has one service
    loss, count = clip_loss(tf.constant(f), tf.constant(mask), 14.27)
    ref, n = numpy_clip_loss(f, mask, 14.27)
    assert int(count) == n == 3 * 6 + 2 + 2  # users 0 and 3 have two services, 5 one
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)


def test_two_identical_users_hand_computed():
    # Two users, two services, f(z_{u,A}) == f(z_{u,B}) orthogonal across users:
    # every term is -log(e^tau / (e^tau + e^0)) = log(1 + e^-tau).
    f = np.zeros((2, 2, 2), np.float32)
    f[0, :, 0] = 1.0
    f[1, :, 1] = 1.0
    loss, count = clip_loss(tf.constant(f), tf.ones((2, 2), tf.bool), 2.0)
    assert int(count) == 4
    np.testing.assert_allclose(float(loss), np.log1p(np.exp(-2.0)), rtol=1e-6)


def test_no_pairs_gives_zero_not_nan():
    f = _normalised(np.random.default_rng(1), (4, 2, 8))
    mask = np.array([[True, False]] * 4)  # nobody has two services
    loss, count = clip_loss(tf.constant(f), tf.constant(mask), 14.27)
    assert float(count) == 0.0 and float(loss) == 0.0


def _batch(mc, b, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, mc.vocab_size, size=(b, 3, mc.max_items, mc.max_tokens)).astype("int32")
    ids[:, :, 5:] = 0
    ids[:, :, :, 9:] = 0
    ids[1, 2] = 0
    ids[4, 0] = 0
    return ids


class _GatherWithoutGradient:
    """A replica context whose ``all_gather`` cuts the gradient path back to the keys.

    Everything else is the real context's, so the loss value stays the same.
    """

    def __init__(self, ctx):
        self._ctx = ctx

    def __getattr__(self, name):
        return getattr(self._ctx, name)

    def all_gather(self, value, axis):
        return tf.stop_gradient(self._ctx.all_gather(value, axis=axis))


def test_loss_and_gradients_two_replicas_equal_one_replica(monkeypatch):
    import clue_keras.clip_loss as clip_loss_module

    mc = PRESETS["tiny"]
    ids = _batch(mc, 8)
    single = build_pretrainer(mc)
    with tf.GradientTape() as tape:
        loss1, _ = single.compute_contrastive_loss({"token_ids": ids})
    grads1 = [tf.convert_to_tensor(g) for g in tape.gradient(loss1, single.trainable_variables)]

    strategy = get_strategy(2)  # MirroredStrategy over the two logical CPUs
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        dist = build_pretrainer(mc)
    dist.set_weights(single.get_weights())

    def step(x):
        with tf.GradientTape() as tape:
            loss, _ = dist.compute_contrastive_loss({"token_ids": x})
        return loss, [tf.convert_to_tensor(g)
                      for g in tape.gradient(loss, dist.trainable_variables)]

    def run(x):  # a new tf.function per call: traced with the clip_loss of that moment
        @tf.function
        def run_fn(x):
            loss, grads = strategy.run(step, args=(x,))
            return (strategy.reduce("SUM", loss, None),
                    [strategy.reduce("SUM", g, None) for g in grads])

        return run_fn(x)

    x = next(iter(strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(ids).batch(8))))
    loss2, grads2 = run(x)
    np.testing.assert_allclose(float(loss2), float(loss1), rtol=1e-5)
    for v, g1, g2 in zip(single.trainable_variables, grads1, grads2):
        np.testing.assert_allclose(g2.numpy(), g1.numpy(), atol=1e-4, rtol=1e-3,
                                   err_msg=v.path)

    # The cross-replica key gradients matter: the same 2-replica computation with
    # the all-gather's gradient path cut has the same loss but other gradients.
    real_context = clip_loss_module._replica_context
    monkeypatch.setattr(clip_loss_module, "_replica_context",
                        lambda: (lambda c: c and _GatherWithoutGradient(c))(real_context()))
    loss_cut, grads_cut = run(x)
    np.testing.assert_allclose(float(loss_cut), float(loss1), rtol=1e-5)
    differ = [v.path for v, g1, g in zip(single.trainable_variables, grads1, grads_cut)
              if not np.allclose(g.numpy(), g1.numpy(), atol=1e-4, rtol=1e-3)]
    assert len(differ) > 10, f"only {differ} changed without the key gradients"
    worst = max(float(tf.reduce_max(tf.abs(g - g1))) for g1, g in zip(grads1, grads_cut))
    assert worst > 1e-2, worst


def test_one_training_step_two_replicas_equals_one_replica():
    """Whole Keras fit steps on 1 vs 2 replicas: same loss, metrics and weights.

    Plain SGD so that the update is linear in the gradient: Adam's first step is
    ~lr * sign(g) and flips on float-noise-sized gradients of unused rows.
    """
    import keras

    mc = PRESETS["tiny"]
    ids = _batch(mc, 8, seed=3)
    ds = tf.data.Dataset.from_tensors({"token_ids": ids}).repeat(2)

    single = build_pretrainer(mc)
    init = single.get_weights()
    single.compile(optimizer=keras.optimizers.SGD(0.5))
    h1 = single.fit(ds, epochs=1, verbose=0).history

    strategy = get_strategy(2)  # MirroredStrategy over the two logical CPUs
    with strategy.scope():
        dist = build_pretrainer(mc)
        dist.set_weights(init)
        dist.compile(optimizer=keras.optimizers.SGD(0.5))
    h2 = dist.fit(ds, epochs=1, verbose=0).history
    np.testing.assert_allclose(h2["loss"][0], h1["loss"][0], rtol=1e-5)
    np.testing.assert_allclose(h2["tokens"][0], h1["tokens"][0])
    np.testing.assert_allclose(h2["pairs"][0], h1["pairs"][0])
    # Two SGD steps at lr 0.5 move weights by up to ~10, so the replicas' different
    # summation order leaves ~1e-5 differences: compare each weight's update with a
    # tolerance of 1e-4 of its largest update (a wrong gradient scale or a lost
    # replica changes updates by a large fraction of themselves).
    moved = 0
    for w0, w1, w2 in zip(init, single.get_weights(), dist.get_weights()):
        scale = max(float(np.abs(w1 - w0).max()), 1e-3)
        np.testing.assert_allclose(w2 - w0, w1 - w0, rtol=0, atol=1e-4 * scale + 1e-6)
        moved += not np.allclose(w1, w0)
    assert moved > 10
