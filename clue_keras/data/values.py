"""Cell values of real exports, normalised once: ids, timestamps, and the row drop rules.

Real exports hold integer ids, timestamps as unix seconds, ordinal positions or
ISO-8601 strings, empty cells and the odd broken value. Every reader of the data
layer goes through these functions, so the TFX pipeline (Beam), ``clue prepare``,
the pre-flight validator and the table readers agree on every value:

* :func:`id_string` — a ``user_id`` / ``item_id`` / ``service`` / text cell as a
  ``str``: integers as their decimal string (``123`` -> ``"123"``), integral
  floats too (``123.0`` -> ``"123"``, what a NaN-promoted integer column holds),
  bytes decoded as UTF-8.
* :func:`normalize_timestamp` — a ``timestamp`` cell as an int64.
* :func:`behavior_row` — one raw behaviour row as ``(user_id, service, timestamp,
  item_text)`` or :class:`BadRow` naming why preprocessing drops it.

Rows that preprocessing drops, and the ``stats.json`` key counting each
(`DROP_KEYS`); everything else about a row is kept:

| reason | key | when |
|---|---|---|
| ``empty_user`` | ``rows_dropped_empty_user`` | ``user_id`` missing or blank |
| ``empty_service`` | ``rows_dropped_empty_service`` | ``service`` missing or blank |
| ``bad_timestamp`` | ``rows_dropped_bad_timestamp`` | ``timestamp`` missing or not a timestamp |
| ``bad_utf8`` | ``rows_dropped_bad_utf8`` | a string cell is not valid UTF-8 |
| ``bad_value`` | ``rows_dropped_bad_value`` | a cell holds several values (a list) |

A row whose ``item_text`` is empty after normalisation is dropped later, by the
per-user cleaning (`clue_keras.data.records`), and counted as
``rows_dropped_empty_text``.
"""

from __future__ import annotations

import calendar
import datetime as _dt
import math
import re
from typing import Any, Optional, Tuple

#: Drop reasons of :func:`behavior_row`, in the order they are checked.
DROP_REASONS: Tuple[str, ...] = ("bad_value", "bad_utf8", "empty_user", "empty_service",
                                 "bad_timestamp")
#: Drop reason -> the stats key counting it.
DROP_KEYS = {r: f"rows_dropped_{r}" for r in DROP_REASONS}
#: Stats key of the rows the per-user cleaning skips (empty text after normalisation).
EMPTY_TEXT_KEY = "rows_dropped_empty_text"
#: Stats keys of the users preprocessing drops, by reason.
USER_DROP_KEYS = ("users_dropped_few_items", "users_dropped_few_services")
#: The ``stats.json`` keys (besides per split ``users_<split>``, ``items_<split>`` and
#: ``services``), for the run summary.
STATS_DOC = {
    "rows_read": "raw rows read",
    **{key: f"rows dropped: {reason.replace('_', ' ')}" for reason, key in DROP_KEYS.items()},
    EMPTY_TEXT_KEY: "rows dropped: item text empty after normalisation",
    "rows_duplicate": "rows dropped: repeat of an earlier (service, text) of the user",
    "rows_text_capped": "item texts cut at max_text_bytes",
    "items_truncated": "items dropped: older than the newest max_items of a service",
    "users_read": "users with at least one usable row",
    USER_DROP_KEYS[0]: "users dropped: fewer than min_items_per_user items",
    USER_DROP_KEYS[1]: "users dropped: enough items, fewer than min_services_per_user services",
    "users_kept": "users kept (written to a split)",
    "users_kept_single_service": "kept users with one service: no loss term of their own "
                                 "in pre-training (their embedding is only a negative)",
}

_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")
_ISO_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"\s*(Z|z|UTC|[+-]\d{2}(?::?\d{2})?)?")


class TimestampError(ValueError):
    """A value that is not a timestamp; the message quotes it."""


class BadRow(ValueError):
    """A behaviour row preprocessing drops: ``reason`` (one of `DROP_REASONS`),
    ``key`` (its stats key) and a message naming the column and value."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.key = DROP_KEYS[reason]


def id_string(value: Any) -> str:
    """An id / name / text cell as ``str``.

    ``int`` -> decimal string; a float that is an integer -> the integer's
    decimal string, another float -> ``repr``; ``bytes`` -> decoded as UTF-8
    (``UnicodeDecodeError`` when invalid); ``str`` as is; ``None`` -> ``""``.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8")
    if isinstance(value, bool):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, (list, tuple)):  # numpy scalars
        value = value.item()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value):
            return str(int(value))
        return repr(value)
    return str(value)


def _iso_seconds(text: str) -> Optional[int]:
    m = _ISO_RE.fullmatch(text)
    if not m:
        return None
    y, mo, d, h, mi, s, frac, tz = m.groups()
    try:
        when = _dt.datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0))
    except ValueError:
        return None
    seconds = calendar.timegm(when.timetuple())
    if tz and tz not in ("Z", "z", "UTC"):
        sign = -1 if tz[0] == "-" else 1
        digits = tz[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:] or 0)
        if hours > 23 or minutes > 59:
            return None
        seconds -= sign * (hours * 3600 + minutes * 60)
    del frac  # sub-second parts are dropped (floor to the second)
    return seconds


