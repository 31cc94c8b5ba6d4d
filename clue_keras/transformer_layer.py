"""keras-hub's TransformerEncoder with its attention softmax in float32 and its
feed-forward matmuls as plain 2-D matrix products."""

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
class FlatDense(keras.layers.Dense):
    """``Dense`` that folds the leading axes of its input into one: a [..., D] input
    runs as a single [rows, D] x [D, units] matmul, then takes its shape back.

    Keras' ``Dense`` multiplies a [N, T, D] input by the kernel as a broadcast
    ``BatchMatMulV2``. Its kernel gradient is then N separate [D, T] x [T, units]
    products summed by a ``Sum``: on CPU 70% and 14% of a clue-4m training
    step's kernel time (docs/PERFORMANCE.md, "Profile"). Same weights and
    results; 2-D ``MatMul`` forward and backward.

    The activation runs in float32 whatever the compute dtype: TensorFlow's CPU
    kernels for bfloat16 elementwise ops are scalar, and GELU's forward and
    backward cost 1.6x more in bfloat16 than cast to float32 and back
    (docs/PERFORMANCE.md, "Elementwise work under mixed_bfloat16"). In float32
    the casts are no-ops.
    """

    def call(self, inputs, training=None):
        shape = ops.shape(inputs)
        flat = inputs if len(shape) == 2 else ops.reshape(inputs, (-1, shape[-1]))
        y = ops.matmul(flat, self.kernel)
        if self.bias is not None:
            y = ops.add(y, self.bias)
        if self.activation is not None:
            y = ops.cast(self.activation(ops.cast(y, "float32")), y.dtype)
        return y if len(shape) == 2 else ops.reshape(y, (*shape[:-1], self.units))


@keras.saving.register_keras_serializable(package="clue")
class TransformerLayer(keras_hub.layers.TransformerEncoder):
    """One post-norm transformer encoder block (keras-hub) with float32 softmax.

    LayerNorm already computes in float32 in Keras 3 (``ops.layer_normalization``);
    this class swaps the attention softmax and makes the feed-forward layers
    :class:`FlatDense`. Same constructor, weights and call as
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
        # keras-hub builds plain Dense layers; same weights, 2-D matmuls.
        self._feedforward_intermediate_dense.__class__ = FlatDense
        self._feedforward_output_dense.__class__ = FlatDense
