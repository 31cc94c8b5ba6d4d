"""One downstream evaluation end to end: the task, user features of the per-user
records through the SavedModel, the untrained-encoder baseline on the same
records, every model of the table, and its output files.

Shared by ``clue evaluate``, the scaling study and the TFX ``ClueEvaluator``
component. Whether the model is blessed is not decided here: that is the
pipeline's gate (``components.clue_evaluator.blessing``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from typing import Dict, Optional, Sequence, TextIO, Union

import clue_tfrs  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

from clue_tfrs import features
from clue_tfrs import tasks as tasks_lib
from clue_tfrs import user_records
from clue_tfrs.evaluate import evaluate_task
from clue_tfrs.protocol import EvalConfig
from clue_tfrs.reporting import ResultsTable, write_results

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EvaluationOutcome:
    """The results table and, when an output directory was given, its files
    (``{"json", "md", "png"}`` -> path)."""

    table: ResultsTable
    paths: Dict[str, str]


def default_behaviors_dir(task: str) -> str:
    """The `clue synth` data directory of a task: ``DATA/downstream/<task>`` (or a file
    in it) -> ``DATA``."""
    from clue_keras.uri import abspath, isfile

    folder = abspath(task).rstrip("/")
    if isfile(folder):
        folder = os.path.dirname(folder)
    return os.path.dirname(os.path.dirname(folder))


def task_label(task: str) -> str:
    """A task's name for the table: its directory's name, or its file's name up to the
    first dot (``.../movies`` -> ``movies``, ``.../views.csv.gz`` -> ``views``)."""
    from clue_keras.uri import isfile

    name = os.path.basename(task.rstrip("/"))
    return name.split(".")[0] if isfile(task) else name


def export_untrained(model_dir: str, out_dir: str, seed: int = 0) -> str:
    """Exports a randomly initialised encoder with ``model_dir``'s architecture and vocabulary."""
    from clue_keras.export import encoder_from_export, export_saved_model

    encoder = encoder_from_export(model_dir, seed=seed)
    return export_saved_model(encoder, os.path.join(model_dir, "assets"), out_dir)


def _load_task(task: Optional[str], task_examples: Optional[Sequence[str]],
               catalogue_examples: Optional[Sequence[str]], name: str):
    if task_examples:
        from clue_tfrs.task_examples import load_task_examples

        return load_task_examples(task_examples, catalogue_examples, source=f"task {name!r}")
    if not task:
        raise ValueError("run_evaluation needs a task: a task file or directory, or "
                         "task_examples (ExampleGen record files)")
    return tasks_lib.load_task(task)


def _record_files(model_dir: str, records, data_dir: Optional[str], task: Optional[str],
                  tmp: str, min_items: int, min_services: int):
    """The per-user record files: ``records`` (checked against the model's vocabulary),
    else the raw logs of ``data_dir`` (default: the task's `clue synth` data directory)
    encoded with the model's vocabulary into ``tmp``."""
    if records is not None:
        if isinstance(records, str):
            user_records.check_vocabulary(records, model_dir)
        return user_records.record_files(records)
    if not data_dir and not task:
        raise ValueError("run_evaluation needs user records (records=) or behaviour logs "
                         "(data_dir=) when the task comes as task_examples")
    path = os.path.join(tmp, "records", "users.tfrecord.gz")
    counts = user_records.encode_behaviors(data_dir or default_behaviors_dir(task), model_dir,
                                           path, min_items=min_items,
                                           min_services=min_services)
    log.info("user records from raw logs: %s", counts)
    return [path]


def run_evaluation(model_dir: str, task: Optional[str] = None, out_dir: Optional[str] = None,
                   data_dir: Optional[str] = None, epochs: int = 3, seed: int = 0,
                   sequence_models: bool = True, config: Optional[EvalConfig] = None,
                   records: Union[None, str, Sequence[str]] = None,
                   task_examples: Optional[Sequence[str]] = None,
                   catalogue_examples: Optional[Sequence[str]] = None,
                   task_name: Optional[str] = None, min_items: int = 2,
                   min_services: int = 1, progress: Optional[TextIO] = None,
                   confidence: Optional[float] = None) -> EvaluationOutcome:
    """Evaluates the CLUE SavedModel at ``model_dir`` on one downstream task.

    The task: ``task``, a file or directory (`clue_tfrs.tasks.load_task`), or
    ``task_examples``, the ExampleGen record files of its interactions (and
    ``catalogue_examples`` of its catalogue; without, the catalogue is derived
    from the interactions): `clue_tfrs.task_examples`.

    The users: ``records``, a records directory (every split) or record files,
    embedded through ``embed_tokens`` (`clue_tfrs.features.record_features`);
    else the raw behaviour logs of ``data_dir`` (default: two levels above the
    task, as `clue synth` lays out), cleaned and tokenised with the model's
    vocabulary first (`clue_tfrs.user_records.encode_behaviors`, activity
    threshold ``min_items`` / ``min_services``). The untrained-encoder baseline
    embeds the same records. Task users without a record are cold-start.

    With ``out_dir``, results.json / results.md / results.png are written there.
    ``progress``: stream for the downstream models' fitting progress (None: none).
    ``confidence``: of the paired bootstrap bounds (None: ``config``'s, 0.95).
    """
    name = task_name or (task_label(task) if task else "task")
    interactions, catalogue = _load_task(task, task_examples, catalogue_examples, name)
    users = set(interactions["user_id"])
    with tempfile.TemporaryDirectory(prefix="clue-eval-") as tmp:
        files = _record_files(model_dir, records, data_dir, task, tmp, min_items, min_services)
        untrained = export_untrained(model_dir, os.path.join(tmp, "model"), seed=seed)
        sets = {
            "CLUE": (features.record_features(model_dir, files, users),
                     features.item_features(model_dir, catalogue)),
            "Untrained": (features.record_features(untrained, files, users),
                          features.item_features(untrained, catalogue)),
        }
    log.info("user features for %d of the task's %d users (the rest are cold-start)",
             len(sets["CLUE"][0]), len(users))
    cfg = config or EvalConfig()
    if confidence is not None:
        cfg = dataclasses.replace(cfg, confidence=float(confidence))
    if not sequence_models:
        cfg = dataclasses.replace(cfg, run_sequence_models=False)
    table = evaluate_task(interactions, catalogue, sets, seed=seed, epochs=epochs,
                          config=cfg, task_name=name, progress=progress)
    paths = write_results(table, out_dir) if out_dir else {}
    return EvaluationOutcome(table=table, paths=paths)
