"""Quiet runs: third-party logs go to a file in the run directory, not the terminal.

A local pipeline run prints dozens of lines nobody can act on (Beam worker
start-up notes, absl notes from TFX's resolver, TensorFlow's C++ banners,
Keras notes) on standard error. `quiet_stderr` sends the process's file
descriptor 2, which Beam's worker processes and TensorFlow's C++ logging
inherit and use, to ``<log_dir>/run-<time>.log`` while the block runs; what the
project itself tells the user (component lines, the summary) goes to standard
output and stays visible. Errors are not hidden: the exception propagates after
standard error is restored, and the caller prints it together with the log
path. ``verbose=True`` keeps everything on the terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from typing import Iterator, Optional


@contextlib.contextmanager
def quiet_stderr(log_dir: str, verbose: bool = False) -> Iterator[Optional[str]]:
    """Redirects fd 2 (and Python's ``sys.stderr``) to a new log file in ``log_dir``.

    Yields the log file's path, or None when ``verbose`` (nothing redirected).
    """
    if verbose:
        yield None
        return
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, time.strftime("run-%Y%m%d-%H%M%S.log"))
    sys.stderr.flush()
    saved_fd = os.dup(2)
    log_file = open(path, "a", encoding="utf-8", buffering=1)
    saved_stderr = sys.stderr
    try:
        os.dup2(log_file.fileno(), 2)
        sys.stderr = log_file
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # every warning once, into the log
            logging.captureWarnings(True)
            yield path
    finally:
        logging.captureWarnings(False)
        sys.stderr.flush()
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        sys.stderr = saved_stderr
        log_file.close()
