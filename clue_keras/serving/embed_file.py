"""Embedding a JSONL file of users through a served model, into Parquet (`clue embed`).

Input: one user per line, ``{"user_id": ..., "items": {service: [texts, oldest first]}}``.
Output: Parquet (``user_id`` string, ``embedding`` list<float32>) and, for users the
model rejects, ``<out stem>.errors.jsonl``.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple


def read_users(path: str, chunk: int = 4096) -> Iterator[List[dict]]:
    """Yields lists of up to ``chunk`` user records from a JSONL file.

    Raises ValueError naming ``path:line`` for a line that is not a JSON
    object with a ``user_id``.
    """
    users: List[dict] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON: {e}") from None
            if not isinstance(record, dict) or record.get("user_id") in (None, ""):
                raise ValueError(f"{path}:{lineno}: expected an object with a non-empty 'user_id'")
            users.append(record)
            if len(users) >= chunk:
                yield users
                users = []
    if users:
        yield users


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
) -> Dict[str, object]:
    """Embeds every user of ``input_path`` into ``out_path`` (Parquet).

    Streams the input ``chunk_users`` users at a time. The Parquet file
    (``user_id`` string, ``embedding`` list<float32>, input order, failed
    users left out) and, if any user failed, ``errors_path_for(out_path)``
    (JSONL ``{"user_id", "error"}``) are each written to a temporary name and
    renamed, so a partial file never appears; a stale errors file from an
    earlier run is removed.

    Returns:
      ``{"users": n, "embedded": n_ok, "errors": n_failed, "dim": E,
      "out": out_path, "errors_path": path or None}``.
    """
    import numpy as np
    import pyarrow as pa

    from clue_keras.atomic import atomic_file
    import pyarrow.parquet as pq
    from tqdm import tqdm

    services, max_items = client.resolve_layout(services, max_items, input_name)
    errors_path = errors_path_for(out_path)
    schema = pa.schema([("user_id", pa.string()), ("embedding", pa.list_(pa.float32()))])
    n_users = n_ok = n_err = 0
    dim = None
    # Both files appear whole or not at all (the errors file only when there are errors).
    with atomic_file(out_path) as tmp_parquet, atomic_file(errors_path) as tmp_errors:
        with open(tmp_errors, "w", encoding="utf-8") as err_file, tqdm(
            desc="embed", unit="user", disable=not progress
        ) as bar, pq.ParquetWriter(tmp_parquet, schema) as writer:
            for users in read_users(input_path, chunk_users):
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
                for i in sorted(errors):
                    record = {"user_id": str(users[i]["user_id"]), "error": errors[i]}
                    err_file.write(json.dumps(record) + "\n")
                n_users += len(users)
                n_ok += len(ok)
                n_err += len(users) - len(ok)
                bar.update(len(users))
        if not n_err:
            os.unlink(tmp_errors)  # no errors: no file (atomic_file then has nothing to move)
    if not n_err and os.path.exists(errors_path):
        os.unlink(errors_path)  # a stale one from an earlier run
    return {
        "users": n_users, "embedded": n_ok, "errors": n_err, "dim": dim,
        "out": out_path, "errors_path": errors_path if n_err else None,
    }
