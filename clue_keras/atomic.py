"""Atomic writes: a reader never sees a half-written file or directory.

Files go to a temporary name in the same directory and are renamed into place;
directories (SavedModels) are built under a temporary sibling and renamed.
Paths with a scheme (``gs://...``) go through ``tf.io.gfile``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any


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
