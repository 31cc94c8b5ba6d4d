"""ClueEvaluator executor: `clue_tfrs.run.run_evaluation` on the Trainer's model, then a blessing.

The executor does artifact I/O and validation; the table comes from
`clue_tfrs.run`, the verdict from the rule in `components.clue_evaluator.blessing`
(applied here, in this process, to the written results.json).

Inputs, all artifacts (so a change of any re-runs it and MLMD records which
were used): ``model`` (the serving SavedModel under ``Format-Serving``),
``user_examples`` (BehaviorPreprocess's per-user records, every split: the user
features, `clue_tfrs.features.record_features`), ``task`` (the task
ExampleGen's tf.Examples of the interactions, every split) and optionally
``catalogue`` (the catalogue's tf.Examples; without it the catalogue is
derived from the interactions): `clue_tfrs.task_examples`.

The evaluation is TFRS (Keras 2) code, so ``tf.keras`` must be the ``tf_keras``
package in the process that runs it, i.e. ``TF_USE_LEGACY_KERAS=1`` before
TensorFlow is first imported. `clue run` and the test suite set it. When the
executor finds itself in a process where ``tf.keras`` already resolved to
Keras 3 (e.g. a container entry point that imported TFX first), it runs the
evaluation in a child Python process with the variable set instead, so the
result is the same either way; both paths exchange results only through the
files written into the ``evaluation`` artifact.

Outputs:
```
<evaluation.uri>/results.json   ResultsTable (models x metrics, provenance)
<evaluation.uri>/results.md     the table as Markdown (paper Table 3)
<evaluation.uri>/results.png    grouped bar chart
<evaluation.uri>/blessing.json  {"blessed": bool, "reason": str}
<evaluation.uri>/eval_config.json, metrics-*.tfrecord, validations-*.tfrecord
                                the same table and verdict in TFMA's format, for
                                tfma.load_eval_result (`tfma_output`)
<blessing.uri>/BLESSED | NOT_BLESSED   empty marker file (TFX convention)
```
Custom properties: on ``blessing``: ``blessed`` (1 / 0), ``blessing_message``,
``current_model``, ``current_model_id``; on ``evaluation``: ``blessed``,
``reason``, ``task`` and ``mrr/<model column>`` (float) for every model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional, Tuple

from absl import logging
from tfx import types
from tfx.components.evaluator import constants
from tfx.dsl.components.base import base_executor
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.utils import io_utils
from tfx.utils import path_utils

from components.clue_evaluator.blessing import blessing_decision, write_verdict

#: Files the evaluation writes into the ``evaluation`` artifact (the executor adds blessing.json).
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"

#: Prefix of the per-model MRR custom properties of the ``evaluation`` artifact.
MRR_PROPERTY_PREFIX = "mrr/"

#: Importable name of this module (the child process runs it with -m).
_MODULE = "components.clue_evaluator.executor"

#: Execution properties and the value an absent one stands for. A margin that
#: is absent (the component was given None) skips that comparison.
PARAMETER_DEFAULTS: Dict[str, Any] = {
    "task_name": "task",
    "epochs": 3,
    "seed": 0,
    "margin_over_toppop": None,
    "margin_over_untrained": None,
    "sequence_models": 1,
    "confidence": 0.95,
}

#: The parameters of the blessing rule (the rest go to `run_evaluation`).
GATE_PARAMETERS = ("margin_over_toppop", "margin_over_untrained")


class EvaluationConfigError(ValueError):
    """An execution property of ClueEvaluator is missing or out of range."""


def evaluation_params(exec_properties: Dict[str, Any]) -> Dict[str, Any]:
    """Validated execution properties: the keyword arguments of
    `clue_tfrs.run.run_evaluation` (minus model / out dirs and the data, which
    come from the input artifacts) and the `GATE_PARAMETERS`.

    Raises:
      EvaluationConfigError: ``epochs`` < 1 (naming the property).
    """
    p = {k: exec_properties.get(k, d) for k, d in PARAMETER_DEFAULTS.items()}
    if p["epochs"] is None or int(p["epochs"]) < 1:
        raise EvaluationConfigError(f"ClueEvaluator: epochs must be >= 1, got {p['epochs']}")
    confidence = PARAMETER_DEFAULTS["confidence"] if p["confidence"] is None else p["confidence"]
    if not 0.5 < float(confidence) < 1.0:
        raise EvaluationConfigError(
            f"ClueEvaluator: confidence must be in (0.5, 1), got {confidence}")
    return {
        "task_name": str(p["task_name"] or PARAMETER_DEFAULTS["task_name"]),
        "epochs": int(p["epochs"]),
        "seed": int(p["seed"]),
        "margin_over_toppop": _margin(p["margin_over_toppop"]),
        "margin_over_untrained": _margin(p["margin_over_untrained"]),
        "sequence_models": bool(int(p["sequence_models"])),
        "confidence": float(confidence),
    }


def example_files(artifact: types.Artifact, what: str) -> List[str]:
    """The record files of every split of an Examples artifact, sorted.

    Raises:
      FileNotFoundError: the artifact has no record file, naming ``what`` and its uri.
    """
    splits = artifact_utils.decode_split_names(artifact.split_names) or []
    files = []
    for split in splits:
        uri = artifact_utils.get_split_uri([artifact], split)
        files += [f for f in fileio.glob(os.path.join(uri, "*")) if not fileio.isdir(f)]
    if not files:
        raise FileNotFoundError(f"ClueEvaluator: the {what} artifact {artifact.uri} has no "
                                f"record files (splits {splits})")
    return sorted(files)


def data_params(input_dict: Dict[str, List[types.Artifact]]) -> Dict[str, Any]:
    """The data keyword arguments of `run_evaluation` from the input artifacts:
    ``records`` (the ``user_examples`` directory), ``task_examples`` and
    ``catalogue_examples`` (record files; None without a ``catalogue`` input)."""
    users = artifact_utils.get_single_instance(input_dict["user_examples"])
    task = artifact_utils.get_single_instance(input_dict["task"])
    catalogue = input_dict.get("catalogue") or []
    return {
        "records": users.uri,
        "task_examples": example_files(task, "task"),
        "catalogue_examples": (example_files(artifact_utils.get_single_instance(catalogue),
                                             "catalogue") if catalogue else None),
    }


def _margin(value: Any) -> Optional[float]:
    return None if value is None else float(value)


def tf_keras_is_keras2() -> bool:
    """True when ``tf.keras`` is (or, on first use, will be) Keras 2 in this process.

    Sets ``TF_USE_LEGACY_KERAS=1`` unless already set, so a process that has
    not resolved ``tf.keras`` yet gets Keras 2.
    """
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    return getattr(tf.keras, "__name__", "").startswith("tf_keras")


def split_params(params: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``evaluation_params`` -> (`run_evaluation` keyword arguments, blessing margins)."""
    run = {k: v for k, v in params.items() if k not in GATE_PARAMETERS}
    gate = {k: params.get(k) for k in GATE_PARAMETERS}
    return run, gate


