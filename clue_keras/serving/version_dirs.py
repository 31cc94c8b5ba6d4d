"""Version directories on disk and the rule for when one is complete.

Layout (TF Serving's, and what the TFX Pusher writes)::

    <model_base_path>/<integer version>/saved_model.pb (+ variables/, assets/, fingerprint.pb)

Only directories directly under the base path whose name is an integer and
which resolve to a place inside the base path are versions; anything else
(``tmp-123``, ``.staging``, ``junk``, a symlink out) is ignored.

:func:`incomplete_reason` holds rules 1-2 of the completeness rule that
:mod:`clue_keras.serving.model_manager` applies before loading a version:

1. ``saved_model.pb`` is present, and ``variables/variables.index`` with every
   data shard ``variables.data-K-of-N`` it names (TF2's ``tf.saved_model.save``
   always writes them, and TF2's loader needs them);
2. if ``fingerprint.pb`` is present (TF >= 2.12 writes it), the checksums of
   ``saved_model.pb`` and ``variables.index`` computed now equal the ones it
   recorded at save time (a truncated or half-copied file never matches).

:func:`dir_listing` (every file's path, size and mtime) is what the manager
compares between polls (rule 3: unchanged between two consecutive polls).

A base path with a scheme (``gs://bucket/models/clue``, anything
``tf.io.gfile`` reaches) is listed through ``tf.io.gfile``: there are no
symlinks to check, and a file's size and mtime come from ``gfile.stat``.
"""

from __future__ import annotations

import os
import re
from typing import Dict, Optional, Tuple

from clue_keras.uri import is_remote, isfile

SAVED_MODEL_FILE = "saved_model.pb"
FINGERPRINT_FILE = "fingerprint.pb"
VARIABLES_INDEX = os.path.join("variables", "variables.index")

_VERSION_DIR = re.compile(r"[0-9]{1,18}")
_DATA_SHARD = re.compile(r"variables\.data-([0-9]{5})-of-([0-9]{5})")

#: ``(relative path, size, mtime ns)`` of every file of a version directory, sorted.
Listing = Tuple[Tuple[str, int, int], ...]


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def _remote_version_dirs(model_base_path: str) -> Dict[int, str]:
    gfile = _gfile()
    versions: Dict[int, str] = {}
    try:
        names = gfile.listdir(model_base_path)
    except Exception:  # NotFoundError (gfile's own class): nothing there yet
        return versions
    base = model_base_path.rstrip("/")
    for raw in names:
        name = raw.rstrip("/")
        if not _VERSION_DIR.fullmatch(name):
            continue
        path = f"{base}/{name}"
        if not (raw.endswith("/") or gfile.isdir(path)):
            continue
        version = int(name)
        if version in versions and name != str(version):
            continue
        versions[version] = path
    return versions


def list_version_dirs(model_base_path: str) -> Dict[int, str]:
    """Every version directory under ``model_base_path``, complete or not: ``{version: dir}``."""
    if is_remote(model_base_path):
        return _remote_version_dirs(model_base_path)
    real_base = os.path.realpath(model_base_path)
    versions: Dict[int, str] = {}
    try:
        entries = list(os.scandir(model_base_path))
    except FileNotFoundError:
        return versions
    for entry in entries:
        if not _VERSION_DIR.fullmatch(entry.name):
            continue
        path = os.path.join(model_base_path, entry.name)
        real = os.path.realpath(path)
        if real == real_base or os.path.commonpath([real, real_base]) != real_base:
            continue  # A symlink out of the base path: never loaded.
        if not os.path.isdir(real):
            continue
        version = int(entry.name)
        if version in versions and entry.name != str(version):
            continue  # "7" and "007": keep the canonical name.
        versions[version] = path
    return versions


def list_versions(model_base_path: str) -> Dict[int, str]:
    """The version directories that hold a ``saved_model.pb``: ``{version: dir}``
    (candidates for loading; see :func:`incomplete_reason` for the rest of the rule)."""
    return {v: p for v, p in list_version_dirs(model_base_path).items()
            if isfile(os.path.join(p, SAVED_MODEL_FILE))}


def dir_listing(path: str) -> Listing:
    """``(relative path, size, mtime ns)`` of every file under ``path`` (symlinks not followed)."""
    if is_remote(path):
        return _remote_listing(path)
    out = []
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue  # Removed while we looked: the next listing differs anyway.
            out.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


def _remote_listing(path: str) -> Listing:
    gfile = _gfile()
    base = path.rstrip("/")
    out = []
    try:
        walked = list(gfile.walk(base))
    except Exception:
        return ()
    for root, _dirs, files in walked:
        rel_root = root.rstrip("/")[len(base):].lstrip("/")
        for name in files:
            rel = f"{rel_root}/{name}" if rel_root else name
            try:
                st = gfile.stat(f"{base}/{rel}")
            except Exception:
                continue  # Removed while we looked.
            out.append((rel.replace("/", os.sep), int(st.length), int(st.mtime_nsec)))
    return tuple(sorted(out))


def incomplete_reason(path: str, listing: Optional[Listing] = None) -> Optional[str]:
    """Why the version directory ``path`` is not a complete SavedModel (rules 1-2 of
    the module docstring), or None when it is."""
    listing = dir_listing(path) if listing is None else listing
    names = {name: size for name, size, _ in listing}
    if not names.get(SAVED_MODEL_FILE):
        return f"no {SAVED_MODEL_FILE} yet"
    if VARIABLES_INDEX not in names:
        return f"no {VARIABLES_INDEX} yet"
    shards = [_DATA_SHARD.fullmatch(os.path.basename(n)) for n in names
              if os.path.dirname(n) == "variables"]
    counts = {int(m.group(2)) for m in shards if m}
    if len(counts) != 1:
        return "no variables data shard yet" if not counts else f"variables data shards of {sorted(counts)} sets"
    total = counts.pop()
    missing = [k for k in range(total)
               if os.path.join("variables", f"variables.data-{k:05d}-of-{total:05d}") not in names]
    if missing:
        return f"variables data shard(s) {missing} of {total} missing"
    if FINGERPRINT_FILE in names:
        return _fingerprint_mismatch(path)
    return None


def _fingerprint_mismatch(path: str) -> Optional[str]:
    """Rule 2: ``fingerprint.pb`` against the files as they are now."""
    from tensorflow.core.protobuf import fingerprint_pb2
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

    stored, fresh = fingerprint_pb2.FingerprintDef(), fingerprint_pb2.FingerprintDef()
    try:
        with _gfile().GFile(os.path.join(path, FINGERPRINT_FILE), "rb") as f:
            stored.ParseFromString(f.read())
        fresh.ParseFromString(fingerprinting.CreateFingerprintDef(path))
    except Exception as e:  # A half-written file fails to parse.
        return f"cannot check {FINGERPRINT_FILE}: {type(e).__name__}: {str(e)[:200]}"
    if stored.saved_model_checksum != fresh.saved_model_checksum:
        return f"{SAVED_MODEL_FILE} does not match {FINGERPRINT_FILE} (incomplete, or rewritten after saving)"
    if stored.checkpoint_hash != fresh.checkpoint_hash:
        return f"{VARIABLES_INDEX} does not match {FINGERPRINT_FILE}"
    return None
