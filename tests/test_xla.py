"""The encoder with static shapes: the padded computation exactly, and a training
step that XLA compiles (`clue bench train --mode xla`)."""

import numpy as np
import pytest
import tensorflow as tf

from clue_bench.train import bench_train, forward_flops, synthetic_batch
from clue_keras.config import PRESETS
from clue_keras.encoder import CLUEEncoder
from model_pairs import same_weight_pretrainers

MC = PRESETS["tiny"]
IDS = synthetic_batch(MC, 6, seed=5)


def pretrainers():
    """(compacted padded, static) pre-trainers with the same weights."""
    return same_weight_pretrainers(MC, *({"child_buckets": 0, "parent_buckets": 0,
                                          "static_shapes": static} for static in (False, True)))


def loss_and_grads(model, jit=False):
    @tf.function(jit_compile=jit)
    def step(ids):
        with tf.GradientTape() as tape:
            loss, _ = model.compute_contrastive_loss({"token_ids": ids}, training=True)
        return loss, tape.gradient(loss, model.trainable_variables)

    loss, grads = step(tf.constant(IDS))
    return float(loss), [tf.convert_to_tensor(g).numpy() for g in grads]


def test_static_shapes_equal_the_padded_encoder():
    padded, static = pretrainers()
    assert not IDS.any(-1).all(), "the batch must hold padding items"
    h_pad = padded.encoder.item_embeddings(IDS).numpy()
    h_sta = static.encoder.item_embeddings(IDS).numpy()
    np.testing.assert_allclose(h_sta, h_pad, atol=2e-5)
    np.testing.assert_array_equal(h_sta[~IDS.any(-1)], 0.0)
    out_pad, out_sta = padded.encoder({"token_ids": IDS}), static.encoder({"token_ids": IDS})
    np.testing.assert_allclose(out_sta["user_embedding"], out_pad["user_embedding"], atol=2e-5)
    (l_pad, g_pad), (l_sta, g_sta) = loss_and_grads(padded), loss_and_grads(static)
    assert l_sta == pytest.approx(l_pad, rel=1e-5, abs=1e-6)
    for a, b in zip(g_sta, g_pad):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-3)


def test_xla_compiles_the_static_step_and_not_the_gathered_one():
    padded, static = pretrainers()
    l_ref, g_ref = loss_and_grads(static)
    l_xla, g_xla = loss_and_grads(static, jit=True)
    assert l_xla == pytest.approx(l_ref, rel=1e-4, abs=1e-5)
    for a, b in zip(g_xla, g_ref):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-2)
    # The gathered real items have a data-dependent count that XLA rejects.
    with pytest.raises((tf.errors.InvalidArgumentError, tf.errors.UnimplementedError)):
        loss_and_grads(padded, jit=True)


def test_static_shapes_need_no_buckets_and_survive_the_config():
    with pytest.raises(ValueError, match="static_shapes=True"):
        CLUEEncoder.from_config_dataclass(MC, child_buckets=2, static_shapes=True)
    enc = CLUEEncoder.from_config_dataclass(MC, child_buckets=0, parent_buckets=0,
                                            static_shapes=True)
    assert CLUEEncoder.from_config(enc.get_config()).static_shapes


def test_static_encoder_counts_every_slot_as_the_bench_does():
    enc = CLUEEncoder.from_config_dataclass(MC, child_buckets=0, parent_buckets=0,
                                            static_shapes=True)
    static = forward_flops(MC, IDS, static_shapes=True)
    padded = forward_flops(MC, IDS)
    assert float(enc.computed_positions(tf.constant(IDS))) == static["computed_tokens"]
    assert static["child_tokens_computed"] == IDS.shape[0] * IDS.shape[1] * MC.max_items * MC.max_tokens
    assert static["flops"] > padded["flops"]


def test_bench_times_the_xla_mode_beside_the_padded_one():
    res = bench_train("tiny", steps=2, warmup=1, modes=["padded", "xla"])
    assert res["xla"]["step_time_s"] > 0
    assert res["speedup_xla_vs_padded"] == pytest.approx(
        res["padded"]["step_time_s"] / res["xla"]["step_time_s"])
    assert (res["xla"]["padding_share_of_computed_tokens"]
            > res["padded"]["padding_share_of_computed_tokens"])
