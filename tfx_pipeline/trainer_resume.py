"""Where the Trainer trains so that a retry resumes: a directory keyed by what it trains on.

TFX gives every Trainer execution fresh output directories
(``<pipeline_root>/Trainer/model_run/<execution id>``), so a Trainer killed
mid-training (a pre-empted pod, ``kill -9`` of ``clue run``) would start again
from step 0 in the retry's new directory, although `clue_keras.train.train`
resumes exactly from ``model_dir/checkpoints``. So ``run_fn`` trains in

    <pipeline_root>/Trainer/resumable/<key>/

where ``key`` (`resume_key`) hashes what decides the weights: the input
files (the ``user_examples`` artifact's URIs: a cached BehaviorPreprocess
keeps its URI, a re-run gets a new one), the Trainer's ``custom_config``
(model, training, precision, replicas) and the precision policy ``auto``
resolved to on this machine. A retry of the same Trainer computes the same
key, finds the checkpoints and resumes; any other Trainer gets another key.

When training and the serving export are done, `publish_run` renames the
whole directory (checkpoints, ``logs/``, ``pretrainer.keras``,
``train_result.json``, ``resume_key.json``) to the execution's ``model_run``
directory: one rename, so the ``model_run`` artifact is empty or whole, and
the resumable directory is gone afterwards (nothing to clean up, and a later
``--no-cache`` run trains afresh). Remote paths (``gs://``) are copied file
by file and then deleted: not atomic, but the ``model_run`` artifact is only
registered in MLMD after ``run_fn`` returns.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from typing import Any, Dict, Sequence

from clue_keras.uri import is_remote

#: Sub-directory of the Trainer's node directory holding in-progress training.
RESUMABLE = "resumable"
#: File in the training directory naming what its key was computed from.
KEY_FILE = "resume_key.json"


def _join(path: str, *parts: str) -> str:
    return (posixpath if is_remote(path) else os.path).join(path, *parts)


def _parent(path: str) -> str:
    path = path.rstrip("/")
    return posixpath.dirname(path) if is_remote(path) else os.path.dirname(path)


def resume_key(files: Sequence[str], custom_config: Dict[str, Any], policy: str) -> Dict[str, Any]:
    """``{"key": 16 hex digits, "files": [...], "custom_config": ..., "policy": ...}``."""
    what = {"files": sorted(str(f) for f in files),
            "custom_config": json.loads(json.dumps(custom_config, sort_keys=True)),
            "policy": policy}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode("utf-8")).hexdigest()
    return {"key": digest[:16], **what}


def resumable_dir(model_run_dir: str, key: Dict[str, Any]) -> str:
    """``<model_run_dir>/../../resumable/<key>`` (``model_run_dir`` is
    ``<node dir>/model_run/<execution id>``), with ``resume_key.json`` written in it."""
    import tensorflow as tf

    from clue_keras.atomic import write_json_atomic

    node_dir = _parent(_parent(model_run_dir))
    path = _join(node_dir, RESUMABLE, key["key"])
    tf.io.gfile.makedirs(path)
    key_file = _join(path, KEY_FILE)
    if not tf.io.gfile.exists(key_file):
        write_json_atomic(key_file, key)
    return path


def publish_run(work_dir: str, model_run_dir: str) -> str:
    """Moves the finished training directory to ``model_run_dir`` (absent or empty,
    as TFX pre-creates it); returns ``model_run_dir``."""
    if not is_remote(work_dir) and not is_remote(model_run_dir):
        if os.path.isdir(model_run_dir):
            os.rmdir(model_run_dir)  # only if empty: never clobbers a published run
        os.makedirs(os.path.dirname(os.path.abspath(model_run_dir)), exist_ok=True)
        os.replace(work_dir, model_run_dir)
        return model_run_dir
    import tensorflow as tf

    for root, _, names in tf.io.gfile.walk(work_dir):
        rel = root[len(work_dir.rstrip("/")):].lstrip("/")
        target = _join(model_run_dir, rel) if rel else model_run_dir
        tf.io.gfile.makedirs(target)
        for name in names:
            tf.io.gfile.copy(_join(root, name), _join(target, name), overwrite=True)
    tf.io.gfile.rmtree(work_dir)
    return model_run_dir
