"""Pre-training on data shaped like real logs, on hand-written records (tiny preset):

* batches hold only users with a pair of services, and the run is the run on the
  records without the single-service users (same losses, same weights);
* ``epochs`` sets the steps; too few steps for one pass warn;
* the held-out loss is scored periodically, the best step's weights are the ones
  exported, early stopping stops, and a killed run resumes with its best-so-far;
* progress lines, TensorBoard scalars and the bar; no Keras "ran out of data".
"""

import json
import logging
import os
import warnings

import numpy as np
import pytest
import tensorflow as tf

from clue_keras.config import PRESETS, TrainConfig
from clue_keras.data.input import make_dataset
from clue_keras.data.records import build_user_example
from clue_keras.tokenizer import VocabInfo
from clue_keras.train import load_pretrainer, plan_steps, train
from tfx_pipeline.local_runner import RunSummary

MC = PRESETS["tiny"]
SERVICES = ("a", "b")
VOCAB = 64
INFO = VocabInfo(services=SERVICES, max_items=MC.max_items, max_tokens=MC.max_tokens,
                 vocab_size=VOCAB, special_tokens={"<pad>": 0, "<unk>": 1, "<item>": 2,
                                                   "<svc:a>": 3, "<svc:b>": 4})
QUIET = dict(precision="float32", printer=lambda *_: None)


def _items(rng, service_token):
    return [[service_token] + rng.integers(5, VOCAB, size=rng.integers(2, 6)).tolist()
            for _ in range(rng.integers(1, 4))]


def _users(n_pairs, n_singles, seed):
    """``(mixed, pairs)``: ``pairs`` users with both services; ``mixed`` the same users
    in the same order with ``n_singles`` single-service users spread among them."""
    rng = np.random.default_rng(seed)
    pairs = [(f"p{seed}-{i}", {"a": _items(rng, 3), "b": _items(rng, 4)})
             for i in range(n_pairs)]
    singles = [(f"s{seed}-{i}", {("a", "b")[i % 2]: _items(rng, 3 + i % 2)})
               for i in range(n_singles)]
    mixed = list(pairs)
    for i, user in enumerate(singles):
        mixed.insert((i * len(mixed)) // max(len(singles), 1) + i % 3, user)
    return mixed, pairs


def _write(root, split, users):
    os.makedirs(os.path.join(root, f"Split-{split}"), exist_ok=True)
    path = os.path.join(root, f"Split-{split}", "data-00000.gz")
    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        for uid, items in users:
            w.write(build_user_example(uid, items, SERVICES).SerializeToString())


def _records(root, train_users, eval_users):
    os.makedirs(os.path.join(root, "vocab"), exist_ok=True)
    with open(os.path.join(root, "vocab", "clue_vocab.json"), "w") as f:
        f.write(INFO.to_json())
    _write(root, "train", train_users)
    _write(root, "eval", eval_users)
    return str(root)


def _files(records, split):
    return os.path.join(records, f"Split-{split}", "*")


def _train(records, model_dir, tc, **kw):
    return train(_files(records, "train"), os.path.join(records, "vocab"), MC, tc,
                 str(model_dir), eval_files=_files(records, "eval"), **{**QUIET, **kw})


def _weights(path):
    return load_pretrainer(str(path)).get_weights()


def _assert_same(a, b):
    assert len(a) == len(b)
    for wa, wb in zip(a, b):
        np.testing.assert_allclose(wb, wa, atol=1e-6)


@pytest.fixture(scope="module")
def mixed_and_pure(tmp_path_factory):
    """40 users with a pair among 60 with one service (train), 20 among 30 (eval)."""
    root = tmp_path_factory.mktemp("real")
    train_mixed, train_pairs = _users(40, 60, seed=1)
    eval_mixed, eval_pairs = _users(20, 30, seed=2)
    return (_records(root / "mixed", train_mixed, eval_mixed),
            _records(root / "pure", train_pairs, eval_pairs))


def test_batches_hold_only_users_with_a_pair_and_training_is_that_on_the_filtered_set(
        mixed_and_pure, tmp_path, caplog):
    mixed, pure = mixed_and_pure
    ds = make_dataset(_files(mixed, "train"), INFO, 8, shuffle=True, repeat=True, seed=0,
                      min_services=2)
    for batch in ds.take(12).as_numpy_iterator():       # 96 rows: past one pass of 40
        services = (batch["token_ids"][..., 0, 0] != 0).sum(axis=1)   # [B]: non-empty P
        assert (services >= 2).all(), batch["user_id"]
        assert all(u.startswith(b"p") for u in batch["user_id"])

    tc = TrainConfig(batch_size=8, train_steps=6, log_every=1, eval_every=2, patience=0,
                     learning_rate=2e-3, checkpoint_every=0)
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        on_mixed = _train(mixed, tmp_path / "mixed", tc)
        on_pure = _train(pure, tmp_path / "pure", tc)
    # The cause of Keras' "ran out of data" warning (evaluate on a finite dataset of
    # unknown length) is gone: held-out batches are counted and taken from a repeat.
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "ran out of data" in m], messages

    assert (on_mixed.users_pretraining, on_mixed.users_without_pair) == (40, 60)
    assert (on_pure.users_pretraining, on_pure.users_without_pair) == (40, 0)
    assert on_mixed.eval_users == on_pure.eval_users == 20
    np.testing.assert_allclose([h["loss"] for h in on_mixed.history],
                               [h["loss"] for h in on_pure.history], rtol=1e-6)
    assert len(on_mixed.history) == 6
    assert [h["step"] for h in on_mixed.eval_history] == [2, 4, 6]
    np.testing.assert_allclose([h["eval_loss"] for h in on_mixed.eval_history],
                               [h["eval_loss"] for h in on_pure.eval_history], rtol=1e-6)
    _assert_same(_weights(tmp_path / "pure" / "pretrainer.keras"),
                 _weights(tmp_path / "mixed" / "pretrainer.keras"))
    saved = json.load(open(tmp_path / "mixed" / "train_result.json"))
    assert (saved["users_pretraining"], saved["users_without_pair"]) == (40, 60)
    assert saved["warnings"] == []


