"""Strategy factory: the choice, including the multi-worker TF_CONFIG path, at
the config level (no second machine needed), chief/worker roles, and the precision
policy; a 2-replica step equals the single-device step on the same global batch.
Real multi-process training: tests/test_multiworker.py."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from clue_keras.config import PRESETS, TrainConfig
from clue_keras.distribute import (get_strategy, is_chief, is_chief_task, is_multi_worker,
                                   shard_by_data, strategy_kind, tf_config_workers,
                                   worker_dir)
from clue_keras.precision import resolve_policy


def _tf_config(workers, chief=0):
    cluster = {"worker": [f"w{i}:2222" for i in range(workers)]}
    if chief:
        cluster["chief"] = ["c0:2222"]
    return {"TF_CONFIG": json.dumps({"cluster": cluster,
                                     "task": {"type": "worker", "index": 0}})}


def test_tf_config_with_several_workers_selects_multi_worker():
    assert tf_config_workers(_tf_config(2)) == 2
    assert tf_config_workers(_tf_config(1, chief=1)) == 2
    assert strategy_kind(env=_tf_config(3), num_gpus=0) == "multi_worker"
    assert strategy_kind(env=_tf_config(2), num_gpus=8) == "multi_worker"


def test_single_worker_or_no_tf_config_falls_back():
    assert tf_config_workers({}) == 0
    assert strategy_kind(env=_tf_config(1), num_gpus=0) == "default"
    assert strategy_kind(env={}, num_gpus=2) == "gpus"
    assert strategy_kind(cpu_replicas=2, env={}, num_gpus=0) == "cpus"
    assert strategy_kind(cpu_replicas=1, env={}, num_gpus=0) == "default"


def test_malformed_tf_config_is_a_clear_error():
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        tf_config_workers({"TF_CONFIG": "{not json"})


def test_cpu_replicas_build_one_shared_mirrored_strategy():
    s = get_strategy(2)
    assert isinstance(s, tf.distribute.MirroredStrategy)
    assert s.num_replicas_in_sync == 2
    assert get_strategy(2) is s  # shared: avoids collective-key clashes


def test_precision_policy_resolution():
    assert resolve_policy("float32") == "float32"
    assert resolve_policy("auto") in ("float32", "mixed_bfloat16", "mixed_float16")
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_policy("fp8")


def test_chief_is_the_chief_task_else_worker_zero():
    workers = {"worker": ["a:1", "b:1"]}
    assert is_chief_task(workers, "worker", 0)
    assert not is_chief_task(workers, "worker", 1)
    with_chief = {"chief": ["c:1"], "worker": ["a:1"]}
    assert is_chief_task(with_chief, "chief", 0)
    assert not is_chief_task(with_chief, "worker", 0)
    assert is_chief_task({}, None, None)  # no cluster: the only process


def test_single_process_is_chief_and_writes_model_dir():
    s = tf.distribute.get_strategy()
    assert is_chief(s) and not is_multi_worker(s)
    assert worker_dir("/m", s) == "/m"
    assert worker_dir("/m", get_strategy(2)) == "/m"


def test_datasets_are_sharded_by_data_not_files():
    ds = shard_by_data(tf.data.Dataset.range(4))
    assert (ds.options().experimental_distribute.auto_shard_policy
            == tf.data.experimental.AutoShardPolicy.DATA)


def test_multi_worker_strategy_after_tensorflow_started_is_a_clear_error(monkeypatch):
    tf.constant(1.0)  # the context is initialised (conftest did already)
    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
        "task": {"type": "worker", "index": 0}}))
    with pytest.raises(RuntimeError, match="before TensorFlow runs anything"):
        get_strategy()


def test_two_replica_steps_equal_single_device_steps():
    """The global-norm clip sees the summed gradient (not each replica's) and the
    contrastive loss uses the all-gathered keys: weights after 3 steps agree."""
    from clue_keras.optimizer import make_optimizer
    from clue_keras.train import build_pretrainer

    mc = PRESETS["tiny"]
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, mc.vocab_size, size=(8, 2, mc.max_items, mc.max_tokens))
    lengths = rng.integers(0, mc.max_tokens + 1, size=(8, 2, mc.max_items, 1))
    tokens = np.where(np.arange(mc.max_tokens) < lengths, tokens, 0).astype(np.int32)
    batch = {"token_ids": tf.constant(tokens)}
    tc = TrainConfig(batch_size=8, train_steps=4, learning_rate=2e-3)
    strategy = get_strategy(2)

    keras.utils.set_random_seed(0)
    single = build_pretrainer(mc)
    single.compile(optimizer=make_optimizer(tc, "float32"))
    single.optimizer.build(single.trainable_variables)
    with strategy.scope():
        mirrored = build_pretrainer(mc)
        mirrored.compile(optimizer=make_optimizer(tc, "float32"))
        mirrored.optimizer.build(mirrored.trainable_variables)
    mirrored.set_weights(single.get_weights())
    it = iter(strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors(batch).repeat()))
    for _ in range(3):  # step 1 has learning rate 0 (warm-up); 2 and 3 move. Eager:
        single.train_step(batch)  # tracing both would take 4x longer
        strategy.run(mirrored.train_step, args=(next(it),))
    moved = [np.abs(a - b).max() for a, b in zip(single.get_weights(), build_pretrainer(
        mc).get_weights()) if a.shape == b.shape]
    assert max(moved) > 1e-3
    for a, b in zip(single.get_weights(), mirrored.get_weights()):
        np.testing.assert_allclose(b, a, atol=1e-6)
