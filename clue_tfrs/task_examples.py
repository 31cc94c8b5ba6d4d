"""A downstream task read from ExampleGen output: tf.Example records -> the task tables.

In the TFX pipeline the task enters as data: an ExampleGen (``TaskExampleGen``)
turns the task's interactions table into gzipped ``tf.Example`` records, and
optionally a second one (``TaskCatalogueExampleGen``) its catalogue. The
``ClueEvaluator`` executor hands the record files to `load_task_examples`.

ExampleGen infers each column's type from the data, so cells arrive as
ExampleGen wrote them: integer ids as INT64 features, ISO-8601 timestamps as
bytes, an empty CSV cell as a feature with no value. They are normalised with
the data layer's cell rules (`clue_keras.data.values`): ids become strings
(``123`` -> ``"123"``), timestamps int64 (`normalize_timestamp`), a missing
``item_text`` the empty string. The catalogue rule is that of
`clue_keras.data.tables.read_catalogue`: without a catalogue, the distinct items
of the interactions with their newest non-blank text; with one, a blank text is
filled with the item's newest interaction text; an item without any text is an
error.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import pandas as pd

from clue_keras.data.errors import ReadError
from clue_keras.data.formats import (CATALOGUE_COLUMNS, CATALOGUE_OPTIONAL_COLUMNS,
                                     INTERACTION_COLUMNS, INTERACTION_OPTIONAL_COLUMNS)
from clue_keras.data.tables import derive_catalogue, newest_texts

__all__ = ["example_rows", "read_example_table", "complete_catalogue", "load_task_examples"]


def example_rows(files: Sequence[str]) -> Iterator[Tuple[str, int, Dict[str, Any]]]:
    """``(file, record number from 1, {feature: value})`` of every record.

    A feature with one value gives that value (bytes, int or float), one
    without values (ExampleGen's empty cell) gives None.

    Raises:
      ReadError: a feature holds several values (naming file, record, feature).
    """
    import tensorflow as tf

    for path in files:
        compression = "GZIP" if path.lower().endswith(".gz") else ""
        ds = tf.data.TFRecordDataset(path, compression_type=compression)
        for n, raw in enumerate(ds.as_numpy_iterator(), 1):
            row = {}
            for key, feature in tf.train.Example.FromString(raw).features.feature.items():
                kind = feature.WhichOneof("kind")
                values = list(getattr(feature, kind).value) if kind else []
                if len(values) > 1:
                    raise ReadError(f"{path}: record {n}: feature {key!r} holds {len(values)} "
                                    "values; a task table has one value per cell")
                row[key] = values[0] if values else None
            yield path, n, row


def _cell(value: Any, column: str, where: str, kind: str) -> Any:
    """One normalised cell; ``kind`` is ``id``, ``time``, ``int`` or ``text``."""
    from clue_keras.data.values import TimestampError, id_string, normalize_timestamp

    if value is None and kind != "text":
        raise ReadError(f"{where}: column {column!r} is empty (no value)")
    try:
        if kind == "time":
            return normalize_timestamp(value)
        if kind == "int":
            return int(value)
        text = id_string(value)
    except TimestampError as e:
        raise ReadError(f"{where}: column {column!r}: {e}") from None
    except (TypeError, ValueError) as e:  # includes UnicodeDecodeError
        raise ReadError(f"{where}: column {column!r}: bad value {value!r}: {e}") from None
    if kind == "id" and not text.strip():
        raise ReadError(f"{where}: column {column!r} is empty")
    return text


def read_example_table(files: Sequence[str], required: Sequence[str],
                       optional: Sequence[str] = (), kinds: Optional[Dict[str, str]] = None,
                       source: str = "records") -> pd.DataFrame:
    """The records of ``files`` as one table of ``required`` + present ``optional`` columns.

    Args:
      files: tf.Example record files (``.gz``: GZIP), read in the order given.
      required: columns every record must have; optional: columns kept when
        at least one record has them.
      kinds: column -> ``id`` (non-blank string), ``time`` (int64 timestamp),
        ``int`` or ``text`` (string, "" when missing; the default).
      source: names the data in errors when there is no record.

    Raises:
      ReadError: no file or no record, a missing or blank id, a bad timestamp,
        naming the file, the record and the column.
    """
    kinds = dict(kinds or {})
    if not files:
        raise ReadError(f"{source}: no record files")
    rows, present = [], set()
    for path, n, row in example_rows(files):
        where = f"{path}: record {n}"
        missing = [c for c in required if c not in row]
        if missing:
            raise ReadError(f"{where}: missing column(s) {missing}; has {sorted(row)}")
        present.update(c for c in optional if row.get(c) is not None)
        cells = {c: _cell(row.get(c), c, where, kinds.get(c, "text")) for c in required}
        cells.update({c: _cell(row[c], c, where, kinds.get(c, "text"))
                      for c in optional if row.get(c) is not None})
        rows.append(cells)
    if not rows:
        raise ReadError(f"{source}: no records in {list(files)}")
    columns = list(required) + [c for c in optional if c in present]
    df = pd.DataFrame(rows).reindex(columns=columns)
    for c in columns:
        kind = kinds.get(c, "text")
        if kind == "text":
            df[c] = df[c].fillna("").astype(object)
        elif kind in ("time", "int") and c in required:
            df[c] = df[c].astype("int64")
    return df


def complete_catalogue(interactions: pd.DataFrame, catalogue: Optional[pd.DataFrame] = None,
                       source: str = "task") -> pd.DataFrame:
    """The task's catalogue: derived from the interactions without one; else the given one
    with blank texts filled by the item's newest interaction text.

    Raises:
      ReadError: an item without any text, naming ``source`` and a few item ids.
    """
    if catalogue is None:
        return derive_catalogue(interactions, source=source)
    cat = catalogue.copy()
    if "item_text" not in cat.columns:
        cat.insert(1, "item_text", "")
    blank = cat["item_text"].fillna("").astype(str).str.strip() == ""
    if blank.any():
        cat.loc[blank, "item_text"] = cat.loc[blank, "item_id"].map(newest_texts(interactions))
        still = cat["item_text"].isna() | (cat["item_text"].fillna("").astype(str).str.strip() == "")
        if still.any():
            raise ReadError(
                f"{source}: {int(still.sum())} of {len(cat)} catalogue item(s) have no text, "
                f"e.g. item_id {cat.loc[still, 'item_id'].iloc[:5].tolist()}; give every item "
                "a non-empty item_text (in the interactions or the catalogue)")
    return cat


def load_task_examples(interaction_files: Sequence[str],
                       catalogue_files: Optional[Sequence[str]] = None,
                       source: str = "task examples") -> Tuple[pd.DataFrame, pd.DataFrame]:
    """``(interactions, catalogue)`` of a task from ExampleGen record files, validated by
    `clue_tfrs.tasks.validate_task` (ids strings, timestamps int64, every item in
    the catalogue).

    Args:
      interaction_files: record files of the interactions (``user_id``,
        ``item_id``, ``timestamp``, optional ``item_text``).
      catalogue_files: record files of the catalogue (``item_id``, optional
        ``item_text``, ``topic``); None or empty: derived from the interactions.
      source: names the task in errors.
    """
    from clue_tfrs.tasks import validate_task

    interactions = read_example_table(
        interaction_files, INTERACTION_COLUMNS, INTERACTION_OPTIONAL_COLUMNS,
        kinds={"user_id": "id", "item_id": "id", "timestamp": "time"},
        source=f"{source} (interactions)")
    interactions = interactions[[c for c in ("user_id", "item_id", "item_text", "timestamp")
                                 if c in interactions.columns]]
    catalogue = None
    if catalogue_files:
        catalogue = read_example_table(catalogue_files, CATALOGUE_COLUMNS,
                                       CATALOGUE_OPTIONAL_COLUMNS,
                                       kinds={"item_id": "id", "topic": "int"},
                                       source=f"{source} (catalogue)")
    catalogue = complete_catalogue(interactions, catalogue, source=source)
    return validate_task(interactions, catalogue, source=source)
