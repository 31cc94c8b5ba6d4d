"""Serving CLUE user embeddings over TensorFlow Serving's gRPC API.

* ``server``: a small local server speaking TF Serving's ``PredictionService``
  and ``ModelService`` over the TF Serving model layout
  (``<base>/<version>/saved_model.pb``), for development and tests where no
  ``tensorflow_model_server`` binary exists (``clue serve``).
* ``client``: ``CLUEClient``, for that server or a real TF Serving alike:
  request chunking under the gRPC message limit, deadlines, retries, per-user
  errors.
* ``embed_file``: a JSONL file of users through a served model into Parquet,
  rejected users into ``<out stem>.errors.jsonl`` (``clue embed``).
* ``models_config``: a TF Serving ``models.config`` for the same directory
  (``clue serving-config``), for the ``tensorflow/serving`` image::

      clue serving-config --model-name clue --base-path /models/clue --out serving/models.config
      docker run --rm -p 127.0.0.1:8500:8500 \\
          -v "$PWD/serving_model:/models/clue" -v "$PWD/serving:/config" \\
          tensorflow/serving:2.16.1 \\
          --model_config_file=/config/models.config --file_system_poll_wait_seconds=1

Names are imported lazily so ``import clue_keras.serving`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CLUEClient": "clue_keras.serving.client",
    "ServingError": "clue_keras.serving.client",
    "embed_jsonl": "clue_keras.serving.embed_file",
    "serve": "clue_keras.serving.server",
    "ServingServer": "clue_keras.serving.server",
    "models_config_text": "clue_keras.serving.models_config",
    "write_models_config": "clue_keras.serving.models_config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
