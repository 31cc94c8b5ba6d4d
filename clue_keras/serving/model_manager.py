"""Model versions on disk and in memory: discovery, completeness, loading, polling.

Model directory layout (TF Serving's, and what the TFX Pusher writes)::

    <model_base_path>/<integer version>/saved_model.pb (+ variables/, assets/, fingerprint.pb)

Only directories directly under the base path whose name is an integer and
which resolve to a place inside the base path are versions; anything else
(``tmp-123``, ``.staging``, ``junk``, a symlink out) is ignored and nothing else
is ever loaded.

**When a version is loaded (the completeness rule).** The Pusher copies a model
into ``<base>/<version>/`` in place, file by file, ``saved_model.pb`` last (its
own copy is not atomic either); ``cp -r`` by hand copies in directory order. So
a version directory is loaded only when all of these hold:

1. ``saved_model.pb`` is present, and ``variables/variables.index`` with every
   data shard ``variables.data-K-of-N`` it names (TF2's ``tf.saved_model.save``
   always writes them, and TF2's loader needs them);
2. if ``fingerprint.pb`` is present (TF >= 2.12 writes it), the checksums of
   ``saved_model.pb`` and ``variables.index`` computed now equal the ones it
   recorded at save time (a truncated or half-copied file never matches);
3. the directory (every file's path, size and mtime) is unchanged between two
   consecutive polls (``poll_seconds`` apart);
4. ``tf.saved_model.load`` succeeds (checkpoint reads verify each variable's
   CRC32C, which a truncated data shard fails), and the directory is still
   unchanged after the load; otherwise the loaded copy is dropped.

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
import logging
import os
import re
import threading
import time
import warnings
from typing import Dict, Optional, Tuple

import grpc

from clue_keras.tokenizer import register_text_ops

log = logging.getLogger(__name__)

DEFAULT_POLL_SECONDS = 1.0
DEFAULT_STALLED_SECONDS = 10.0
SAVED_MODEL_FILE = "saved_model.pb"
FINGERPRINT_FILE = "fingerprint.pb"
VARIABLES_INDEX = os.path.join("variables", "variables.index")

_VERSION_DIR = re.compile(r"[0-9]{1,18}")
_DATA_SHARD = re.compile(r"variables\.data-([0-9]{5})-of-([0-9]{5})")

#: ``(relative path, size, mtime ns)`` of every file of a version directory, sorted.
Listing = Tuple[Tuple[str, int, int], ...]


def list_version_dirs(model_base_path: str) -> Dict[int, str]:
    """Every version directory under ``model_base_path``, complete or not: ``{version: dir}``."""
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
            if os.path.isfile(os.path.join(p, SAVED_MODEL_FILE))}


def dir_listing(path: str) -> Listing:
    """``(relative path, size, mtime ns)`` of every file under ``path`` (symlinks not followed)."""
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
        with open(os.path.join(path, FINGERPRINT_FILE), "rb") as f:
            stored.ParseFromString(f.read())
        fresh.ParseFromString(fingerprinting.CreateFingerprintDef(path))
    except Exception as e:  # A half-written file fails to parse.
        return f"cannot check {FINGERPRINT_FILE}: {type(e).__name__}: {str(e)[:200]}"
    if stored.saved_model_checksum != fresh.saved_model_checksum:
        return f"{SAVED_MODEL_FILE} does not match {FINGERPRINT_FILE} (incomplete, or rewritten after saving)"
    if stored.checkpoint_hash != fresh.checkpoint_hash:
        return f"{VARIABLES_INDEX} does not match {FINGERPRINT_FILE}"
    return None


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


def load_version(version: int, path: str) -> LoadedVersion:
    """Loads ``path`` (a SavedModel directory) as ``version``."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, SAVED_MODEL_FILE), "rb") as f, warnings.catch_warnings():
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
    return LoadedVersion(version, path, module, signatures, input_specs, signature_defs)


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
        if not os.path.isdir(model_base_path):
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
        log.info(
            "serving model %r version %d (loaded in %.1f s%s)",
            self.model_name, loaded.version, loaded.load_seconds,
            "" if previous is None else f"; replaced version {previous.version}",
        )

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
