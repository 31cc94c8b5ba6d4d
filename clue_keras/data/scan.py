"""Raw behaviour rows read as each ExampleGen of the pipeline reads them, for the pre-flight.

`scan_rows` yields ``("FILE:LINE", cells)`` for every row ExampleGen would turn
into a tf.Example, with the cell values it would store, and appends to
``errors`` a ``FILE:LINE: ...`` line for every row or file it would crash on
(inside Beam, naming neither line nor column):

* CSV (CsvExampleGen, `clue_keras.data.csvfile`): header with a byte-order mark
  or quoted names, files with different headers, wrong field count, bad UTF-8,
  unbalanced quotes, a field over 131,072 characters;
* JSONL (``components.jsonl_example_gen``): bad UTF-8, a line that is not a JSON
  object, a boolean or nested value in any column;
* Parquet (tfx's Parquet executor, ``dict_to_example``): a column of a type it
  cannot convert (timestamp, date, decimal, struct, ...), binary cells that are
  not UTF-8; a 0 (or 0.0, False) cell is read as missing, as it does;
* TFRecord (ImportExampleGen): an unreadable file; cells are passed as stored.

Warnings about values ExampleGen changes go to ``report.warnings``;
``report.sampled`` is set when ``limit`` stopped a file early.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Iterator, List, Optional, Tuple

from clue_keras.data import csvfile
from clue_keras.data.errors import DataValidationError
from clue_keras.data.formats import BEHAVIOR_COLUMNS
from clue_keras.uri import open_binary, parquet_file

Row = Tuple[str, Tuple[Any, ...]]  # ("FILE:LINE", cells of BEHAVIOR_COLUMNS)


def _csv_rows(paths: List[str], errors: List[str], limit: Optional[int],
              report: Any) -> Iterator[Row]:
    first: Optional[List[str]] = None
    types = {c: None for c in BEHAVIOR_COLUMNS}
    zero_padded, first_padded = 0, ""
    for path in paths:
        try:
            header = csvfile.read_header(path)
        except DataValidationError as e:
            errors.append(str(e))
            continue
        if first is None:
            first = header
        elif header != first:
            errors.append(f"{path}:1: header {header} differs from {paths[0]}'s {first}; "
                          f"CsvExampleGen needs one header for all files")
            continue
        missing = [c for c in BEHAVIOR_COLUMNS if c not in header]
        if missing:
            errors.append(f"{path}:1: missing column(s) {missing}; found {header}")
            continue
        index = [header.index(c) for c in BEHAVIOR_COLUMNS]
        n = 0
        for line, cells in csvfile.iter_records(path, header, on_error=errors.append, limit=limit):
            n += 1
            values = tuple(cells[i] for i in index)
            for c, v in zip(BEHAVIOR_COLUMNS, values):
                if types[c] != csvfile.STRING:  # STRING absorbs every other type
                    types[c] = csvfile.merge_type(types[c], csvfile.cell_type(v))
            if len(values[0]) > 1 and values[0][0] == "0" and values[0].isdigit():
                zero_padded, first_padded = zero_padded + 1, first_padded or values[0]
            yield f"{path}:{line}", tuple(v if v != "" else None for v in values)
        report.sampled |= limit is not None and n >= limit
    if types["user_id"] == csvfile.INT and zero_padded:
        report.warnings.append(
            f"{zero_padded:,} user ids have leading zeros (e.g. {first_padded!r}) in an "
            f"all-integer column: CsvExampleGen reads them as integers, so "
            f"{first_padded!r} becomes user {str(int(first_padded))!r}")
    _warn_floats(report, [c for c in ("user_id", "timestamp") if types[c] == csvfile.FLOAT])


def _warn_floats(report: Any, columns: List[str]) -> None:
    for c in columns:
        report.warnings.append(
            f"column {c!r} holds numbers with a fraction: ExampleGen stores them as float32 "
            f"(7 significant digits; unix seconds lose minutes). Write integers or ISO-8601 "
            f"strings")


def _jsonl_value_problem(value: Any) -> Optional[str]:
    """Why the JSONL ExampleGen (components.jsonl_example_gen) would stop on a value."""
    values = value if isinstance(value, list) else [value]
    values = [v for v in values if v is not None]
    if any(isinstance(v, bool) for v in values):
        return "holds a boolean; use 0/1 or a string"
    if all(isinstance(v, (int, float)) for v in values) or all(isinstance(v, str) for v in values):
        return None
    return f"has an unsupported value {value!r} (a string, a number or a list of one of those)"


def _jsonl_rows(paths: List[str], errors: List[str], limit: Optional[int],
                report: Any) -> Iterator[Row]:
    floats = set()
    for path in paths:
        seen, n = set(), 0
        with open_binary(path) as f:
            for lineno, raw in enumerate(f, 1):
                if limit is not None and n >= limit:
                    report.sampled = True
                    break
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    errors.append(f"{path}:{lineno}: not valid UTF-8 (byte {raw[e.start]:#04x} at "
                                  f"offset {e.start}); the JSONL ExampleGen stops on it")
                    continue
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    errors.append(f"{path}:{lineno}: not valid JSON: {e}")
                    continue
                if not isinstance(obj, dict):
                    errors.append(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                    continue
                bad = [(k, p) for k, p in ((k, _jsonl_value_problem(v)) for k, v in obj.items()) if p]
                if bad:
                    errors.extend(f"{path}:{lineno}: column {k!r} {p}" for k, p in bad)
                    continue
                seen.update(k for k, v in obj.items() if v is not None)
                floats.update(c for c in ("user_id", "timestamp") if isinstance(obj.get(c), float))
                n += 1
                yield f"{path}:{lineno}", tuple(obj.get(c) for c in BEHAVIOR_COLUMNS)
        missing = [c for c in BEHAVIOR_COLUMNS if c not in seen]
        if n and missing:
            errors.append(f"{path}: no row has column(s) {missing}")
    _warn_floats(report, sorted(floats))


def _arrow_type_ok(t) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        return _arrow_type_ok(t.value_type)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _arrow_type_ok(t.value_type)
    return any(f(t) for f in (pa.types.is_integer, pa.types.is_floating, pa.types.is_string,
                              pa.types.is_large_string, pa.types.is_binary,
                              pa.types.is_large_binary, pa.types.is_boolean, pa.types.is_null))


def _parquet_rows(paths: List[str], errors: List[str], limit: Optional[int],
                  report: Any) -> Iterator[Row]:
    zeros = Counter()
    for path in paths:
        try:
            pf = parquet_file(path)  # a URI is read through tf.io.gfile
        except Exception as e:
            errors.append(f"{path}: cannot read as parquet: {e}")
            continue
        schema = pf.schema_arrow
        missing = [c for c in BEHAVIOR_COLUMNS if c not in schema.names]
        bad = [f"column {f.name!r} has Arrow type {f.type}" for f in schema
               if not _arrow_type_ok(f.type)]
        if missing:
            errors.append(f"{path}: missing column(s) {missing}; found {schema.names}")
        if bad:
            errors.append(f"{path}: {'; '.join(bad)}: tfx's Parquet ExampleGen cannot convert it "
                          f"(it stops inside Beam); store int64 unix seconds or ISO-8601 strings")
        if missing or bad:
            continue
        row = 0
        for batch in pf.iter_batches(columns=list(BEHAVIOR_COLUMNS)):
            for rec in batch.to_pylist():
                if limit is not None and row >= limit:
                    report.sampled = True
                    break
                row += 1
                cells = []
                for c in BEHAVIOR_COLUMNS:
                    v = rec[c]
                    if isinstance(v, bytes):
                        try:
                            v = v.decode("utf-8")
                        except UnicodeDecodeError as e:
                            errors.append(f"{path}: row {row}: column {c!r} is not valid UTF-8 "
                                          f"({e}); tfx's Parquet ExampleGen stops on it")
                    if v is not None and not isinstance(v, (str, list)) and not v:
                        zeros[c] += 1  # tfx's dict_to_example: `if not value` -> missing
                        v = None
                    cells.append(v)
                yield f"{path}: row {row}", tuple(cells)
            else:
                continue
            break
    for c, n in zeros.items():
        report.warnings.append(
            f"{n:,} rows have {c} = 0: tfx's Parquet ExampleGen turns a 0 into a missing value, "
            f"so the pipeline drops them (counted above); start ids and ordinals at 1")


def _tfrecord_rows(paths: List[str], errors: List[str], limit: Optional[int],
                   report: Any) -> Iterator[Row]:
    from clue_keras.data.formats import _tfrecord_values

    for path in paths:
        try:
            for i, values in enumerate(_tfrecord_values(path, limit), 1):
                yield f"{path}: record {i}", tuple(values.get(c) or None for c in BEHAVIOR_COLUMNS)
                report.sampled |= limit is not None and i >= limit
        except Exception as e:
            errors.append(f"{path}: cannot read as TFRecord of tf.Example: {e}")


_READERS = {"csv": _csv_rows, "jsonl": _jsonl_rows, "parquet": _parquet_rows,
            "tfrecord": _tfrecord_rows}


def scan_rows(fmt: str, paths: List[str], errors: List[str], limit: Optional[int],
              report) -> Iterator[Row]:
    """The rows of ``paths`` (one format) as ExampleGen reads them; see the module docstring.

    Args:
      fmt: a format of `clue_keras.data.formats.FORMATS`.
      errors: gets one ``FILE:LINE: ...`` line per problem ExampleGen would stop on.
      limit: rows read per file (None: all).
      report: an object with ``warnings`` (a list) and ``sampled`` (a bool).
    """
    return _READERS[fmt](paths, errors, limit, report)
