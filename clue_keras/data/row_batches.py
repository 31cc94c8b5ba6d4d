"""Raw rows in batches: the per-row half of `clue_keras.data.preprocess`.

Handling 4M behaviour rows one Beam element each costs more than the work on
them (per-element protobuf parsing in Python, per-row shuffle, issue 14). So
`clue_keras.data.preprocess.ParseRows` parses a whole batch of serialized raw
tf.Examples at once (`parse_batch`: tfx_bsl's C++ decoder to Arrow, then the
one row rule `clue_keras.data.values.behavior_row` on its cells, vectorised for
the rows in its common shape by `clue_keras.data.fast_rows`) and emits
one element per *user shard* of the batch: ``(shard, [row, ...])`` with
``shard = crc32(user_id) mod num_shards`` (`user_shard`, the same in every
process). One GroupByKey per shard brings all rows of a user together;
`clean_shard` then cleans each user of the shard with
`clue_keras.data.records.clean_behaviors`, as `preprocess.build_history` does.

A row is ``(user_id, service, timestamp, item_text)`` (`Row`).
"""

from __future__ import annotations

import pickle
import zlib
from typing import Any, Dict, Iterable, List, Sequence, Tuple

from clue_keras.data.fast_rows import fast_rows
from clue_keras.data.values import BadRow, behavior_row
from clue_keras.text import DEFAULT_MAX_TEXT_BYTES

#: Behaviour rows parsed as one batch.
BATCH_ROWS = 4096
#: User shards: the keys of the one GroupByKey over rows.
NUM_USER_SHARDS = 64

Row = Tuple[str, str, int, str]
_COLUMNS = ("user_id", "service", "timestamp", "item_text")

__all__ = ["BATCH_ROWS", "NUM_USER_SHARDS", "Row", "read_batches", "read_part", "user_shard",
           "example_cells", "parse_batch", "pack_rows", "unpack_rows", "shard_rows", "clean_shard"]


def read_part(task: Tuple[str, int, int], batch_rows: int = BATCH_ROWS) -> Iterable[List[bytes]]:
    """Batches ``part``, ``part + parts``, ... of the file of ``task = (path, part,
    parts)`` (`read_batches`): ``parts`` tasks of one file share its batches, so a
    file can be parsed by several workers without shuffling its records (each
    task still decompresses the whole file, which costs little next to parsing)."""
    path, part, parts = task
    for i, batch in enumerate(read_batches(path, batch_rows)):
        if i % parts == part:
            yield batch


def read_batches(path: str, batch_rows: int = BATCH_ROWS) -> Iterable[List[bytes]]:
    """The records of one TFRecord file, ``batch_rows`` at a time (the last batch may be
    shorter): read by TensorFlow's C++ reader, local or remote, gzipped when the
    name says so as Beam decides (``.gz``); another compression Beam knows
    (``.bz2``, ``.deflate``, ...) goes through Beam's reader."""
    from apache_beam.io.filesystem import CompressionTypes

    kind = CompressionTypes.detect_compression_type(path)
    if kind in (CompressionTypes.GZIP, CompressionTypes.UNCOMPRESSED):
        import tensorflow as tf

        ds = tf.data.TFRecordDataset(
            path, compression_type="GZIP" if kind == CompressionTypes.GZIP else "",
            buffer_size=1 << 22)
        for batch in ds.batch(batch_rows).as_numpy_iterator():
            yield list(batch)
        return
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.io.tfrecordio import _TFRecordUtil  # pylint: disable=protected-access

    batch: List[bytes] = []
    with FileSystems.open(path, compression_type=kind) as f:
        while True:
            record = _TFRecordUtil.read_record(f)
            if record is None:
                break
            batch.append(record)
            if len(batch) == batch_rows:
                yield batch
                batch = []
    if batch:
        yield batch


def user_shard(user_id: str, num_shards: int) -> int:
    """``crc32(utf-8 user_id) mod num_shards``: stable across processes and runs."""
    return zlib.crc32(user_id.encode("utf-8")) % num_shards


def _proto_cells(serialized: bytes) -> List[list]:
    import tensorflow as tf

    feats = tf.train.Example.FromString(serialized).features.feature
    cells = []
    for column in _COLUMNS:
        kind = feats[column].WhichOneof("kind") if column in feats else None
        cells.append(list(getattr(feats[column], kind).value) if kind else [])
    return cells


def _decode(serialized: Sequence[bytes]):
    """Serialized raw tf.Examples -> one Arrow RecordBatch (tfx_bsl's C++ decoder), or
    ``None`` when it cannot decode them as one table (a column with ints in one
    example and bytes in another)."""
    from tfx_bsl.coders.example_coder import ExamplesToRecordBatchDecoder

    try:
        return ExamplesToRecordBatchDecoder().DecodeBatch(list(serialized))
    except Exception:  # pylint: disable=broad-except  # mixed types: per example
        return None


def _column(batch, name: str):
    index = batch.schema.get_field_index(name)
    return batch.column(index) if index >= 0 else None


