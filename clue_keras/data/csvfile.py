"""CSV files read exactly as TFX's CsvExampleGen reads them, with ``FILE:LINE`` errors.

CsvExampleGen (tfx 1.16, ``csv_example_gen/executor.py`` + tfx_bsl's
``csv_decoder``) does, and what it does on bad input (every failure is an
exception inside a Beam worker, naming neither line nor column):

* header: the first line, ``line.strip().split(",")`` — no unquoting, so a
  quoted header keeps its quotes and a UTF-8 byte-order mark stays in the first
  name (``"\\ufeffuser_id"``, then "required column 'user_id' is missing");
* records: each further line decoded as UTF-8 (bad bytes: ``UnicodeDecodeError``,
  the run stops), lines joined while the count of ``"`` is odd (quoted
  newlines; a file ending inside quotes: "Csv record had unbalanced quotes");
  a record parsed with Python's ``csv`` reader; blank lines skipped;
* a record with another number of fields than the header: "Columns do not
  match specified csv headers" (the run stops); a field longer than 131,072
  characters (Python csv's ``field_size_limit``): "field larger than field
  limit" (the run stops);
* types per column over every file: INT when every non-empty cell is an
  integer in int64 range, else FLOAT when every one is a number, else STRING
  (so ``"007"`` becomes the integer 7); an empty cell is a missing value.

:func:`iter_records` reproduces the record splitting and reports each of these
problems as ``FILE:LINE: ...`` (:class:`~clue_keras.data.errors.DataValidationError`),
so the pre-flight validator and ``clue prepare`` stop where CsvExampleGen would
crash, with a message a person can act on.
"""

from __future__ import annotations

import csv
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from clue_keras.data.errors import DataValidationError
from clue_keras.uri import open_binary

BOM = "\ufeff"
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1

#: Column types, as tfx_bsl's ColumnTypeInferrer names them.
INT, FLOAT, STRING = "INT", "FLOAT", "STRING"

OnError = Optional[Callable[[str], None]]


_open = open_binary


def read_header(path: str, strict: bool = True) -> List[str]:
    """The column names as CsvExampleGen reads them (first line, stripped, split on ``,``).

    With ``strict=False`` (tables that do not go through ExampleGen) a byte-order
    mark is skipped and the header parsed as a CSV record (quotes removed).

    Raises:
      DataValidationError: the file is empty, the header is not UTF-8, has a
        byte-order mark or quoted names.
    """
    with _open(path) as f:
        raw = f.readline()
    if not raw:
        raise DataValidationError(f"{path}:1: empty file (a CSV file needs a header row)")
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataValidationError(f"{path}:1: header is not valid UTF-8: {e}") from None
    if not strict:
        return next(csv.reader([line[1:] if line.startswith(BOM) else line]), [])
    if line.startswith(BOM):
        raise DataValidationError(
            f"{path}:1: starts with a UTF-8 byte-order mark; CsvExampleGen would name the first "
            f"column {line.strip().split(',')[0]!r}. Save the file as UTF-8 without BOM")
    names = line.strip().split(",")
    if any('"' in n for n in names):
        raise DataValidationError(
            f"{path}:1: quoted column names {names}; CsvExampleGen splits the header on ',' "
            f"without unquoting it. Write the header row without quotes")
    return names


def _bad_utf8_column(raw: bytes, header: Sequence[str]) -> str:
    """The column holding the invalid bytes of a record, for the message."""
    text = raw.decode("utf-8", errors="surrogateescape")
    try:
        cells = next(csv.reader([text]))
    except (csv.Error, StopIteration):
        return ""
    for name, cell in zip(list(header) + ["?"] * len(cells), cells):
        if any("\udc80" <= ch <= "\udcff" for ch in cell):
            return f"column {name!r}"
    return ""


