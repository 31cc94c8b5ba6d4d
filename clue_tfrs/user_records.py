"""The per-user records the evaluation's user features come from.

The downstream evaluation embeds the same per-user records the Trainer read
(docs/ARCHITECTURE.md, "Per-user training records"): cleaned, truncated and
tokenised behaviour, one ``tf.Example`` per user, through the model's
``embed_tokens`` signature (`clue_tfrs.features.record_features`). They come from

* a records directory: BehaviorPreprocess's ``user_examples`` artifact or
  `clue prepare`'s output (``Split-<split>/*`` files, every split, and
  ``vocab/``), checked to be tokenised with the model's vocabulary
  (`check_vocabulary`); or
* raw behaviour logs (`encode_behaviors`): read with the data layer's reader
  (the preprocessing's row drop rules), cleaned per user by the preprocessing's
  own `build_history` and activity threshold `is_active`, and tokenised with the
  model's vocabulary (its ``assets/``), not a newly trained one, so the token ids
  are those the model knows.

A user of the task without a record (dropped by the activity threshold, or
absent from the logs) is cold-start: the downstream models give them a zero
vector.
"""

from __future__ import annotations

import os
from typing import Dict, List, Sequence, Union

#: Record files of every split under a records directory (TFX naming).
SPLIT_GLOB = os.path.join("Split-*", "*")
#: Vocabulary files whose bytes define the token ids.
VOCAB_FILES = ("vocab.json", "merges.txt")

__all__ = ["SPLIT_GLOB", "record_files", "check_vocabulary", "encode_behaviors"]


def record_files(records: Union[str, Sequence[str]]) -> List[str]:
    """Sorted record files: every ``Split-*/*`` file of a records directory, or the
    files matching a glob or a list of globs.

    Raises:
      FileNotFoundError: no record file, naming ``records``.
    """
    import tensorflow as tf

    from clue_keras.uri import glob

    if isinstance(records, str) and tf.io.gfile.isdir(records):
        files = sorted(f for f in glob(os.path.join(records, SPLIT_GLOB))
                       if not tf.io.gfile.isdir(f))
        if not files:
            raise FileNotFoundError(
                f"{records}: no per-user records (expected Split-<split>/ files as "
                "BehaviorPreprocess and `clue prepare` write them)")
        return files
    from clue_keras.data.input import list_files

    return list_files(records)


def _read_bytes(path: str) -> bytes:
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def check_vocabulary(records_dir: str, model_dir: str) -> None:
    """Checks the records under ``records_dir`` were tokenised with the model's vocabulary.

    Compares ``<records_dir>/vocab/`` (BPE files and ``clue_vocab.json`` layout) with
    the model's ``assets/``. Records without a ``vocab/`` folder are not checked here
    (the record reader still checks every service's features are present).

    Raises:
      ValueError: the vocabularies differ, naming both directories and what differs.
    """
    import tensorflow as tf

    from clue_keras.tokenizer import load_vocab_info

    vocab_dir = os.path.join(records_dir, "vocab")
    if not tf.io.gfile.exists(os.path.join(vocab_dir, "clue_vocab.json")):
        return
    assets = os.path.join(model_dir, "assets")
    theirs, ours = load_vocab_info(vocab_dir), load_vocab_info(assets)
    different = [f for f in ("services", "max_items", "max_tokens", "vocab_size")
                 if getattr(theirs, f) != getattr(ours, f)]
    different += [name for name in VOCAB_FILES
                  if _read_bytes(os.path.join(vocab_dir, name))
                  != _read_bytes(os.path.join(assets, name))]
    if different:
        raise ValueError(
            f"the records in {records_dir} were tokenised with another vocabulary than the "
            f"model {model_dir} ({', '.join(different)} differ); use the records the model was "
            "trained on, or raw logs (--data), which are tokenised with the model's vocabulary")


def encode_behaviors(behaviors, model_dir: str, out_path: str, min_items: int = 2,
                     min_services: int = 1) -> Dict[str, int]:
    """Raw behaviour logs -> per-user records tokenised with the model's vocabulary.

    Args:
      behaviors: a data directory, file, glob or list of them
        (`clue_keras.data.tables.read_behaviors`), or a DataFrame with the
        behaviour columns (already clean cells).
      model_dir: a CLUE serving SavedModel; its ``assets/`` is the vocabulary
        (services, S, L, text cap).
      out_path: the gzipped TFRecord file written (one ``tf.Example`` per kept user).
      min_items, min_services: the activity threshold of preprocessing
        (BehaviorPreprocess's ``min_items_per_user`` / ``min_services_per_user``
        defaults).

    Returns:
      ``{"users_read", "users_kept", "users_no_model_service"}``: users seen,
      written, and active users none of whose services the model knows.
    """
    import pandas as pd
    import tensorflow as tf

    from clue_keras.data.preprocess import build_history, is_active
    from clue_keras.data.records import build_user_example
    from clue_keras.data.tables import read_behaviors
    from clue_keras.tokenizer import OfflineTokenizer

    df = behaviors if isinstance(behaviors, pd.DataFrame) else read_behaviors(behaviors)
    tokenizer = OfflineTokenizer(os.path.join(model_dir, "assets"))
    info = tokenizer.info
    known = set(info.services)
    counts = {"users_read": 0, "users_kept": 0, "users_no_model_service": 0}
    tf.io.gfile.makedirs(os.path.dirname(out_path) or ".")
    with tf.io.TFRecordWriter(out_path, options="GZIP") as writer:
        for uid, group in df.groupby(df["user_id"].astype(str), sort=True):
            counts["users_read"] += 1
            rows = group[["service", "timestamp", "item_text"]].to_dict("records")
            user = build_history((uid, rows), info.max_items, max_text_bytes=info.max_text_bytes)
            if not is_active(user, min_items, min_services):
                continue
            ids = {s: tokenizer.encode_items(texts, s)
                   for s, texts in user[1].items.items() if s in known}
            if not ids:
                counts["users_no_model_service"] += 1
                continue
            writer.write(build_user_example(uid, ids, info.services).SerializeToString())
            counts["users_kept"] += 1
    return counts