def example_cells(serialized: Sequence[bytes]) -> List[List[list]]:
    """Serialized raw tf.Examples -> per example the cells ``user_id``,
    ``service``, ``timestamp``, ``item_text`` as `behavior_row` takes them (a
    value, or a list of the values, ``None`` / ``[]`` when missing).

    Decoded by tfx_bsl into Arrow in one call; a batch it cannot decode as one
    table (a column with ints in one example and bytes in another) is decoded
    example by example with the protobuf library: the same values either way.
    """
    batch = _decode(serialized)
    if batch is None:
        return [_proto_cells(s) for s in serialized]
    return _batch_cells(batch)


def _batch_cells(batch) -> List[List[list]]:
    columns = []
    for column in _COLUMNS:
        values = _column(batch, column)
        columns.append(_cell_values(values) if values is not None else [None] * batch.num_rows)
    return [list(cells) for cells in zip(*columns)]


def _cell_values(lists) -> list:
    """An Arrow list column -> per row its one value, ``None`` when it has none (or is
    null: the feature is missing), the list when it has several (`behavior_row`
    takes a value or a list; lists of one are unwrapped there too)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (pa.types.is_list(lists.type) or pa.types.is_large_list(lists.type)):
        return [None] * len(lists)  # type null: no example has a value
    lens = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    flat = lists.flatten().to_pylist()
    if len(flat) == len(lens) and (lens == 1).all():
        return flat
    out, start = [], 0
    for n in lens.tolist():
        out.append(flat[start] if n == 1 else (None if n == 0 else flat[start:start + n]))
        start += n
    return out


def _behavior_rows(cells: Iterable[list]) -> List[Any]:
    """`behavior_row` of each cells: the row, or the `BadRow` it raises."""
    out: List[Any] = []
    for c in cells:
        try:
            out.append(behavior_row(*c))
        except BadRow as e:
            out.append(e)
    return out


def parse_batch(serialized: Sequence[bytes]) -> Tuple[List[Row], List[BadRow]]:
    """Serialized raw tf.Examples -> (the usable rows, a `BadRow` per dropped row), both
    in input order; per row exactly `clue_keras.data.values.behavior_row` of its
    `example_cells` (as `clue_keras.data.preprocess.parse_row`).

    `behavior_row` is the rule; the rows in its common shape go through
    `fast_rows`, a vectorised copy of it for that shape only (issue 14: one Python
    call per row was most of the parse time), and every other row through
    `behavior_row` itself, so dropped rows always get its `BadRow`.
    """
    batch = _decode(serialized)
    if batch is None:
        results = _behavior_rows(_proto_cells(s) for s in serialized)
        return ([r for r in results if not isinstance(r, BadRow)],
                [r for r in results if isinstance(r, BadRow)])
    import numpy as np
    import pyarrow as pa

    ok, fast = fast_rows(batch)
    if ok.all():
        return fast, []
    slow = _behavior_rows(_batch_cells(batch.take(pa.array(np.flatnonzero(~ok)))))
    bad = [r for r in slow if isinstance(r, BadRow)]
    if len(bad) == len(slow):  # the usual case: the other rows are all dropped
        return fast, bad
    fast_it, slow_it = iter(fast), iter(slow)
    rows: List[Row] = []
    for is_ok in ok.tolist():
        row = next(fast_it) if is_ok else next(slow_it)
        if not isinstance(row, BadRow):
            rows.append(row)
    return rows, bad


def pack_rows(rows: List[Row]) -> bytes:
    """A list of rows as one compressed opaque value for the shuffle (`unpack_rows`
    reverses it): the four columns, pickled and zlib-compressed (level 1).

    The DirectRunner keeps every grouped value in the runner's memory, and copies
    them all when it hands them to the next stage (1M users, rows as tuples: the
    runner peaked at 15 GB of 24; docs/PERFORMANCE.md, "1M users"). Columns of
    ids, service names and texts compress several-fold. Pickle, because the bytes
    never leave the pipeline that wrote them."""
    columns = tuple(list(c) for c in zip(*rows)) if rows else ((),) * len(_COLUMNS)
    return zlib.compress(pickle.dumps(columns, protocol=pickle.HIGHEST_PROTOCOL), 1)


def unpack_rows(block: Any) -> List[Row]:
    """The rows of a `pack_rows` block (a list of rows is returned as it is)."""
    if not isinstance(block, bytes):
        return block
    return list(zip(*pickle.loads(zlib.decompress(block))))


def shard_rows(rows: Iterable[Row], num_shards: int) -> Dict[int, List[Row]]:
    """Rows by `user_shard` of their user id."""
    out: Dict[int, List[Row]] = {}
    for row in rows:
        out.setdefault(user_shard(row[0], num_shards), []).append(row)
    return out


def clean_shard(shard: Tuple[int, Iterable[Iterable[Row]]], max_items: int,
                max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES) -> Iterable[Tuple[str, Any]]:
    """``(shard, batches of rows)`` -> ``(user_id, CleanedUser)`` for every user in it
    (`clue_keras.data.records.clean_behaviors` on each user's rows); a batch is a
    list of rows or a `pack_rows` block."""
    from clue_keras.data.records import clean_behaviors

    per_user: Dict[str, List[Tuple[str, int, str]]] = {}
    for rows in shard[1]:
        for user, service, ts, text in unpack_rows(rows):
            per_user.setdefault(user, []).append((service, ts, text))
    for user, rows in per_user.items():
        yield user, clean_behaviors(rows, max_items, max_text_bytes=max_text_bytes)
