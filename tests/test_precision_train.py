"""What `--precision auto` picks for a wide model on a CPU with native bf16
(mixed_bfloat16) still learns, says why in the log, and exports a float32
serving model equal to its Keras encoder within bf16 tolerance."""

import os

import numpy as np
import pytest
import tensorflow as tf

import clue_synth as synth
from clue_keras import precision
from clue_keras.config import PRESETS, TrainConfig
from clue_keras.cross_service import cross_service_top1
from clue_keras.data.input import load_split_arrays
from clue_keras.data.prepare import prepare_local
from clue_keras.export import export_saved_model
from clue_keras.tokenizer import load_vocab_info
from clue_keras.train import load_pretrainer, train

pytestmark = pytest.mark.slow

MC = PRESETS["tiny"].replace(hidden_dim=precision.BF16_MIN_HIDDEN, intermediate_dim=256,
                             projection_dim=64, num_heads=4)


def test_auto_mixed_bfloat16_learns_and_exports_float32(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)   # whatever CPU runs this
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: [] if kind == "GPU" else ["cpu"])
    synth.generate(str(tmp_path / "data"), users=700, seed=7)
    rec = str(tmp_path / "records")
    prepare_local(str(tmp_path / "data"), rec, max_items=MC.max_items,
                  max_tokens=MC.max_tokens, vocab_size=MC.vocab_size)
    vocab = os.path.join(rec, "vocab")
    tc = TrainConfig(batch_size=64, train_steps=150, checkpoint_every=150, log_every=50,
                     learning_rate=2e-3, patience=0)
    lines = []
    result = train(os.path.join(rec, "Split-train", "*"), vocab, MC, tc, str(tmp_path / "m"),
                   eval_files=os.path.join(rec, "Split-eval", "*"), precision="auto",
                   printer=lines.append)
    monkeypatch.undo()                  # the real device list again, for predict and export
    assert any("policy mixed_bfloat16 (auto: CPU with native bf16 and a model 128 wide" in line
               for line in lines), lines[:3]
    losses = [h["loss"] for h in result.history]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.5, losses

    model = load_pretrainer(str(tmp_path / "m" / "pretrainer.keras"))
    ids = load_split_arrays(os.path.join(rec, "Split-test", "*"),
                            load_vocab_info(vocab))["token_ids"]
    out = model.encoder.predict({"token_ids": ids}, verbose=0)
    check = cross_service_top1(np.asarray(out["user_embedding"], np.float32),
                               np.asarray(out["service_mask"]))
    assert check["queries"] > 100 and check["top1"] > 5 * check["chance"], check

    path = export_saved_model(model, vocab, str(tmp_path / "serving" / "1"))
    served = tf.saved_model.load(path).signatures["embed_tokens"](
        token_ids=tf.constant(ids[:16]))["service_embeddings"]
    assert served.dtype == tf.float32
    ref = np.asarray(out["user_embedding"][:16], np.float32)
    ref = ref / np.maximum(np.linalg.norm(ref, axis=-1, keepdims=True), 1e-12)
    np.testing.assert_allclose(served.numpy(), ref, atol=2e-2)
