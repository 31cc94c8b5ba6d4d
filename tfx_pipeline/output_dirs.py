"""A local run's output directories: writable before the run starts, and no partial
push left in the serving directory after a failed or killed one.

`check_writable` runs before any component: a serving directory on a read-only
filesystem, under a regular file, or not writable for this user would otherwise
fail only at the Pusher, after the whole pipeline. It raises `OutputDirError`
naming the directory, what it is for, and the reason. (A disk that fills up
during the run is only found when a write fails; see `remove_partial_pushes`.)

`remove_partial_pushes` cleans up after TFX's Pusher, which copies the model
into ``<serving_dir>/<unix time>/`` in place, file by file (``saved_model.pb``
last) and removes nothing when the copy fails: a ``kill -9`` or a full disk in
the middle leaves a version directory that is not a whole SavedModel. A
version directory is removed when all of these hold:

1. no COMPLETE Pusher execution recorded in this MLMD store pushed to it;
2. it is not a whole SavedModel (`clue_keras.serving.version_dirs.incomplete_reason`:
   ``saved_model.pb``, the variables index and every data shard present, and
   the checksums in ``fingerprint.pb`` matching the files);
3. its version (the Pusher's clock when it copied) is not older than the start
   of a Pusher execution of this pipeline that did not complete (FAILED, or
   left RUNNING by a killed process).

Only call it while no other run can be pushing with the same store (`clue run`
holds ``ROOT/.clue-run.lock``). A whole copy left by a Pusher killed after
copying is kept: it is the blessed model, complete.
"""

from __future__ import annotations

import errno
import os
import shutil
from typing import List, Optional, Tuple

from clue_keras.uri import is_remote


class OutputDirError(OSError):
    """An output directory cannot be written; the message names it and says why."""

    def __str__(self) -> str:
        return str(self.strerror)


def check_writable(path: str, what: str) -> None:
    """Checks, writing nothing, that ``path`` is or can be made a writable directory:
    its nearest existing ancestor must be a directory this process may write to
    (``access(2)``, which reports a read-only filesystem even to root).

    Raises:
      OutputDirError: naming ``what`` (e.g. "the serving directory"), ``path``
        and the reason (read-only file system, not a directory, permission denied).
    """
    if is_remote(path):
        return  # remote storage: its errors name the object when they happen
    existing = os.path.abspath(path)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OutputDirError(errno.ENOTDIR, f"cannot write to {what} {path}: "
                             f"{existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        code = errno.EROFS if read_only else errno.EACCES
        raise OutputDirError(code, f"cannot write to {what} {path}: "
                             f"{os.strerror(code)} ({existing})")


def _pusher_history(metadata_path: str, pipeline_name: str,
                    pusher: str) -> Tuple[set, Optional[float]]:
    """(version directories COMPLETE executions of the Pusher with id ``pusher``
    pushed to, earliest start in seconds of one that did not complete, or None)."""
    from ml_metadata.proto import metadata_store_pb2 as pb

    from tfx_pipeline.mlmd_query import custom_properties, node_ids, open_store, outputs

    store = open_store(metadata_path)
    ids = [i for i, name in node_ids(store, pipeline_name).items() if name == pusher]
    pushed, unfinished = set(), []
    for ex in store.get_executions_by_id(ids):
        if ex.last_known_state in (pb.Execution.COMPLETE, pb.Execution.CACHED):
            for art in outputs(store, ex.id).get("pushed_model", []):
                dest = custom_properties(art).get("pushed_destination")
                if dest:
                    pushed.add(os.path.realpath(dest))
        else:
            unfinished.append(ex.create_time_since_epoch / 1000.0)
    return pushed, (min(unfinished) if unfinished else None)


def remove_partial_pushes(metadata_path: str, pipeline_name: str, serving_dir: str,
                          pusher: Optional[str] = None) -> List[Tuple[str, str]]:
    """Removes version directories an interrupted Pusher (id ``pusher``, default
    the encoder's ``Pusher``; the lookup model's is ``LookupPusher``) left
    half-copied in ``serving_dir`` (rules in the module docstring); returns
    ``[(directory, why it was not whole)]``."""
    if is_remote(serving_dir) or not os.path.isdir(serving_dir) \
            or not os.path.exists(metadata_path):
        return []
    from clue_keras.serving.version_dirs import incomplete_reason, list_version_dirs

    from tfx_pipeline.pipeline import PUSHER

    pushed, since = _pusher_history(metadata_path, pipeline_name, pusher or PUSHER)
    if since is None:
        return []
    removed = []
    for version, path in sorted(list_version_dirs(serving_dir).items()):
        if version < int(since) or os.path.realpath(path) in pushed:
            continue
        reason = incomplete_reason(path)
        if reason:
            shutil.rmtree(path)
            removed.append((path, reason))
    return removed
