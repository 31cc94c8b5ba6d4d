"""ClueEvaluator: the downstream evaluation gate between the Trainer and the Pusher.

Spec / executor / component split as in tfx
``examples/custom_components/hello_world``. Inputs, all artifacts:

* ``model``: the Trainer's Model (serving SavedModel under ``Format-Serving``);
* ``user_examples``: BehaviorPreprocess's per-user records (every split), the
  records the Trainer read: user features through the model's ``embed_tokens``
  signature; task users without a record are cold-start (zero vector);
* ``task``: the downstream interactions as tf.Examples (the pipeline's
  ``TaskExampleGen``), so a changed task file re-runs the evaluation and MLMD
  lineage names the task a blessing came from;
* ``catalogue`` (optional): the catalogue as tf.Examples; without it the
  catalogue is the distinct items of the interactions with their newest text.

The executor (`executor.Executor`) builds an untrained-encoder baseline with the
same architecture and vocabulary on the same records and trains TopPop,
U-MLP (CLUE), U-MLP (Untrained) and, when ``sequence_models`` is 1, T-UBM (BST)
and Hybrid (`clue_tfrs.run`).

The verdict is the rule of `blessing.blessing_decision` with the margins
``margin_over_toppop`` / ``margin_over_untrained`` on MRR (a margin of None
skips that comparison). The ``blessing`` output follows TFX's Evaluator: a
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
        # The task's name in the results (a label; the data is the `task` input).
        "task_name": ExecutionParameter(type=str, optional=True),
        # Training epochs of every downstream model.
        "epochs": ExecutionParameter(type=int),
        # Seed of the user split, negative sampling, initialisation.
        "seed": ExecutionParameter(type=int),
        # Gate margins on MRR; absent (None) skips that comparison.
        "margin_over_toppop": ExecutionParameter(type=float, optional=True),
        "margin_over_untrained": ExecutionParameter(type=float, optional=True),
        # 1: also train T-UBM (BST) and Hybrid; 0: skip them (faster).
        "sequence_models": ExecutionParameter(type=int),
        # Confidence of the paired bootstrap bound the blessing needs above the margin.
        "confidence": ExecutionParameter(type=float, optional=True),
    }
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "user_examples": ChannelParameter(type=standard_artifacts.Examples),
        "task": ChannelParameter(type=standard_artifacts.Examples),
        "catalogue": ChannelParameter(type=standard_artifacts.Examples, optional=True),
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
        user_examples: types.BaseChannel,
        task: types.BaseChannel,
        catalogue: Optional[types.BaseChannel] = None,
        task_name: Optional[str] = None,
        epochs: int = 3,
        seed: int = 0,
        margin_over_toppop: Optional[float] = 0.0,
        margin_over_untrained: Optional[float] = 0.0,
        sequence_models: bool = True,
        confidence: float = 0.95,
    ):
        """Builds the component.

        Args:
          model: the Trainer's ``model`` output.
          user_examples: BehaviorPreprocess's ``user_examples`` output.
          task: the task ExampleGen's ``examples`` (the interactions).
          catalogue: the catalogue ExampleGen's ``examples``; None derives the
            catalogue from the interactions.
          task_name: the task's name in the results (default ``task``).
          epochs: training epochs of each downstream model (>= 1).
          seed: seed of splits, negatives and initialisation.
          margin_over_toppop: MRR margin U-MLP (CLUE) must beat TopPop by;
            None skips the comparison.
          margin_over_untrained: MRR margin over U-MLP (Untrained); None skips.
          sequence_models: also train T-UBM (BST) and Hybrid.
          confidence: the blessing needs the lower bound of the one-sided paired
            bootstrap interval at this confidence above each margin; in (0.5, 1).
        """
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if not 0.5 < confidence < 1.0:
            raise ValueError(f"confidence must be in (0.5, 1), got {confidence}")
        spec = ClueEvaluatorSpec(
            model=model, user_examples=user_examples, task=task, catalogue=catalogue,
            task_name=task_name, epochs=int(epochs), seed=int(seed),
            margin_over_toppop=None if margin_over_toppop is None else float(margin_over_toppop),
            margin_over_untrained=(None if margin_over_untrained is None
                                   else float(margin_over_untrained)),
            sequence_models=int(bool(sequence_models)),
            confidence=float(confidence),
            evaluation=channel_utils.as_channel([standard_artifacts.ModelEvaluation()]),
            blessing=channel_utils.as_channel([standard_artifacts.ModelBlessing()]),
        )
        super().__init__(spec=spec)
