"""Masked mean pooling (paper eq. 1 and 3: MEAN over non-padding rows)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="clue")
class MaskedMean(keras.layers.Layer):
    """Mean of the rows of ``x`` where ``mask`` is true, accumulated in float32.

    Call args:
      x: float [..., T, D].
      mask: bool [..., T]; rows with no true entry pool to zeros (never NaN).
    Returns: [..., D] in the layer's compute dtype.
    """

    def call(self, x, mask):
        x32 = ops.cast(x, "float32")
        m = ops.cast(mask, "float32")[..., None]
        total = ops.sum(x32 * m, axis=-2)
        count = ops.maximum(ops.sum(m, axis=-2), 1.0)
        return ops.cast(total / count, self.compute_dtype)

    def compute_output_shape(self, x_shape, mask_shape=None):
        return tuple(x_shape[:-2]) + (x_shape[-1],)
