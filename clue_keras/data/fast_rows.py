"""`clue_keras.data.values.behavior_row` vectorised over an Arrow batch, for the common
row shape only: the fast path of `clue_keras.data.row_batches.parse_batch` (issue 14).

`behavior_row` stays the one rule of what a raw row means; this module is an
optimisation of it for the rows whose result it can prove without it, and
nothing else. A row takes the fast path (`fast_rows`) when

* ``user_id`` and ``service`` hold exactly one bytes / string value, valid UTF-8,
  with at least one character that is not blank to ``str.strip`` (`BLANK`), or
  exactly one int64 (an integer id column: its decimal string);
* ``timestamp`` holds exactly one int64;
* ``item_text`` holds at most one bytes / string value, valid UTF-8 (none, or no
  such feature in the batch: ``""``).

Its row is then what `behavior_row` gives for those cells: the ids and the text
decoded as UTF-8 and otherwise untouched, the timestamp the int. Every other row
(several values, an empty or blank id, bytes that are not UTF-8, a missing, float
or string timestamp, int texts, float ids, ...) is left to `behavior_row` itself by
``parse_batch``, which also gives every `BadRow`.
"""

from __future__ import annotations

from typing import Any, List, Tuple

#: The characters ``str.strip()`` removes (``not chr(c).strip()``): an id made of
#: these only is empty to `behavior_row` (tests check the list against Python's).
BLANK: Tuple[int, ...] = (0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x1F, 0x20, 0x85,
                          0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F,
                          0x205F, 0x3000)
#: RE2: a character that is not in `BLANK`.
_NOT_BLANK = "[^" + "".join(f"\\x{{{c:x}}}" for c in BLANK) + "]"

__all__ = ["BLANK", "fast_rows"]


def _one_value(lists, n: int, is_kind):
    """An Arrow list column (or ``None``: no such column) -> ``(lens, values)``: per row
    the number of values (0 when null), and an array of ``n`` holding the value of
    the rows with exactly one (null elsewhere); ``values`` is ``None`` when the
    column is not a list of `is_kind` values."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if lists is None or not (pa.types.is_list(lists.type) or pa.types.is_large_list(lists.type)) \
            or not is_kind(lists.type.value_type):
        return np.full(n, -1), None
    lens = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    one = lens == 1
    starts = np.cumsum(lens) - lens  # in flatten(), which skips null lists as lens does
    return lens, lists.flatten().take(pa.array(starts, mask=~one))


def _is_bytes(kind) -> bool:
    import pyarrow as pa

    return any(f(kind) for f in (pa.types.is_binary, pa.types.is_large_binary,
                                 pa.types.is_string, pa.types.is_large_string))


def _utf8(values):
    """Bytes values (nulls allowed) -> ``(valid, strings)``: per value whether it is valid
    UTF-8 (nulls are), and the values as a string array (null where not valid)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        return np.ones(len(values), bool), values.cast(pa.large_string())  # validates
    except pa.ArrowInvalid:  # rare: find the bad ones in Python
        valid = [v is None or _decodes(v) for v in values.to_pylist()]
        kept = pc.if_else(pa.array(valid), values, pa.scalar(None, values.type))
        return np.array(valid, bool), kept.cast(pa.large_string())


def _decodes(value: bytes) -> bool:
    try:
        value.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _id_column(lists, n: int):
    """``(ok, strings)`` of a ``user_id`` / ``service`` column: ok where it holds one
    valid UTF-8, non-blank value, or one int64 (its decimal string, as ``str(int)``)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    lens, values = _one_value(lists, n, pa.types.is_int64)
    if values is not None:  # integer ids: never blank
        return lens == 1, values.cast(pa.large_string())
    lens, values = _one_value(lists, n, _is_bytes)
    if values is None:
        return np.zeros(n, bool), None
    valid, strings = _utf8(values)
    filled = pc.fill_null(pc.match_substring_regex(strings, _NOT_BLANK), False)
    return (lens == 1) & valid & filled.to_numpy(zero_copy_only=False), strings


def _text_column(lists, n: int):
    """``(ok, strings or None)`` of ``item_text``: ok where it holds at most one valid
    UTF-8 value; ``None`` when no row has one (no such column, or type null)."""
    import numpy as np
    import pyarrow as pa

    if lists is None or pa.types.is_null(lists.type):
        return np.ones(n, bool), None
    lens, values = _one_value(lists, n, _is_bytes)
    if values is None:
        return np.zeros(n, bool), None
    valid, strings = _utf8(values)
    return (lens == 0) | ((lens == 1) & valid), strings


def _py(values, idx) -> list:
    """The values at ``idx`` as Python objects (C++ conversion: ``str`` decoded by
    Python's strict UTF-8 decoder, ``int``)."""
    return values.take(idx).to_numpy(zero_copy_only=False).tolist()


def fast_rows(batch) -> Tuple[Any, List[Tuple[str, str, int, str]]]:
    """A decoded batch of raw tf.Examples (tfx_bsl RecordBatch) -> ``(ok, rows)``: per
    row (a numpy bool array) whether it is in the common shape (module docstring), and in order the
    rows of those, each exactly ``behavior_row(*cells)`` of its cells. The other
    rows are the caller's (`clue_keras.data.row_batches.parse_batch`) to give to
    `behavior_row`; if the conversion meets a value it did not expect, no row is ok.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = batch.num_rows

    def column(name: str):
        index = batch.schema.get_field_index(name)
        return batch.column(index) if index >= 0 else None

    ok_user, users = _id_column(column("user_id"), n)
    ok_service, services = _id_column(column("service"), n)
    ts_lens, stamps = _one_value(column("timestamp"), n, pa.types.is_int64)
    ok_text, texts = _text_column(column("item_text"), n)
    ok = ok_user & ok_service & (ts_lens == 1) & ok_text
    none = np.zeros(n, bool), []
    if not ok.any():
        return none
    idx = pa.array(np.flatnonzero(ok))
    try:
        cols = [_py(users, idx), _py(services, idx), _py(stamps, idx),
                [""] * len(idx) if texts is None
                else pc.fill_null(texts.take(idx), "").to_numpy(zero_copy_only=False).tolist()]
    except (UnicodeDecodeError, pa.ArrowException):  # not what Arrow's checks promised
        return none
    return ok, list(zip(*cols))
