"""ClueEvaluator: the downstream evaluation gate between the Trainer and the Pusher.

Spec / executor / component split as in tfx
``examples/custom_components/hello_world``. Input ``model`` is the Trainer's
Model artifact; the executor (`executor.Executor`) computes CLUE features
with its serving SavedModel (``<model.uri>/Format-Serving``) for the
behaviour logs in ``data_dir``, builds an untrained-encoder baseline with the
same architecture and vocabulary, and trains TopPop, U-MLP (CLUE),
U-MLP (Untrained) and, when ``sequence_models`` is 1, T-UBM (BST) and
Hybrid on the downstream task in ``task_dir`` (`clue_tfrs.run`).

Blessed iff MRR(U-MLP (CLUE)) > MRR(TopPop) + ``margin_over_toppop`` and
> MRR(U-MLP (Untrained)) + ``margin_over_untrained`` (a margin of None skips
that comparison). The ``blessing`` output follows TFX's Evaluator: a
``BLESSED`` / ``NOT_BLESSED`` file and custom property ``blessed`` = 1 / 0,
so the stock ``Pusher(model_blessing=...)`` pushes only blessed models.
"""

from __future__ import annotations

from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_component
from tfx.dsl.components.base import executor_spec
from tfx.types import channel_utils
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter
from tfx.types.component_spec import ExecutionParameter

from components.clue_evaluator import executor


class ClueEvaluatorSpec(types.ComponentSpec):
    """Inputs, outputs and parameters of ClueEvaluator."""

    PARAMETERS = {
        # Downstream task: <dir>/interactions.<fmt> + <dir>/catalogue.jsonl.
        "task_dir": ExecutionParameter(type=str),
        # Behaviour logs the user features are computed from (a `clue synth`
        # directory, or one holding behaviors/); default two levels above task_dir.
        "data_dir": ExecutionParameter(type=str, optional=True),
        # Training epochs of every downstream model.
        "epochs": ExecutionParameter(type=int),
        # Seed of the user split, negative sampling, initialisation.
        "seed": ExecutionParameter(type=int),
        # Gate margins on MRR; absent (None) skips that comparison.
        "margin_over_toppop": ExecutionParameter(type=float, optional=True),
        "margin_over_untrained": ExecutionParameter(type=float, optional=True),
        # 1: also train T-UBM (BST) and Hybrid; 0: skip them (faster).
        "sequence_models": ExecutionParameter(type=int),
    }
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
    }
    OUTPUTS = {
        "evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
        "blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
    }


class ClueEvaluator(base_component.BaseComponent):
    """Downstream evaluation (paper Table 3) of a CLUE model, producing a ModelBlessing."""

    SPEC_CLASS = ClueEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(
        self,
        model: types.BaseChannel,
        task_dir: str,
        data_dir: Optional[str] = None,
        epochs: int = 3,
        seed: int = 0,
        margin_over_toppop: Optional[float] = 0.0,
        margin_over_untrained: Optional[float] = 0.0,
        sequence_models: bool = True,
    ):
        """Builds the component.

        Args:
          model: the Trainer's ``model`` output.
          task_dir: downstream task directory (``<data>/downstream/<task>``).
          data_dir: behaviour-log directory for the user features; default:
            two levels above ``task_dir`` (the `clue synth` layout).
          epochs: training epochs of each downstream model (>= 1).
          seed: seed of splits, negatives and initialisation.
          margin_over_toppop: MRR margin U-MLP (CLUE) must beat TopPop by;
            None skips the comparison.
          margin_over_untrained: MRR margin over U-MLP (Untrained); None skips.
          sequence_models: also train T-UBM (BST) and Hybrid.
        """
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        spec = ClueEvaluatorSpec(
            model=model, task_dir=task_dir, data_dir=data_dir, epochs=int(epochs),
            seed=int(seed),
            margin_over_toppop=None if margin_over_toppop is None else float(margin_over_toppop),
            margin_over_untrained=(None if margin_over_untrained is None
                                   else float(margin_over_untrained)),
            sequence_models=int(bool(sequence_models)),
            evaluation=channel_utils.as_channel([standard_artifacts.ModelEvaluation()]),
            blessing=channel_utils.as_channel([standard_artifacts.ModelBlessing()]),
        )
        super().__init__(spec=spec)