def evaluate_in_process(model_dir: str, out_dir: str, params: Dict[str, Any]) -> None:
    """Runs the evaluation here; writes results.* to ``out_dir``.

    ``params``: keyword arguments of `clue_tfrs.run.run_evaluation` (no margins).
    """
    import clue_tfrs  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    from clue_tfrs.run import run_evaluation  # pylint: disable=import-outside-toplevel

    outcome = run_evaluation(model_dir, out_dir=out_dir, **params)
    logging.info("ClueEvaluator: wrote %s", ", ".join(sorted(outcome.paths.values())))


def evaluate_in_subprocess(model_dir: str, out_dir: str, params: Dict[str, Any]) -> None:
    """Runs `evaluate_in_process` in a child Python with ``TF_USE_LEGACY_KERAS=1``.

    Raises:
      RuntimeError: the child failed; the message starts with its last output
        line (normally the exception) and ends with the last 3000 characters.
    """
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cmd = [sys.executable, "-m", _MODULE, json.dumps(
        {"model_dir": model_dir, "out_dir": out_dir, "params": params})]
    logging.info("ClueEvaluator: tf.keras is Keras 3 in this process; evaluating in a child "
                 "process with TF_USE_LEGACY_KERAS=1: %s", " ".join(cmd[:3]))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.stdout:
        logging.info("ClueEvaluator child stdout:\n%s", proc.stdout[-4000:])
    if proc.returncode:
        text = proc.stderr or proc.stdout or ""
        last = next((line for line in reversed(text.splitlines()) if line.strip()), "")
        raise RuntimeError(f"ClueEvaluator: the evaluation child process failed with exit code "
                           f"{proc.returncode}: {last}\n--- its output, last part ---\n"
                           f"{text[-3000:]}")


def read_results(out_dir: str) -> Dict[str, Any]:
    """The results.json dict the evaluation wrote into ``out_dir``.

    Raises:
      RuntimeError: it is missing (the evaluation did not finish).
    """
    path = os.path.join(out_dir, RESULTS_JSON)
    if not fileio.exists(path):
        raise RuntimeError(f"ClueEvaluator: the evaluation wrote no {path}")
    with fileio.open(path) as f:
        return json.loads(f.read())


def mrr_by_model(table: Dict[str, Any]) -> Dict[str, float]:
    """``{model column: MRR}`` from a results.json dict (models without MRR are skipped)."""
    return {c: float(v["MRR"]) for c, v in table["values"].items() if "MRR" in v}


