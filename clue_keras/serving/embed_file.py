"""Embedding a JSONL file of users through a served model, into Parquet (`clue embed`).

Input: one user per line, ``{"user_id": ..., "items": {service: [texts, oldest first]}}``.
Output: Parquet (``user_id`` string, ``embedding`` list<float32>) and, for every
line that did not become an embedding, ``<out stem>.errors.jsonl``: one
``{"line", "user_id", "error"}`` per line, in line order. A bad line (not UTF-8
or JSON, no ``user_id``, ``items`` not an object of service -> list of texts,
a non-text item, an unknown service) is reported there like a user the model
rejects, and the rest of the file goes on; with ``strict`` the first bad line
stops the run instead (ValueError naming ``file:line``).
"""

from __future__ import annotations

import json
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

#: What `read_users` yields per chunk: users, their line numbers, the bad lines.
Chunk = Tuple[List[dict], List[int], List[Dict[str, object]]]


def parse_user_line(raw: bytes, services: Optional[Sequence[str]] = None,
                    max_items: Optional[int] = None) -> dict:
    """The user record of one JSONL line; ValueError saying what is wrong with it.

    With ``services`` (and ``max_items``) the items are checked as the client
    will use them (`UserEmbedding.user_texts`).
    """
    from clue_keras.serving.user_embedding import UserEmbedding

    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"not valid UTF-8: {e}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON: {e}") from None
    if not isinstance(record, dict) or record.get("user_id") in (None, ""):
        raise ValueError("expected an object with a non-empty 'user_id'")
    if services is not None:
        UserEmbedding.user_texts(record, services, max_items or 1)
    return record


def read_users(path: str, chunk: int = 4096, services: Optional[Sequence[str]] = None,
               max_items: Optional[int] = None, strict: bool = False) -> Iterator[Chunk]:
    """Yields ``(users, line numbers, bad lines)`` for up to ``chunk`` non-blank lines.

    A bad line (see `parse_user_line`) is ``{"line": n, "user_id": id or None,
    "error": message}``; with ``strict`` it raises ValueError naming
    ``path:line`` instead.
    """
    users: List[dict] = []
    lines: List[int] = []
    bad: List[Dict[str, object]] = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                users.append(parse_user_line(raw, services, max_items))
                lines.append(lineno)
            except ValueError as e:
                if strict:
                    raise ValueError(f"{path}:{lineno}: {e}") from None
                bad.append({"line": lineno, "user_id": _user_id_of(raw), "error": f"bad input line: {e}"})
            if len(users) + len(bad) >= chunk:
                yield users, lines, bad
                users, lines, bad = [], [], []
    if users or bad:
        yield users, lines, bad


def _user_id_of(raw: bytes) -> Optional[str]:
    """The ``user_id`` of a bad line, when it has one."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None
    value = record.get("user_id") if isinstance(record, dict) else None
    return None if value in (None, "") else str(value)


def errors_path_for(out_path: str) -> str:
    """``embeddings.parquet`` -> ``embeddings.errors.jsonl`` (same directory)."""
    stem, _ = os.path.splitext(out_path)
    return stem + ".errors.jsonl"


def layout_from_vocab(path: str) -> Tuple[List[str], int]:
    """``(services, max_items)`` from ``clue_vocab.json`` (or the vocab directory holding it)."""
    if os.path.isdir(path):
        path = os.path.join(path, "clue_vocab.json")
    with open(path, encoding="utf-8") as f:
        info = json.load(f)
    try:
        return list(info["services"]), int(info["max_items"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: needs 'services' (list) and 'max_items' (int): {e}") from None


def embed_jsonl(
    client,
    input_path: str,
    out_path: str,
    services: Optional[Sequence[str]] = None,
    max_items: Optional[int] = None,
    batch_size: int = 64,
    input_name: str = "item_texts",
    output: str = "embedding",
    chunk_users: int = 4096,
    progress: bool = True,
    strict: bool = False,
) -> Dict[str, object]:
    """Embeds every user of ``input_path`` into ``out_path`` (Parquet).

    ``services`` and ``max_items`` default to what the model says about
    itself (``client.resolve_layout``). Streams the input ``chunk_users``
    lines at a time. The Parquet file (``user_id`` string, ``embedding``
    list<float32>, input order, failed users left out) and, if any line
    failed, ``errors_path_for(out_path)`` (JSONL ``{"line", "user_id",
    "error"}`` in line order: bad input lines and users the model rejects)
    are each written to a temporary name and renamed, so a partial file never
    appears; a stale errors file from an earlier run is removed. With
    ``strict`` the first bad line raises ValueError (``file:line: what``) and
    nothing is written.

    Returns:
      ``{"users": n (non-blank lines), "embedded": n_ok, "errors": n_failed,
      "bad_lines": n_bad (of the failed), "first_bad_lines": [line, ...] (up
      to 5), "dim": E, "out": out_path, "errors_path": path or None}``.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from clue_keras.atomic import atomic_file

    services, max_items = client.resolve_layout(services, max_items, input_name)
    errors_path = errors_path_for(out_path)
    schema = pa.schema([("user_id", pa.string()), ("embedding", pa.list_(pa.float32()))])
    n_users = n_ok = n_err = 0
    bad_lines: List[int] = []
    dim = None
    # Both files appear whole or not at all (the errors file only when there are errors).
    with atomic_file(out_path) as tmp_parquet, atomic_file(errors_path) as tmp_errors:
        with open(tmp_errors, "w", encoding="utf-8") as err_file, tqdm(
            desc="embed", unit="user", disable=not progress
        ) as bar, pq.ParquetWriter(tmp_parquet, schema) as writer:
            for users, lines, bad in read_users(input_path, chunk_users, services, max_items, strict):
                results, errors = {}, {}
                if users:
                    results, errors = client.embed_users_indexed(
                        users, services, max_items, batch_size=batch_size, input_name=input_name, output=output
                    )
                ok = sorted(results)
                if ok:
                    dim = results[ok[0]].shape[-1]
                    values = pa.array(np.stack([results[i] for i in ok]).reshape(-1), type=pa.float32())
                    offsets = pa.array(np.arange(len(ok) + 1, dtype=np.int32) * dim)
                    table = pa.Table.from_arrays(
                        [
                            pa.array([str(users[i]["user_id"]) for i in ok], pa.string()),
                            pa.ListArray.from_arrays(offsets, values),
                        ],
                        schema=schema,
                    )
                    writer.write_table(table)
                failed = bad + [{"line": lines[i], "user_id": str(users[i]["user_id"]), "error": errors[i]}
                                for i in errors]
                for record in sorted(failed, key=lambda r: r["line"]):
                    err_file.write(json.dumps(record, ensure_ascii=False) + "\n")
                bad_lines += [r["line"] for r in bad]
                n_users += len(users) + len(bad)
                n_ok += len(ok)
                n_err += len(failed)
                bar.update(len(users) + len(bad))
        if not n_err:
            os.unlink(tmp_errors)  # no errors: no file (atomic_file then has nothing to move)
    if not n_err and os.path.exists(errors_path):
        os.unlink(errors_path)  # a stale one from an earlier run
    return {
        "users": n_users, "embedded": n_ok, "errors": n_err, "bad_lines": len(bad_lines),
        "first_bad_lines": bad_lines[:5], "dim": dim,
        "out": out_path, "errors_path": errors_path if n_err else None,
    }
