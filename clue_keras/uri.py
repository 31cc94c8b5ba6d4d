"""Paths that may be URIs (``gs://bucket/...``, anything ``tf.io.gfile`` reaches).

* ``is_remote``: the path has a scheme, so ``os`` cannot reach it;
* ``abspath``: ``os.path.abspath`` for a local path, a URI unchanged;
* ``isfile`` / ``isdir``: the ``os.path`` tests through ``tf.io.gfile``;
* ``listdir``: ``os.listdir``, or ``tf.io.gfile.listdir`` (names without the
  trailing ``/`` GCS gives directories) for a URI;
* ``open_binary`` / ``read_parquet`` / ``parquet_file``: ``open(path, "rb")``,
  ``pyarrow.parquet.read_table`` and ``pyarrow.parquet.ParquetFile`` that read a
  URI through ``tf.io.gfile``;
* ``glob``: ``tf.io.gfile.glob`` that also matches DIRECTORIES on a remote
  file system: the GCS plugin of tensorflow-io-gcs-filesystem 0.37 never
  matches a directory (``[]`` for ``gs://b/x/Split-*/*``; ``gs://b/x/*``
  lists the files only), so a remote pattern is expanded one component at a
  time with ``listdir`` + ``fnmatch``.
"""

from __future__ import annotations

import fnmatch
import os
from typing import List


def is_remote(path) -> bool:
    """True for a URI with a scheme (``gs://b/x``), which ``os`` cannot reach."""
    return "://" in str(path)


def abspath(path) -> str:
    """``os.path.abspath`` for a local path; a URI unchanged."""
    return str(path) if is_remote(path) else os.path.abspath(path)


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def isdir(path: str) -> bool:
    return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
    if not is_remote(path):
        return os.path.isfile(path)
    gfile = _gfile()
    return gfile.exists(path) and not gfile.isdir(path)


def listdir(path: str) -> List[str]:
    if not is_remote(path):
        return os.listdir(path)
    return [name.rstrip("/") for name in _gfile().listdir(path)]


def open_binary(path: str):
    """``open(path, "rb")``, or a ``tf.io.gfile.GFile`` for a URI."""
    return _gfile().GFile(path, "rb") if is_remote(path) else open(path, "rb")


def read_parquet(path: str, **kwargs):
    """``pyarrow.parquet.read_table``; a URI is read (whole) through ``tf.io.gfile``."""
    import pyarrow.parquet as pq

    if not is_remote(path):
        return pq.read_table(path, **kwargs)
    import pyarrow as pa

    with open_binary(path) as f:
        return pq.read_table(pa.BufferReader(f.read()), **kwargs)


def parquet_file(path: str):
    """``pyarrow.parquet.ParquetFile``; a URI is read (whole) through ``tf.io.gfile``."""
    import pyarrow.parquet as pq

    if not is_remote(path):
        return pq.ParquetFile(path)
    import pyarrow as pa

    with open_binary(path) as f:
        return pq.ParquetFile(pa.BufferReader(f.read()))


def _has_magic(part: str) -> bool:
    return any(c in part for c in "*?[")


def glob(pattern: str) -> List[str]:
    """Sorted paths matching ``pattern`` (``tf.io.gfile.glob`` semantics; remote
    patterns with a wildcard before the last component expanded by listing)."""
    gfile = _gfile()
    if not is_remote(pattern):
        return sorted(gfile.glob(pattern))
    scheme, rest = pattern.split("://", 1)
    parts = rest.split("/")
    first_magic = next((i for i, p in enumerate(parts) if _has_magic(p)), len(parts))
    if first_magic == len(parts):
        return [pattern] if gfile.exists(pattern) else []
    bases = [f"{scheme}://" + "/".join(parts[:first_magic])]
    for i, part in enumerate(parts[first_magic:], first_magic):
        last = i == len(parts) - 1
        matched = []
        for base in bases:
            if not _has_magic(part):
                candidate = f"{base}/{part}"
                if (gfile.exists(candidate) if last else gfile.isdir(candidate)):
                    matched.append(candidate)
                continue
            if not gfile.isdir(base):
                continue
            for name in gfile.listdir(base):
                is_dir = name.endswith("/")
                name = name.rstrip("/")
                if fnmatch.fnmatchcase(name, part) and (last or is_dir or
                                                        gfile.isdir(f"{base}/{name}")):
                    matched.append(f"{base}/{name}")
        bases = matched
    return sorted(bases)
