"""CLUE: Contrastive Learning User Encoder, as a Keras 3 library.

This package holds the model, loss, tokenizer, data and training code. It never
imports TFX and never touches ``tf.keras`` (see README, "Keras 2 / Keras 3").
"""

__version__ = "0.1.0"
