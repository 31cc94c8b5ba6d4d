"""Whole raw tables as DataFrames: behaviour logs and downstream tasks.

Built on `clue_keras.data.formats` (formats, columns, `read_table`) and
`clue_keras.data.values` (ids, timestamps, drop rules). Layouts accepted::

    DIR/behaviors/<any name>.<fmt>          behaviour logs, one format (or DIR itself)
    <task>                                  ONE interactions table, any name and format:
                                            a file, or a directory holding one table file
    DIR/downstream/<task>/interactions.<fmt>   the `clue synth` layout: interactions ...
    DIR/downstream/<task>/catalogue.<fmt>      ... and an optional catalogue

A task is an interactions table (``user_id``, ``item_id``, ``timestamp``,
optional ``item_text``) and optionally a catalogue (``item_id``, optional
``item_text``, ``topic``). Without a catalogue, the catalogue is the distinct
items of the interactions; an item's text is the catalogue's when it is not
blank, else its newest non-blank text in the interactions. An item without any
text is an error (it could not be embedded).

These load everything into memory: for evaluation, tests and small runs.
"""

from __future__ import annotations

import os
from typing import List, Optional, Tuple

from clue_keras.data.formats import (
    BEHAVIOR_COLUMNS, CATALOGUE_INT_COLUMNS, CATALOGUE_OPTIONAL_COLUMNS, CATALOGUE_TABLE_COLUMNS,
    FORMATS, INTERACTION_OPTIONAL_COLUMNS, INTERACTION_TABLE_COLUMNS, FileSpec, ReadError,
    _data_files_in, _format_or_none, _is_dir, _is_file, detect_format, find_files, format_of,
    read_table)
from clue_keras.uri import listdir

#: File stems of the `clue synth` task layout.
INTERACTIONS_STEM, CATALOGUE_STEM = "interactions", "catalogue"


def behavior_files(files_or_dir: FileSpec) -> List[str]:
    """Sorted behaviour-log files.

    Args:
      files_or_dir: a data directory (``DIR/behaviors/`` is used when it exists,
        and it must hold files of one format only, as `detect_format` checks),
        a glob pattern, a file, or a list of these.
    """
    if isinstance(files_or_dir, (str, os.PathLike)) and _is_dir(os.fspath(files_or_dir)):
        input_dir, fmt, _ = detect_format(os.fspath(files_or_dir))
        return [p for p in find_files(input_dir) if format_of(p) == fmt]
    return find_files(files_or_dir)


def read_behaviors(files_or_dir: FileSpec):
    """All behaviour logs of ``files_or_dir`` (see `behavior_files`) as one DataFrame.

    Columns: ``user_id`` str, ``service`` str, ``timestamp`` int64, ``item_text``
    str ("" when empty), in file order. Rows that preprocessing drops (empty
    user id or service, bad timestamp, ...: `clue_keras.data.values.behavior_row`)
    are dropped here too; their counts by stats key are in
    ``df.attrs["rows_dropped"]``.
    """
    import pandas as pd

    from clue_keras.data.values import DROP_KEYS, BadRow, behavior_row

    rows, dropped = [], {k: 0 for k in DROP_KEYS.values()}
    for path in behavior_files(files_or_dir):
        df = read_table(path, BEHAVIOR_COLUMNS, raw=True)
        for cells in zip(*(df[c].tolist() for c in BEHAVIOR_COLUMNS)):
            try:
                rows.append(behavior_row(*cells))
            except BadRow as e:
                dropped[e.key] += 1
    out = pd.DataFrame(rows, columns=list(BEHAVIOR_COLUMNS))
    out["timestamp"] = out["timestamp"].astype("int64")
    out.attrs["rows_dropped"] = dropped
    return out


# --------------------------------------------------------------------------- tasks


def task_dir(data_dir: str, task: str) -> str:
    """``data_dir/downstream/<task>``; FileNotFoundError naming the tasks present if absent."""
    folder = os.path.join(data_dir, "downstream", task)
    if not _is_dir(folder):
        parent = os.path.join(data_dir, "downstream")
        have = sorted(listdir(parent)) if _is_dir(parent) else []
        raise FileNotFoundError(f"{folder}: no downstream task {task!r}; tasks present: {have}")
    return folder


def _stem(path: str) -> str:
    """File name without its format extension (``a/x.tfrecord.gz`` -> ``x``)."""
    name = os.path.basename(path)
    fmt = _format_or_none(name)
    ext = max((e for e in FORMATS.get(fmt, ()) if name.lower().endswith(e)), key=len, default="")
    return name[: len(name) - len(ext)]


