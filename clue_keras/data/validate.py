"""Pre-flight validation of raw data, before any expensive component runs.

About 40,000 rows a second (a million-row export in half a minute); with
``max_rows_per_file`` it is a sample, in a second, that cannot promise the rest.

`validate_logs` reads behaviour logs the way the pipeline's ExampleGen will and
`validate_task` reads a downstream task with the data layer. Two kinds of finding:

* **stops** — what would crash ExampleGen inside Beam (with a stack trace naming
  neither line nor column) or make the data unusable: raised together as one
  :class:`DataValidationError`, each problem as ``FILE:LINE: ...`` (``FILE: row N``,
  ``FILE: record N`` for Parquet / TFRecord) naming the column where it can:

  - CSV: a header with a byte-order mark or quoted names, files with different
    headers, a record with a wrong number of fields, bad UTF-8, unbalanced
    quotes, a field over 131,072 characters (`clue_keras.data.csvfile`); JSONL: bad UTF-8, a line that is not a
    JSON object, a boolean or nested value (the JSONL ExampleGen stops on those);
    Parquet: a column of a type tfx's Parquet ExampleGen cannot convert
    (timestamp, date, decimal, struct ...), binary cells that are not UTF-8;
    any format: a required column missing from a file, several formats;
* **drops** — rows the preprocessing drops and counts (`clue_keras.data.values`):
  counted in the report under the same keys as ``stats.json``
  (``rows_dropped_empty_user``, ``rows_dropped_bad_timestamp``, ...,
  ``rows_dropped_empty_text``) with a few ``FILE:LINE`` examples each.

The report also says how many users and services there are, how many users
have a single service (they add no loss term to pre-training) and warns about
values ExampleGen changes (``"007"`` read as the integer 7, float32 timestamps,
Parquet zeros read as missing).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any, Dict, List, Optional, Tuple

from clue_keras.data.errors import DataValidationError
from clue_keras.data.formats import FileSpec, format_of
from clue_keras.data.scan import scan_rows
from clue_keras.data.values import DROP_KEYS, EMPTY_TEXT_KEY, BadRow, behavior_row

__all__ = ["DataValidationError", "LogsReport", "TaskReport", "validate_logs", "validate_task"]

_EXAMPLES_PER_KEY = 3
_MULTI = object()  # a user seen in several services


@dataclasses.dataclass
class LogsReport:
    """What `validate_logs` found (nothing that stops the pipeline).

    Attributes:
      files, format: the files read and their format.
      rows: data rows read; users: distinct users of the rows not dropped;
      services: rows kept per service; users_single_service: users with items
        in one service only (no loss term of their own in pre-training).
      dropped: stats key -> rows preprocessing will drop (`clue_keras.data.values`).
      examples: ``"FILE:LINE: key: why"`` for the first few dropped rows of each key.
      warnings: values ExampleGen changes, mixed timestamp kinds, ...
      sampled: ``max_rows_per_file`` stopped at least one file early.
    """

    files: List[str]
    format: str
    rows: int = 0
    users: int = 0
    services: Dict[str, int] = dataclasses.field(default_factory=dict)
    users_single_service: int = 0
    dropped: Dict[str, int] = dataclasses.field(default_factory=dict)
    examples: List[str] = dataclasses.field(default_factory=list)
    warnings: List[str] = dataclasses.field(default_factory=list)
    sampled: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def lines(self) -> List[str]:
        """A few human-readable lines for a run summary."""
        out = [f"{len(self.files)} {self.format} file(s), {self.rows:,} rows"
               + (" (sampled)" if self.sampled else "") + f", {self.users:,} users, "
               f"{len(self.services)} services {sorted(self.services)}, "
               f"{self.users_single_service:,} users in one service only"]
        dropped = {k: v for k, v in self.dropped.items() if v}
        if dropped:
            out.append("rows preprocessing will drop: "
                       + ", ".join(f"{k}={v:,}" for k, v in dropped.items()))
        out += ["  " + e for e in self.examples] + ["warning: " + w for w in self.warnings]
        return out


@dataclasses.dataclass
class TaskReport:
    """What `validate_task` found: the files, sizes and where item texts come from."""

    interactions: str
    catalogue: Optional[str]
    rows: int
    users: int
    items: int
    items_text_from_interactions: int

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


class _Tally:
    """Counts usable and dropped rows as the preprocessing will."""

    def __init__(self, report: LogsReport):
        self.report = report
        self.user_services: Dict[str, Any] = {}
        self.services: Counter = Counter()
        self.dropped = Counter({k: 0 for k in list(DROP_KEYS.values()) + [EMPTY_TEXT_KEY]})
        self.examples: Dict[str, List[str]] = {}
        self.ts_kinds: Counter = Counter()

    def add(self, where: str, cells: Tuple[Any, ...]) -> None:
        from clue_keras.text import normalize_text

        self.report.rows += 1
        try:
            user, service, _, text = behavior_row(*cells)
        except BadRow as e:
            return self._drop(e.key, where, str(e))
        ts = cells[2][0] if isinstance(cells[2], list) and cells[2] else cells[2]
        self.ts_kinds["iso" if isinstance(ts, str) and not _is_number(ts) else "number"] += 1
        seen = self.user_services.setdefault(user, None)
        if not normalize_text(text):
            return self._drop(EMPTY_TEXT_KEY, where, "column 'item_text' is empty")
        self.user_services[user] = service if seen in (None, service) else _MULTI
        self.services[service] += 1

    def _drop(self, key: str, where: str, why: str) -> None:
        self.dropped[key] += 1
        shown = self.examples.setdefault(key, [])
        if len(shown) < _EXAMPLES_PER_KEY:
            shown.append(f"{where}: {key}: {why}")

    def finish(self) -> LogsReport:
        r = self.report
        r.users = len(self.user_services)
        r.users_single_service = sum(1 for v in self.user_services.values() if isinstance(v, str))
        r.services = dict(sorted(self.services.items()))
        r.dropped = dict(self.dropped)
        r.examples = [e for k in r.dropped for e in self.examples.get(k, [])]
        if self.ts_kinds["iso"] and self.ts_kinds["number"]:
            r.warnings.append(
                f"timestamps mix ISO-8601 dates ({self.ts_kinds['iso']:,} rows) and plain numbers "
                f"({self.ts_kinds['number']:,} rows); ISO dates become unix seconds, so the "
                f"numbers are ordered against them as unix seconds")
        return r


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# ------------------------------------------------------------------------------ entry points


def _raise(errors: List[str], what: str, max_problems: int) -> None:
    shown = errors[:max_problems]
    more = f"\n  ... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
    raise DataValidationError(
        f"{what}: {len(errors)} problem(s) to fix first:\n  " + "\n  ".join(shown) + more,
        problems=errors)


def validate_logs(files_or_dir_or_glob: FileSpec, max_rows_per_file: Optional[int] = None,
                  max_problems: int = 20) -> LogsReport:
    """Checks behaviour logs as the pipeline's ExampleGen and preprocessing will read them.

    Args:
      files_or_dir_or_glob: a data directory (``DIR/behaviors/`` when present), a
        glob, a file, or a list of these (`clue_keras.data.tables.behavior_files`).
      max_rows_per_file: read at most this many rows of each file (None: all).
      max_problems: problems quoted in the error message (all are in ``.problems``).

    Returns:
      A `LogsReport`: rows, users, services, the rows preprocessing will drop and why.

    Raises:
      DataValidationError: every problem that would stop the pipeline, as ``FILE:LINE: ...``;
        or no row left once the drops are applied (an empty export, a wrong date format).
      FileNotFoundError: no data files.
    """
    from clue_keras.data.tables import behavior_files

    try:
        files = behavior_files(files_or_dir_or_glob)
    except ValueError as e:  # a directory mixing formats
        raise DataValidationError(str(e)) from e
    fmts = sorted({format_of(f) for f in files})
    if len(fmts) > 1:
        raise DataValidationError(f"{files_or_dir_or_glob}: files of several formats {fmts}: "
                                  f"ExampleGen reads one format")
    report = LogsReport(files=files, format=fmts[0])
    tally, errors = _Tally(report), []
    for where, cells in scan_rows(report.format, files, errors, max_rows_per_file, report):
        tally.add(where, cells)
    if errors:
        _raise(errors, f"behaviour logs {files_or_dir_or_glob}", max_problems)
    report = tally.finish()
    if report.rows == sum(report.dropped.values()):  # nothing left to pre-train on
        dropped = {k: v for k, v in report.dropped.items() if v}
        raise DataValidationError(f"behaviour logs {files_or_dir_or_glob}: no usable row "
                                  f"({report.rows} rows; dropped: {dropped or 'none'})"
                                  + "".join("\n  " + e for e in report.examples))
    return report


def validate_task(path_or_dir: str) -> TaskReport:
    """Reads a downstream task (`clue_keras.data.tables.read_task`) and checks it can
    be evaluated: ids and timestamps readable, every item with a text, every
    interaction's item in the catalogue.

    Args:
      path_or_dir: the interactions file (any name and format), or a directory
        holding one table file, or ``interactions.<fmt>`` (+ ``catalogue.<fmt>``).

    Raises:
      DataValidationError: naming the file and the line / row and column.
      FileNotFoundError: nothing at ``path_or_dir``.
    """
    from clue_keras.data import tables

    try:
        inter_path, cat_path = tables.task_files(path_or_dir)
        interactions, catalogue = tables.read_task(path_or_dir)
    except DataValidationError:
        raise
    except ValueError as e:
        raise DataValidationError(str(e)) from e
    unknown = ~interactions["item_id"].isin(catalogue["item_id"])
    if unknown.any():
        raise DataValidationError(
            f"{inter_path}: {int(unknown.sum())} interaction(s) refer to items missing from "
            f"{cat_path}, e.g. item_id {interactions.loc[unknown, 'item_id'].iloc[:5].tolist()}")
    from_inter = len(catalogue) - (_catalogue_texts(cat_path) if cat_path else 0)
    return TaskReport(interactions=inter_path, catalogue=cat_path, rows=len(interactions),
                      users=int(interactions["user_id"].nunique()), items=len(catalogue),
                      items_text_from_interactions=from_inter)


def _catalogue_texts(cat_path: str) -> int:
    """Items of a catalogue file with a non-blank text of their own."""
    from clue_keras.data.formats import CATALOGUE_TABLE_COLUMNS, read_table

    cat = read_table(cat_path, CATALOGUE_TABLE_COLUMNS, raw=True,
                     optional=("item_text", "topic"))
    if "item_text" not in cat.columns:
        return 0
    return int(sum(1 for t in cat["item_text"] if t is not None and str(t).strip()))
