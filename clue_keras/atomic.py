"""Atomic writes: a reader never sees a half-written file or directory.

Files go to a temporary name in the same directory and are renamed into place;
directories (SavedModels) are built under a temporary sibling and renamed.
Paths with a scheme (``gs://...``) go through ``tf.io.gfile`` (text and JSON
only; ``atomic_file`` and ``atomic_dir`` are for local paths).

* ``write_text_atomic`` / ``write_json_atomic``: a whole text / JSON file;
* ``atomic_file``: a temporary file path for a writer that wants a path
  (``savefig``, ``to_parquet``), renamed into place on success;
* ``atomic_dir``: a temporary directory to build in, renamed into place on
  success (optionally replacing a previous one only then);
* ``publish_dir``: the rename step alone, for a directory built elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator


def _is_remote(path: str) -> bool:
    return "://" in path


def write_text_atomic(path: str, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` through a temporary file in the same directory."""
    directory = os.path.dirname(path) or "."
    if _is_remote(path):
        import tensorflow as tf

        tmp = os.path.join(directory, f".tmp-{os.getpid()}-{os.path.basename(path)}")
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write(text)
        tf.io.gfile.rename(tmp, path, overwrite=True)
        return
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(path)}-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json_atomic(path: str, obj: Any, ensure_ascii: bool = True) -> None:
    """``obj`` as indented, key-sorted JSON plus a newline, written atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True,
                                       ensure_ascii=ensure_ascii) + "\n")


def publish_dir(tmp_dir: str, final_dir: str) -> str:
    """Renames a finished ``tmp_dir`` to ``final_dir`` (absent or an empty directory,
    as TFX pre-creates it); on failure removes ``tmp_dir`` and re-raises."""
    try:
        if os.path.isdir(final_dir):
            os.rmdir(final_dir)  # only if empty: never clobbers an existing export
        os.replace(tmp_dir, final_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return final_dir


@contextlib.contextmanager
def atomic_file(path: str) -> Iterator[str]:
    """Yields a temporary path next to ``path`` (same directory); on a normal exit
    it is renamed to ``path``, on an exception it is removed and ``path`` is untouched.
    A caller that deletes the temporary file publishes nothing."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(path)}-", dir=directory)
    os.close(fd)
    try:
        yield tmp
        if os.path.exists(tmp):
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _replace_dir(tmp_dir: str, final_dir: str) -> None:
    """Swaps a finished ``tmp_dir`` for an existing non-empty ``final_dir``: the old
    directory is moved aside first, put back if the swap fails, removed after."""
    aside = tempfile.mkdtemp(prefix=".old-" + os.path.basename(final_dir) + "-",
                             dir=os.path.dirname(final_dir))
    os.rmdir(aside)
    os.replace(final_dir, aside)
    try:
        os.replace(tmp_dir, final_dir)
    except BaseException:
        os.replace(aside, final_dir)
        raise
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final_dir: str, prefix: str = ".tmp-", overwrite: bool = False) -> Iterator[str]:
    """Yields a new temporary directory next to ``final_dir`` to build in.

    On a normal exit it becomes ``final_dir``; on an exception it is removed
    and ``final_dir`` is untouched, so a reader never sees a partial
    directory. ``final_dir`` must be absent or an empty directory (TFX
    pre-creates output directories); with ``overwrite`` a non-empty one is
    replaced, but only once the new one is complete.

    Raises:
      FileExistsError: ``final_dir`` is not empty (and not ``overwrite``), or
        is a file.
    """
    final_dir = os.path.abspath(final_dir)
    if os.path.exists(final_dir) and not os.path.isdir(final_dir):
        raise FileExistsError(f"output path {final_dir} exists and is not a directory")
    replacing = os.path.isdir(final_dir) and bool(os.listdir(final_dir))
    if replacing and not overwrite:
        raise FileExistsError(f"refusing to overwrite non-empty directory {final_dir}")
    parent = os.path.dirname(final_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        yield tmp
        if replacing:
            _replace_dir(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not replacing:
        publish_dir(tmp, final_dir)
