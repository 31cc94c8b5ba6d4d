"""TFX Trainer entry point: ``run_fn(fn_args)`` trains CLUE and exports the SavedModel.

Referenced by Python path (``tfx_pipeline.trainer_module.run_fn``) so it is
imported from the installed package, locally and in the container image.

Reads from ``fn_args``:
  train_files / eval_files   ``[<user_examples>/Split-train/*]`` / ``Split-eval``;
                             the vocabulary is ``<user_examples>/vocab/``
  model_run_dir              checkpoints, TensorBoard logs, pretrainer.keras,
                             train_result.json (final loss, steps, params ...)
  serving_model_dir          the serving SavedModel (`clue_keras.export`)
  custom_config              ``preset`` (required), ``train_steps``, ``batch_size``,
                             ``checkpoint_every``, ``precision``, ``cpu_replicas``
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Sequence

from absl import logging

#: Keys ``custom_config`` may hold.
CUSTOM_CONFIG_KEYS = ("preset", "train_steps", "batch_size", "learning_rate", "checkpoint_every",
                      "precision", "cpu_replicas")


def vocab_dir_from_files(files: Sequence[str]) -> str:
    """``<uri>/Split-train/*`` -> ``<uri>/vocab`` (where BehaviorPreprocess put it)."""
    if not files:
        raise ValueError("the Trainer got no train_files")
    split_dir = os.path.dirname(files[0].rstrip("/")) if files[0].endswith("*") else files[0]
    return os.path.join(os.path.dirname(split_dir.rstrip("/")), "vocab")


def _examples_stats(vocab_dir: str) -> Dict[str, Any]:
    """BehaviorPreprocess's ``stats.json`` next to the vocabulary ({} if absent)."""
    import json

    import tensorflow as tf

    path = os.path.join(os.path.dirname(vocab_dir.rstrip("/")), "stats.json")
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def _configs(custom_config: Dict[str, Any], fn_train_steps: int | None):
    from clue_keras.config import TrainConfig, get_preset

    unknown = set(custom_config) - set(CUSTOM_CONFIG_KEYS)
    if unknown:
        raise ValueError(f"unknown Trainer custom_config keys {sorted(unknown)}; "
                         f"known: {list(CUSTOM_CONFIG_KEYS)}")
    if "preset" not in custom_config:
        raise ValueError("Trainer custom_config must name a model 'preset'")
    model_config = get_preset(custom_config["preset"])
    steps = int(custom_config.get("train_steps") or fn_train_steps or TrainConfig.train_steps)
    every = int(custom_config.get("checkpoint_every") or 0) or steps
    train_config = TrainConfig(
        batch_size=int(custom_config.get("batch_size", TrainConfig.batch_size)),
        learning_rate=float(custom_config.get("learning_rate", TrainConfig.learning_rate)),
        train_steps=steps, checkpoint_every=every,
        log_every=max(1, min(TrainConfig.log_every, steps)))
    return model_config, train_config


def run_fn(fn_args) -> None:
    """Trains on ``fn_args.train_files`` and exports to ``fn_args.serving_model_dir``.

    Args:
      fn_args: `tfx.components.FnArgs` (see the module docstring for what is read).
    """
    from clue_keras.distribute import get_strategy
    from clue_keras.export import export_saved_model
    from clue_keras.train import load_pretrainer, train

    custom_config = dict(fn_args.custom_config or {})
    model_config, train_config = _configs(custom_config, getattr(fn_args, "train_steps", None))
    train_files: List[str] = list(fn_args.train_files)
    eval_files: List[str] = list(fn_args.eval_files or [])
    vocab_dir = vocab_dir_from_files(train_files)
    users_eval = _examples_stats(vocab_dir).get("users_eval")
    if eval_files and users_eval is not None and users_eval < train_config.batch_size:
        # A held-out loss needs one full global batch (batches have a static size).
        logging.warning("eval split has %d users < batch %d: no held-out loss",
                        users_eval, train_config.batch_size)
        eval_files = []
    strategy = get_strategy(int(custom_config.get("cpu_replicas", 1)))
    logging.info("CLUE run_fn: preset %s, %d steps, batch %d, vocab %s",
                 custom_config["preset"], train_config.train_steps,
                 train_config.batch_size, vocab_dir)
    result = train(train_files, vocab_dir, model_config, train_config,
                   model_dir=fn_args.model_run_dir, eval_files=eval_files or None,
                   strategy=strategy, precision=custom_config.get("precision", "auto"),
                   printer=logging.info)
    logging.info("CLUE run_fn: final loss %.4f after %d steps, %d parameters",
                 result.final_loss, result.steps, result.num_params)
    pretrainer = load_pretrainer(os.path.join(fn_args.model_run_dir, "pretrainer.keras"))
    export_saved_model(pretrainer, vocab_dir, fn_args.serving_model_dir)