def normalize_timestamp(value: Any) -> int:
    """A timestamp cell as an int64; the one timestamp rule of the data layer.

    Accepted:

    * integers (``int``, numpy ints, or strings like ``"1614834367"``) as they
      are: unix seconds, milliseconds or ordinal positions (1, 2, 3, ...); only
      their order matters to preprocessing and the downstream protocol;
    * floats (``1614834367.5``, ``"1.6e9"``): floored to an integer;
    * ISO-8601 dates and date-times, with or without a time zone:
      ``"2021-03-04"``, ``"2021-03-04T05:06:07Z"``, ``"2021-03-04 05:06:07+09:00"``,
      ``"...+0900"``, fractions of a second: unix seconds (UTC; a time without a
      zone is UTC; fractions floored);
    * ``datetime.datetime`` / ``datetime.date`` / ``pandas.Timestamp`` /
      ``numpy.datetime64`` (Parquet timestamp columns): unix seconds (UTC).

    A column should not mix ISO dates with integers in another unit than seconds:
    both become plain integers and are compared as such.

    Raises:
      TimestampError: anything else (empty, ``None``, NaN, a boolean, ``"yesterday"``,
        ``"2021-02-30"``). Callers decide what that means, and say so: the Beam
        preprocessing (`clue_keras.data.preprocess`) and ``read_behaviors``
        DROP the row and count it as ``rows_dropped_bad_timestamp``; the task
        and catalogue readers (`clue_keras.data.formats.read_table`) STOP with
        an error naming the file, row and column; the pre-flight validator
        (`clue_keras.data.validate`) counts it with ``FILE:LINE`` examples.
    """
    if type(value) is int:  # the common case (int64 features) first
        return value
    raw = value
    if isinstance(value, bool) or value is None:
        raise TimestampError(f"not a timestamp: {raw!r}")
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise TimestampError(f"not a timestamp (not UTF-8): {raw!r}") from None
    if isinstance(value, str):
        text = value.strip()
        if _INT_RE.fullmatch(text):
            return int(text)
        if _FLOAT_RE.fullmatch(text):
            return _float_seconds(float(text), raw)
        seconds = _iso_seconds(text)
        if seconds is None:
            raise TimestampError(
                f"not a timestamp: {raw!r} (expected unix seconds, an ordinal integer or an "
                f"ISO-8601 date / date-time such as 2021-03-04T05:06:07Z)")
        return seconds
    if isinstance(value, _dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(_dt.timezone.utc).replace(tzinfo=None)
        return calendar.timegm(value.timetuple())
    if isinstance(value, _dt.date):
        return calendar.timegm(value.timetuple())
    if type(value).__name__ == "datetime64":  # numpy.datetime64
        import numpy as np

        if np.isnat(value):
            raise TimestampError(f"not a timestamp: {raw!r}")
        return int(value.astype("datetime64[s]").astype("int64"))
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
        if isinstance(value, bool):
            raise TimestampError(f"not a timestamp: {raw!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return _float_seconds(value, raw)
    raise TimestampError(f"not a timestamp: {raw!r} ({type(raw).__name__})")


def _float_seconds(x: float, raw: Any) -> int:
    if not math.isfinite(x):
        raise TimestampError(f"not a timestamp: {raw!r}")
    return math.floor(x)


def _single(column: str, value: Any) -> Any:
    """The one value of a cell (lists of one are unwrapped); BadRow for several."""
    if isinstance(value, (list, tuple)):
        if len(value) > 1:
            raise BadRow("bad_value", f"column {column!r} holds {len(value)} values "
                                      f"{list(value)[:3]!r}...; expected one")
        return value[0] if value else None
    return value


def _text(column: str, value: Any) -> str:
    try:
        return id_string(value)
    except UnicodeDecodeError as e:
        raise BadRow("bad_utf8", f"column {column!r} is not valid UTF-8: {e}") from None


def behavior_row(user_id: Any, service: Any, timestamp: Any,
                 item_text: Any) -> Tuple[str, str, int, str]:
    """One raw behaviour row -> ``(user_id, service, timestamp, item_text)``.

    Cells may be ``str``, ``bytes``, ints, floats, ``None`` (missing) or lists
    of one value (tf.Example features). Ids become strings (:func:`id_string`),
    the timestamp an int (:func:`normalize_timestamp`), a missing text ``""``
    (left for the cleaning to count).

    This is the rule. `clue_keras.data.fast_rows` computes it vectorised over a
    batch, for the one common shape of tf.Example rows only (one UTF-8 id, service
    and text, one int64 timestamp), and leaves every other row to this function;
    a change here must be made there too (tests/test_row_batches.py compares them).

    Raises:
      BadRow: the row is dropped; ``.reason`` / ``.key`` say why (module docstring).
    """
    cells = {"user_id": user_id, "service": service, "timestamp": timestamp,
             "item_text": item_text}
    cells = {k: _single(k, v) for k, v in cells.items()}
    user = _text("user_id", cells["user_id"])
    svc = _text("service", cells["service"])
    text = _text("item_text", cells["item_text"])
    if not user.strip():
        raise BadRow("empty_user", "column 'user_id' is empty")
    if not svc.strip():
        raise BadRow("empty_service", "column 'service' is empty")
    ts = cells["timestamp"]
    if ts is None or (isinstance(ts, (str, bytes)) and not ts.strip()):
        raise BadRow("bad_timestamp", "column 'timestamp' is empty")
    try:
        seconds = normalize_timestamp(ts)
    except TimestampError as e:
        raise BadRow("bad_timestamp", f"column 'timestamp': {e}") from None
    return user, svc, seconds, text
