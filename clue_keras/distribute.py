"""Strategy factory with a CPU fallback (cf. tensorflow/models distribute_utils).

* ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names more than one worker
  (``chief`` and ``worker`` tasks together); collectives over gRPC, RING on CPU,
  NCCL on GPU;
* ``MirroredStrategy`` over all GPUs when there are any;
* ``MirroredStrategy`` over N logical CPU devices when ``cpu_replicas=N > 1``
  (how tests and laptops exercise the distributed path);
* the default (single-device) strategy otherwise.

Multi-worker rules (TensorFlow's multi-worker guide): build the strategy first,
before TensorFlow runs any op; every worker runs the same program (same steps,
same saves, since saves read variables collectively); only the chief (the
``chief`` task, else ``worker`` 0) writes to the model directory, the others
write to :func:`worker_dir` and delete it at the end. A worker that dies is
detected by the coordination service's heartbeat (about 10 s); the survivors'
collectives are aborted and :func:`raise_peer_lost` turns that into
:class:`PeerLostError`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Optional, Tuple

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


def _multi_worker(collective_timeout_s: Optional[float]) -> tf.distribute.Strategy:
    """The process's MultiWorkerMirroredStrategy (one per process: it starts a gRPC
    server on this task's TF_CONFIG address and configures collectives)."""
    if "multi_worker" not in _STRATEGIES:
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=collective_timeout_s)
        try:
            _STRATEGIES["multi_worker"] = tf.distribute.MultiWorkerMirroredStrategy(
                communication_options=options)
        except RuntimeError as e:
            if "program startup" not in str(e):
                raise
            raise RuntimeError(
                "MultiWorkerMirroredStrategy must be created before TensorFlow runs "
                "anything in this process: call clue_keras.distribute.get_strategy() "
                "first") from e
    return _STRATEGIES["multi_worker"]


def get_strategy(cpu_replicas: int = 1,
                 collective_timeout_s: Optional[float] = None) -> tf.distribute.Strategy:
    """The strategy :func:`strategy_kind` names, built (and shared per process).

    Args:
      cpu_replicas: logical CPU replicas when there is neither a GPU nor a
        multi-worker TF_CONFIG.
      collective_timeout_s: multi-worker only: a collective that takes longer
        fails with DeadlineExceededError (a backstop for a peer that is alive but
        stuck; a dead peer is found by the heartbeat anyway). It must exceed the
        slowest step, first-step tracing included. None: no limit.
    """
    kind = strategy_kind(cpu_replicas)
    if kind == "multi_worker":
        return _multi_worker(collective_timeout_s)
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


# ---------------------------------------------------------------- multi-worker roles


def task_of(strategy: Optional[tf.distribute.Strategy] = None
            ) -> Tuple[Optional[str], Optional[int], dict]:
    """(task_type, task_id, cluster dict) of this process; (None, None, {}) when the
    strategy is not multi-worker."""
    resolver = getattr(strategy or tf.distribute.get_strategy(), "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not cluster:
        return None, None, {}
    return resolver.task_type, resolver.task_id, cluster


def is_chief_task(cluster: dict, task_type: Optional[str], task_id: Optional[int]) -> bool:
    """The chief writes the model directory: the ``chief`` task when the cluster has
    one, else ``worker`` 0; a process outside any cluster is its own chief."""
    if task_type is None:
        return True
    if "chief" in cluster:
        return task_type == "chief"
    return task_type == "worker" and task_id == 0


def is_multi_worker(strategy: Optional[tf.distribute.Strategy] = None) -> bool:
    _, _, cluster = task_of(strategy)
    return sum(len(cluster.get(job, [])) for job in ("chief", "worker")) > 1


def is_chief(strategy: Optional[tf.distribute.Strategy] = None) -> bool:
    task_type, task_id, cluster = task_of(strategy)
    return is_chief_task(cluster, task_type, task_id)


def worker_dir(model_dir: str, strategy: Optional[tf.distribute.Strategy] = None) -> str:
    """Where this process writes: ``model_dir`` on the chief, else the per-worker
    scratch ``model_dir/.workertemp_<type>_<id>`` (the guide's ``write_filepath``)."""
    task_type, task_id, cluster = task_of(strategy)
    if is_chief_task(cluster, task_type, task_id):
        return model_dir
    return os.path.join(model_dir, f".workertemp_{task_type}_{task_id}")


def shard_by_data(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Marks a dataset of GLOBAL batches, identical on every worker, for DATA sharding.

    ``experimental_distribute_dataset`` (what Keras ``fit`` calls) then rebatches
    each global batch of B rows into per-replica slices and keeps, on every
    worker, only its replicas' slices: replica r of the sync group gets rows
    [r*B/N, (r+1)*B/N) of the same global batch a single process would see.
    The default (AUTO -> FILE) policy would give workers different files, so the
    global batch would differ from a single-process run.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return ds.with_options(options)


def adapt_keras_model(model, strategy: Optional[tf.distribute.Strategy]) -> None:
    """Works around two Keras 3 (3.12) gaps with tf.distribute, on a built, compiled
    model (instance attributes only; nothing global).

    * Under any strategy, ``fit``/``evaluate`` first "symbolically build" the model
      from one batch reduced across replicas. That draws an extra iterator from the
      dataset (so a seeded shuffle yields another order than a single-process run)
      and, under MultiWorkerMirroredStrategy, cannot reduce dict batches. The model
      is built already: skip it.
    * Under MultiWorkerMirroredStrategy, Keras reduces each step's logs with
      ``strategy.reduce(MEAN, v, axis=0)``, which fails on scalars: the step's
      scalar logs are returned as shape [1] there (the reduce makes them scalars).
    """
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    if not is_multi_worker(strategy):
        return

    def rank1(step):
        def wrapped(data):
            return tf.nest.map_structure(lambda v: tf.reshape(v, [-1]), step(data))
        return wrapped

    model.train_step = rank1(model.train_step)
    model.test_step = rank1(model.test_step)


class PeerLostError(RuntimeError):
    """A peer worker of a multi-worker job died or became unreachable."""


_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                tf.errors.AbortedError, tf.errors.CancelledError)


@contextlib.contextmanager
def raise_peer_lost(strategy: Optional[tf.distribute.Strategy], where: str):
    """Within the block, an aborted or timed-out collective of a multi-worker job
    raises :class:`PeerLostError` saying so (other errors pass unchanged)."""
    try:
        yield
    except _PEER_ERRORS as e:
        message = e.message or str(e)
        if not is_multi_worker(strategy) or not any(
                word in message.lower() for word in ("collective", "heartbeat")):
            raise
        task_type, task_id, _ = task_of(strategy)
        lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
        detail = [ln[ln.find("Collective ops"):] if "Collective ops" in ln else ln
                  for ln in lines if "aborted" in ln or "timeout" in ln.lower()] or lines
        raise PeerLostError(
            f"a peer worker was lost during {where} ({task_type}:{task_id} saw "
            f"{type(e).__name__}: {detail[0][:300] if detail else ''}). Restart every "
            "worker; training resumes from the last checkpoint in the chief's "
            "model_dir/checkpoints.") from e