def write_blessing(blessing: types.Artifact, blessed: bool, reason: str,
                   model: Optional[types.Artifact] = None) -> None:
    """Marks ``blessing`` the way TFX's Evaluator does (file + ``blessed`` property).

    Writes an empty ``BLESSED`` or ``NOT_BLESSED`` file into ``blessing.uri``
    (removing the other one, should a retried execution have left it) and sets
    the int custom property ``blessed`` to 1 or 0, which is what the stock
    Pusher checks (`tfx.utils.model_utils.is_model_blessed`).
    """
    name, other = ((constants.BLESSED_FILE_NAME, constants.NOT_BLESSED_FILE_NAME) if blessed
                   else (constants.NOT_BLESSED_FILE_NAME, constants.BLESSED_FILE_NAME))
    fileio.makedirs(blessing.uri)
    if fileio.exists(os.path.join(blessing.uri, other)):
        fileio.remove(os.path.join(blessing.uri, other))
    io_utils.write_string_file(os.path.join(blessing.uri, name), "")
    blessing.set_int_custom_property(
        constants.ARTIFACT_PROPERTY_BLESSED_KEY,
        constants.BLESSED_VALUE if blessed else constants.NOT_BLESSED_VALUE)
    blessing.set_string_custom_property(constants.ARTIFACT_PROPERTY_BLESSING_MESSAGE_KEY, reason)
    if model is not None:
        blessing.set_string_custom_property(
            constants.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY, model.uri)
        if model.id:
            blessing.set_int_custom_property(
                constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY, model.id)


class Executor(base_executor.BaseExecutor):
    """Evaluates the Trainer's serving SavedModel downstream and blesses it (or not)."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        """Writes the results table into ``evaluation`` and the verdict into ``blessing``.

        Args:
          input_dict: ``model``: the Trainer's Model artifact (serving
            SavedModel under ``Format-Serving``); ``user_examples``:
            BehaviorPreprocess's records; ``task``: the task's tf.Examples;
            optionally ``catalogue``: the catalogue's tf.Examples.
          output_dict: ``evaluation`` (ModelEvaluation), ``blessing`` (ModelBlessing).
          exec_properties: see `PARAMETER_DEFAULTS` / `ClueEvaluatorSpec`.

        Raises:
          EvaluationConfigError: bad execution properties.
          FileNotFoundError: the model has no serving SavedModel.
          RuntimeError: the evaluation failed in a child process.
        """
        self._log_startup(input_dict, output_dict, exec_properties)
        params = evaluation_params(exec_properties)
        model = artifact_utils.get_single_instance(input_dict["model"])
        model_dir = path_utils.serving_model_path(
            model.uri, path_utils.is_old_model_artifact(model))
        if not fileio.exists(os.path.join(model_dir, "saved_model.pb")):
            raise FileNotFoundError(f"ClueEvaluator: no serving SavedModel in {model_dir} "
                                    "(the Trainer's Model artifact)")
        evaluation = artifact_utils.get_single_instance(output_dict["evaluation"])
        blessing = artifact_utils.get_single_instance(output_dict["blessing"])
        fileio.makedirs(evaluation.uri)

        run_params, gate = split_params(params)
        run_params.update(data_params(input_dict))
        if tf_keras_is_keras2():
            evaluate_in_process(model_dir, evaluation.uri, run_params)
        else:
            evaluate_in_subprocess(model_dir, evaluation.uri, run_params)

        table = read_results(evaluation.uri)
        blessed, reason = blessing_decision(table, **gate)
        write_verdict(evaluation.uri, blessed, reason)
        # TFMA's files (imported here: importing TFMA resolves tf.keras, which
        # `tf_keras_is_keras2` must decide first).
        from components.clue_evaluator.tfma_output import write_tfma_output

        write_tfma_output(evaluation.uri, table, blessed, reason, model_location=model_dir,
                          data_location=input_dict["task"][0].uri)
        for column, mrr in mrr_by_model(table).items():
            evaluation.set_float_custom_property(MRR_PROPERTY_PREFIX + column, mrr)
        evaluation.set_int_custom_property("blessed", int(blessed))
        evaluation.set_string_custom_property("reason", reason)
        evaluation.set_string_custom_property("task", params["task_name"])
        write_blessing(blessing, blessed, reason, model)
        logging.info("ClueEvaluator: %s (results in %s, blessing in %s)",
                     reason, evaluation.uri, blessing.uri)


def _main(argv: List[str]) -> int:
    """Child-process entry point of `evaluate_in_subprocess`: one JSON argument."""
    if len(argv) != 2:
        print(f"usage: python -m {_MODULE} "
              "'{\"model_dir\": ..., \"out_dir\": ..., \"params\": {...}}'", file=sys.stderr)
        return 2
    job = json.loads(argv[1])
    if not tf_keras_is_keras2():
        print("ClueEvaluator child: tf.keras is still Keras 3 although TF_USE_LEGACY_KERAS=1; "
              "is the tf_keras package installed?", file=sys.stderr)
        return 1
    evaluate_in_process(job["model_dir"], job["out_dir"], job["params"])
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
