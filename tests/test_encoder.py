"""Shared layer/model harness for the CLUE encoder and pre-trainer
(cf. keras-hub run_layer_test / run_model_saving_test)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from clue_keras.config import PRESETS, param_count
from clue_keras.encoder import CLUEEncoder
from clue_keras.masked_mean import MaskedMean
from clue_keras.pretrainer import CLUEPretrainer
from clue_keras.train import build_pretrainer, load_pretrainer, save_keras_atomic

MC = PRESETS["tiny"]


def token_batch(b=4, p=3, seed=0, mc=MC):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, mc.vocab_size, size=(b, p, mc.max_items, mc.max_tokens)).astype("int32")
    ids[:, :, 4:] = 0          # 4 real items per service
    ids[:, :, :, 7:] = 0       # 7 tokens per item
    ids[0, 2] = 0              # user 0 has no item in service 2
    return ids


def test_masked_mean_matches_numpy_and_never_nan():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    mask = np.array([[True, False, True], [False, False, False]])
    out = MaskedMean()(x, mask).numpy()
    np.testing.assert_allclose(out[0], (x[0, 0] + x[0, 2]) / 2)
    np.testing.assert_array_equal(out[1], np.zeros(4))


def test_outputs_shapes_masks_and_padding_invariance():
    enc = CLUEEncoder.from_config_dataclass(MC)
    ids = token_batch()
    out = enc({"token_ids": ids})
    assert out["user_embedding"].shape == (4, 3, MC.embedding_dim)
    assert out["user_embedding"].dtype == tf.float32
    np.testing.assert_array_equal(out["service_mask"].numpy(), ids.any(axis=(2, 3)))
    np.testing.assert_array_equal(out["user_embedding"].numpy()[0, 2], 0.0)
    # Extra padding items / tokens change nothing: padding is masked everywhere.
    wider = np.zeros((4, 3, MC.max_items, MC.max_tokens), "int32")
    wider[:, :, :4, :7] = ids[:, :, :4, :7]
    np.testing.assert_allclose(enc({"token_ids": wider})["user_embedding"],
                               out["user_embedding"], atol=1e-6)
    # A user's embedding does not depend on the other users of the batch.
    alone = enc({"token_ids": ids[1:2]})["user_embedding"].numpy()
    np.testing.assert_allclose(alone[0], out["user_embedding"].numpy()[1], atol=1e-5)


def test_eager_equals_tf_function():
    enc = CLUEEncoder.from_config_dataclass(MC)
    ids = token_batch()
    eager = enc({"token_ids": ids})["user_embedding"]
    graph = tf.function(lambda x: enc({"token_ids": x})["user_embedding"])(ids)
    np.testing.assert_allclose(graph, eager, atol=1e-6)


def test_config_round_trip():
    enc = CLUEEncoder.from_config_dataclass(MC.replace(output_dim=16))
    clone = CLUEEncoder.from_config(enc.get_config())
    assert clone.get_config() == enc.get_config()
    model = build_pretrainer(MC)
    cfg = model.get_config()
    again = CLUEPretrainer.from_config(cfg)
    assert again.get_config() == cfg


@pytest.mark.parametrize("policy,compute", [("float32", tf.float32),
                                            ("mixed_bfloat16", tf.bfloat16),
                                            ("mixed_float16", tf.float16)])
def test_mixed_precision_dtypes_and_finite(policy, compute):
    model = build_pretrainer(MC, policy)
    ids = token_batch()
    out = model({"token_ids": ids})
    # Documented output dtypes: embeddings and projections float32 whatever the policy.
    assert out["user_embedding"].dtype == tf.float32
    assert out["projection"].dtype == tf.float32
    assert model.logit_scale.dtype == tf.float32
    # Inside: the child transformer computes in the policy's dtype, LayerNorm in float32.
    h = model.encoder.encode_items(ids[:, 0].reshape(-1, MC.max_tokens))
    assert h.dtype == compute
    block = model.encoder.child[0]
    assert block._self_attention_layer._softmax.__class__.__name__ == "Float32Softmax"
    assert block._self_attention_layer.compute_dtype == compute.name
    assert model.encoder.token_embedding.embeddings.dtype == tf.float32  # master weights
    loss, _ = model.compute_contrastive_loss({"token_ids": ids})
    assert loss.dtype == tf.float32 and np.isfinite(float(loss))
    assert np.isfinite(out["user_embedding"].numpy()).all()


def test_output_dim_layer():
    model = build_pretrainer(MC.replace(output_dim=12))
    out = model({"token_ids": token_batch()})
    assert out["user_embedding"].shape[-1] == 12


def test_param_count_closed_form_matches_keras():
    for mc in (MC, MC.replace(output_dim=12, child_layers=2)):
        model = build_pretrainer(mc)
        assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == param_count(mc)


def test_save_reload_equal_outputs(tmp_path):
    model = build_pretrainer(MC)
    ids = token_batch()
    before = model({"token_ids": ids})
    path = str(tmp_path / "m.keras")
    save_keras_atomic(model, path)
    assert os.listdir(tmp_path) == ["m.keras"]  # no temp file left behind
    again = load_pretrainer(path)
    after = again({"token_ids": ids})
    for k in ("user_embedding", "projection"):
        np.testing.assert_allclose(after[k], before[k], atol=1e-6)
    np.testing.assert_allclose(float(again.logit_scale), 14.27, rtol=1e-6)


def test_logit_scale_clipped_at_100():
    model = build_pretrainer(MC)
    model.log_logit_scale.assign(np.log(1000.0))
    np.testing.assert_allclose(float(model.logit_scale), 100.0, rtol=1e-6)


def test_token_id_beyond_vocabulary_is_a_clear_error():
    model = build_pretrainer(MC)
    ids = token_batch()
    ids[0, 0, 0, 1] = MC.vocab_size + 5
    with pytest.raises(tf.errors.InvalidArgumentError, match="token id >= vocab_size"):
        model({"token_ids": ids})


@pytest.mark.parametrize("policy,tolerance", [("mixed_float16", 0.05), ("mixed_bfloat16", 0.1)])
def test_training_steps_under_mixed_precision_follow_float32_gradients(policy, tolerance):
    """The GPU path (mixed_float16 + dynamic loss scaling) and the bf16 CPU path.

    The gradients the training step hands to AdamW (under mixed_float16: after the
    loss was scaled up for the backward pass and the gradients scaled back down)
    must equal the float32 model's gradients at the same weights on the same batch,
    within half-precision error. A step that did not scale the loss (the scale then
    divides 2^15-times-too-small gradients) or did not unscale them fails this;
    that weights merely move does not show it, since AdamW's weight decay alone
    moves them.
    """
    from clue_keras.config import TrainConfig
    from clue_keras.optimizer import make_optimizer

    batch = {"token_ids": token_batch(b=8)}
    keras.utils.set_random_seed(0)
    model = build_pretrainer(MC, policy)
    reference = build_pretrainer(MC, "float32")
    reference.set_weights(model.get_weights())
    with tf.GradientTape() as tape:
        ref_loss, _ = reference.compute_contrastive_loss(batch, training=True)
    want = tape.gradient(ref_loss, reference.trainable_variables)

    opt = make_optimizer(TrainConfig(train_steps=10), policy)
    assert isinstance(opt, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")
    inner = opt.inner_optimizer if policy == "mixed_float16" else opt
    applied = []
    real_apply = inner.apply

    def spy(grads, trainable_variables=None):
        def record(*values):
            applied.append([v.numpy().astype(np.float32) for v in values])
            return 0

        # The step runs in a graph (and the apply in a tf.cond branch): fetch the values.
        tf.py_function(record, [tf.convert_to_tensor(g) for g in grads], Tout=tf.int32)
        return real_apply(grads, trainable_variables)

    inner.apply = spy
    model.compile(optimizer=opt)
    # 12 steps: step 1 has learning rate 0 (warm-up), and under mixed_float16 the
    # dynamic loss scale starts at 2^15 and skips the first overflowing steps, so
    # the first gradients applied are those at the initial weights.
    ds = tf.data.Dataset.from_tensors(batch).repeat(12)
    history = model.fit(ds, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert model.encoder.token_embedding.embeddings.dtype == tf.float32

    assert applied, "no gradients were applied in 12 steps"
    got = np.concatenate([g.ravel() for g in applied[0]])
    ref = np.concatenate([tf.convert_to_tensor(g).numpy().ravel() for g in want])
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert rel < tolerance, f"{policy}: applied gradients are off by {rel:.3g} (relative) " \
        f"from float32; norms {np.linalg.norm(got):.3g} vs {np.linalg.norm(ref):.3g}"


def test_feed_forward_runs_as_2d_matmuls_with_keras_hub_results():
    """TransformerLayer's FlatDense gives keras-hub's TransformerEncoder results with
    the same weights, and neither its forward nor its gradient holds a broadcast
    BatchMatMulV2 (whose kernel gradient is a per-row batch of products + Sum)."""
    import keras_hub

    from clue_keras.transformer_layer import FlatDense, TransformerLayer

    x = tf.random.stateless_normal((6, 5, 16), seed=(1, 2))
    mask = tf.sequence_mask([5, 3, 1, 4, 2, 5], 5)
    ours = TransformerLayer(32, 2, activation="gelu")
    ref = keras_hub.layers.TransformerEncoder(32, 2, activation="gelu")
    ours.build(x.shape)
    ref.build(x.shape)
    ref.set_weights(ours.get_weights())
    assert isinstance(ours._feedforward_output_dense, FlatDense)
    np.testing.assert_allclose(ours(x, padding_mask=mask), ref(x, padding_mask=mask),
                               atol=1e-5)

    @tf.function
    def grads(layer, x):
        with tf.GradientTape() as tape:
            y = tf.reduce_sum(layer(x, padding_mask=mask) ** 2)
        return tape.gradient(y, layer.trainable_variables)

    for a, b in zip(grads(ours, x), grads(ref, x)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)

    def batch_matmuls(layer):
        graph = grads.get_concrete_function(layer, x).graph
        return [op.name for op in graph.get_operations()
                if op.type.startswith("BatchMatMul") and "feedforward" in op.name]

    assert batch_matmuls(ref), "the reference should show the broadcast matmul"
    assert batch_matmuls(ours) == []


def test_flat_dense_activation_runs_in_float32_under_mixed_bfloat16():
    """Under mixed_bfloat16 FlatDense's GELU runs on the float32 matmul result cast
    up (bfloat16 elementwise kernels are slow on CPU): the graph holds the Erf in
    float32 and the output is the float32 GELU of the bfloat16 pre-activation,
    rounded once to bfloat16."""
    from clue_keras.transformer_layer import FlatDense

    layer = FlatDense(8, activation="gelu", dtype="mixed_bfloat16")
    x = tf.random.stateless_normal((3, 4, 6), seed=(3, 4))
    layer.build(x.shape)
    y = layer(x)
    assert y.dtype == tf.bfloat16 and y.shape == (3, 4, 8)
    pre = tf.matmul(tf.reshape(tf.cast(x, tf.bfloat16), (-1, 6)),
                    tf.cast(layer.kernel, tf.bfloat16)) + tf.cast(layer.bias, tf.bfloat16)
    want = tf.cast(tf.nn.gelu(tf.cast(pre, tf.float32)), tf.bfloat16)
    np.testing.assert_array_equal(tf.reshape(y, (-1, 8)).numpy().astype(np.float32),
                                  want.numpy().astype(np.float32))
    graph = tf.function(layer).get_concrete_function(x).graph
    erfs = [op for op in graph.get_operations() if op.type == "Erf"]
    assert erfs and all(op.outputs[0].dtype == tf.float32 for op in erfs)
