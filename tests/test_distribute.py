"""Strategy factory: the choice, including the multi-worker TF_CONFIG path, at
the config level (no second machine needed), and the precision policy."""

import json

import pytest
import tensorflow as tf

from clue_keras.distribute import get_strategy, strategy_kind, tf_config_workers
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
