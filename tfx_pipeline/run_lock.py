"""One `clue run` per run directory: an exclusive ``flock`` on ``ROOT/.clue-run.lock``.

Two local runs on one ROOT would share one SQLite ML Metadata store and one
pipeline directory: each could see the other's half-finished executions, and
two Pushers could race on one serving directory. `run_lock` holds an exclusive
`fcntl.flock` on ``ROOT/.clue-run.lock`` for the whole run. A second run either
fails at once with `RunLockBusy` (its message names the holder's pid, host and
start time, read from the lock file) or, with ``wait=True``, waits until the
first one ends.

The kernel drops the lock when its holder's process ends in any way, ``kill
-9`` included, so there is no stale lock to clean up; the file itself stays
(with the last holder's details) and is harmless. ``flock`` is reliable on
local filesystems; on NFS it depends on the server (NFSv4 emulates it with
byte-range locks), and it does not work across machines on other network
filesystems: use one ROOT per machine there.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from typing import Callable, Dict, Iterator, Optional

#: The lock file's name in ROOT.
LOCK_FILE = ".clue-run.lock"


class RunLockBusy(RuntimeError):
    """Another process holds the run lock of this ROOT."""

    def __init__(self, root: str, holder: Dict[str, object]):
        self.root, self.holder = root, holder
        super().__init__(f"another clue run ({describe_holder(holder)}) is using {root}; "
                         "wait for it or use another --root")


def describe_holder(holder: Dict[str, object]) -> str:
    """``pid N on HOST, started T`` from the lock file's contents (``?`` for unknowns)."""
    started = holder.get("started")
    when = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(started)))
            if isinstance(started, (int, float)) else "?")
    host = holder.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"pid {holder.get('pid', '?')}{where}, started {when}"


def _read_holder(fd: int) -> Dict[str, object]:
    # The holder writes its details just after taking the lock: a reader that
    # comes in between sees an empty file, so it looks again a few times.
    for _ in range(20):
        try:
            data = os.pread(fd, 4096, 0)
            if data:
                return json.loads(data.decode("utf-8"))
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return {}


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextlib.contextmanager
def run_lock(root: str, wait: bool = False, timeout_s: Optional[float] = None,
             poll_s: float = 0.5,
             on_wait: Optional[Callable[[str], None]] = None) -> Iterator[Dict[str, object]]:
    """Holds the exclusive run lock of ``root`` (created if absent) for the block.

    Args:
      root: the run directory (``clue run --root``).
      wait: wait for the holder to finish instead of raising `RunLockBusy`.
      timeout_s: with ``wait``, give up (raise `RunLockBusy`) after this many
        seconds; None waits as long as it takes.
      poll_s: with ``wait``, how often to try again.
      on_wait: called once with a line saying whom this run waits for.

    Yields:
      what this run wrote into the lock file (``pid``, ``host``, ``started``, ``argv``).

    Raises:
      RunLockBusy: another process holds it (and not ``wait``, or ``timeout_s`` passed).
      tfx_pipeline.output_dirs.OutputDirError: ``root`` cannot be created or written.
    """
    from tfx_pipeline.output_dirs import OutputDirError

    root = os.path.abspath(root)
    try:
        os.makedirs(root, exist_ok=True)
        fd = os.open(os.path.join(root, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise OutputDirError(e.errno, f"cannot write to the run directory {root}: "
                             f"{e.strerror or e} ({e.filename or root})") from e
    try:
        if not _try_lock(fd):
            holder = _read_holder(fd)
            if not wait:
                raise RunLockBusy(root, holder)
            if on_wait:
                on_wait(f"waiting for the clue run ({describe_holder(holder)}) using {root} "
                        "to finish")
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while not _try_lock(fd):
                if deadline is not None and time.monotonic() > deadline:
                    raise RunLockBusy(root, _read_holder(fd))
                time.sleep(poll_s)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "argv": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode("utf-8"), 0)
        os.fsync(fd)
        try:
            yield me
        finally:
            os.ftruncate(fd, 0)  # a waiter that reads before the next holder writes retries
    finally:
        os.close(fd)  # releases the lock
