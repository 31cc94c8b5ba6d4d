"""TFX Trainer entry point: ``run_fn(fn_args)`` trains CLUE and exports the SavedModel.

Referenced by Python path (``tfx_pipeline.trainer_module.run_fn``) so it is
imported from the installed package, locally and in the container image.

Reads from ``fn_args``:
  train_files / eval_files   ``[<user_examples>/Split-train/*]`` / ``Split-eval``;
                             the vocabulary is ``<user_examples>/vocab/``
  model_run_dir              checkpoints, TensorBoard logs, pretrainer.keras,
                             train_result.json (final loss, steps, params ...),
                             resume_key.json; trained in a directory a retry of
                             the same Trainer finds again and moved here when
                             done (`tfx_pipeline.trainer_resume`)
  serving_model_dir          the serving SavedModel (`clue_keras.export`)
  custom_config              `tfx_pipeline.config.TrainerSettings` as written by
                             ``PipelineConfig.trainer_custom_config()``: preset name,
                             model and train configs, precision, cpu_replicas
"""

from __future__ import annotations

import os
import sys
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
    """`TrainerSettings` from ``custom_config`` and its `TrainConfig`. ``train`` reads
    ``checkpoint_every=0`` as once at the end, derives the steps from ``epochs`` when
    set (a pass over the train split's users with a pair of services) and scores the
    held-out loss only when the eval split has a batch of such users."""
    from tfx_pipeline.config import TrainerSettings

    settings = TrainerSettings.from_custom_config(custom_config)
    return settings, settings.train


def _print_line(line: str) -> None:
    print(line, flush=True)


def run_fn(fn_args) -> None:
    """Trains on ``fn_args.train_files`` and exports to ``fn_args.serving_model_dir``.

    Args:
      fn_args: `tfx.components.FnArgs` (see the module docstring for what is read).
    """
    from clue_keras.distribute import get_strategy, is_chief
    from clue_keras.export import export_saved_model
    from clue_keras.precision import resolve_policy
    from clue_keras.train import load_pretrainer, train
    from tfx_pipeline.trainer_resume import publish_run, resumable_dir, resume_key

    custom_config = dict(fn_args.custom_config or {})
    settings, train_config = _settings(custom_config)
    model_config = settings.model
    train_files: List[str] = list(fn_args.train_files)
    eval_files: List[str] = list(fn_args.eval_files or [])
    vocab_dir = vocab_dir_from_files(train_files)
    stats = _examples_stats(vocab_dir)
    if stats:
        logging.info("CLUE run_fn: BehaviorPreprocess kept %s train users (%s users of all "
                     "splits with a single service, not pre-trained on)",
                     stats.get("users_train"), stats.get("users_kept_single_service"))
    strategy = get_strategy(settings.cpu_replicas)
    # Checkpoints live where a retry of this Trainer (same inputs, same settings) finds them.
    work_dir = resumable_dir(fn_args.model_run_dir, resume_key(
        train_files + list(fn_args.eval_files or []), custom_config,
        resolve_policy(settings.precision, model_config.hidden_dim)))
    logging.info("CLUE run_fn: preset %s, %s, batch %d, vocab %s", settings.preset,
                 f"{train_config.train_steps} steps" if train_config.epochs is None
                 else f"{train_config.epochs:g} epochs", train_config.batch_size, vocab_dir)
    result = train(train_files, vocab_dir, model_config, train_config,
                   model_dir=work_dir, eval_files=eval_files or None,
                   strategy=strategy, precision=settings.precision,
                   # Progress on standard output (a bar on a terminal): what a person
                   # watching `clue run` or the pod's log sees while the Trainer works.
                   printer=_print_line, progress_bar=sys.stdout.isatty())
    logging.info("CLUE run_fn: final loss %.4f after %d steps, %d parameters",
                 result.final_loss, result.steps, result.num_params)
    if not is_chief(strategy):
        return  # only the chief exports (it alone wrote pretrainer.keras)
    pretrainer = load_pretrainer(os.path.join(work_dir, "pretrainer.keras"))
    export_saved_model(pretrainer, vocab_dir, fn_args.serving_model_dir)  # atomic
    publish_run(work_dir, fn_args.model_run_dir)  # one rename: whole or absent
