"""Next-item windows: a user's sequence cut for one-pass training of a causal sequence model.

The per-positive examples (:class:`clue_tfrs.tasks.Examples`) give every
positive its own history, so a transformer over the histories computes a
user's early items once per later positive. A causal
:class:`clue_tfrs.sequence_model.SequenceModel` reads a whole window once and
gives the query after every column (:meth:`~clue_tfrs.sequence_model.SequenceModel.sequence_queries`).

:func:`build_windows` turns the examples of each user back into windows of at
most T items, cut from the newest backwards so that each example's target is
the next item of exactly one column. Where a user has at most T + 1 items (one
window), each column's query reads exactly the example's history; for longer
users, the newest target of every window reads its full T-item history and
the earlier targets of that window read the shorter history since the
window's start.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Tuple

import numpy as np

import clue_tfrs  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from clue_tfrs import tasks as tasks_lib
from clue_tfrs.model_inputs import ModelInputs, history_lengths

__all__ = ["Windows", "build_windows", "WindowInputs", "query_windows", "causal_queries"]


@dataclasses.dataclass
class Windows:
    """Training windows, one row each.

    Attributes:
      user_ids: object [W], the user of each window.
      histories: int32 [W, T], the window's items, oldest first, right-aligned,
        0 = padding.
      next_items: int32 [W, T], aligned with ``histories``: the item after each
        column, which is an example's target, or 0 (no positive there).
    """

    user_ids: np.ndarray
    histories: np.ndarray
    next_items: np.ndarray

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def num_positives(self) -> int:
        return int(np.count_nonzero(self.next_items))


def build_windows(examples: tasks_lib.Examples) -> Windows:
    """The windows of ``examples`` (rows ordered by user, then time, as
    :func:`clue_tfrs.tasks.build_examples` makes them); every example's target
    appears once in ``next_items``."""
    width = examples.histories.shape[1]
    users: List[object] = []
    hist_rows: List[np.ndarray] = []
    next_rows: List[np.ndarray] = []
    ids = examples.user_ids
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.array([], int)
    for s, e in zip(starts, np.r_[starts[1:], len(ids)]):
        first = examples.histories[s]
        lead = first[first > 0]  # the items before the user's first target
        seq = np.concatenate([lead, examples.targets[s:e]]).astype(np.int32)
        n, first_target = len(seq), len(lead)
        end = n - 1  # the window holds seq[start:end], its positives seq[start + 1:end + 1]
        while end >= first_target and end > 0:
            start = max(0, end - width)
            items = seq[start:end]
            nxt = seq[start + 1:end + 1].copy()
            nxt[np.arange(start + 1, end + 1) < first_target] = 0
            h = np.zeros(width, np.int32)
            x = np.zeros(width, np.int32)
            h[width - len(items):], x[width - len(items):] = items, nxt
            users.append(ids[s])
            hist_rows.append(h)
            next_rows.append(x)
            end = start
    empty = np.zeros((0, width), np.int32)
    return Windows(user_ids=np.array(users, dtype=object),
                   histories=np.stack(hist_rows) if hist_rows else empty,
                   next_items=np.stack(next_rows) if next_rows else empty)


class WindowInputs(ModelInputs):
    """:class:`ModelInputs` over windows: ``query(w)`` also carries ``"next_items"``,
    cut to the same columns as the history."""

    def __init__(self, windows: Windows, user_matrix=None, user_row=None,
                 item_matrix=None) -> None:
        super().__init__(windows, user_matrix, user_row, item_matrix, use_sequence=True)
        self.next_items = tf.constant(windows.next_items)

    def query(self, ex: tf.Tensor):
        out = super().query(ex)
        width = tf.shape(out["history"])[1]
        out["next_items"] = tf.gather(self.next_items, ex)[:, self.next_items.shape[1] - width:]
        return out


def query_windows(histories: np.ndarray, user_ids: np.ndarray
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fewest histories whose causal pass gives every example's query exactly.

    A history shorter than T starts at its user's first item, so it is a prefix of
    that user's longest such history: one pass over the longest gives all of them
    (column t: the query after the history's first t + 1 items). A full-width (or
    empty, or not prefix-consistent) history is its own window.

    Returns ``(windows int [W, T] right-aligned, rep int [W] an example of each
    window's user, rows int [N], cols int [N])``: example i's query is column
    ``cols[i]`` of window ``rows[i]``. Windows are ordered by length.
    """
    n, width = histories.shape
    lengths = history_lengths(histories)
    rows = np.empty(n, np.int64)
    cols = np.full(n, width - 1, np.int64)
    prefix_of: Dict[object, int] = {}
    for i in np.argsort(-lengths, kind="stable"):  # each user's longest short history first
        if 0 < lengths[i] < width:
            prefix_of.setdefault(user_ids[i], i)
    windows: List[int] = []  # the example whose history is the window
    window_of: Dict[int, int] = {}
    for i in range(n):
        head = prefix_of.get(user_ids[i]) if 0 < lengths[i] < width else None
        if head is not None:
            m, k = lengths[head], lengths[i]
            if np.array_equal(histories[i, width - k:], histories[head, width - m:width - m + k]):
                if head not in window_of:
                    window_of[head] = len(windows)
                    windows.append(head)
                rows[i], cols[i] = window_of[head], width - m + k - 1
                continue
        rows[i] = len(windows)
        windows.append(i)
    rep = np.asarray(windows, np.int64)
    order = np.argsort(lengths[rep], kind="stable")
    new_row = np.empty(len(rep), np.int64)
    new_row[order] = np.arange(len(rep))
    return histories[rep[order]], rep[order], new_row[rows], cols


def causal_queries(model, inputs: ModelInputs, part: str = "query", batch: int = 1024
                   ) -> np.ndarray:
    """float32 [N, D]: a causal sequence model's query (``part="sequence"``: its
    ``sequence_vector``) of every example of ``inputs``, read off the columns of one
    pass per :func:`query_windows` window (a user's short histories share one)."""
    windows, rep, rows, cols = query_windows(inputs.example_histories, inputs.user_ids)
    win = inputs.rows_like(rep, windows)
    each = model.sequence_queries if part == "query" else model.sequence_vectors
    by_row = np.argsort(rows, kind="stable")
    sorted_rows, width = rows[by_row], windows.shape[1]
    out = None
    for start in range(0, len(windows), batch):
        stop = min(start + batch, len(windows))
        q = each(win.query(tf.range(start, stop, dtype=tf.int64)), training=False).numpy()
        if out is None:
            out = np.zeros((len(rows), q.shape[-1]), np.float32)
        lo, hi = np.searchsorted(sorted_rows, [start, stop])
        ex = by_row[lo:hi]
        out[ex] = q[rows[ex] - start, cols[ex] - (width - q.shape[1])]
    return out
