"""TFX Trainer entry point: ``run_fn(fn_args)`` trains CLUE and exports the SavedModel.

Referenced by Python path (``tfx_pipeline.trainer_module.run_fn``) so it is
imported from the installed package, locally and in the container image.

Reads from ``fn_args``:
  train_files / eval_files   ``[<user_examples>/Split-train/*]`` / ``Split-eval``;
                             the vocabulary is ``<user_examples>/vocab/``
  model_run_dir              checkpoints, TensorBoard logs, pretrainer.keras,
                             train_result.json (final loss, steps, params ...)
  serving_model_dir          the serving SavedModel (`clue_keras.export`)
  custom_config              `tfx_pipeline.config.TrainerSettings` as written by
                             ``PipelineConfig.trainer_custom_config()``: preset name,
                             model and train configs, precision, cpu_replicas
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Sequence

from absl import logging


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


def _settings(custom_config: Dict[str, Any]):
    """`TrainerSettings` from ``custom_config``, with the Trainer's normalisation:
    ``checkpoint_every=0`` means once at the end, progress every <= 10 steps."""
    from tfx_pipeline.config import TrainerSettings

    settings = TrainerSettings.from_custom_config(custom_config)
    tc = settings.train
    tc = tc.replace(checkpoint_every=tc.checkpoint_every or tc.train_steps,
                    log_every=max(1, min(tc.log_every, tc.train_steps)))
    return settings, tc


def run_fn(fn_args) -> None:
    """Trains on ``fn_args.train_files`` and exports to ``fn_args.serving_model_dir``.

    Args:
      fn_args: `tfx.components.FnArgs` (see the module docstring for what is read).
    """
    from clue_keras.distribute import get_strategy, is_chief
    from clue_keras.export import export_saved_model
    from clue_keras.train import load_pretrainer, train

    settings, train_config = _settings(dict(fn_args.custom_config or {}))
    model_config = settings.model
    train_files: List[str] = list(fn_args.train_files)
    eval_files: List[str] = list(fn_args.eval_files or [])
    vocab_dir = vocab_dir_from_files(train_files)
    users_eval = _examples_stats(vocab_dir).get("users_eval")
    if eval_files and users_eval is not None and users_eval < train_config.batch_size:
        # A held-out loss needs one full global batch (batches have a static size).
        logging.warning("eval split has %d users < batch %d: no held-out loss",
                        users_eval, train_config.batch_size)
        eval_files = []
    strategy = get_strategy(settings.cpu_replicas)
    logging.info("CLUE run_fn: preset %s, %d steps, batch %d, vocab %s",
                 settings.preset, train_config.train_steps,
                 train_config.batch_size, vocab_dir)
    result = train(train_files, vocab_dir, model_config, train_config,
                   model_dir=fn_args.model_run_dir, eval_files=eval_files or None,
                   strategy=strategy, precision=settings.precision,
                   printer=logging.info)
    logging.info("CLUE run_fn: final loss %.4f after %d steps, %d parameters",
                 result.final_loss, result.steps, result.num_params)
    if not is_chief(strategy):
        return  # only the chief exports (it alone wrote pretrainer.keras)
    pretrainer = load_pretrainer(os.path.join(fn_args.model_run_dir, "pretrainer.keras"))
    export_saved_model(pretrainer, vocab_dir, fn_args.serving_model_dir)
