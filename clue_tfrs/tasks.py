"""Downstream task data: loading, user splits, examples and negative sampling.

A downstream task (paper 3.2.1) is a table of interactions in one service that
was not used in pre-training, and optionally the service's item catalogue:

* interactions: ``user_id``, ``item_id``, ``timestamp`` (int, unix seconds)
  and optionally ``item_text``;
* catalogue: ``item_id`` and optionally ``item_text``, ``topic``; without
  one, the distinct items of the interactions with their newest text.

`clue synth` writes them as ``DIR/downstream/<task>/interactions.<fmt>`` and
``DIR/downstream/<task>/catalogue.jsonl``; :func:`load_task` reads a task file
or directory, `clue_tfrs.task_examples` the same task from ExampleGen records
(the pipeline). User and item ids are compared as strings everywhere.

Protocol (documented here once, used by every model):

* **Users** are split into disjoint train / validation / test sets
  (:func:`split_users`, seeded permutation), so no user is seen in two splits.
* **Examples.** Each user's interactions are ordered by time (ties keep file
  order). Every interaction at position ``j >= min_history`` is a positive
  example whose *history* is the user's ``max_history`` interactions before
  it (next-item prediction, i.e. leave-one-out applied to every position).
  Train users give training examples, test users the test positives; all
  models are scored on exactly the same test positives. Models that use
  pre-trained user features (U-MLP) ignore the history; the sequence model
  (T-UBM) reads it.
* **Evaluation negatives** (``uni100``): for each test positive, ``K`` items
  drawn uniformly without replacement from the catalogue excluding *all* of
  that user's positives in the task (:func:`sample_eval_negatives`).
* **Training negatives**: for each training positive, ``n`` items drawn
  uniformly from the catalogue excluding that user's positives, redrawn every
  epoch (:func:`sample_training_negatives`).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, List, NamedTuple, Sequence, Tuple

import numpy as np
import pandas as pd

from clue_keras.data.formats import INTERACTION_COLUMNS
from clue_keras.data.tables import read_task

__all__ = [
    "INTERACTION_COLUMNS",
    "load_task",
    "validate_task",
    "UserSplit",
    "split_users",
    "ItemIndex",
    "Examples",
    "build_examples",
    "user_positive_items",
    "sample_eval_negatives",
    "sample_training_negatives",
]

# --------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------


def load_task(task: str) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """Loads a task's interactions and catalogue (`clue_keras.data.tables.read_task`).

    Any format of `clue_keras.data.formats.FORMATS`; errors name the file and column.

    Args:
      task: the interactions file (any name), or a directory holding it
        (``interactions.<fmt>`` or the one table file) and optionally
        ``catalogue.<fmt>``, e.g. ``DIR/downstream/<task>`` as ``clue synth``
        writes it. Without a catalogue, the catalogue is the distinct items of
        the interactions with their newest non-blank text.

    Returns:
      ``(interactions, catalogue)`` DataFrames, validated by
      :func:`validate_task` (ids as strings, timestamps int64).
    """
    interactions, catalogue = read_task(task)
    return validate_task(interactions, catalogue, source=task)


def validate_task(
    interactions: pd.DataFrame, catalogue: pd.DataFrame, source: str = "interactions"
) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """Checks columns and ids; returns normalised copies.

    Ids become strings and ``timestamp`` int64. Raises ValueError naming
    ``source`` and the offending column when a column is missing or null,
    when item ids repeat in the catalogue, or when an interaction's item is
    not in the catalogue.
    """
    missing = [c for c in INTERACTION_COLUMNS if c not in interactions.columns]
    if missing:
        raise ValueError(
            f"{source}: interactions lack column(s) {missing}; "
            f"found {list(interactions.columns)}"
        )
    if "item_id" not in catalogue.columns:
        raise ValueError(
            f"{source}: catalogue lacks column 'item_id'; found {list(catalogue.columns)}"
        )
    for col in INTERACTION_COLUMNS:
        n_null = int(interactions[col].isna().sum())
        if n_null:
            raise ValueError(f"{source}: column {col!r} has {n_null} null value(s)")
    if catalogue["item_id"].isna().any():
        raise ValueError(f"{source}: catalogue column 'item_id' has null values")

    inter = interactions.copy()
    inter["user_id"] = inter["user_id"].astype(str)
    inter["item_id"] = inter["item_id"].astype(str)
    try:
        inter["timestamp"] = inter["timestamp"].astype(np.int64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: column 'timestamp' must be integer unix seconds: {e}") from e
    cat = catalogue.copy()
    cat["item_id"] = cat["item_id"].astype(str)
    dup = cat["item_id"][cat["item_id"].duplicated()]
    if len(dup):
        raise ValueError(
            f"{source}: catalogue item_id not unique, e.g. {dup.iloc[:5].tolist()}"
        )
    unknown = ~inter["item_id"].isin(cat["item_id"])
    if unknown.any():
        raise ValueError(
            f"{source}: {int(unknown.sum())} interaction(s) refer to items missing from "
            f"the catalogue, e.g. {inter.loc[unknown, 'item_id'].iloc[:5].tolist()}"
        )
    if len(cat) == 0:
        raise ValueError(f"{source}: the catalogue is empty")
    return inter.reset_index(drop=True), cat.reset_index(drop=True)


# --------------------------------------------------------------------------
# User splits
# --------------------------------------------------------------------------


class UserSplit(NamedTuple):
    """Disjoint user id sets (sorted string arrays)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_users(
    user_ids: Iterable,
    seed: int,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
) -> UserSplit:
    """Splits users into disjoint train / validation / test sets.

    The unique ids (as strings) are sorted and permuted with
    ``np.random.default_rng(seed)``; the first ``round(f_train * U)`` go to
    train, the next ``round(f_val * U)`` to validation, the rest to test. The
    result depends only on the set of ids and the seed, not on their order.

    Args:
      user_ids: any iterable of user ids (duplicates allowed).
      seed: permutation seed.
      fractions: (train, val, test), non-negative, summing to 1.

    Returns:
      :class:`UserSplit` of sorted string arrays.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or np.any(fr < 0) or not np.isclose(fr.sum(), 1.0):
        raise ValueError(
            f"fractions must be three non-negative numbers summing to 1, got {list(fractions)}"
        )
    users = np.array(sorted({str(u) for u in user_ids}), dtype=object)
    perm = users[np.random.default_rng(seed).permutation(len(users))]
    n_train = int(round(fr[0] * len(users)))
    n_val = min(int(round(fr[1] * len(users))), len(users) - n_train)
    return UserSplit(
        train=np.sort(perm[:n_train]),
        val=np.sort(perm[n_train : n_train + n_val]),
        test=np.sort(perm[n_train + n_val :]),
    )


# --------------------------------------------------------------------------
# Items and examples
# --------------------------------------------------------------------------


class ItemIndex:
    """Maps catalogue item ids to dense indices ``1..C`` (0 = padding)."""

    def __init__(self, item_ids: Sequence) -> None:
        ids = [str(i) for i in item_ids]
        if len(set(ids)) != len(ids):
            raise ValueError("item ids must be unique")
        self.item_ids: np.ndarray = np.array(ids, dtype=object)
        self._index = {item: i + 1 for i, item in enumerate(ids)}

    @property
    def num_items(self) -> int:
        """C, the catalogue size (indices run 1..C)."""
        return len(self.item_ids)

    def lookup(self, item_ids: Iterable) -> np.ndarray:
        """int32 [N] indices of the given ids; KeyError names an unknown id."""
        try:
            return np.array([self._index[str(i)] for i in item_ids], dtype=np.int32)
        except KeyError as e:
            raise KeyError(f"item id {e.args[0]!r} is not in the catalogue") from None


@dataclasses.dataclass
class Examples:
    """Positive (user, target item, history) examples, one row each.

    Attributes:
      user_ids: object [N], the user of each example (string ids).
      targets: int32 [N], item index (1..C) of the positive.
      histories: int32 [N, T], item indices of the user's previous
        interactions, oldest first, *right-aligned* (most recent in the last
        column), 0 = padding. T = ``max_history``.
    """

    user_ids: np.ndarray
    targets: np.ndarray
    histories: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)


def build_examples(
    interactions: pd.DataFrame,
    users: Iterable,
    item_index: ItemIndex,
    max_history: int,
    min_history: int = 1,
) -> Examples:
    """Builds next-item examples for the given users (see module docstring).

    Args:
      interactions: validated interactions (:func:`validate_task`).
      users: the user ids whose interactions become examples.
      item_index: catalogue index.
      max_history: T, the number of previous interactions kept.
      min_history: a position j becomes an example only when j >= min_history
        (so every example has at least ``min_history`` history items).

    Returns:
      :class:`Examples`, rows ordered by (user id, time).
    """
    if max_history < 1 or min_history < 0:
        raise ValueError(
            f"need max_history >= 1 and min_history >= 0, got {max_history}, {min_history}"
        )
    wanted = set(str(u) for u in users)
    df = interactions[interactions["user_id"].isin(wanted)]
    df = df.sort_values(["user_id", "timestamp"], kind="stable")
    items = item_index.lookup(df["item_id"])
    user_col = df["user_id"].to_numpy()
    # Boundaries of each user's block in the sorted frame.
    starts = np.flatnonzero(np.r_[True, user_col[1:] != user_col[:-1]]) if len(df) else np.array([], int)
    ends = np.r_[starts[1:], len(df)]

    out_users: List[str] = []
    out_targets: List[int] = []
    out_hist: List[np.ndarray] = []
    for s, e in zip(starts, ends):
        seq = items[s:e]
        for j in range(min_history, len(seq)):
            h = seq[max(0, j - max_history) : j]
            row = np.zeros(max_history, dtype=np.int32)
            if len(h):
                row[max_history - len(h) :] = h
            out_users.append(user_col[s])
            out_targets.append(seq[j])
            out_hist.append(row)
    return Examples(
        user_ids=np.array(out_users, dtype=object),
        targets=np.array(out_targets, dtype=np.int32),
        histories=(
            np.stack(out_hist) if out_hist else np.zeros((0, max_history), dtype=np.int32)
        ),
    )


def user_positive_items(
    interactions: pd.DataFrame, item_index: ItemIndex
) -> Dict[str, np.ndarray]:
    """All items each user interacted with: {user_id: sorted unique int32 indices}."""
    idx = item_index.lookup(interactions["item_id"])
    frame = pd.DataFrame({"u": interactions["user_id"].to_numpy(), "i": idx})
    return {u: np.unique(g.to_numpy()).astype(np.int32) for u, g in frame.groupby("u")["i"]}


# --------------------------------------------------------------------------
# Negative sampling
# --------------------------------------------------------------------------


def sample_eval_negatives(
    user_ids: np.ndarray,
    positives: Dict[str, np.ndarray],
    num_items: int,
    num_negatives: int = 100,
    seed: int = 0,
) -> np.ndarray:
    """``uni100`` negatives: uniform, without replacement, never a positive.

    Args:
      user_ids: object [N], the user of each test positive.
      positives: {user_id: int indices of all the user's positive items}.
      num_items: C; items are indices 1..C.
      num_negatives: K per test positive.
      seed: the result is a deterministic function of the inputs and seed.

    Returns:
      int32 [N, K] item indices; row n holds K distinct items none of which
      is a positive of ``user_ids[n]``.
    """
    rng = np.random.default_rng(seed)
    out = np.zeros((len(user_ids), num_negatives), dtype=np.int32)
    all_items = np.arange(1, num_items + 1, dtype=np.int32)
    allowed, allowed_user = all_items, None
    for n, user in enumerate(user_ids):
        if user != allowed_user:  # rows usually come grouped by user
            allowed = np.setdiff1d(all_items, positives.get(user, []), assume_unique=True)
            allowed_user = user
        if len(allowed) < num_negatives:
            raise ValueError(
                f"user {user!r}: only {len(allowed)} catalogue items are not positives, "
                f"cannot sample {num_negatives} negatives; lower num_negatives"
            )
        out[n] = rng.choice(allowed, size=num_negatives, replace=False)
    return out


def sample_training_negatives(
    user_ids: np.ndarray,
    positives: Dict[str, np.ndarray],
    num_items: int,
    num_negatives: int,
    rng: np.random.Generator,
    max_rounds: int = 100,
) -> np.ndarray:
    """Uniform training negatives (with replacement), avoiding user positives.

    Returns int32 [N, n]. Collisions with the user's positives are redrawn
    (up to ``max_rounds`` times; a user whose positives cover the whole
    catalogue raises ValueError).
    """
    n_rows = len(user_ids)
    out = rng.integers(1, num_items + 1, size=(n_rows, num_negatives), dtype=np.int64)
    # Encode (row's user, item) pairs so collisions are one vectorised isin.
    users, user_codes = np.unique(np.asarray(user_ids, dtype=object).astype(str), return_inverse=True)
    pos_codes = np.concatenate(
        [np.asarray(positives.get(u, []), np.int64) + k * (num_items + 1) for k, u in enumerate(users)]
        + [np.zeros(0, np.int64)]
    )
    row_base = (user_codes.astype(np.int64) * (num_items + 1))[:, None]
    for _ in range(max_rounds):
        bad = np.isin(out + row_base, pos_codes)
        if not bad.any():
            return out.astype(np.int32)
        out[bad] = rng.integers(1, num_items + 1, size=int(bad.sum()))
    raise ValueError(
        "could not draw training negatives outside the users' positives; "
        "some user has interacted with (almost) the whole catalogue"
    )
