"""Stopping the real subprocesses the tests start (``clue serve`` and the like)."""

import signal
import subprocess


def stop(proc: subprocess.Popen, timeout: float = 60) -> int:
    """SIGTERM, as a scheduler would; wait up to ``timeout`` seconds, then kill.
    Returns the exit code (negative: the signal that ended it)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def kill(proc: subprocess.Popen) -> None:
    """Kill ``proc`` if it still runs (a test's ``finally``)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
