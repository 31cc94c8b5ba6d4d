"""Preprocessing as named Beam transforms: raw behaviour rows -> per-user records.

The one definition of preprocessing. The BehaviorPreprocess TFX component
(`components.behavior_preprocess.executor`) runs `build_pipeline` on the
pipeline's Beam runner; `clue_keras.data.prepare.prepare_local` runs the same
`build_pipeline` in this process (DirectRunner, in memory). Beam graph::

  raw tf.Examples (ExampleGen output), read in batches (ReadRowBatches)
    | ParseRowBatches      -> {"rows": (user shard, [(user_id, service, timestamp,
                               item_text), ...]) per batch (`clue_keras.data.row_batches`),
                               "dropped": stats key of each dropped row}
    | BuildUserHistories   -> {"all": (user_id, CleanedUser) of every user,
                               "active": those at or above the activity threshold}
                              (one GroupByKey per user shard; text normalised and capped at max_text_bytes, empty
                              texts and exact repeats dropped, newest S per
                              service, oldest first)
    | split_by_user        -> train / eval / test by a hash of user_id
  train | TrainVocab       -> <out>/vocab/  (BPE on a sample of train texts)
  each split | EncodeUsers -> <out>/Split-<split>/data_tfrecord-SSSSS-of-NNNNN.gz
  counts | WriteStats      -> <out>/stats.json, after every record file is written

The per-row and per-user logic is in `clue_keras.data.values`, `.records` and
`clue_keras.tokenizer`; this module only wires it into Beam (no TFX). No row
stops the run: a row that cannot be used is dropped and counted (stats keys:
`clue_keras.data.values.STATS_DOC`); what would crash ExampleGen itself is
caught before the pipeline by `clue_keras.data.validate`.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import apache_beam as beam

from clue_keras.data.counts import WriteStats, count, count_keys, sum_dicts, sum_of
from clue_keras.data.engines import num_shards, select_tags
from clue_keras.data.formats import BEHAVIOR_COLUMNS
from clue_keras.data.records import SPLITS, clean_behaviors, split_of
from clue_keras.data.row_batches import (BATCH_ROWS, NUM_USER_SHARDS, clean_shard,
                                         example_cells, pack_rows, parse_batch,
                                         read_part, shard_rows)
from clue_keras.data.values import (DROP_KEYS, EMPTY_TEXT_KEY, USER_DROP_KEYS, BadRow,
                                    behavior_row)
from clue_keras.text import DEFAULT_MAX_TEXT_BYTES

VOCAB_DIRNAME = "vocab"
STATS_FILENAME = "stats.json"
OUTPUT_PREFIX = "data_tfrecord"

DROPPED = "dropped"

__all__ = [
    "VOCAB_DIRNAME", "STATS_FILENAME", "OUTPUT_PREFIX", "SPLITS",
    "InputValidationError", "BadRow", "parse_row", "build_history", "is_active",
    "user_outcome", "USER_COUNT_KEYS", "user_counts", "split_index", "ReadRowBatches", "ParseRowBatches", "ParseRows", "CleanUsers", "BuildUserHistories", "split_by_user",
    "TrainVocab", "EncodeUserFn", "EncodeUsers", "WriteStats", "build_pipeline",
]


class InputValidationError(ValueError):
    """The raw behaviour logs cannot be preprocessed; the message says why and where."""


# ---------------------------------------------------------------------------
# Per-element functions (picklable, no state).
# ---------------------------------------------------------------------------

def parse_row(serialized: bytes) -> Dict[str, Any]:
    """Serialized raw tf.Example -> ``{"user_id": str, "service": str,
    "timestamp": int, "item_text": str ("" when empty)}``.

    Any feature kind is accepted for every column, as ExampleGen infers it:
    integer ids become their decimal string, the timestamp may be int64 (unix
    seconds or an ordinal), a float or an ISO-8601 string
    (`clue_keras.data.values.behavior_row`). `ParseRows` parses batches
    (`clue_keras.data.row_batches.parse_batch`), with the same result per row.

    Raises:
      BadRow: the row is dropped; ``.key`` is the stats key counting it
        (``rows_dropped_empty_user``, ``rows_dropped_bad_timestamp``, ...).
    """
    user, service, ts, text = behavior_row(*example_cells([serialized])[0])
    return {"user_id": user, "service": service, "timestamp": ts, "item_text": text}


def build_history(user_rows: Tuple[str, Iterable[Dict[str, Any]]], max_items: int,
                  max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES):
    """``(user_id, rows)`` -> ``(user_id, CleanedUser)``: text normalised and capped,
    empty texts and exact repeats dropped, oldest first, newest ``max_items`` per
    service (`clue_keras.data.records.clean_behaviors`)."""
    user_id, rows = user_rows
    return user_id, clean_behaviors(
        ((r["service"], r["timestamp"], r["item_text"]) for r in rows), max_items,
        max_text_bytes=max_text_bytes)


def user_outcome(user: Tuple[str, Any], min_items: int, min_services: int) -> str:
    """``"users_kept"``, or the stats key of why the user is dropped: fewer than
    ``min_items`` kept items over all services (``users_dropped_few_items``), else
    fewer than ``min_services`` services (``users_dropped_few_services``)."""
    cleaned = user[1]
    if cleaned.n_items < min_items:
        return USER_DROP_KEYS[0]
    if len(cleaned.items) < min_services:
        return USER_DROP_KEYS[1]
    return "users_kept"


#: The per-user counts of ``stats.json`` (`user_counts`).
USER_COUNT_KEYS = ("users_read", "users_kept", *USER_DROP_KEYS, "users_kept_single_service",
                   EMPTY_TEXT_KEY, "rows_duplicate", "rows_text_capped", "items_truncated")


def user_counts(user: Tuple[str, Any], min_items: int, min_services: int) -> Dict[str, int]:
    """What one ``(user_id, CleanedUser)`` adds to each of `USER_COUNT_KEYS`: summed over
    users (`clue_keras.data.counts.sum_dicts`, one combine for all)."""
    outcome, cleaned = user_outcome(user, min_items, min_services), user[1]
    counts = dict.fromkeys(USER_COUNT_KEYS, 0)
    counts.update({"users_read": 1, outcome: 1, EMPTY_TEXT_KEY: cleaned.n_empty,
                   "rows_duplicate": cleaned.n_duplicates, "rows_text_capped": cleaned.n_capped,
                   "items_truncated": cleaned.n_truncated,
                   "users_kept_single_service": int(outcome == "users_kept"
                                                    and len(cleaned.items) == 1)})
    return counts


def is_active(user: Tuple[str, Any], min_items: int, min_services: int) -> bool:
    """Activity threshold: >= ``min_items`` kept items and >= ``min_services`` services."""
    return user_outcome(user, min_items, min_services) == "users_kept"


def split_index(user: Tuple[str, Any], num_partitions: int, eval_percent: int,
                test_percent: int) -> int:
    """Partition fn: index into `SPLITS` from a stable hash of the user id
    (`clue_keras.data.records.split_of`)."""
    del num_partitions
    return SPLITS.index(split_of(user[0], eval_percent, test_percent))


# ---------------------------------------------------------------------------
# Composite transforms.
# ---------------------------------------------------------------------------

class _ParseBatchFn(beam.DoFn):
    """A batch of serialized raw tf.Examples (`parse_batch`) -> ``("rows", (shard,
    block))`` per user shard of its usable rows (`shard_rows`, packed by
    `pack_rows`), ``("dropped", stats key)`` per dropped row (the first few are
    logged with the reason)."""

    _LOG_FIRST = 5

    def __init__(self, num_shards: int):
        super().__init__()
        self._num_shards = num_shards
        self._logged = 0

    def process(self, batch: List[bytes]):
        rows, bad = parse_batch(batch)
        for e in bad:
            if self._logged < self._LOG_FIRST:
                from absl import logging

                self._logged += 1
                logging.warning("BehaviorPreprocess: dropping a row (%s): %s", e.key, e)
            yield DROPPED, e.key
        for shard, shard_rows_ in shard_rows(rows, self._num_shards).items():
            yield "rows", (shard, pack_rows(shard_rows_))


#: Read tasks to cut the input into when there are fewer files (each task parses
#: every ``parts``-th batch of a file; `clue_keras.data.row_batches.read_part`).
READ_TASKS = 8


@beam.ptransform_fn
def ReadRowBatches(pbegin: beam.pvalue.PBegin, pattern: str,  # pylint: disable=invalid-name
                   batch_rows: int = BATCH_ROWS, read_tasks: int = READ_TASKS
                   ) -> beam.PCollection:
    """The TFRecord files matching ``pattern`` -> lists of ``batch_rows`` records.

    The files are listed now (a pattern matching nothing is an error, as in
    `ReadTFRecords`) and cut into at least ``read_tasks`` tasks, whole files or
    every n-th batch of one (`clue_keras.data.row_batches.read_part`). The tasks,
    not the records, are spread over the workers: a shuffle of the raw records
    would hold all of them in the DirectRunner's memory at once (1M users, 39M
    rows: killed at 23 GB on a 24 GB machine; docs/PERFORMANCE.md)."""
    from apache_beam.io.filesystems import FileSystems

    files = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    if not files:
        raise OSError(f"No files found based on the file pattern {pattern}")
    parts = max(1, -(-int(read_tasks) // len(files)))
    return (pbegin | "Files" >> beam.Create([(f, i, parts) for f in files for i in range(parts)])
            | "Read" >> beam.FlatMap(read_part, batch_rows=batch_rows))


@beam.ptransform_fn
def ParseRowBatches(batches: beam.PCollection,  # pylint: disable=invalid-name
                    num_shards: int = NUM_USER_SHARDS) -> Dict[str, beam.PCollection]:
    """Lists of serialized raw tf.Examples -> ``{"rows": (user shard, `pack_rows` of
    [(user_id, service, timestamp, item_text), ...]) (`clue_keras.data.row_batches`),
    "dropped": the stats key of each dropped row}`` (`select_tags`: portable to
    Dask). Each batch is parsed where it is: `ReadRowBatches` spreads its read
    tasks over the workers, `ParseRows` its batches."""
    parsed = batches | "Parse" >> beam.ParDo(_ParseBatchFn(num_shards))
    return select_tags(parsed, ("rows", DROPPED))


@beam.ptransform_fn
def ParseRows(serialized: beam.PCollection,  # pylint: disable=invalid-name
              batch_rows: int = BATCH_ROWS) -> Dict[str, beam.PCollection]:
    """bytes (serialized raw tf.Examples) -> `ParseRowBatches` of batches of them
    (``beam.BatchElements``, whose output the Dask runner loses: `build_pipeline`
    reads batches with `ReadRowBatches` instead), spread over the workers first."""
    return (serialized | "Batch" >> beam.BatchElements(min_batch_size=batch_rows,
                                                       max_batch_size=batch_rows)
            | "Spread" >> beam.Reshuffle()
            | "ParseBatches" >> ParseRowBatches())  # pylint: disable=no-value-for-parameter


@beam.ptransform_fn
def CleanUsers(rows: beam.PCollection, max_items: int,  # pylint: disable=invalid-name
               max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES) -> beam.PCollection:
    """``(shard, rows)`` (`ParseRows`) -> ``(user_id, CleanedUser)`` for every user
    (`clue_keras.data.row_batches.clean_shard`; per user `build_history`)."""
    return (rows
            | "GroupByShard" >> beam.GroupByKey()
            | "Clean" >> beam.FlatMap(clean_shard, max_items=max_items,
                                      max_text_bytes=max_text_bytes))


@beam.ptransform_fn
def BuildUserHistories(rows: beam.PCollection, max_items: int, min_items: int,  # pylint: disable=invalid-name
                       min_services: int, max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
                       ) -> Dict[str, beam.PCollection]:
    """`ParseRows`' rows -> ``{"all": ..., "active": ...}`` PCollections of ``(user_id, CleanedUser)``.

    ``"all"`` holds every user (its counts feed the stats), ``"active"`` the
    users with >= ``min_items`` items and >= ``min_services`` services.
    ``CleanedUser.items`` is ``{service: [normalised text, ...]}``, oldest
    first, exact repeats dropped, at most ``max_items`` (the newest) each.
    """
    cleaned = rows | "CleanUsers" >> CleanUsers(  # pylint: disable=no-value-for-parameter
        max_items=max_items, max_text_bytes=max_text_bytes)
    active = cleaned | "DropInactive" >> beam.Filter(is_active, min_items=min_items,
                                                     min_services=min_services)
    return {"all": cleaned, "active": active}


def _in_split(user: Tuple[str, Any], index: int, eval_percent: int, test_percent: int) -> bool:
    return split_index(user, len(SPLITS), eval_percent, test_percent) == index


def split_by_user(users: beam.PCollection, eval_percent: int,
                  test_percent: int) -> Dict[str, beam.PCollection]:
    """Partitions ``(user_id, ...)`` into ``{"train", "eval", "test"}`` by user-id hash
    (a filter per split: `beam.Partition` is wrong on Dask, `clue_keras.data.engines`)."""
    return {split: users | f"SplitByUser[{split}]" >> beam.Filter(
        _in_split, index=i, eval_percent=eval_percent, test_percent=test_percent)
        for i, split in enumerate(SPLITS)}


def _item_texts(user: Tuple[str, Any]) -> List[str]:
    return [t for items in user[1].items.values() for t in items]


def _train_vocab(texts: List[str], services: List[str], vocab_dir: str, vocab_size: int,
                 max_items: int, max_tokens: int,
                 max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES) -> Optional[str]:
    """Trains the BPE on ``texts`` and writes the vocab artifact to ``vocab_dir``
    (local or remote; `train_bpe` writes each file atomically, ``clue_vocab.json`` last).

    Without any text (no train user) nothing is written and None returned: the
    run ends with ``users_train`` = 0 in ``stats.json``, which the callers turn
    into a named error, rather than a stack trace from inside Beam.
    """
    from clue_keras.tokenizer import train_bpe

    if not texts:  # no train user: nothing is written; users_train = 0 in stats.json says so
        return None
    train_bpe(sorted(texts), services, vocab_size, vocab_dir, max_items=max_items,
              max_tokens=max_tokens, max_text_bytes=max_text_bytes)
    return vocab_dir


@beam.ptransform_fn
def TrainVocab(train: beam.PCollection, services: beam.PCollection, vocab_dir: str,  # pylint: disable=invalid-name
               vocab_size: int, max_items: int, max_tokens: int,
               sample_size: int, max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
               ) -> beam.PCollection:
    """Train-split users -> a one-element PCollection holding ``vocab_dir``.

    At most ``sample_size`` item texts (a uniform sample) reach the single
    worker that trains the BPE; ``services`` is a one-element PCollection of
    the sorted service list. Texts are sorted before training so that the same
    sample gives the same vocabulary whatever order the runner delivered it in.
    """
    return (train
            | "Texts" >> beam.FlatMap(_item_texts)
            | "Sample" >> beam.combiners.Sample.FixedSizeGlobally(sample_size)
            | "TrainBPE" >> beam.Map(
                _train_vocab, services=beam.pvalue.AsSingleton(services),
                vocab_dir=vocab_dir, vocab_size=vocab_size, max_items=max_items,
                max_tokens=max_tokens, max_text_bytes=max_text_bytes))


class EncodeUserFn(beam.DoFn):
    """``(user_id, CleanedUser)`` -> serialized per-user tf.Example (docs/ARCHITECTURE.md).

    The tokenizer is loaded once per DoFn instance from the vocab directory
    given as a side input (so encoding starts only after `TrainVocab`).
    """

    def __init__(self):
        super().__init__()
        self._tokenizer = None

    def process(self, user: Tuple[str, Any], vocab_dir: Optional[str]) -> Iterable[bytes]:
        from clue_keras.data.records import build_user_example
        from clue_keras.tokenizer import OfflineTokenizer

        if vocab_dir is None:  # no vocabulary (no train user): nothing to encode
            return
        if self._tokenizer is None or self._tokenizer.vocab_dir != vocab_dir:
            self._tokenizer = OfflineTokenizer(vocab_dir)
        user_id, cleaned = user
        ids = {service: self._tokenizer.encode_items(texts, service)
               for service, texts in cleaned.items.items()}
        yield build_user_example(user_id, ids, self._tokenizer.info.services).SerializeToString()


@beam.ptransform_fn
def EncodeUsers(users: beam.PCollection, vocab_dir: beam.PCollection  # pylint: disable=invalid-name
                ) -> beam.PCollection:
    """``(user_id, CleanedUser)`` -> serialized tf.Examples; ``vocab_dir`` a singleton."""
    return users | "Encode" >> beam.ParDo(EncodeUserFn(), beam.pvalue.AsSingleton(vocab_dir))


# ---------------------------------------------------------------------------
# The whole graph.
# ---------------------------------------------------------------------------

def build_pipeline(p: beam.Pipeline, raw_pattern: str, output_uri: str,
                   params: Mapping[str, Any]) -> None:
    """Adds the whole preprocessing graph to ``p``.

    Reads raw tf.Examples matching ``raw_pattern``; writes
    ``output_uri/Split-{train,eval,test}/data_tfrecord-*.gz``,
    ``output_uri/vocab/`` and, last, ``output_uri/stats.json`` (keys:
    `clue_keras.data.values.STATS_DOC`,
    ``users_<split>``, ``items_<split>``, ``services``). ``params`` are the
    `BehaviorPreprocessSpec` parameters: ``max_items``, ``max_tokens``,
    ``vocab_size``, ``min_items_per_user``, ``min_services_per_user``,
    ``eval_percent``, ``test_percent``, ``bpe_sample_size``, ``num_shards``
    (0 or absent: the runner decides; on Dask one) and ``max_text_bytes`` (absent or None:
    `DEFAULT_MAX_TEXT_BYTES`; 0: no cap).
    """
    max_items, max_tokens = int(params["max_items"]), int(params["max_tokens"])
    max_text_bytes = params.get("max_text_bytes")
    max_text_bytes = DEFAULT_MAX_TEXT_BYTES if max_text_bytes is None else int(max_text_bytes)
    min_items, min_services = int(params["min_items_per_user"]), int(params["min_services_per_user"])
    raw = p | "ReadRaw" >> ReadRowBatches(raw_pattern)  # pylint: disable=no-value-for-parameter
    parsed = raw | "ParseRows" >> ParseRowBatches()  # pylint: disable=no-value-for-parameter
    users = parsed["rows"] | "BuildUserHistories" >> BuildUserHistories(  # pylint: disable=no-value-for-parameter
        max_items=max_items, min_items=min_items, min_services=min_services,
        max_text_bytes=max_text_bytes)
    cleaned, active = users["all"], users["active"]
    splits = split_by_user(active, int(params["eval_percent"]), int(params["test_percent"]))
    services = (active
                | "ServiceNames" >> beam.FlatMap(lambda u: list(u[1].items))
                | "DistinctServices" >> beam.Distinct()
                | "ServiceList" >> beam.combiners.ToList()
                | "SortServices" >> beam.Map(sorted))
    vocab = splits["train"] | "TrainVocab" >> TrainVocab(  # pylint: disable=no-value-for-parameter
        services, vocab_dir=os.path.join(output_uri, VOCAB_DIRNAME),
        vocab_size=int(params["vocab_size"]), max_items=max_items, max_tokens=max_tokens,
        sample_size=int(params["bpe_sample_size"]), max_text_bytes=max_text_bytes)
    counts = {
        "rows_read": sum_of(raw, len, "CountRows"),
        "_rows_dropped": count_keys(parsed[DROPPED], tuple(DROP_KEYS.values()), "CountDropped"),
        "_users": sum_dicts(cleaned | "UserCounts" >> beam.Map(
            user_counts, min_items=min_items, min_services=min_services),
            USER_COUNT_KEYS, "SumUserCounts"),
    }
    written = {}
    for split, split_users in splits.items():
        encoded = split_users | f"Encode[{split}]" >> EncodeUsers(vocab)  # pylint: disable=no-value-for-parameter
        written[split] = encoded | f"Write[{split}]" >> beam.io.WriteToTFRecord(
            os.path.join(output_uri, f"Split-{split}", OUTPUT_PREFIX),
            file_name_suffix=".gz",
            compression_type=beam.io.filesystem.CompressionTypes.GZIP,
            num_shards=num_shards(p, params))
        counts[f"users_{split}"] = count(encoded, f"CountUsers[{split}]")
        counts[f"items_{split}"] = sum_of(split_users, lambda u: u[1].n_items, f"SumItems[{split}]")
    _ = p | "WriteStats" >> WriteStats(  # pylint: disable=no-value-for-parameter
        os.path.join(output_uri, STATS_FILENAME), services, counts, written)
