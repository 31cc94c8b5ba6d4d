"""Pre-trainers that differ only in how the encoder computes, with the same weights."""

from clue_keras.config import ModelConfig
from clue_keras.encoder import CLUEEncoder
from clue_keras.pretrainer import CLUEPretrainer


def same_weight_pretrainers(mc: ModelConfig, *encoder_kwargs: dict) -> list:
    """One built ``CLUEPretrainer`` per dict of ``CLUEEncoder`` arguments, all with
    the first one's (random) weights."""
    models = []
    for kwargs in encoder_kwargs:
        enc = CLUEEncoder.from_config_dataclass(mc, **kwargs)
        model = CLUEPretrainer(enc, projection_dim=mc.projection_dim)
        model.build(enc.input_shape_for_build())
        models.append(model)
    for model in models[1:]:
        model.set_weights(models[0].get_weights())
    return models
