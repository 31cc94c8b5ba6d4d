"""Table formats and columns of the raw data, declared once, and the one table reader.

Every raw table (behaviour logs, downstream interactions, catalogues) is read
here, whatever reads it: `clue prepare`, the evaluation, batch embedding, the
tests. Formats, by file extension:

| format | extensions | notes |
|---|---|---|
| ``csv`` | ``.csv`` | header row, RFC 4180 quoting, UTF-8 |
| ``jsonl`` | ``.jsonl`` ``.json`` | one JSON object per line, UTF-8 |
| ``parquet`` | ``.parquet`` | |
| ``tfrecord`` | ``.tfrecord`` ``.tfrecord.gz`` ``.gz`` | ``tf.train.Example`` records, one value per feature; ``.gz`` = GZIP |

Columns (docs/ARCHITECTURE.md): behaviour logs `BEHAVIOR_COLUMNS`; downstream
interactions `INTERACTION_COLUMNS` (required) plus `INTERACTION_OPTIONAL_COLUMNS`;
catalogues `CATALOGUE_COLUMNS` plus `CATALOGUE_OPTIONAL_COLUMNS`.
Local paths only, except `find_files`, which also globs ``gs://`` and the like.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from clue_keras import uri
from clue_keras.data.errors import DataValidationError, ReadError
from clue_keras.uri import open_binary, read_parquet  # noqa: F401  (re-exported)

#: Format name -> file extensions (longest match wins, so ``x.tfrecord.gz`` is ``tfrecord``).
FORMATS: Dict[str, Tuple[str, ...]] = {
    "csv": (".csv",),
    "jsonl": (".jsonl", ".json"),
    "parquet": (".parquet",),
    "tfrecord": (".tfrecord", ".tfrecord.gz", ".gz"),
}

#: Pre-training behaviour logs: every column required. ``user_id``, ``service`` and
#: ``item_text`` are strings (integer cells read as their decimal string), ``timestamp``
#: anything `clue_keras.data.values.normalize_timestamp` accepts.
BEHAVIOR_COLUMNS: Tuple[str, ...] = ("user_id", "service", "timestamp", "item_text")
#: Timestamp columns of every table (normalised by `normalize_timestamp` to int64).
TIME_COLUMNS: Tuple[str, ...] = ("timestamp",)
#: Id columns: strings that must not be blank in task and catalogue tables.
ID_COLUMNS: Tuple[str, ...] = ("user_id", "item_id", "service")

#: Downstream interactions: required columns ...
INTERACTION_COLUMNS: Tuple[str, ...] = ("user_id", "item_id", "timestamp")
#: ... and the optional one (the clicked item's text; `clue synth` writes it).
INTERACTION_OPTIONAL_COLUMNS: Tuple[str, ...] = ("item_text",)
#: Column order of interaction tables as `clue synth` writes and `read_interactions` returns them.
INTERACTION_TABLE_COLUMNS: Tuple[str, ...] = ("user_id", "item_id", "item_text", "timestamp")

#: Downstream catalogues: ``item_id`` required; ``item_text`` and ``topic`` (int) optional.
CATALOGUE_COLUMNS: Tuple[str, ...] = ("item_id",)
CATALOGUE_OPTIONAL_COLUMNS: Tuple[str, ...] = ("item_text", "topic")
CATALOGUE_TABLE_COLUMNS: Tuple[str, ...] = ("item_id", "item_text", "topic")
CATALOGUE_INT_COLUMNS: Tuple[str, ...] = ("topic",)

FileSpec = Union[str, Sequence[str]]


def format_of(path: str) -> str:
    """The format of ``path`` from its extension; ValueError naming the path if unknown."""
    fmt = _format_or_none(path)
    if fmt is None:
        known = ", ".join(e for exts in FORMATS.values() for e in exts)
        raise ValueError(f"{path}: unknown file type; expected one of {known}")
    return fmt


def _format_or_none(path: str) -> Optional[str]:
    name = path.lower()
    best, best_len = None, 0
    for fmt, exts in FORMATS.items():
        for ext in exts:
            if name.endswith(ext) and len(ext) > best_len:
                best, best_len = fmt, len(ext)
    return best


def _glob(pattern: str) -> List[str]:
    return uri.glob(pattern) if uri.is_remote(pattern) else glob.glob(pattern)


_is_dir, _is_file = uri.isdir, uri.isfile


def _data_files_in(directory: str) -> List[str]:
    """Files of a known format directly in ``directory`` (hidden / temporary ones skipped)."""
    return [p for p in _glob(os.path.join(directory, "*"))
            if not os.path.basename(p).startswith(".") and _format_or_none(p)
            and not _is_dir(p)]


def find_files(spec: FileSpec) -> List[str]:
    """Sorted data files named by ``spec``.

    Args:
      spec: a directory (its files of a known format, not recursive), a glob
        pattern, a file, or a list of any of these.

    Raises:
      FileNotFoundError: naming the entry of ``spec`` that matches no file.
    """
    entries = [spec] if isinstance(spec, str) else list(spec)
    if not entries:
        raise FileNotFoundError("no data files given (empty list)")
    found = set()
    for entry in entries:
        entry = os.fspath(entry)
        if _is_dir(entry):
            files = _data_files_in(entry)
            if not files:
                known = ", ".join(f"*{e}" for exts in FORMATS.values() for e in exts)
                raise FileNotFoundError(f"{entry}: no data files ({known})")
        else:
            files = _glob(entry)
            if not files:
                raise FileNotFoundError(f"{entry}: no such file or directory, or no match")
        found.update(files)
    return sorted(found)


def detect_format(data_root: str) -> Tuple[str, str, str]:
    """Finds the behaviour files under ``data_root`` and their format.

    Accepts either the directory holding the files or a `clue synth` output
    directory (whose ``behaviors/`` sub-directory holds them).

    Returns:
      ``(input_dir, format, file_pattern)``, the pattern like ``*.csv``.

    Raises:
      FileNotFoundError: no file with a known extension, naming the directory.
      ValueError: files of more than one format, naming them.
    """
    input_dir = data_root
    if _is_dir(os.path.join(data_root, "behaviors")):
        input_dir = os.path.join(data_root, "behaviors")
    found, suffixes = {}, set()
    for path in sorted(_glob(os.path.join(input_dir, "*"))):
        if not _is_file(path) or os.path.basename(path).startswith("."):
            continue
        for fmt, exts in FORMATS.items():
            ext = next((e for e in exts if path.endswith(e)), None)
            if ext:
                found.setdefault(fmt, []).append(path)
                suffixes.add(ext)
                break
    if not found:
        raise FileNotFoundError(
            f"no behaviour files (*.csv, *.jsonl, *.parquet, *.tfrecord[.gz]) in {input_dir}")
    if len(found) > 1:
        raise ValueError(f"{input_dir} mixes formats: " + "; ".join(
            f"{fmt}: {', '.join(os.path.basename(p) for p in paths)}"
            for fmt, paths in sorted(found.items())))
    fmt = next(iter(found))
    pattern = "*" + suffixes.pop() if len(suffixes) == 1 else "*"
    return input_dir, fmt, pattern


# --------------------------------------------------------------------------- raw rows


def _example_values(raw: bytes) -> Dict[str, Any]:
    """A serialized tf.Example as ``{feature: values list}`` (bytes kept as bytes)."""
    import tensorflow as tf

    row = {}
    for key, feature in tf.train.Example.FromString(raw).features.feature.items():
        kind = feature.WhichOneof("kind")
        row[key] = list(getattr(feature, kind).value) if kind else []
    return row


def _tfrecord_values(path: str, limit: Optional[int] = None) -> Iterator[Dict[str, Any]]:
    import tensorflow as tf

    compression = "GZIP" if path.lower().endswith(".gz") else ""
    ds = tf.data.TFRecordDataset(path, compression_type=compression)
    if limit is not None:
        ds = ds.take(limit)
    for raw in ds.as_numpy_iterator():
        yield _example_values(raw)


def iter_raw_rows(path: str, fmt: Optional[str] = None, limit: int = 10_000):
    """Yields up to ``limit`` raw rows of one file as ``{column: value}``, untyped.

    For finding bad rows (wrong type, empty cell): values are as stored (CSV
    cells are strings), ``None`` when a cell is empty. The first yield of a
    CSV / Parquet file is its column list under the key ``None``. TFRecord
    features with one value give that value, with several a list.
    """
    import tensorflow as tf

    fmt = fmt or format_of(path)
    if fmt == "csv":
        import csv

        with tf.io.gfile.GFile(path, "r") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            yield {None: header}
            for i, rec in enumerate(reader):
                if i >= limit:
                    return
                yield {k: (v if v != "" else None) for k, v in zip(header, rec)}
    elif fmt == "jsonl":
        with tf.io.gfile.GFile(path, "r") as f:
            for i, line in enumerate(f):
                if i >= limit:
                    return
                if line.strip():
                    yield json.loads(line)
    elif fmt == "parquet":
        table = read_parquet(path)
        yield {None: table.column_names}
        yield from table.slice(0, limit).to_pylist()
    elif fmt == "tfrecord":
        for values in _tfrecord_values(path, limit):
            yield {k: (v[0] if len(v) == 1 else (v or None)) for k, v in values.items()}
    else:
        raise ValueError(f"{path}: unknown format {fmt!r}; expected one of {list(FORMATS)}")


# ------------------------------------------------------------------------------ tables


def _read_jsonl(path: str, columns: Sequence[str]):
    import pandas as pd

    records = []
    with open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ReadError(f"{path}:{lineno}: not valid UTF-8: {e}") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ReadError(f"{path}:{lineno}: not valid JSON: {e}") from None
            if not isinstance(rec, dict):
                raise ReadError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            records.append(rec)
    if not records:
        return pd.DataFrame(columns=list(columns))
    return pd.DataFrame(records, dtype=object)  # ints stay ints next to missing keys


def _read_tfrecord(path: str, columns: Sequence[str]):
    import pandas as pd

    rows = []
    for i, values in enumerate(_tfrecord_values(path), 1):
        row = {}
        for key, vals in values.items():
            if key not in columns:
                continue
            if len(vals) != 1:
                raise ReadError(f"{path}: record {i}: feature {key!r} must hold exactly one "
                                f"value, got {len(vals)}")
            row[key] = vals[0]
        rows.append(row)
    return pd.DataFrame.from_records(rows) if rows else pd.DataFrame(columns=list(columns))


def _read_csv(path: str):
    """A CSV file as CsvExampleGen splits it (`clue_keras.data.csvfile`), all cells ``str``;
    the header may have a byte-order mark or quoted names (this is not ExampleGen)."""
    import pandas as pd

    from clue_keras.data import csvfile

    header = csvfile.read_header(path, strict=False)
    rows = [cells for _, cells in csvfile.iter_records(path, header)]
    return pd.DataFrame(rows, columns=header, dtype=object)


def _load(path: str, fmt: str, columns: Sequence[str]):
    try:
        if fmt == "csv":
            return _read_csv(path)
        if fmt == "jsonl":
            return _read_jsonl(path, columns)
        if fmt == "parquet":
            # Integer columns with nulls stay integers (not float64 with NaN).
            return read_parquet(path).to_pandas(integer_object_nulls=True)
        return _read_tfrecord(path, columns)
    except ReadError:
        raise
    except DataValidationError as e:  # FILE:LINE problems of clue_keras.data.csvfile
        raise ReadError(str(e)) from None
    except Exception as e:  # parser errors of pandas / pyarrow / TensorFlow
        raise ReadError(f"{path}: cannot parse as {fmt}: {e}") from e


def read_table(path: str, columns: Sequence[str], int_columns: Sequence[str] = (),
               optional: Sequence[str] = (), time_columns: Sequence[str] = TIME_COLUMNS,
               raw: bool = False):
    """Reads one table file (format by extension, see `FORMATS`) into a pandas DataFrame.

    Args:
      path: the file.
      columns: the columns to return, in this order; each must be in the file
        unless it is in ``optional`` (then it is left out when absent).
      int_columns: columns returned as int64.
      optional: columns of ``columns`` the file may lack.
      time_columns: columns normalised by
        `clue_keras.data.values.normalize_timestamp` to int64 (unix seconds for
        ISO dates, integers as they are).
      raw: return the cells as stored (object columns, ``None`` for a missing
        cell), without any conversion or check but the columns'; for readers
        that apply the behaviour drop rules themselves (`clue_keras.data.tables`).

    Every other column is returned as Python ``str``: integer cells as their
    decimal string (`clue_keras.data.values.id_string`), a missing cell as
    ``""``; `ID_COLUMNS` must not be blank or missing.

    Raises:
      ReadError: (a ValueError) naming ``path`` and the line, row or column, on
        a parse error (CSV: a wrong number of fields or bad UTF-8 as ``FILE:LINE``),
        a missing column, a missing or blank value, or a value of the wrong type.
    """
    import pandas as pd

    from clue_keras.data.values import TimestampError, id_string, normalize_timestamp

    fmt = format_of(path)
    df = _load(path, fmt, columns)
    missing = [c for c in columns if c not in df.columns and c not in optional]
    if missing:
        raise ReadError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    present = [c for c in columns if c in df.columns]
    df = df[present].copy().reset_index(drop=True)
    if raw:
        return df.astype(object).where(df.notna(), None)
    for c in present:
        na = df[c].isna()
        if na.any() and (c in ID_COLUMNS or c in time_columns or c in int_columns):
            raise ReadError(f"{path}: column {c!r} has missing values (row {int(na.values.argmax()) + 1})")
        if c in time_columns:
            values = []
            for i, v in enumerate(df[c].tolist(), 1):
                try:
                    values.append(normalize_timestamp(v))
                except TimestampError as e:
                    raise ReadError(f"{path}: row {i}: column {c!r}: {e}") from None
            df[c] = pd.Series(values, dtype="int64")
        elif c in int_columns:
            try:
                df[c] = pd.to_numeric(df[c], errors="raise").astype("int64")
            except (ValueError, TypeError) as e:
                raise ReadError(f"{path}: column {c!r} must hold integers: {e}") from None
        else:
            try:
                df[c] = ["" if missing else id_string(v)
                         for v, missing in zip(df[c].tolist(), na.tolist())]
            except UnicodeDecodeError as e:
                raise ReadError(f"{path}: column {c!r} is not valid UTF-8: {e}") from None
            if c in ID_COLUMNS:
                blank = df[c].str.strip() == ""
                if blank.any():
                    raise ReadError(f"{path}: row {int(blank.values.argmax()) + 1}: column {c!r} "
                                    f"is empty ({int(blank.sum())} row(s))")
    return df
