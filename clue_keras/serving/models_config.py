"""TensorFlow Serving ``models.config`` files (``ModelServerConfig`` text proto).

The text is built from ``tensorflow_serving.config.model_server_config_pb2``
and printed with ``google.protobuf.text_format``, so it is valid by
construction and parses back with ``text_format.Parse``. Pass the file to the
``tensorflow/serving`` image with ``--model_config_file=/config/models.config``,
or to ``clue serve --model-config-file`` (`read_models_config`), e.g. one naming
the encoder (``clue``) and the user-id lookup model (``clue_user_lookup``).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from clue_keras.atomic import write_text_atomic
from clue_keras.uri import is_remote


def models_config(
    models: Sequence[Tuple[str, str]], num_versions: int = 1
) -> model_server_config_pb2.ModelServerConfig:
    """Builds a ``ModelServerConfig`` serving each (name, base_path).

    Args:
      models: ``(model_name, base_path)`` pairs; ``base_path`` is the path *as
        the server sees it* (inside the container, e.g. ``/models/clue``),
        holding ``<integer version>/saved_model.pb`` directories.
      num_versions: how many of the newest versions each model serves at once
        (TF Serving's ``latest`` version policy; its default is 1).

    Raises:
      ValueError: on an empty list, an empty or duplicate name, a relative
        base path or ``num_versions < 1``.
    """
    if not models:
        raise ValueError("models_config needs at least one (name, base_path) pair")
    if num_versions < 1:
        raise ValueError(f"num_versions must be >= 1, got {num_versions}")
    config = model_server_config_pb2.ModelServerConfig()
    seen = set()
    for name, base_path in models:
        if not name:
            raise ValueError("model name must not be empty")
        if name in seen:
            raise ValueError(f"model name {name!r} appears twice")
        if not (base_path.startswith("/") or is_remote(base_path)):
            raise ValueError(
                f"base_path {base_path!r} for model {name!r} must be absolute "
                "(a path inside the server, e.g. /models/NAME, or a gs:// URL)"
            )
        seen.add(name)
        entry = config.model_config_list.config.add()
        entry.name = name
        entry.base_path = base_path
        entry.model_platform = "tensorflow"
        entry.model_version_policy.latest.num_versions = num_versions
    return config


def models_config_text(models: Sequence[Tuple[str, str]], num_versions: int = 1) -> str:
    """``models_config(...)`` as the text proto TF Serving reads."""
    return text_format.MessageToString(models_config(models, num_versions))


def parse_models_config(text: str) -> model_server_config_pb2.ModelServerConfig:
    """Parses a ``models.config`` text proto (raises ``text_format.ParseError``)."""
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def write_models_config(
    path: str, models: Sequence[Tuple[str, str]], num_versions: int = 1
) -> str:
    """Writes ``models_config_text(...)`` to ``path`` atomically; returns ``path``."""
    write_text_atomic(path, models_config_text(models, num_versions))
    return path


def read_models_config(path: str) -> List[Tuple[str, str]]:
    """The ``(model name, base_path)`` pairs of a ``models.config`` file, in file order.

    Raises:
      ValueError: not a ``ModelServerConfig`` text proto, no ``model_config_list``,
        or a model without a name or base path (naming the file).
    """
    from google.protobuf.text_format import ParseError

    import tensorflow as tf

    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    try:
        config = parse_models_config(text)
    except ParseError as e:
        raise ValueError(f"{path}: not a ModelServerConfig text proto: {e}") from None
    models = [(c.name, c.base_path) for c in config.model_config_list.config]
    if not models:
        raise ValueError(f"{path}: no model_config_list entries")
    bad = [m for m in models if not (m[0] and m[1])]
    if bad:
        raise ValueError(f"{path}: every model needs a name and a base_path, got {bad}")
    return models
