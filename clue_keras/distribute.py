"""Strategy factory with a CPU fallback (cf. tensorflow/models distribute_utils).

* ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names more than one worker;
* ``MirroredStrategy`` over all GPUs when there are any;
* ``MirroredStrategy`` over N logical CPU devices when ``cpu_replicas=N > 1``
  (how tests and laptops exercise the distributed path);
* the default (single-device) strategy otherwise.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

import tensorflow as tf

log = logging.getLogger(__name__)


def configure_logical_cpus(n: int) -> int:
    """Split the physical CPU into ``n`` logical devices. Call before TF runs any op.

    Returns the number of logical CPUs available afterwards (unchanged if TF has
    already initialised its devices).
    """
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
        )
    except RuntimeError:
        pass  # devices already initialised; keep what exists
    return len(tf.config.list_logical_devices("CPU"))


def tf_config_workers(env: Optional[dict] = None) -> int:
    """Number of workers (chief included) that TF_CONFIG describes; 0 when unset."""
    raw = (env if env is not None else os.environ).get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from None
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def strategy_kind(cpu_replicas: int = 1, env: Optional[dict] = None,
                  num_gpus: Optional[int] = None) -> str:
    """Which strategy :func:`get_strategy` would build: 'multi_worker', 'gpus',
    'cpus' or 'default'. Pure, so the choice is testable without the devices."""
    if tf_config_workers(env) > 1:
        return "multi_worker"
    if num_gpus is None:
        num_gpus = len(tf.config.list_physical_devices("GPU"))
    if num_gpus > 0:
        return "gpus"
    if cpu_replicas > 1:
        return "cpus"
    return "default"


_STRATEGIES: dict = {}


def _mirrored(devices=None) -> tf.distribute.Strategy:
    """One MirroredStrategy per device set and process.

    Each new MirroredStrategy numbers its collective ops from the same base, so a
    second one over the same devices reuses instance keys whose cached shapes belong
    to the first ("Shape mismatch in the collective instance"); sharing one avoids it.
    """
    key = tuple(devices) if devices else None
    if key not in _STRATEGIES:
        _STRATEGIES[key] = tf.distribute.MirroredStrategy(devices=devices)
    return _STRATEGIES[key]


def get_strategy(cpu_replicas: int = 1) -> tf.distribute.Strategy:
    kind = strategy_kind(cpu_replicas)
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "gpus":
        return _mirrored()
    if kind == "cpus":
        have = configure_logical_cpus(cpu_replicas)
        devices = [d.name for d in tf.config.list_logical_devices("CPU")][:cpu_replicas]
        if have < cpu_replicas:
            raise RuntimeError(
                f"asked for {cpu_replicas} CPU replicas but TensorFlow already initialised "
                f"{have} CPU device(s); set --cpu-replicas before anything runs on TensorFlow"
            )
        return _mirrored(devices)
    return tf.distribute.get_strategy()
