"""Frozen CLUE features for the downstream models, read from a serving SavedModel.

User features come from the per-user records (`clue_tfrs.user_records`: the
same cleaned, truncated, tokenised records the Trainer read) through the
``embed_tokens`` signature (`record_features`). `user_features` computes them
from raw logs through ``serving_default`` instead (the path TF Serving answers,
kept as the reference of the batch export's tests). Item features come from
``embed_items``. The SavedModel is self-describing:
``<model>/assets/clue_vocab.json`` gives the service order P, S and L.
"""

from __future__ import annotations

import os
from typing import Collection, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

import clue_tfrs  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from clue_keras.embeddings.user_rows import read_model_layout, user_text_row
from clue_keras.tokenizer import register_text_ops


#: (services in P order, S) of a CLUE serving SavedModel, from its assets.
read_layout = read_model_layout


def user_text_tensor(behaviors: pd.DataFrame, services: Sequence[str], max_items: int
                     ) -> Tuple[List[str], np.ndarray]:
    """Users' cleaned histories as object [N, P, S] strings ("" = padding).

    Rows of services the model was not trained on are ignored. Returns the user
    ids in sorted order and the array; each row is ``user_text_row`` (the same
    cleaning as training and as the batch export).
    """
    known = behaviors[behaviors["service"].isin(set(services))]
    user_ids = sorted(known["user_id"].astype(str).unique())
    out = np.full((len(user_ids), len(services), max_items), "", dtype=object)
    row_of = {u: i for i, u in enumerate(user_ids)}
    for uid, group in known.groupby(known["user_id"].astype(str), sort=False):
        out[row_of[uid]] = user_text_row(
            zip(group["service"], group["timestamp"], group["item_text"].fillna("")),
            services, max_items)
    return user_ids, out


def _load(model_dir: str):
    register_text_ops()  # the serving graph tokenises with RegexSplitWithOffsets
    return tf.saved_model.load(model_dir)


def _batched(fn, array: np.ndarray, batch: int) -> np.ndarray:
    parts = [fn(tf.constant(array[i:i + batch].tolist(), tf.string))
             for i in range(0, len(array), batch)]
    return np.concatenate(parts, axis=0) if parts else np.zeros((0,), np.float32)


def user_features(model_dir: str, behaviors: pd.DataFrame, batch: int = 256
                  ) -> Dict[str, np.ndarray]:
    """user_id -> float32 [P*D] L2-normalised CLUE embedding (serving_default)."""
    services, max_items = read_layout(model_dir)
    user_ids, texts = user_text_tensor(behaviors, services, max_items)
    fn = _load(model_dir).signatures["serving_default"]
    emb = _batched(lambda x: fn(item_texts=x)["embedding"].numpy(), texts, batch)
    return {u: emb[i] for i, u in enumerate(user_ids)}


def record_features(model_dir: str, files: Sequence[str],
                    users: Optional[Collection[str]] = None, batch: int = 256
                    ) -> Dict[str, np.ndarray]:
    """user_id -> float32 [P*D] L2-normalised embedding of each per-user record (embed_tokens).

    Args:
      model_dir: a CLUE serving SavedModel; its ``assets/clue_vocab.json`` gives
        the [P, S, L] layout the records are read into.
      files: gzipped per-user record files (`clue_tfrs.user_records.record_files`).
      users: embed only these user ids (None: all).
      batch: users per call.
    """
    from clue_keras.data.input import make_dataset
    from clue_keras.tokenizer import load_vocab_info

    info = load_vocab_info(os.path.join(model_dir, "assets"))
    fn = _load(model_dir).signatures["embed_tokens"]
    wanted = None if users is None else {str(u) for u in users}
    out: Dict[str, np.ndarray] = {}
    ds = make_dataset(list(files), info, batch, shuffle=False, repeat=False,
                      drop_remainder=False)
    for b in ds.as_numpy_iterator():
        ids = [u.decode("utf-8") for u in b["user_id"]]
        keep = np.array([wanted is None or u in wanted for u in ids], dtype=bool)
        if not keep.any():
            continue
        emb = fn(token_ids=tf.constant(b["token_ids"][keep]))["embedding"].numpy()
        out.update(zip((u for u, k in zip(ids, keep) if k), emb))
    return out


def item_features(model_dir: str, catalogue: pd.DataFrame, batch: int = 1024
                  ) -> Dict[str, np.ndarray]:
    """item_id -> float32 [hidden] L2-normalised item-text embedding (embed_items)."""
    fn = _load(model_dir).signatures["embed_items"]
    texts = catalogue["item_text"].fillna("").astype(str).to_numpy(dtype=object)
    emb = _batched(lambda x: fn(item_texts=x)["item_embedding"].numpy(), texts, batch)
    return {str(i): emb[k] for k, i in enumerate(catalogue["item_id"].astype(str))}
