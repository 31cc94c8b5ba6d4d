"""A CLUE serving SavedModel's user input: its layout, and one user's row of texts.

The serving signature takes ``item_texts`` string [B, P, S]: P services in
``assets/clue_vocab.json["services"]`` order, each the user's newest S item
texts, oldest first ("" = padding), cleaned exactly as in training
(``clue_keras.data.records.clean_behaviors``). The batch export, the
downstream features (``clue_tfrs.features``) and the tests build rows here.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, List, Sequence, Tuple

import numpy as np


def read_model_layout(model_dir: str) -> Tuple[List[str], int]:
    """(services in P order, S) of a CLUE serving SavedModel (a local path or a
    ``tf.io.gfile`` URI such as ``gs://...``); clear errors if it is not one."""
    import tensorflow as tf

    if not tf.io.gfile.isdir(model_dir):
        raise FileNotFoundError(f"model directory {model_dir!r} does not exist")
    if not tf.io.gfile.exists(os.path.join(model_dir, "saved_model.pb")):
        raise FileNotFoundError(f"{model_dir}: no saved_model.pb (not a SavedModel directory)")
    path = os.path.join(model_dir, "assets", "clue_vocab.json")
    try:
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(path)
        with tf.io.gfile.GFile(path, "rb") as f:
            info = json.loads(f.read().decode("utf-8"))
        return [str(s) for s in info["services"]], int(info["max_items"])
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: {model_dir} is not a CLUE serving SavedModel") from None
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: needs 'services' and 'max_items': {e}") from None


def user_text_row(rows: Iterable[Tuple[str, int, str]], services: Sequence[str],
                  max_items: int) -> np.ndarray:
    """One user's cleaned history as object [P, S] str ("" = padding).

    ``rows`` are ``(service, timestamp, item_text)``; cleaning is
    ``clue_keras.data.records.clean_behaviors`` (the training cleaning); rows of
    services not in ``services`` must already be filtered out.
    """
    from clue_keras.data.records import clean_behaviors

    out = np.full((len(services), max_items), "", dtype=object)
    index = {s: i for i, s in enumerate(services)}
    for service, texts in clean_behaviors(rows, max_items).items.items():
        out[index[service], : len(texts)] = texts
    return out