def iter_records(path: str, header: Optional[Sequence[str]] = None, on_error: OnError = None,
                 limit: Optional[int] = None) -> Iterator[Tuple[int, List[str]]]:
    """``(line number, cells)`` of each data record, split as CsvExampleGen splits them.

    Args:
      path: the file (header in line 1).
      header: the column names (default: :func:`read_header`).
      on_error: called with each ``"FILE:LINE: ..."`` problem (bad UTF-8 naming the
        column, wrong number of fields, unbalanced quotes), the record skipped;
        when None the first problem raises :class:`DataValidationError`.
      limit: stop after this many records.

    Yields:
      The physical line where the record starts (the header is line 1) and its
      cells as ``str`` (``""`` for an empty cell), one per header column.
    """
    header = list(header) if header is not None else read_header(path)

    def fail(msg: str) -> None:
        if on_error is None:
            raise DataValidationError(msg)
        on_error(msg)

    n = 0
    with _open(path) as f:
        f.readline()
        lineno, start, parts, raw_parts, quotes = 1, 0, [], [], 0
        for raw in f:
            lineno += 1
            if not parts:
                start = lineno
            raw_parts.append(raw)
            try:
                parts.append(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                where = _bad_utf8_column(b"".join(raw_parts), header)
                fail(f"{path}:{lineno}: {where + ' ' if where else ''}is not valid UTF-8 "
                     f"(byte {raw[e.start]:#04x} at offset {e.start} of the line); "
                     f"CsvExampleGen stops on it. Re-encode the file as UTF-8")
                parts, raw_parts, quotes = [], [], 0
                continue
            quotes += parts[-1].count('"')
            if quotes % 2:
                continue
            record = "".join(parts)
            parts, raw_parts, quotes = [], [], 0
            try:
                cells = next(csv.reader([record]), [])
            except csv.Error as e:
                if "field larger than field limit" in str(e):
                    fail(f"{path}:{start}: a field is longer than {csv.field_size_limit():,} "
                         f"characters; CsvExampleGen's CSV parser (Python csv) stops on it. "
                         f"Shorten the text (it is cut to max_text_bytes anyway) or use "
                         f"Parquet / JSONL")
                else:
                    fail(f"{path}:{start}: cannot parse the record: {e}")
                continue
            if not cells:
                continue  # blank line
            if len(cells) != len(header):
                lines = f"lines {start}-{lineno}" if lineno > start else f"line {start}"
                fail(f"{path}:{start}: expected {len(header)} fields ({','.join(header)}), got "
                     f"{len(cells)} on {lines}: {record.strip()[:120]!r}; CsvExampleGen stops "
                     f"on it (quote fields holding ',' and double any '\"' inside them)")
                continue
            yield start, cells
            n += 1
            if limit is not None and n >= limit:
                return
        if parts:
            fail(f"{path}:{start}: a quoted field opened on line {start} is never closed "
                 f"(unbalanced '\"'); CsvExampleGen stops on it")


def cell_type(cell: str) -> Optional[str]:
    """tfx_bsl's type of one non-empty cell: INT, FLOAT or STRING (None when empty)."""
    if cell == "":
        return None
    try:
        if INT64_MIN <= int(cell) <= INT64_MAX:
            return INT
    except ValueError:
        pass
    try:
        float(cell)
        return FLOAT
    except ValueError:
        return STRING


def merge_type(a: Optional[str], b: Optional[str]) -> Optional[str]:
    """The column type once cells of types ``a`` and ``b`` are both seen."""
    order = {None: 0, INT: 1, FLOAT: 2, STRING: 3}
    return a if order[a] >= order[b] else b


def convert(cell: str, column_type: Optional[str]):
    """A cell as CsvExampleGen stores it for its column's type (None when empty)."""
    if cell == "":
        return None
    if column_type == INT:
        return int(cell)
    if column_type == FLOAT:
        return float(cell)
    return cell


def read_typed_rows(paths: Sequence[str], columns: Sequence[str]) -> Tuple[
        List[Tuple[str, int, Dict[str, object]]], Dict[str, Optional[str]]]:
    """Every record of ``paths`` (one CSV split, one header) typed as CsvExampleGen types it.

    Returns:
      ``([(path, line, {column: value or None}), ...], {column: type})`` for
      ``columns``.

    Raises:
      DataValidationError: the first ``FILE:LINE`` problem of :func:`iter_records`,
        files with different headers, or a missing column.
    """
    rows, types = [], {c: None for c in columns}
    first_header = None
    for path in paths:
        header = read_header(path)
        if first_header is None:
            first_header = header
        elif header != first_header:
            raise DataValidationError(
                f"{path}:1: header {header} differs from {paths[0]}'s {first_header}; "
                f"CsvExampleGen needs one header for all files")
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataValidationError(f"{path}:1: missing column(s) {missing}; found {header}")
        index = [header.index(c) for c in columns]
        for line, cells in iter_records(path, header):
            values = {c: cells[i] for c, i in zip(columns, index)}
            for c, v in values.items():
                if types[c] != STRING:  # STRING absorbs every other type
                    types[c] = merge_type(types[c], cell_type(v))
            rows.append((path, line, values))
    typed = [(p, line, {c: convert(v, types[c]) for c, v in values.items()})
             for p, line, values in rows]
    return typed, types
