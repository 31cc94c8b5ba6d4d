"""The optimiser of CLUE pre-training (paper section 2.2): AdamW with decoupled weight
decay, global-norm clipping of the global batch's gradient, linear warm-up then
cosine decay, and dynamic loss scaling under ``mixed_float16``."""

from __future__ import annotations

from typing import Optional

import keras
import tensorflow as tf

from clue_keras.config import TrainConfig


def make_schedule(tc: TrainConfig) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up over ``warmup_fraction`` of the steps to ``learning_rate``, then
    cosine decay to ``final_lr_fraction * learning_rate`` at ``train_steps``."""
    warmup = max(1, int(round(tc.warmup_fraction * tc.train_steps)))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(1, tc.train_steps - warmup),
        alpha=tc.final_lr_fraction,
        warmup_target=tc.learning_rate,
        warmup_steps=warmup,
    )


@keras.saving.register_keras_serializable(package="clue")
class GlobalClipAdamW(keras.optimizers.AdamW):
    """AdamW whose global-norm clipping applies to the gradient of the GLOBAL batch.

    Keras' own ``global_clipnorm`` clips each replica's gradient before the
    cross-replica sum, so under a strategy the update is the sum of N separately
    clipped gradients, not the single-device update on the same global batch. Here
    the clip follows the sum (the TensorFlow backend's ``_all_reduce_sum_gradients``,
    which every update step calls; with one replica the sum is the identity).
    """

    def __init__(self, clip_global_norm: Optional[float] = None, **kwargs):
        super().__init__(**kwargs)
        self.clip_global_norm = clip_global_norm

    def _all_reduce_sum_gradients(self, grads_and_vars):
        grads_and_vars = list(super()._all_reduce_sum_gradients(grads_and_vars))
        if not self.clip_global_norm:
            return grads_and_vars
        present = [i for i, (g, _) in enumerate(grads_and_vars) if g is not None]
        # Dense first: the norm of IndexedSlices (embedding gradients) would count
        # each of a row's repeated lookups separately.
        clipped, _ = tf.clip_by_global_norm(
            [tf.convert_to_tensor(grads_and_vars[i][0]) for i in present],
            self.clip_global_norm)
        for i, g in zip(present, clipped):
            grads_and_vars[i] = (g, grads_and_vars[i][1])
        return grads_and_vars

    def get_config(self):
        return {**super().get_config(), "clip_global_norm": self.clip_global_norm}


def make_optimizer(tc: TrainConfig, policy: str) -> keras.optimizers.Optimizer:
    """AdamW with decoupled weight decay on every weight but the logit scale, global-norm
    clipping of the global batch's gradient, and dynamic loss scaling under
    ``mixed_float16``."""
    opt = GlobalClipAdamW(
        learning_rate=make_schedule(tc), weight_decay=tc.weight_decay,
        clip_global_norm=tc.clipnorm,
    )
    opt.exclude_from_weight_decay(var_names=["log_logit_scale"])
    if policy == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt
