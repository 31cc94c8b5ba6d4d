"""keras-hub's TransformerEncoder with its attention softmax in float32."""

import keras
import keras_hub
from keras import ops


@keras.saving.register_keras_serializable(package="clue")
class Float32Softmax(keras.layers.Softmax):
    """Softmax computed in float32 whatever the input dtype; returns the input dtype.

    Under ``mixed_float16`` / ``mixed_bfloat16`` attention logits are half
    precision; exponentiating them there loses the small probabilities.
    """

    def call(self, inputs, mask=None):
        out = super().call(ops.cast(inputs, "float32"), mask=mask)
        return ops.cast(out, inputs.dtype)


@keras.saving.register_keras_serializable(package="clue")
class TransformerLayer(keras_hub.layers.TransformerEncoder):
    """One post-norm transformer encoder block (keras-hub) with float32 softmax.

    LayerNorm already computes in float32 in Keras 3 (``ops.layer_normalization``);
    this class only swaps the attention softmax. Same constructor and call as
    ``keras_hub.layers.TransformerEncoder``: call(x [B, T, D], padding_mask bool [B, T]).
    """

    def build(self, inputs_shape):
        super().build(inputs_shape)
        attention = self._self_attention_layer
        axis = attention._softmax.axis
        # The attention layer is built (and its tracker locked) by now; its
        # softmax holds no state, so swapping it changes no weights.
        attention._tracker.unlock()
        attention._softmax = Float32Softmax(axis=axis, dtype=self.dtype_policy)
        attention._tracker.lock()
