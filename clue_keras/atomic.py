"""Atomic writes: a reader never sees a half-written file or directory.

Files go to a temporary name in the same directory and are renamed into place;
directories (SavedModels) are built under a temporary sibling and renamed.

Paths with a scheme (``gs://...``, anything ``tf.io.gfile`` reaches) work too:

* a file is written (or, for ``atomic_file``, built locally and copied) under a
  temporary name in the destination directory, then renamed with
  ``tf.io.gfile.rename``. On GCS a rename is copy + delete, not atomic, but an
  object only appears once its upload has finished, so a reader still never
  sees a partial file (what is lost is atomic no-clobber);
* a directory cannot be renamed on GCS, so ``atomic_dir`` builds it in a LOCAL
  temporary directory and then copies it file by file to the final place,
  the completion markers (``COMMIT_FILES``: ``saved_model.pb``,
  ``manifest.json``) last: a reader that waits for the marker never sees a
  partial directory; a crash mid-copy leaves a directory without its marker.

* ``write_text_atomic`` / ``write_json_atomic``: a whole text / JSON file;
* ``atomic_file``: a temporary (local) file path for a writer that wants a
  path (``savefig``, ``to_parquet``), moved into place on success;
* ``atomic_dir``: a temporary (local) directory to build in, moved into place
  on success (optionally replacing a previous one only then);
* ``publish_dir``: the move step alone, for a directory built elsewhere;
* ``is_remote`` / ``abspath`` (from ``clue_keras.uri``): a path with a scheme /
  ``os.path.abspath`` that leaves such a path alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from typing import Any, Iterator

from clue_keras.uri import abspath, is_remote  # noqa: F401  (re-exported)


# Written last when a directory is copied to a remote file system: their presence
# says the directory is complete (a SavedModel's graph; an embedding table's manifest).
COMMIT_FILES = ("saved_model.pb", "manifest.json")


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def _remote_tmp_name(path: str) -> str:
    directory, name = path.rsplit("/", 1)
    return f"{directory}/.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{name}"


def _remote_put(write, path: str) -> None:
    """``write(tmp)`` creates a temporary object next to ``path``; it is renamed to
    ``path`` (replacing it) or, on an exception, removed."""
    gfile = _gfile()
    tmp = _remote_tmp_name(path)
    try:
        write(tmp)
        gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        with contextlib.suppress(Exception):
            if gfile.exists(tmp):
                gfile.remove(tmp)
        raise


def write_text_atomic(path: str, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` through a temporary file in the same directory."""
    directory = os.path.dirname(path) or "."
    if is_remote(path):
        def write(tmp):
            with _gfile().GFile(tmp, "w") as f:
                f.write(text)

        _remote_put(write, path)
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


def upload_dir(local_dir: str, remote_dir: str) -> None:
    """Copies the files under ``local_dir`` to ``remote_dir`` (any ``tf.io.gfile``
    path), the ``COMMIT_FILES`` last; existing files are replaced."""
    gfile = _gfile()
    files = []
    for root, _dirs, names in os.walk(local_dir):
        rel = os.path.relpath(root, local_dir)
        for name in names:
            files.append(name if rel == "." else os.path.join(rel, name))
    files.sort(key=lambda f: (os.path.basename(f) in COMMIT_FILES, f))
    gfile.makedirs(remote_dir)
    for rel in files:
        dst = remote_dir.rstrip("/") + "/" + rel.replace(os.sep, "/")
        parent = dst.rsplit("/", 1)[0]
        if not gfile.isdir(parent):
            gfile.makedirs(parent)
        gfile.copy(os.path.join(local_dir, rel), dst, overwrite=True)


def _remove_remote_dir(remote_dir: str) -> None:
    """Removes ``remote_dir``, its ``COMMIT_FILES`` first (so a reader that checks
    them stops trusting it before anything else goes)."""
    gfile = _gfile()
    for root, _dirs, names in gfile.walk(remote_dir):
        for name in names:
            if name in COMMIT_FILES:
                gfile.remove(root.rstrip("/") + "/" + name)
    gfile.rmtree(remote_dir)


def _check_final(final_dir: str, overwrite: bool) -> bool:
    """Whether a non-empty ``final_dir`` is there to replace (any file system)."""
    if is_remote(final_dir):
        gfile = _gfile()
        exists, isdir = gfile.exists(final_dir), gfile.isdir(final_dir)
        listdir = gfile.listdir
    else:
        exists, isdir = os.path.exists(final_dir), os.path.isdir(final_dir)
        listdir = os.listdir
    if exists and not isdir:
        raise FileExistsError(f"output path {final_dir} exists and is not a directory")
    replacing = isdir and bool(listdir(final_dir))
    if replacing and not overwrite:
        raise FileExistsError(f"refusing to overwrite non-empty directory {final_dir}")
    return replacing


def publish_dir(tmp_dir: str, final_dir: str) -> str:
    """Renames a finished ``tmp_dir`` to ``final_dir`` (absent or an empty directory,
    as TFX pre-creates it); on failure removes ``tmp_dir`` and re-raises.

    A remote ``final_dir`` gets a copy of the (local) ``tmp_dir``, markers last
    (``upload_dir``); ``tmp_dir`` is removed afterwards."""
    if is_remote(final_dir):
        try:
            _check_final(final_dir, overwrite=False)
            upload_dir(tmp_dir, final_dir)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        return final_dir
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
    if is_remote(path):  # a local temporary file, copied next to ``path`` and renamed
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(path)}-")
        os.close(fd)
        try:
            yield tmp
            if os.path.exists(tmp):
                _remote_put(lambda t: _gfile().copy(tmp, t, overwrite=True), path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
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

    A remote ``final_dir`` (``gs://``, where a directory cannot be renamed):
    the temporary directory is LOCAL; on success it is copied to
    ``final_dir`` with the ``COMMIT_FILES`` last (a replaced directory loses
    its markers first, then the rest), then removed.

    Raises:
      FileExistsError: ``final_dir`` is not empty (and not ``overwrite``), or
        is a file.
    """
    final_dir = abspath(final_dir)
    replacing = _check_final(final_dir, overwrite)
    if is_remote(final_dir):
        tmp = tempfile.mkdtemp(prefix=prefix)
        try:
            yield tmp
            if replacing:
                _remove_remote_dir(final_dir)
            upload_dir(tmp, final_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
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
