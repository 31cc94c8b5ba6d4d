"""The packed child transformer (`clue_keras.packed`): one stream of real tokens,
windowed attention inside each item, compiled by XLA per length rung. It must
equal the padded computation, in the loss and the gradients of a training step."""

import numpy as np
import pytest
import tensorflow as tf

from clue_bench.train import bench_train, forward_flops, synthetic_batch
from clue_keras.config import PRESETS
from clue_keras.encoder import CLUEEncoder
from clue_keras.packed import CHUNK, RUNGS_PER_OCTAVE, pack_tokens, rung
from model_pairs import same_weight_pretrainers

MC = PRESETS["tiny"]
IDS = synthetic_batch(MC, 6, seed=7)


def pretrainers(packed_buckets=0):
    """(padded, packed) pre-trainers with the same weights."""
    return same_weight_pretrainers(
        MC, {"child_buckets": 0, "parent_buckets": 0},
        {"child_buckets": packed_buckets, "parent_buckets": 0, "packed_child": True})


def loss_and_grads(model, ids=IDS):
    @tf.function
    def step(ids):
        with tf.GradientTape() as tape:
            loss, _ = model.compute_contrastive_loss({"token_ids": ids}, training=True)
        return loss, tape.gradient(loss, model.trainable_variables)

    loss, grads = step(tf.constant(ids))
    return float(loss), [None if g is None else tf.convert_to_tensor(g).numpy() for g in grads]


def test_rungs_are_a_geometric_ladder_of_chunks():
    ns = np.arange(0, 5000)
    rungs = np.array([int(rung(n)) for n in ns])
    assert (rungs >= np.maximum(ns, 1)).all()
    assert (rungs % CHUNK == 0).all()
    assert (np.diff(rungs) >= 0).all()
    assert rungs[0] == CHUNK and rungs[CHUNK] == CHUNK and rungs[CHUNK + 1] == 2 * CHUNK
    # Slack at most one rung step (2^(1/8) ~ 9%), plus rounding twice to whole
    # chunks (n up to chunks, the rung up to chunks: 1/16 each from 16 chunks on) ...
    big = ns >= 16 * CHUNK
    assert (rungs[big] / ns[big]).max() <= 2 ** (1 / RUNGS_PER_OCTAVE) * (1 + 1 / 16) ** 2
    # ... and few distinct programs per doubling.
    octave = rungs[(ns > 2048) & (ns <= 4096)]
    assert len(set(octave)) <= RUNGS_PER_OCTAVE + 1


def test_pack_tokens_lays_items_end_to_end():
    ids = tf.constant([[5, 6, 7, 0], [0, 0, 0, 0], [9, 0, 4, 0], [3, 0, 0, 0]])
    tokens, positions, segments, t = pack_tokens(ids)
    assert int(t) == 6
    np.testing.assert_array_equal(tokens, [5, 6, 7, 9, 4, 3])
    np.testing.assert_array_equal(positions, [0, 1, 2, 0, 2, 0])
    np.testing.assert_array_equal(segments, [0, 0, 0, 2, 2, 3])


def test_packed_items_equal_the_padded_ones_also_with_gaps_and_full_items():
    padded, packed = pretrainers()
    flat = IDS.reshape(-1, MC.max_tokens).copy()
    real = np.flatnonzero(flat.any(-1))
    flat[real[0], 1] = 0                                   # a gap inside an item
    flat[real[1]] = np.arange(1, MC.max_tokens + 1)         # an item using all L slots
    assert (~flat.any(-1)).any(), "the batch must hold padding items"
    mask = tf.constant(flat.any(-1))
    h_pad = padded.encoder._items(tf.constant(flat), mask, training=True).numpy()
    h_pkd = packed.encoder._items(tf.constant(flat), mask, training=True).numpy()
    np.testing.assert_allclose(h_pkd, h_pad, atol=2e-5)
    np.testing.assert_array_equal(h_pkd[~flat.any(-1)], 0.0)
    assert np.abs(h_pad).max() > 0.1


def test_a_packed_training_step_equals_the_padded_one():
    padded, packed = pretrainers()
    (l_pad, g_pad), (l_pkd, g_pkd) = loss_and_grads(padded), loss_and_grads(packed)
    assert l_pkd == pytest.approx(l_pad, rel=1e-5, abs=1e-6)
    scale = max(np.abs(g).max() for g in g_pad if g is not None)
    for var, a, b in zip(padded.trainable_variables, g_pkd, g_pad):
        if b is None:
            assert a is None, var.path
            continue
        np.testing.assert_allclose(a, b, atol=1e-5 * scale, rtol=1e-3, err_msg=var.path)


def test_inference_keeps_the_buckets_and_the_config_survives():
    padded, packed = pretrainers(packed_buckets=2)
    assert packed.encoder.child_buckets == 2
    out_pad = padded.encoder({"token_ids": IDS}, training=False)
    out_pkd = packed.encoder({"token_ids": IDS}, training=False)
    np.testing.assert_allclose(out_pkd["user_embedding"], out_pad["user_embedding"], atol=2e-5)
    assert CLUEEncoder.from_config(packed.encoder.get_config()).packed_child
    with pytest.raises(ValueError, match="packed_child=True and static_shapes=True"):
        CLUEEncoder.from_config_dataclass(MC, child_buckets=0, parent_buckets=0,
                                          static_shapes=True, packed_child=True)


def test_packed_positions_are_the_rung_as_the_bench_counts_them():
    enc = CLUEEncoder.from_config_dataclass(MC, child_buckets=0, parent_buckets=0,
                                            packed_child=True)
    figures = forward_flops(MC, IDS, packed_child=True)
    padded = forward_flops(MC, IDS)
    assert figures["child_tokens_computed"] == int(rung(int((IDS != 0).sum())))
    assert float(enc.computed_positions(tf.constant(IDS))) == figures["computed_tokens"]
    assert figures["child_tokens_computed"] < padded["child_tokens_computed"]


def test_bench_times_the_packed_mode_beside_the_bucketed_one():
    res = bench_train("tiny", steps=2, warmup=1, modes=["bucketed", "packed"])
    assert res["packed"]["step_time_s"] > 0
    # The stream's only padding is the slack up to its rung.
    assert 0 <= res["packed"]["child_padding_share"] < 0.25
    assert res["packed"]["parent_padding_share"] == res["bucketed"]["parent_padding_share"]