def task_files(path: str) -> Tuple[str, Optional[str]]:
    """``(interactions file, catalogue file or None)`` of a task.

    Args:
      path: the interactions file itself (any name, a format of `FORMATS`), or a
        directory holding either ``interactions.<fmt>`` (and optionally
        ``catalogue.<fmt>``), or exactly one other table file (and optionally
        ``catalogue.<fmt>``).

    Raises:
      FileNotFoundError: nothing at ``path``, or no table file in the directory.
      ValueError: several candidate interactions (or catalogue) files, naming them.
    """
    path = os.fspath(path)
    if _is_file(path):
        format_of(path)  # a named error for an unknown extension
        return path, None
    if not _is_dir(path):
        raise FileNotFoundError(f"{path}: no such task file or directory")
    files = sorted(_data_files_in(path))
    catalogues = [f for f in files if _stem(f) == CATALOGUE_STEM]
    named = [f for f in files if _stem(f) == INTERACTIONS_STEM]
    if len(catalogues) > 1:
        raise ValueError(f"{path}: several catalogue files, expected one: {catalogues}")
    if len(named) > 1:
        raise ValueError(f"{path}: several interactions files, expected one: {named}")
    candidates = named or [f for f in files if f not in catalogues]
    if not candidates:
        known = ", ".join(f"*{e}" for exts in FORMATS.values() for e in exts)
        raise FileNotFoundError(f"{path}: no interactions table ({known})")
    if len(candidates) > 1:
        raise ValueError(
            f"{path}: several table files {[os.path.basename(f) for f in candidates]}; a task "
            f"is one interactions table (and optionally catalogue.<fmt>): pass the file, "
            f"or name it interactions.<fmt>")
    return candidates[0], (catalogues[0] if catalogues else None)


def task_file(task_folder: str, stem: str) -> str:
    """The one ``<stem>.<ext>`` file of a task folder, any format of `FORMATS`."""
    names = [stem + ext for exts in FORMATS.values() for ext in exts]
    found = [os.path.join(task_folder, n) for n in names
             if _is_file(os.path.join(task_folder, n))]
    if not found:
        raise FileNotFoundError(f"{task_folder}: no {stem} file ({', '.join(names)})")
    if len(found) > 1:
        raise ValueError(f"{task_folder}: several {stem} files, expected one: {found}")
    return found[0]


def read_interactions(task: str):
    """Downstream interactions of a task (a file or a directory: `task_files`).

    Columns: ``user_id`` str, ``item_id`` str (integer ids as decimal strings),
    ``item_text`` str (only when the file has it), ``timestamp`` int64
    (`clue_keras.data.values.normalize_timestamp`); in file order.

    Raises:
      ReadError: naming the file and the row / line and column of a bad value
        (blank id, missing value, unparseable timestamp, wrong field count).
    """
    return read_table(task_files(task)[0], INTERACTION_TABLE_COLUMNS,
                      optional=INTERACTION_OPTIONAL_COLUMNS)


def newest_texts(interactions) -> "pandas.Series":  # noqa: F821
    """``item_id`` -> its newest non-blank ``item_text`` (ties: the later row)."""
    import pandas as pd

    if "item_text" not in interactions.columns:
        return pd.Series(dtype=object)
    df = interactions[interactions["item_text"].str.strip() != ""]
    df = df.sort_values("timestamp", kind="stable")
    return df.groupby("item_id", sort=False)["item_text"].last()


def derive_catalogue(interactions, source: str = "interactions"):
    """The catalogue of a task without one: distinct items, first-seen order, newest text.

    Raises:
      ReadError: items without any non-blank text, naming ``source`` and a few items.
    """
    import pandas as pd

    items = pd.unique(interactions["item_id"])
    cat = pd.DataFrame({"item_id": items})
    cat["item_text"] = cat["item_id"].map(newest_texts(interactions))
    _check_texts(cat, source + " (no catalogue: item texts come from the interactions)")
    return cat


def _check_texts(cat, source: str) -> None:
    missing = cat["item_text"].isna() | (cat["item_text"].fillna("").str.strip() == "")
    if missing.any():
        examples = cat.loc[missing, "item_id"].iloc[:5].tolist()
        raise ReadError(f"{source}: {int(missing.sum())} of {len(cat)} item(s) have no text, "
                        f"e.g. item_id {examples}; give every item a non-empty item_text "
                        f"(in the interactions or a catalogue)")


def read_catalogue(task: str, interactions=None):
    """Item catalogue of a task (a file or a directory: `task_files`).

    Columns: ``item_id`` str, ``item_text`` str, and ``topic`` int64 when the
    catalogue file has it. Without a catalogue file: `derive_catalogue` of the
    interactions. With one, a blank or absent catalogue text is filled with the
    item's newest interaction text.

    Args:
      task: the task file or directory.
      interactions: the task's interactions when already read (else read here,
        only if needed).

    Raises:
      ReadError: an item without any text, or a bad value (file, row, column).
    """
    inter_path, cat_path = task_files(task)
    if cat_path is None:
        if interactions is None:
            interactions = read_interactions(task)
        return derive_catalogue(interactions, source=inter_path)
    cat = read_table(cat_path, CATALOGUE_TABLE_COLUMNS, int_columns=CATALOGUE_INT_COLUMNS,
                     optional=CATALOGUE_OPTIONAL_COLUMNS)
    if "item_text" not in cat.columns:
        cat.insert(1, "item_text", "")
    blank = cat["item_text"].str.strip() == ""
    if blank.any():
        if interactions is None:
            interactions = read_interactions(task)
        fill = cat.loc[blank, "item_id"].map(newest_texts(interactions))
        cat.loc[blank, "item_text"] = fill
        _check_texts(cat, f"{cat_path} (and {inter_path})")
    return cat


def read_task(task: str):
    """``(interactions, catalogue)`` of a task file or directory, each read once
    (`read_interactions`, `read_catalogue`)."""
    interactions = read_interactions(task)
    return interactions, read_catalogue(task, interactions=interactions)
