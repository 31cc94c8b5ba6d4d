"""One downstream evaluation end to end: features from the SavedModel, the
untrained-encoder baseline, every model of the table, outputs and blessing.

Shared by ``clue evaluate`` and the TFX ``ClueEvaluator`` component.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Dict, Optional

import clue_tfrs  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

from clue_tfrs import evaluate as eval_lib
from clue_tfrs import features
from clue_tfrs import tasks as tasks_lib


@dataclasses.dataclass
class EvaluationOutcome:
    table: "eval_lib.ResultsTable"
    blessed: bool
    reason: str
    paths: Dict[str, str]


def default_behaviors_dir(task_dir: str) -> str:
    """``DATA/downstream/<task>`` -> ``DATA`` (the `clue synth` layout)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(task_dir)))


def export_untrained(model_dir: str, out_dir: str, seed: int = 0) -> str:
    """Exports a randomly initialised encoder with ``model_dir``'s architecture and vocabulary."""
    from clue_keras.export import encoder_from_export, export_saved_model

    encoder = encoder_from_export(model_dir, seed=seed)
    return export_saved_model(encoder, os.path.join(model_dir, "assets"), out_dir)


def run_evaluation(model_dir: str, task_dir: str, out_dir: Optional[str] = None,
                   data_dir: Optional[str] = None, epochs: int = 3, seed: int = 0,
                   margin_over_toppop: Optional[float] = 0.0,
                   margin_over_untrained: Optional[float] = 0.0,
                   sequence_models: bool = True,
                   config: Optional["eval_lib.EvalConfig"] = None) -> EvaluationOutcome:
    """Evaluates the CLUE SavedModel at ``model_dir`` on the task at ``task_dir``.

    ``data_dir`` holds the pre-training behaviour logs the user features are
    computed from (default: two levels above the task, as `clue synth` lays out).
    """
    from clue_keras.synth import read_behaviors

    data_dir = data_dir or default_behaviors_dir(task_dir)
    interactions, catalogue = tasks_lib.load_task(task_dir)
    behaviors = read_behaviors(data_dir)
    with tempfile.TemporaryDirectory(prefix="clue-untrained-") as tmp:
        untrained = export_untrained(model_dir, os.path.join(tmp, "model"), seed=seed)
        sets = {
            "CLUE": (features.user_features(model_dir, behaviors),
                     features.item_features(model_dir, catalogue)),
            "Untrained": (features.user_features(untrained, behaviors),
                          features.item_features(untrained, catalogue)),
        }
    cfg = config or eval_lib.EvalConfig()
    if not sequence_models:
        cfg = dataclasses.replace(cfg, run_sequence_models=False)
    table = eval_lib.evaluate_task(interactions, catalogue, sets, seed=seed, epochs=epochs,
                                   config=cfg, task_name=os.path.basename(task_dir.rstrip("/")))
    blessed, reason = eval_lib.blessing_decision(
        table, margin_over_toppop=margin_over_toppop, margin_over_untrained=margin_over_untrained)
    paths = {}
    if out_dir:
        paths = eval_lib.write_results(table, out_dir)
        tmp_path = os.path.join(out_dir, "blessing.json.tmp")
        with open(tmp_path, "w") as f:
            json.dump({"blessed": blessed, "reason": reason}, f, indent=2)
        os.replace(tmp_path, os.path.join(out_dir, "blessing.json"))
        paths["blessing"] = os.path.join(out_dir, "blessing.json")
    return EvaluationOutcome(table=table, blessed=blessed, reason=reason, paths=paths)