def test_plan_steps_from_epochs_and_the_under_training_warning():
    tc, notes = plan_steps(TrainConfig(epochs=1.5, batch_size=64, train_steps=7), 1000)
    assert tc.train_steps == 24 and notes == []            # ceil(1.5 * 1000 / 64)
    tc, notes = plan_steps(TrainConfig(train_steps=10, batch_size=64), 1000)
    assert tc.train_steps == 10 and len(notes) == 1
    assert "under-training" in notes[0] and "64% of one pass" in notes[0]
    assert "--epochs 1" in notes[0] and "--train-steps 16" in notes[0]
    with pytest.raises(ValueError, match="epochs must be > 0"):
        plan_steps(TrainConfig(epochs=0), 10)


def test_epochs_set_the_steps_and_a_short_run_warns_with_a_live_bar(mixed_and_pure, tmp_path,
                                                                     capsys, caplog):
    mixed, _ = mixed_and_pure
    res = _train(mixed, tmp_path / "epochs", TrainConfig(batch_size=8, epochs=1.5, log_every=2),
                 printer=print, progress_bar=True)
    assert res.train_steps == res.steps == 8                # ceil(1.5 * 40 / 8)
    assert res.warnings == []
    saved = json.load(open(tmp_path / "epochs" / "train_result.json"))
    assert saved["train_config"]["train_steps"] == 8 and saved["train_config"]["epochs"] == 1.5
    out = capsys.readouterr().out
    assert "8 steps = 1.60 passes over 40 pre-training users (60 without a pair" in out
    lines = [ln.split("\r")[-1] for ln in out.splitlines() if "tokens/s" in ln]
    assert lines and all("padding" in ln and "ETA" in ln for ln in lines), out
    assert "step/s" in out or "s/step" in out                # the tqdm bar drew itself

    caplog.set_level(logging.WARNING)
    short = _train(mixed, tmp_path / "short", TrainConfig(batch_size=8, train_steps=2))
    assert len(short.warnings) == 1 and "under-training" in short.warnings[0]
    assert "40% of one pass over the 40 pre-training users" in short.warnings[0]
    assert any("under-training" in r.getMessage() for r in caplog.records)
    saved = json.load(open(tmp_path / "short" / "train_result.json"))
    assert saved["warnings"] == short.warnings
    text = RunSummary(run_id="r", executions={}, cached=0, preprocess_stats={},
                      train_result=saved, model_uri=None, blessed=None, pushed_to=None).format()
    assert "  warning: under-training" in text


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    """16 users to memorise, 16 held-out users with unrelated services: long training at
    a high learning rate lowers the training loss and raises the held-out loss."""
    root = tmp_path_factory.mktemp("overfit")
    return _records(root, _users(16, 0, seed=3)[1], _users(16, 0, seed=4)[1])


