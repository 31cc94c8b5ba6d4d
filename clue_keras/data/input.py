"""tf.data input pipeline over the per-user TFRecords of BehaviorPreprocess.

Records (docs/ARCHITECTURE.md) hold, per service, flat token ids and per-item
lengths; :func:`make_dataset` turns a batch of them into dense
``token_ids`` int32 [B, P, S, L] (items oldest first and left-aligned, padding
after) with ``tf.io.RaggedFeature`` + ``RaggedTensor.to_tensor``.

Pre-training batches hold only users who contribute a loss term: a user with
one service has no pair to contrast (``clip_loss``) and would only take a batch
slot, so ``make_dataset(..., min_services=2)`` keeps users with at least two
non-empty services, filtering each file before the shuffle (the stream is the
one a file without those users would give). :func:`count_users` counts them.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from clue_keras.data.records import USER_ID_KEY, lengths_key, tokens_key
from clue_keras.tokenizer import VocabInfo

FilePattern = Union[str, Sequence[str]]


def list_files(file_pattern: FilePattern) -> List[str]:
    """Sorted files matching a glob pattern or a list of patterns; error if none."""
    from clue_keras.uri import glob  # gs://.../Split-*/* too (a wildcard in a directory)

    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    files = sorted({f for p in patterns for f in glob(p)})
    if not files:
        raise FileNotFoundError(f"no files match {file_pattern!r}")
    return files


def _check_features(files: Sequence[str], vocab_info: VocabInfo, compression: str) -> None:
    """Checks the first record of every file carries every feature of ``vocab_info``."""
    needed = [USER_ID_KEY] + [k for s in vocab_info.services
                              for k in (tokens_key(s), lengths_key(s))]
    for path in files:
        for raw in tf.data.TFRecordDataset(path, compression_type=compression).take(1):
            present = tf.train.Example.FromString(raw.numpy()).features.feature
            missing = [k for k in needed if k not in present]
            if missing:
                raise ValueError(
                    f"record in {path} lacks feature(s) {missing} required by the vocabulary "
                    f"(services {list(vocab_info.services)}); were the records and the "
                    f"vocabulary made by the same preprocessing run?")


def _feature_spec(vocab_info: VocabInfo) -> Dict[str, object]:
    spec: Dict[str, object] = {USER_ID_KEY: tf.io.FixedLenFeature([], tf.string)}
    for s in vocab_info.services:
        spec[s] = tf.io.RaggedFeature(
            tf.int64, value_key=tokens_key(s),
            partitions=[tf.io.RaggedFeature.RowLengths(lengths_key(s))],
            row_splits_dtype=tf.int64)
    return spec


def make_parse_fn(vocab_info: VocabInfo):
    """Function: serialised examples string [B] -> {"token_ids" [B,P,S,L], "user_id" [B]}.

    More than S items keep the newest S; more than L tokens keep the first L.
    """
    spec = _feature_spec(vocab_info)
    s_max, l_max = vocab_info.max_items, vocab_info.max_tokens

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        per_service = []
        for s in vocab_info.services:
            rt = parsed[s]                                   # [B, (items), (tokens)]
            rt = rt[:, -s_max:]                              # newest S items
            dense = rt.to_tensor(default_value=0, shape=[None, s_max, l_max])
            per_service.append(tf.cast(dense, tf.int32))
        return {"token_ids": tf.stack(per_service, axis=1), "user_id": parsed[USER_ID_KEY]}

    return parse


def make_service_count_fn(vocab_info: VocabInfo):
    """Function: serialised examples string [N] -> int32 [N], each user's number of
    services with at least one item (only the ``lengths/<service>`` lists are parsed)."""
    spec = {lengths_key(s): tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64)
            for s in vocab_info.services}

    def count(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        has = [tf.cast(parsed[lengths_key(s)].row_lengths() > 0, tf.int32)
               for s in vocab_info.services]
        return tf.add_n(has)

    return count


#: Records parsed together when filtering or counting users.
_SCAN_BATCH = 1024


def _keep_users_with(records: tf.data.Dataset, vocab_info: VocabInfo,
                     min_services: int) -> tf.data.Dataset:
    """Only the serialised records of users with >= ``min_services`` services, in order."""
    count = make_service_count_fn(vocab_info)
    return (records.batch(_SCAN_BATCH)
            .map(lambda s: tf.boolean_mask(s, count(s) >= min_services))
            .unbatch())


def count_users(file_pattern: FilePattern, vocab_info: VocabInfo, min_services: int,
                compression_type: str = "GZIP") -> Tuple[int, int]:
    """``(users with >= min_services non-empty services, all users)`` in the files:
    one pass that parses only the per-item lengths."""
    files = list_files(file_pattern)
    count = make_service_count_fn(vocab_info)
    ds = (tf.data.TFRecordDataset(files, compression_type=compression_type,
                                  num_parallel_reads=min(len(files), 8))
          .batch(_SCAN_BATCH).map(count, num_parallel_calls=tf.data.AUTOTUNE))
    kept, total = ds.reduce(
        (tf.constant(0, tf.int64), tf.constant(0, tf.int64)),
        lambda acc, n: (acc[0] + tf.reduce_sum(tf.cast(n >= min_services, tf.int64)),
                        acc[1] + tf.size(n, out_type=tf.int64)))
    return int(kept), int(total)


def make_dataset(file_pattern: FilePattern, vocab_info: VocabInfo, batch_size: int,
                 shuffle: bool = True, repeat: bool = True, seed: int = 0,
                 drop_remainder: bool = True, shuffle_buffer: int = 10_000,
                 compression_type: str = "GZIP", min_services: int = 0) -> tf.data.Dataset:
    """Batches of users from gzipped per-user TFRecords.

    Args:
      file_pattern: glob pattern or list of patterns/files.
      vocab_info: services (the P axis, in order), S and L.
      batch_size: B, users per batch.
      shuffle: shuffle file order and records (buffer ``shuffle_buffer``),
        deterministically for a given ``seed``; without it records come in
        the order of the sorted file list.
      repeat: repeat forever.
      drop_remainder: drop a last partial batch (static batch dimension).
      min_services: keep only users with at least this many non-empty services
        (pre-training: 2, the users who contribute a loss term); 0 or 1 keeps
        every user (serving, features, evaluation of all users).

    Returns:
      Dataset of ``{"token_ids": int32 [B, P, S, L], "user_id": string [B]}``.

    Raises:
      FileNotFoundError: nothing matches ``file_pattern``.
      ValueError: a record lacks a feature of a service in ``vocab_info``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    files = list_files(file_pattern)
    _check_features(files, vocab_info, compression_type)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)

    def read(path):
        records = tf.data.TFRecordDataset(path, compression_type=compression_type)
        return _keep_users_with(records, vocab_info, min_services) if min_services > 1 \
            else records

    ds = ds.interleave(
        read,
        # Without shuffling, read files one after the other: records come in file order.
        cycle_length=min(len(files), 8) if shuffle else 1, num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(make_parse_fn(vocab_info), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def load_split_arrays(file_pattern: FilePattern, vocab_info: VocabInfo,
                      batch_size: int = 256,
                      max_users: Optional[int] = None) -> Dict[str, np.ndarray]:
    """A whole (small) split as numpy arrays, in file order.

    Returns:
      ``{"token_ids": int32 [N, P, S, L], "user_id": object [N] of str}``;
      N is at most ``max_users``.
    """
    ds = make_dataset(file_pattern, vocab_info, batch_size, shuffle=False, repeat=False,
                      drop_remainder=False)
    if max_users is not None:
        ds = ds.unbatch().take(max_users).batch(batch_size)
    tokens, users = [], []
    for batch in ds.as_numpy_iterator():
        tokens.append(batch["token_ids"])
        users.extend(u.decode("utf-8") for u in batch["user_id"])
    p, s, l = len(vocab_info.services), vocab_info.max_items, vocab_info.max_tokens
    token_ids = np.concatenate(tokens) if tokens else np.zeros([0, p, s, l], np.int32)
    return {"token_ids": token_ids.astype(np.int32), "user_id": np.array(users, dtype=object)}
