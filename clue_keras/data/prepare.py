"""BehaviorPreprocess in this process: the same Beam graph, on the in-memory DirectRunner.

`prepare_local` turns behaviour logs (a DataFrame or a data directory) into raw
tf.Examples as ExampleGen would (CSV typed per column as CsvExampleGen types it,
empty cells left out; `behavior_example`), then runs `clue_keras.data.preprocess.build_pipeline`
(the graph the TFX component runs) with ``--direct_running_mode=in_memory``. So the
records, the vocabulary and ``stats.json`` are those of the pipeline on the same rows;
only the number of shards may differ (here ``shards`` files per split)::

    out_dir/vocab/                                 BPE trained on a sample of TRAIN items
    out_dir/Split-{train,eval,test}/data_tfrecord-SSSSS-of-NNNNN.gz
    out_dir/stats.json                             written last: marks a complete output

For small local runs, tests, the scaling study and benchmarks (`clue prepare`).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from clue_keras.data.formats import BEHAVIOR_COLUMNS
from clue_keras.data.direct_runner import local_beam_args
from clue_keras.data.records import SPLITS
from clue_keras.text import DEFAULT_MAX_TEXT_BYTES

#: Beam options of the in-process run.
IN_PROCESS_OPTIONS = tuple(local_beam_args("in_memory", 1))
_RAW_DIRNAME = ".raw-examples"


def _raw_rows(behaviors) -> Tuple[List[tuple], str]:
    """The rows as ExampleGen would see them, and a name for errors.

    ``(user_id, service, timestamp, item_text)`` cells, untyped: CSV files typed
    per column exactly as CsvExampleGen types them (`clue_keras.data.csvfile`:
    ``"007"`` in an all-integer column is the integer 7), other formats as stored,
    a DataFrame as given. Bad rows are left in, for the Beam graph to drop and count.

    Raises:
      DataValidationError: what would stop ExampleGen: a CSV record with a wrong
        number of fields, bad UTF-8, a missing column (``FILE:LINE: ...``).
    """
    import pandas as pd

    if isinstance(behaviors, (str, os.PathLike, list, tuple)):
        from clue_keras.data import csvfile
        from clue_keras.data.formats import format_of, read_table
        from clue_keras.data.tables import behavior_files

        spec = os.fspath(behaviors) if isinstance(behaviors, os.PathLike) else behaviors
        files = behavior_files(spec)
        fmts = sorted({format_of(f) for f in files})
        if len(fmts) > 1:
            raise ValueError(f"{spec}: files of several formats {fmts}; ExampleGen reads one")
        if fmts == ["csv"]:
            typed, _ = csvfile.read_typed_rows(files, BEHAVIOR_COLUMNS)
            rows = [tuple(values[c] for c in BEHAVIOR_COLUMNS) for _, _, values in typed]
        else:
            rows = []
            for path in files:
                df = read_table(path, BEHAVIOR_COLUMNS, raw=True)
                rows += list(zip(*(df[c].tolist() for c in BEHAVIOR_COLUMNS)))
        return rows, str(spec)
    if not isinstance(behaviors, pd.DataFrame):
        raise TypeError(f"behaviors must be a DataFrame, a data directory or files, got "
                        f"{type(behaviors).__name__}")
    source, df = "behaviors DataFrame", behaviors
    missing = [c for c in BEHAVIOR_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{source} lacks column(s) {missing}; has {list(df.columns)}")
    return list(zip(*(df[c].tolist() for c in BEHAVIOR_COLUMNS))), source


def write_raw_examples(rows: Iterable[tuple], path: str) -> int:
    """Writes ``(user_id, service, timestamp, item_text)`` rows as a gzipped TFRecord
    of raw tf.Examples as ExampleGen writes them (`behavior_example`); returns the count."""
    import tensorflow as tf

    n = 0
    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        for row in rows:
            writer.write(behavior_example(*row))
            n += 1
    return n


def _raw_feature(value: Any):
    """A cell as ExampleGen stores it: ints -> int64, other numbers -> float (float32,
    as ExampleGen), strings / bytes -> bytes; ``None``, NaN and ``""`` -> an empty feature."""
    import tensorflow as tf

    values = list(value) if isinstance(value, (list, tuple)) else [value]
    values = [v.item() if hasattr(v, "item") else v for v in values]
    values = [v for v in values if v is not None and not (isinstance(v, str) and v == "")
              and not (isinstance(v, float) and v != v)]
    if not values:
        return tf.train.Feature()
    if all(isinstance(v, int) for v in values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))
    if all(isinstance(v, (int, float)) for v in values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[
        v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values]))


def behavior_example(user_id: Any, service: Any, timestamp: Any, item_text: Any) -> bytes:
    """One behaviour row as a serialized raw tf.Example, as ExampleGen writes a table
    row (`_raw_feature`: an empty cell is left out); `clue_keras.data.preprocess.parse_row`
    reads it back."""
    import tensorflow as tf

    cells = dict(zip(BEHAVIOR_COLUMNS, (user_id, service, timestamp, item_text)))
    return tf.train.Example(features=tf.train.Features(
        feature={k: _raw_feature(v) for k, v in cells.items()})).SerializeToString()


def _clear_outputs(out_dir: str) -> None:
    """Removes what an earlier run left: ``stats.json`` first (the output is incomplete
    from now on), then the split folders (other shard counts or names)."""
    from clue_keras.data.preprocess import STATS_FILENAME

    stats = os.path.join(out_dir, STATS_FILENAME)
    if os.path.exists(stats):
        os.remove(stats)
    for split in SPLITS:
        shutil.rmtree(os.path.join(out_dir, f"Split-{split}"), ignore_errors=True)


def no_train_users_message(stats: Dict[str, Any], min_items: int, min_services: int) -> str:
    """Why no user reached the train split, from ``stats.json`` (the drop counts)."""
    dropped = {k: v for k, v in stats.items()
               if (k.startswith("rows_dropped_") or k.startswith("users_dropped_")) and v}
    return (f"no train users left: {stats.get('rows_read', 0)} rows read, "
            f"{stats.get('users_read', 0)} users, {stats.get('users_kept', 0)} kept "
            f"(train/eval/test {stats.get('users_train', 0)}/{stats.get('users_eval', 0)}/"
            f"{stats.get('users_test', 0)}); dropped: {dropped or 'nothing'}. Lower "
            f"min_items={min_items} / min_services={min_services} or eval/test percent, "
            f"fix the rows, or add data")


def prepare_local(behaviors, out_dir: str, max_items: int, max_tokens: int, vocab_size: int,
                  min_items: int = 2, eval_percent: int = 10, test_percent: int = 10,
                  shards: int = 2, min_services: int = 1, bpe_sample_size: int = 200_000,
                  max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES,
                  beam_args: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Preprocesses behaviour logs into per-user records, in this process.

    The parameters are BehaviorPreprocess's (``min_items`` is its
    ``min_items_per_user``, ``min_services`` its ``min_services_per_user``,
    ``shards`` its ``num_shards``) with the same defaults, except ``shards``.

    Args:
      behaviors: DataFrame with columns ``user_id``, ``service``, ``timestamp``,
        ``item_text`` (any cell types ExampleGen could produce: integer or string
        ids, timestamps as `clue_keras.data.values.normalize_timestamp` accepts);
        or a data directory / files (`clue_keras.data.tables.behavior_files`).
      out_dir: gets ``vocab/``, ``Split-{train,eval,test}/`` with ``shards``
        files each (possibly empty) and ``stats.json``; the split folders and
        ``stats.json`` of an earlier run are removed first.
      max_items: S, newest items kept per (user, service).
      max_tokens: L, ids per item including the service token.
      vocab_size: requested BPE vocabulary size including special tokens.
      min_items, min_services: users with fewer items (after cleaning) or
        fewer services are dropped.
      eval_percent, test_percent: share of users per held-out split.
      shards: files per split (>= 1).
      bpe_sample_size: at most this many train item texts train the BPE.
      max_text_bytes: item texts are cut to this many UTF-8 bytes (0: no cap);
        recorded in the vocabulary's ``clue_vocab.json``.
      beam_args: Beam pipeline options for the graph (default: the in-memory
        DirectRunner); e.g. `clue_keras.data.engines.dask_beam_args` runs it on a
        dask.distributed cluster, whose workers must reach ``out_dir``.

    Returns:
      ``stats.json`` (keys: `clue_keras.data.values.STATS_DOC`, per split
      ``users_<split>`` and ``items_<split>``, and ``services``). Bad rows are
      dropped and counted there (``rows_dropped_*``), as in the pipeline.

    Raises:
      DataValidationError: (a ValueError) what would stop ExampleGen, ``FILE:LINE``.
      ValueError: a missing column, no rows, or no train users (with the drop counts).
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from clue_keras.data.preprocess import STATS_FILENAME, build_pipeline

    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    rows, source = _raw_rows(behaviors)
    if not rows:
        raise ValueError(f"{source} has no rows")
    os.makedirs(out_dir, exist_ok=True)
    _clear_outputs(out_dir)
    raw_dir = os.path.join(out_dir, f"{_RAW_DIRNAME}-{os.getpid()}")
    os.makedirs(raw_dir, exist_ok=True)
    params = {"max_items": max_items, "max_tokens": max_tokens, "vocab_size": vocab_size,
              "min_items_per_user": min_items, "min_services_per_user": min_services,
              "eval_percent": eval_percent, "test_percent": test_percent,
              "bpe_sample_size": bpe_sample_size, "num_shards": shards,
              "max_text_bytes": max_text_bytes}
    try:
        write_raw_examples(rows, os.path.join(raw_dir, "behaviors.tfrecord.gz"))
        options = list(beam_args) if beam_args else list(IN_PROCESS_OPTIONS)
        with beam.Pipeline(options=PipelineOptions(options)) as p:
            build_pipeline(p, os.path.join(raw_dir, "*"), out_dir, params)
    finally:
        shutil.rmtree(raw_dir, ignore_errors=True)
    stats_path = os.path.join(out_dir, STATS_FILENAME)
    with open(stats_path, encoding="utf-8") as f:
        stats = json.load(f)
    if not stats.get("users_train"):
        os.remove(stats_path)  # not a usable output: no stats.json marks it incomplete
        raise ValueError(f"{source}: " + no_train_users_message(stats, min_items, min_services))
    return stats
