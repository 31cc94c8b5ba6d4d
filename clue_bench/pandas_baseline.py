"""The plain pandas baseline of `clue bench preprocess` (issue 14, "Speed").

One process, no Beam: read the behaviour table, normalise and cap the item
texts, drop empty texts and exact repeats of a user's ``(service, text)``
(the earliest stays), order by time, keep the newest S per ``(user, service)``,
drop users under the activity threshold, tokenise every kept text with the
trained BPE (`clue_keras.tokenizer.OfflineTokenizer`, whole services at once
with the Rust tokenizer's batch API) and group the ids into per-user,
per-service sequences, oldest first. The same rules as the pipeline
(`clue_keras.data.records.clean_behaviors`), written as whole-table pandas /
NumPy operations; it writes nothing, computes no stats and checks no cell
(the synthetic logs are clean), so it is a floor for what the pipeline costs,
not a second implementation of it.

`pandas_sequences` returns ``{user_id: {service: [ids of an item, ...]}}``;
on clean input these equal the records BehaviorPreprocess writes
(``tests/test_bench_preprocess.py`` checks it on a hand-written input).
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

from clue_keras.text import DEFAULT_MAX_TEXT_BYTES, WS_PATTERN, cap_text_bytes

__all__ = ["read_behaviors", "clean_table", "pandas_sequences", "time_pandas"]

_COLUMNS = ["user_id", "service", "timestamp", "item_text"]


def read_behaviors(data_dir: str):
    """The behaviour table of ``data_dir``'s Parquet or CSV files, one DataFrame."""
    import pandas as pd

    from clue_keras.data.tables import behavior_files

    frames = []
    for path in behavior_files(data_dir):
        if path.endswith(".parquet"):
            frames.append(pd.read_parquet(path, columns=_COLUMNS))
        else:
            frames.append(pd.read_csv(path, usecols=_COLUMNS, keep_default_na=False))
    return pd.concat(frames, ignore_index=True)


def clean_table(df, max_items: int, min_items: int = 1, min_services: int = 1,
                max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES):
    """``df`` -> the kept rows, sorted by ``(user_id, service, timestamp, item_text)``.

    Texts normalised (whitespace runs -> one space, stripped) and capped at
    ``max_text_bytes`` UTF-8 bytes; empty texts dropped; per user rows ordered by
    ``(timestamp, service, text)`` and a repeated ``(service, text)`` dropped
    (the earliest stays); the newest ``max_items`` per ``(user, service)``; users
    with fewer than ``min_items`` items or ``min_services`` services dropped.
    """
    import numpy as np

    df = df[_COLUMNS].copy()
    df["user_id"] = df["user_id"].astype(str)
    df["service"] = df["service"].astype(str)
    df["timestamp"] = df["timestamp"].astype("int64")
    text = df["item_text"].fillna("").astype(str)
    text = text.str.replace(WS_PATTERN, " ", regex=True).str.strip(" ")
    if max_text_bytes:  # only texts that may exceed the cap (<= 4 bytes a character)
        long = text.str.len() * 4 > max_text_bytes
        if long.any():
            text[long] = [cap_text_bytes(t, max_text_bytes) for t in text[long]]
    df["item_text"] = text
    df = df[text.str.len() > 0]
    df = df.sort_values(["user_id", "timestamp", "service", "item_text"], kind="stable")
    df = df.drop_duplicates(["user_id", "service", "item_text"], keep="first")
    newest = df.groupby(["user_id", "service"], sort=False).cumcount(ascending=False)
    df = df[newest.to_numpy() < max_items]
    per_user = df.groupby("user_id", sort=False)
    n_items = per_user["service"].transform("size").to_numpy()
    n_services = per_user["service"].transform("nunique").to_numpy()
    df = df[(n_items >= min_items) & (n_services >= min_services)]
    return df.sort_values(["user_id", "service", "timestamp", "item_text"],
                          kind="stable").reset_index(drop=True).assign(
                              _row=np.arange(len(df)))


def pandas_sequences(df, tokenizer, max_items: int, min_items: int = 1,
                     min_services: int = 1,
                     max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
                     ) -> Dict[str, Dict[str, List[List[int]]]]:
    """``{user_id: {service: [ids, ...]}}`` of ``df`` (`clean_table`), each item
    ``tokenizer.encode_items`` of its text (service token first, at most L ids)."""
    import numpy as np

    kept = clean_table(df, max_items, min_items, min_services, max_text_bytes)
    ids: List[Optional[List[int]]] = [None] * len(kept)
    for service, rows in kept.groupby("service", sort=False):
        encoded = tokenizer.encode_items(rows["item_text"].tolist(), service)
        for i, item in zip(rows["_row"].to_numpy(), encoded):
            ids[i] = item
    users = kept["user_id"].to_numpy()
    services = kept["service"].to_numpy()
    keys = users.astype(object) + "\x00" + services.astype(object)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else []
    bounds = list(starts) + [len(keys)]
    out: Dict[str, Dict[str, List[List[int]]]] = {}
    for a, b in zip(bounds[:-1], bounds[1:]):
        out.setdefault(users[a], {})[services[a]] = ids[a:b]
    return out


def time_pandas(data_dir: str, vocab_dir: str, params: Dict[str, Any]) -> Dict[str, Any]:
    """Times the baseline on ``data_dir`` (reading included) with the vocabulary at
    ``vocab_dir``; returns ``{"seconds", "users", "items"}``."""
    from clue_keras.tokenizer import OfflineTokenizer

    tokenizer = OfflineTokenizer(vocab_dir)  # loading it is not timed
    max_text_bytes = params.get("max_text_bytes")
    start = time.perf_counter()
    seqs = pandas_sequences(
        read_behaviors(data_dir), tokenizer, int(params["max_items"]),
        int(params["min_items_per_user"]), int(params["min_services_per_user"]),
        DEFAULT_MAX_TEXT_BYTES if max_text_bytes is None else int(max_text_bytes))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "users": len(seqs),
            "items": sum(len(v) for s in seqs.values() for v in s.values())}
