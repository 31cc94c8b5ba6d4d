"""EmbeddingExport: user embeddings and the id-lookup model, after the Evaluator.

Spec / executor / component split as in tfx ``examples/custom_components/hello_world``
(and `components.behavior_preprocess`). Inputs, all artifacts:

* ``model``: the Trainer's Model (the serving SavedModel under ``Format-Serving``);
* ``user_examples``: BehaviorPreprocess's per-user records, every split: each kept
  user is embedded from the records the Trainer and the Evaluator read, through the
  model's ``embed_tokens`` signature (equal to ``serving_default`` on the raw texts);
* ``blessing``: the Evaluator's ModelBlessing. It orders the component after the
  Evaluator; an unblessed model is not embedded (the executor writes nothing and
  sets ``skipped`` = 1), and the LookupPusher, gated by the same blessing, pushes
  nothing.

Output ``lookup_model`` (``Model``): ``Format-Serving/`` is the lookup SavedModel
(`clue_keras.embeddings.lookup_model`: ``user_id`` string [B] -> ``embedding``
float32 [B, P*D], ``found`` bool [B]; unknown ids get zeros and ``found`` False),
so TFX's stock Pusher pushes it like any model; ``embeddings/`` is the table it was
built from (Parquet shards + ``manifest.json``, `clue_keras.embeddings.table`).

The embedding is a Beam job (`executor.build_pipeline`), so it runs on the
pipeline's ``beam_pipeline_args`` like ExampleGen, StatisticsGen and
BehaviorPreprocess (DirectRunner locally; Flink, Spark, Dataflow, Dask in production).
"""

from __future__ import annotations

from tfx import types
from tfx.dsl.components.base import base_beam_component
from tfx.dsl.components.base import executor_spec
from tfx.types import channel_utils
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter
from tfx.types.component_spec import ExecutionParameter

from components.embedding_export import executor

#: Sub-directory of the embeddings table inside the output artifact.
EMBEDDINGS_DIRNAME = executor.EMBEDDINGS_DIRNAME


class EmbeddingExportSpec(types.ComponentSpec):
    """Inputs, outputs and parameters of EmbeddingExport."""

    PARAMETERS = {
        # Most users per SavedModel call.
        "batch_size": ExecutionParameter(type=int, optional=True),
        # Parquet shards of the table; 0 = the runner decides.
        "num_shards": ExecutionParameter(type=int, optional=True),
    }
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "user_examples": ChannelParameter(type=standard_artifacts.Examples),
        "blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
    }
    OUTPUTS = {
        "lookup_model": ChannelParameter(type=standard_artifacts.Model),
    }


class EmbeddingExport(base_beam_component.BaseBeamComponent):
    """Embeds every kept user with the blessed encoder; builds the id-lookup SavedModel."""

    SPEC_CLASS = EmbeddingExportSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(self, model: types.BaseChannel, user_examples: types.BaseChannel,
                 blessing: types.BaseChannel, batch_size: int = 256, num_shards: int = 0):
        """Builds the component.

        Args:
          model: the Trainer's ``model`` output.
          user_examples: BehaviorPreprocess's ``user_examples`` output.
          blessing: the Evaluator's ``blessing`` output.
          batch_size: most users per SavedModel call (>= 1).
          num_shards: Parquet shards of the embeddings table (0: the runner decides).
        """
        if batch_size < 1 or num_shards < 0:
            raise ValueError(f"need batch_size >= 1 and num_shards >= 0, got "
                             f"{batch_size}, {num_shards}")
        spec = EmbeddingExportSpec(
            model=model, user_examples=user_examples, blessing=blessing,
            batch_size=int(batch_size), num_shards=int(num_shards),
            lookup_model=channel_utils.as_channel([standard_artifacts.Model()]))
        super().__init__(spec=spec)