OVERFIT = TrainConfig(batch_size=8, train_steps=60, eval_every=5, log_every=10,
                      learning_rate=2e-2, warmup_fraction=0.0, clipnorm=1.0, weight_decay=0.0,
                      checkpoint_every=20, patience=0)


def test_the_best_held_out_step_is_exported_not_the_last(overfit, tmp_path):
    lines = []
    res = _train(overfit, tmp_path / "m", OVERFIT, printer=lines.append)
    assert res.steps == 60 and not res.stopped_early and res.evaluations == 12
    losses = [h["eval_loss"] for h in res.eval_history]
    assert res.best_eval_loss == min(losses) == res.eval_loss
    assert res.best_step == res.eval_history[int(np.argmin(losses))]["step"]
    assert res.best_step < 60, losses                       # it over-fitted
    assert res.history[-1]["loss"] < res.history[0]["loss"]

    ckpt = tmp_path / "m" / "checkpoints"
    best = tf.train.load_checkpoint(str(ckpt / "best" / f"ckpt-{res.best_step}"))
    exported = _weights(tmp_path / "m" / "pretrainer.keras")
    for i, w in enumerate(exported):
        np.testing.assert_array_equal(w, best.get_tensor(f"weights/{i}/.ATTRIBUTES/VARIABLE_VALUE"))
    last = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(ckpt)))
    assert tf.train.latest_checkpoint(str(ckpt)).endswith("ckpt-60")
    assert int(last.get_tensor("heldout/best_step/.ATTRIBUTES/VARIABLE_VALUE")) == res.best_step
    assert sorted(os.listdir(ckpt / "best")) == [                # older bests were pruned
        f"ckpt-{res.best_step}.data-00000-of-00001", f"ckpt-{res.best_step}.index"]

    # What a person sees: the held-out loss in the progress lines, the kept step, TensorBoard.
    assert any(f"step {res.best_step:>6}/60" in ln and "held-out" in ln for ln in lines)
    assert f"kept step {res.best_step} (best held-out loss {res.best_eval_loss:.4f} of 12 " \
           "evaluations)" in lines
    saved = json.load(open(tmp_path / "m" / "train_result.json"))
    assert (saved["best_step"], saved["stopped_early"]) == (res.best_step, False)
    text = RunSummary(run_id="r", executions={}, cached=0, preprocess_stats={},
                      train_result=saved, model_uri=None, blessed=None, pushed_to=None).format()
    assert f"kept step {res.best_step} (best held-out loss {res.best_eval_loss:.4f} of 12 " \
           "evaluations)" in text
    tags = set()
    for event_file in tf.io.gfile.glob(str(tmp_path / "m" / "logs" / "train" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(event_file):
            tags.update(v.tag for v in event.summary.value)
    assert {"loss", "eval_loss", "tokens_per_s", "padding_share", "learning_rate"} <= tags


def _crash_at(step):
    import keras

    class Crash(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == step:
                raise RuntimeError("simulated kill")

    return Crash()


def test_early_stopping_and_a_killed_run_resumes_with_its_best_so_far(overfit, tmp_path):
    tc = OVERFIT.replace(patience=2, checkpoint_every=10)
    clean = _train(overfit, tmp_path / "clean", tc)
    assert clean.stopped_early and clean.steps < 60
    steps = [h["step"] for h in clean.eval_history]
    assert steps[-1] == clean.steps and clean.best_step == steps[-3]   # 2 evaluations after

    # Killed 3 steps after the best (a best checkpoint newer than the periodic one, when
    # the best step is not a multiple of 10): the re-run resumes from the periodic one.
    with pytest.raises(RuntimeError, match="simulated kill"):
        _train(overfit, tmp_path / "killed", tc, callbacks=[_crash_at(clean.best_step + 3)])
    resumed = _train(overfit, tmp_path / "killed", tc)
    assert resumed.resumed_from_step == (clean.best_step + 3) // 10 * 10
    assert (resumed.best_step, resumed.steps, resumed.stopped_early) == \
        (clean.best_step, clean.steps, True)
    assert resumed.eval_history == clean.eval_history
    _assert_same(_weights(tmp_path / "clean" / "pretrainer.keras"),
                 _weights(tmp_path / "killed" / "pretrainer.keras"))

    # A stopped run stays stopped: a re-run trains nothing and exports the same weights.
    again = _train(overfit, tmp_path / "killed", tc)
    assert again.resumed_from_step == clean.steps and again.steps == clean.steps
    assert again.best_step == clean.best_step and again.history == []
    _assert_same(_weights(tmp_path / "clean" / "pretrainer.keras"),
                 _weights(tmp_path / "killed" / "pretrainer.keras"))
