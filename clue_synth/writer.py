"""Streaming table writer of the generator, and removal of an earlier run's files."""

from __future__ import annotations

import csv
import glob
import json
import os
from typing import Any, Dict, Iterable, Sequence

from clue_synth.settings import OUTPUT_FORMATS

#: Column types of the tables `generate` writes (Parquet schema; CSV / JSONL are untyped).
BEHAVIOR_TYPES = {"user_id": "string", "service": "string", "timestamp": "int64", "item_text": "string"}
INTERACTION_TYPES = {"user_id": "string", "item_id": "string", "item_text": "string", "timestamp": "int64"}


class TableWriter:
    """Streams rows of fixed columns to ``path`` in one format; atomic on close.

    Rows go to ``<path>.tmp-<pid>`` in the same directory, which ``close()``
    renames to ``path`` and ``abort()`` removes. (Not `clue_keras.atomic`: that
    writes a whole text at once; this streams batches of rows, also to Parquet.)
    """

    def __init__(self, path: str, fmt: str, columns: Sequence[str], types: Dict[str, str]):
        self.path, self.fmt, self.columns, self.rows = path, fmt, tuple(columns), 0
        self.tmp = f"{path}.tmp-{os.getpid()}"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            self._pa = pa
            self._schema = pa.schema([(c, pa.int64() if types[c] == "int64" else pa.string()) for c in columns])
            self._writer = pq.ParquetWriter(self.tmp, self._schema)
        else:
            self._file = open(self.tmp, "w", encoding="utf-8", newline="")
            if fmt == "csv":
                self._csv = csv.writer(self._file, lineterminator="\n")
                self._csv.writerow(self.columns)

    def write(self, cols: Dict[str, list]) -> None:
        """Appends rows given as one equal-length list per column."""
        n = len(cols[self.columns[0]])
        if n == 0:
            return
        self.rows += n
        if self.fmt == "parquet":
            self._writer.write_table(self._pa.Table.from_pydict(cols, schema=self._schema))
        elif self.fmt == "csv":
            self._csv.writerows(zip(*(cols[c] for c in self.columns)))
        else:
            dumps, keys = json.dumps, self.columns
            self._file.writelines(
                dumps(dict(zip(keys, row)), ensure_ascii=False) + "\n" for row in zip(*(cols[c] for c in keys)))

    def close(self) -> None:
        if self.fmt == "parquet":
            self._writer.close()
        else:
            self._file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self._writer.close() if self.fmt == "parquet" else self._file.close()
        finally:
            if os.path.exists(self.tmp):
                os.remove(self.tmp)


def jsonl(records: Iterable[Dict[str, Any]]) -> str:
    """Records as JSON lines (UTF-8 text, not ``\\u`` escapes)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def shard_name(shard: int, num_shards: int, fmt: str) -> str:
    """``behaviors-00003-of-00010.csv``."""
    return f"behaviors-{shard:05d}-of-{num_shards:05d}.{fmt}"


def remove_stale(out_dir: str, keep: Dict[str, int]) -> None:
    """Removes behaviour shards and interaction files that an earlier run left behind."""
    patterns = ["behaviors/behaviors-*-of-*.*", "downstream/*/interactions.*"]
    for pattern in patterns:
        for path in glob.glob(os.path.join(out_dir, pattern)):
            rel = os.path.relpath(path, out_dir).replace(os.sep, "/")
            if rel not in keep and rel.rsplit(".", 1)[-1] in OUTPUT_FORMATS:
                os.remove(path)
