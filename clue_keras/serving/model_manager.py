"""Model versions in memory: polling, the completeness rule, loading, swapping.

``ModelManager`` polls ``<model_base_path>`` (:mod:`clue_keras.serving.version_dirs`:
integer directories inside it, nothing else is ever loaded) and serves the
highest *complete* version.

**When a version is loaded (the completeness rule).** The Pusher copies a model
into ``<base>/<version>/`` in place, file by file, ``saved_model.pb`` last (its
own copy is not atomic either); ``cp -r`` by hand copies in directory order. So
a version directory is loaded only when all of these hold:

1. ``saved_model.pb``, ``variables/variables.index`` and every variables data
   shard are present; and
2. if ``fingerprint.pb`` is present (TF >= 2.12), ``saved_model.pb`` and
   ``variables.index`` match the checksums it recorded at save time
   (``version_dirs.incomplete_reason``);
3. the directory (every file's path, size and mtime) is unchanged between two
   consecutive polls (``poll_seconds`` apart);
4. ``tf.saved_model.load`` succeeds (checkpoint reads verify each variable's
   CRC32C, which a truncated data shard fails), its warm-up requests
   (``assets.extra/tf_serving_warmup_requests``, if any) run without error, as
   in TF Serving, and the directory is still unchanged after all that;
   otherwise the loaded copy is dropped.

A directory that is still changing is waited for quietly (one INFO line when
it appears). One that fails 1-2 and has not changed for ``stalled_seconds``
(a stopped copy, a broken push) is reported once (a WARNING; ``END`` in
``GetModelStatus`` with the reason) and skipped; one whose load fails is
reported once (an ERROR; ``END``) and skipped. Either is looked at again only
when its contents change. The highest complete version is served, even while
a higher one is incomplete; the swap is atomic (the previous version answers
until the new one has loaded). Removing the served version's directory makes
the manager fall back to the highest remaining complete version, as TF
Serving's ``latest`` policy does.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import threading
import time
import warnings
import weakref
from typing import Dict, List, Optional, Tuple

import grpc

from clue_keras.serving.version_dirs import (SAVED_MODEL_FILE, Listing, dir_listing, incomplete_reason,
                                              list_version_dirs)
from clue_keras.serving.warmup import replay_warmup, signature_caller
from clue_keras.tokenizer import register_text_ops
from clue_keras.uri import isdir

log = logging.getLogger(__name__)

DEFAULT_POLL_SECONDS = 1.0
DEFAULT_STALLED_SECONDS = 10.0
RELEASE_CHECK_SECONDS = 2.0   # after a swap: when to check the old version has left memory
MAX_RELEASE_CHECKS = 3


@dataclasses.dataclass
class LoadedVersion:
    """One loaded SavedModel version.

    Attributes:
      version: the integer directory name.
      path: the version directory.
      module: what ``tf.saved_model.load`` returned (kept alive here).
      signatures: ``{signature name: ConcreteFunction}``.
      input_specs: ``{signature name: {input name: tf.TensorSpec}}``.
      signature_defs: the ``serve`` meta graph's ``SignatureDef`` map, as TF
        Serving returns it from ``GetModelMetadata``.
    """

    version: int
    path: str
    module: object
    signatures: Dict[str, object]
    input_specs: Dict[str, Dict[str, object]]
    signature_defs: object  # tensorflow_serving.apis.get_model_metadata_pb2.SignatureDefMap
    load_seconds: float = 0.0
    warmup_requests: int = 0
    warmup_seconds: float = 0.0


def load_version(version: int, path: str, warm_up: bool = True) -> LoadedVersion:
    """Loads ``path`` (a SavedModel directory) as ``version``.

    With ``warm_up``, then replays its ``assets.extra/tf_serving_warmup_requests``
    (``clue_keras.serving.warmup``) as TF Serving does before serving a version,
    so the first requests after a swap do not pay for each graph's first run
    (seconds for a CLUE model); a failing warm-up fails the load.
    """
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2

    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(path, SAVED_MODEL_FILE), "rb") as f, \
            warnings.catch_warnings():
        # The pure-Python protobuf only warns about some malformed input.
        warnings.simplefilter("error", RuntimeWarning)
        saved_model.ParseFromString(f.read())
    meta_graphs = [m for m in saved_model.meta_graphs if "serve" in m.meta_info_def.tags]
    if not meta_graphs:
        raise ValueError(f"{path}/{SAVED_MODEL_FILE} has no meta graph tagged 'serve'")
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    for key, sig in meta_graphs[0].signature_def.items():
        signature_defs.signature_def[key].CopyFrom(sig)

    register_text_ops()  # CLUE graphs tokenise with TF Text's RegexSplitWithOffsets
    module = tf.saved_model.load(path, tags=["serve"])
    signatures = dict(module.signatures)
    input_specs = {}
    for name, fn in signatures.items():
        _, kwargs = fn.structured_input_signature
        input_specs[name] = dict(kwargs)
    loaded = LoadedVersion(version, path, module, signatures, input_specs, signature_defs)
    if warm_up:
        start = time.monotonic()
        loaded.warmup_requests = len(replay_warmup(path, signature_caller(module)))
        loaded.warmup_seconds = time.monotonic() - start
    return loaded


@dataclasses.dataclass
class _Seen:
    """What the poller knows of a version directory it has not loaded."""

    listing: Listing
    since: float           # monotonic time this listing was first seen
    reported: bool = False  # END reported for this listing (stalled or failed)


class ModelManager:
    """Watches ``model_base_path`` and keeps its highest complete version loaded.

    ``current()`` is safe to call from any thread; the swap to a new version
    is one reference assignment under a lock, so a request sees either the old
    or the new version, never a mix.

    Args:
      model_name: the name clients ask for.
      model_base_path: directory of ``<integer version>/`` SavedModels.
      poll_seconds: how often to look at the directory.
      stalled_seconds: an incomplete version directory unchanged for this long
        is reported once and skipped until it changes.
    """

    def __init__(self, model_name: str, model_base_path: str, poll_seconds: float = DEFAULT_POLL_SECONDS,
                 stalled_seconds: float = DEFAULT_STALLED_SECONDS):
        if not model_name:
            raise ValueError("model_name must not be empty")
        if not isdir(model_base_path):  # a local directory or a gs:// (tf.io.gfile) one
            raise FileNotFoundError(f"model base path {model_base_path!r} is not a directory")
        if poll_seconds <= 0 or stalled_seconds < 0:
            raise ValueError(f"need poll_seconds > 0 and stalled_seconds >= 0, got "
                             f"{poll_seconds}, {stalled_seconds}")
        self.model_name = model_name
        self.model_base_path = model_base_path
        self.poll_seconds = poll_seconds
        self.stalled_seconds = stalled_seconds
        self._lock = threading.Lock()
        self._current: Optional[LoadedVersion] = None
        # version -> (ModelVersionStatus.State name, grpc.StatusCode, message)
        self._status: Dict[int, Tuple[str, grpc.StatusCode, str]] = {}
        self._seen: Dict[int, _Seen] = {}
        self._retired: List[list] = []  # [version, weakref to its module, next check, checks]
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- state seen by the servicers --
    def current(self) -> Optional[LoadedVersion]:
        with self._lock:
            return self._current

    def statuses(self) -> Dict[int, Tuple[str, grpc.StatusCode, str]]:
        with self._lock:
            return dict(self._status)

    def _set_status(self, version: int, state: str, code=grpc.StatusCode.OK, message: str = "") -> None:
        with self._lock:
            self._status[version] = (state, code, message)

    # -- polling --
    def poll_once(self) -> Optional[int]:
        """Loads the newest complete version if it is not the one served.

        Returns the version served afterwards (None while there is none).
        """
        dirs = list_version_dirs(self.model_base_path)
        current = self.current()
        now = time.monotonic()
        self._release_retired(now)
        for version in list(self._seen):
            if version not in dirs or (current is not None and version <= current.version
                                       and current.version in dirs):
                del self._seen[version]
        for version in sorted(dirs, reverse=True):
            if current is not None and version == current.version:
                break  # Already serving the newest complete version.
            if self._consider(version, dirs[version], now):
                break
        if not dirs and current is None:
            log.debug("no versions of %r under %s yet", self.model_name, self.model_base_path)
        current = self.current()
        return None if current is None else current.version

    def _consider(self, version: int, path: str, now: float) -> bool:
        """Looks at one unloaded version directory; True if it is now served."""
        listing = dir_listing(path)
        seen = self._seen.get(version)
        if seen is None and self._current is not None:
            log.info("model %r version %d appeared at %s; loading it once it is complete",
                     self.model_name, version, path)
        if seen is None or seen.listing != listing:
            self._seen[version] = _Seen(listing, now)
            return False  # New or still changing (rule 3).
        if seen.reported:
            return False  # Reported stalled or failed; unchanged since.
        reason = incomplete_reason(path, listing)
        if reason is not None:
            if now - seen.since >= self.stalled_seconds:
                seen.reported = True
                message = (f"{path} unchanged for {now - seen.since:.0f} s and incomplete: "
                           f"completeness check failed: {reason}; skipped until it changes")
                self._set_status(version, "END", grpc.StatusCode.FAILED_PRECONDITION, message)
                log.warning("model %r version %d: %s", self.model_name, version, message)
            return False
        loaded = self._load(version, path)
        if loaded is None:
            seen.reported = True
            return False
        if dir_listing(path) != listing:  # Rule 4: changed while loading: not what we checked.
            log.info("model %r version %d changed while loading; will load it again once it settles",
                     self.model_name, version)
            self._set_status(version, "START", grpc.StatusCode.OK, "changed while loading")
            del self._seen[version]
            return False
        self._swap(loaded)
        self._seen.pop(version, None)
        return True

    def _load(self, version: int, path: str) -> Optional[LoadedVersion]:
        self._set_status(version, "LOADING")
        log.info("loading model %r version %d from %s", self.model_name, version, path)
        start = time.monotonic()
        try:
            loaded = load_version(version, path)
        except Exception as e:  # A broken version must never take the server down.
            message = f"loading {path} failed: {type(e).__name__}: {e}"[:2000]
            self._set_status(version, "END", grpc.StatusCode.UNKNOWN, message)
            log.error("model %r version %d: %s; it is skipped until it changes",
                      self.model_name, version, message)
            return None
        loaded.load_seconds = time.monotonic() - start
        return loaded

    def _swap(self, loaded: LoadedVersion) -> None:
        with self._lock:
            previous = self._current
            self._current = loaded
            self._status[loaded.version] = ("AVAILABLE", grpc.StatusCode.OK, "")
            if previous is not None and previous.version != loaded.version:
                self._status[previous.version] = ("END", grpc.StatusCode.OK, "")
        if previous is not None:
            self._retired.append([previous.version, weakref.ref(previous.module),
                                  time.monotonic() + RELEASE_CHECK_SECONDS, 0])
        log.info(
            "serving model %r version %d (loaded in %.1f s, of which %d warm-up requests %.1f s%s)",
            self.model_name, loaded.version, loaded.load_seconds, loaded.warmup_requests,
            loaded.warmup_seconds, "" if previous is None else f"; replaced version {previous.version}",
        )

    def _release_retired(self, now: float) -> None:
        """Makes sure a replaced version leaves memory: once its in-flight requests
        are done, a full garbage collection frees it if reference cycles hold it.
        At most ``MAX_RELEASE_CHECKS`` collections (~1 s each with a CLUE model
        loaded) per replaced version; the outcome is logged."""
        if not any(now >= r[2] for r in self._retired):
            return
        if any(r[1]() is not None for r in self._retired):
            gc.collect()
        for entry in list(self._retired):
            version, ref, _, checks = entry
            if ref() is None:
                log.info("model %r version %d released from memory", self.model_name, version)
            elif checks + 1 >= MAX_RELEASE_CHECKS:
                log.warning("model %r version %d is still referenced after it was replaced; "
                            "its memory is not freed", self.model_name, version)
            else:
                entry[2], entry[3] = now + RELEASE_CHECK_SECONDS, checks + 1
                continue
            self._retired.remove(entry)

    def start(self) -> None:
        """Loads the newest complete version now, then keeps polling in a thread.

        Rule 3 needs two looks at a directory, so this polls twice,
        ``poll_seconds`` apart, when nothing loaded on the first poll.
        """
        self.poll_once()
        if self.current() is None and self._seen:
            time.sleep(self.poll_seconds)
            self.poll_once()
        if self.current() is None:
            log.warning(
                "no loadable version of model %r under %s yet; polling every %.3g s",
                self.model_name, self.model_base_path, self.poll_seconds,
            )
        self._thread = threading.Thread(target=self._poll_loop, name=f"poll-{self.model_name}", daemon=True)
        self._thread.start()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll_once()
            except Exception:  # e.g. the base path vanished for a moment.
                log.exception("polling %s failed; will retry", self.model_base_path)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
