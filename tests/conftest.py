"""Test-wide setup: quiet TensorFlow, Keras 2 for TFRS, two logical CPU devices.

Must run before TensorFlow is imported anywhere: TF_USE_LEGACY_KERAS makes
``tf.keras`` the Keras 2 that TFRS needs (``import keras`` stays Keras 3), and
two logical CPUs let the MirroredStrategy tests run on this machine.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

from clue_keras.distribute import configure_logical_cpus  # noqa: E402

configure_logical_cpus(2)
