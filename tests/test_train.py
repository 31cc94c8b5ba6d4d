"""Training on synthetic data: the loss falls, held-out users are found across
services far above chance, a killed run resumes exactly, bad configs fail early."""

import json
import os
import re

import keras
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
from clue_keras.optimizer import make_schedule
from clue_keras.train import load_pretrainer, train

MC = PRESETS["tiny"]
WIDE = MC.replace(hidden_dim=precision.BF16_MIN_HIDDEN, intermediate_dim=256,
                 projection_dim=64, num_heads=4)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    synth.generate(str(root / "data"), users=700, seed=7)
    prepare_local(str(root / "data"), str(root / "records"), max_items=MC.max_items,
                  max_tokens=MC.max_tokens, vocab_size=MC.vocab_size)
    return str(root / "records")


def _files(records, split):
    return os.path.join(records, f"Split-{split}", "*")


def test_schedule_warmup_then_cosine_to_ten_percent():
    tc = TrainConfig(train_steps=1000, learning_rate=5e-4)
    lr = make_schedule(tc)
    # warm-up: 1% of 1000 = 10 steps, linear from 0
    np.testing.assert_allclose(float(lr(5)), 5e-4 * 5 / 10, rtol=1e-5)
    np.testing.assert_allclose(float(lr(10)), 5e-4, rtol=1e-5)
    # half-way through the cosine: 0.5 * (1 + cos(pi/2)) -> (1-0.1)*0.5 + 0.1 = 0.55
    np.testing.assert_allclose(float(lr(10 + 495)), 5e-4 * 0.55, rtol=1e-4)
    np.testing.assert_allclose(float(lr(1000)), 5e-5, rtol=1e-5)


def test_short_training_learns_cross_service_identity(records, tmp_path):
    # patience=0: every step (this small set over-fits within 150 steps; the weights of
    # the best held-out step are the ones exported).
    tc = TrainConfig(batch_size=64, train_steps=150, checkpoint_every=150, log_every=25,
                     learning_rate=2e-3, patience=0)
    lines = []
    result = train(_files(records, "train"), os.path.join(records, "vocab"), MC, tc,
                   str(tmp_path / "model"), eval_files=_files(records, "eval"),
                   precision="float32", printer=lines.append)
    losses = [h["loss"] for h in result.history]
    assert result.steps == 150 and not result.stopped_early
    assert losses[-1] < losses[0] - 0.5, losses
    assert [h["step"] for h in result.eval_history] == list(range(15, 151, 15))
    assert result.eval_loss == result.best_eval_loss == min(
        h["eval_loss"] for h in result.eval_history)
    stats = json.load(open(os.path.join(records, "stats.json")))
    assert result.users_pretraining + result.users_without_pair == stats["users_train"]
    assert any("tokens/s" in line and "logit_scale" in line and "padding" in line
               for line in lines)

    model = load_pretrainer(str(tmp_path / "model" / "pretrainer.keras"))
    arrays = load_split_arrays(_files(records, "test"), load_vocab_info(os.path.join(records, "vocab")))
    out = model.encoder.predict({"token_ids": arrays["token_ids"]}, verbose=0)
    check = cross_service_top1(np.asarray(out["user_embedding"]), np.asarray(out["service_mask"]))
    assert check["queries"] > 100
    assert check["top1"] > 5 * check["chance"], check
    saved = json.load(open(tmp_path / "model" / "train_result.json"))
    assert saved["steps"] == 150 and saved["model_config"]["hidden_dim"] == MC.hidden_dim


class _SimulatedCrash(RuntimeError):
    pass


class _Crash(keras.callbacks.Callback):
    def __init__(self, at, exc=_SimulatedCrash):
        super().__init__()
        self.at, self.exc = at, exc

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.at:
            raise self.exc("simulated kill")


