"""Users embedded so far, from Beam worker processes to the process that shows it.

The export's embedding DoFn runs in Beam's worker processes, which share no
memory with the process that started the pipeline, and Beam's metrics reach it
only when the pipeline has finished. So each worker appends one line per
embedded batch (its user count) to a small file (`ProgressFile`, ``O_APPEND``:
lines of a few bytes are written whole), and the starting process reads the new
lines a few times a second (`watch`) and moves a
`clue_keras.progress_bar.ProgressBar`: a bar on a terminal, plain lines
elsewhere.

This works wherever the workers see the file: the DirectRunner (the default,
in-memory or multi-processing) and other runners on the same machine. A worker
that cannot open the file (a remote runner) records nothing and the export goes
on; the bar then shows 0 until the end.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator, Optional

from clue_keras.progress_bar import ProgressBar

__all__ = ["ProgressFile", "watch", "read_new"]


class ProgressFile:
    """The worker side: ``record(n)`` appends ``"n\\n"``; opened lazily, never fails."""

    def __init__(self, path: Optional[str]):
        self.path = path
        self._fd: Optional[int] = None
        self._broken = path is None

    def record(self, n: int) -> None:
        if self._broken:
            return
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(self._fd, b"%d\n" % int(n))
        except OSError:  # not this machine's file system: no progress, no failure
            self._broken = True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_new(path: str, offset: int) -> tuple:
    """(sum of the complete lines after ``offset``, the offset after them)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return 0, offset
    end = data.rfind(b"\n") + 1          # a line still being written waits for the next read
    total = sum(int(line) for line in data[:end].split() if line.strip())
    return total, offset + end


@contextlib.contextmanager
def watch(path: str, bar: ProgressBar, interval_s: float = 0.5) -> Iterator[ProgressBar]:
    """Moves ``bar`` by what the workers record in ``path`` while the block runs,
    and by the rest once it has ended (a last read after the workers are done)."""
    stop = threading.Event()
    offset = [0]

    def poll() -> None:
        added, offset[0] = read_new(path, offset[0])
        if added:
            bar.update(added)

    def loop() -> None:
        while not stop.wait(interval_s):
            poll()

    thread = threading.Thread(target=loop, name="clue-export-progress", daemon=True)
    thread.start()
    try:
        yield bar
    finally:
        stop.set()
        thread.join()
        poll()
        bar.close()