def test_killed_run_resumes_from_checkpoint_exactly(records, tmp_path):
    tc = TrainConfig(batch_size=32, train_steps=40, checkpoint_every=10, log_every=10)
    vocab = os.path.join(records, "vocab")
    clean = train(_files(records, "train"), vocab, MC, tc, str(tmp_path / "clean"),
                  precision="float32", printer=lambda *_: None)

    with pytest.raises(_SimulatedCrash):  # a crash: nothing saved beyond the periodic ckpt
        train(_files(records, "train"), vocab, MC, tc, str(tmp_path / "killed"),
              precision="float32", printer=lambda *_: None, callbacks=[_Crash(25)])
    ckpt = tf.train.latest_checkpoint(str(tmp_path / "killed" / "checkpoints"))
    assert ckpt.endswith("ckpt-20")
    assert not (tmp_path / "killed" / "pretrainer.keras").exists()  # nothing half-done published

    lines = []
    resumed = train(_files(records, "train"), vocab, MC, tc, str(tmp_path / "killed"),
                    precision="float32", printer=lines.append)
    assert resumed.resumed_from_step == 20 and resumed.steps == 40
    assert any("resumed from" in line for line in lines)
    a = load_pretrainer(str(tmp_path / "clean" / "pretrainer.keras"))
    b = load_pretrainer(str(tmp_path / "killed" / "pretrainer.keras"))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wb, wa, atol=1e-5)
    np.testing.assert_allclose(resumed.final_loss, clean.final_loss, rtol=1e-4)


def test_interrupt_saves_a_checkpoint_at_the_current_step(records, tmp_path):
    tc = TrainConfig(batch_size=32, train_steps=40, checkpoint_every=20, log_every=10)
    lines = []
    with pytest.raises(KeyboardInterrupt):
        train(_files(records, "train"), os.path.join(records, "vocab"), MC, tc,
              str(tmp_path / "m"), precision="float32", printer=lines.append,
              callbacks=[_Crash(7, KeyboardInterrupt)])
    assert tf.train.latest_checkpoint(str(tmp_path / "m" / "checkpoints")).endswith("ckpt-7")
    assert any("interrupted at step 7" in line for line in lines)
    # Resumed mid-way between two periodic checkpoints: the run still ends at step 40.
    resumed = train(_files(records, "train"), os.path.join(records, "vocab"), MC, tc,
                    str(tmp_path / "m"), precision="float32", printer=lines.append)
    assert (resumed.resumed_from_step, resumed.steps) == (7, 40)
    assert [h["step"] for h in resumed.history] == [10, 20, 30, 40]


def test_two_cpu_replicas_train(records, tmp_path):
    from clue_keras.distribute import get_strategy

    strategy = get_strategy(2)
    assert strategy.num_replicas_in_sync == 2
    tc = TrainConfig(batch_size=32, train_steps=10, checkpoint_every=10, log_every=5)
    result = train(_files(records, "train"), os.path.join(records, "vocab"), MC, tc,
                   str(tmp_path / "m"), strategy=strategy, precision="mixed_bfloat16",
                   printer=lambda *_: None)
    assert result.replicas == 2 and np.isfinite(result.final_loss)


@pytest.mark.parametrize("change,match", [
    (dict(max_items=4), "S=8"),
    (dict(vocab_size=100), "raise vocab_size"),
])
def test_mismatched_model_config_is_a_clear_error(records, tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        train(_files(records, "train"), os.path.join(records, "vocab"), MC.replace(**change),
              TrainConfig(train_steps=2, checkpoint_every=2), str(tmp_path / "m"))


def test_no_records_is_a_clear_error(records, tmp_path):
    empty = tmp_path / "empty_split"
    empty.mkdir()
    pattern = str(empty / "*")
    # The whole message, anchored: it names the pattern that matched no file.
    with pytest.raises(FileNotFoundError, match=f"^no files match {re.escape(repr(pattern))}$"):
        train(pattern, os.path.join(records, "vocab"), MC,
              TrainConfig(train_steps=2, checkpoint_every=2), str(tmp_path / "m"))


@pytest.mark.slow
def test_auto_mixed_bfloat16_learns_and_exports_float32(records, tmp_path, monkeypatch):
    # What `--precision auto` picks for a model BF16_MIN_HIDDEN wide on a CPU with native
    # bf16: it still learns, says why, and exports float32 equal to its Keras encoder.
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)   # whatever CPU runs this
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: [] if kind == "GPU" else ["cpu"])
    rec = records
    vocab = os.path.join(rec, "vocab")
    tc = TrainConfig(batch_size=64, train_steps=150, checkpoint_every=150, log_every=50,
                     learning_rate=2e-3, patience=0)
    lines = []
    result = train(os.path.join(rec, "Split-train", "*"), vocab, WIDE, tc, str(tmp_path / "m"),
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
