"""One `clue run` per ROOT: ``ROOT/.clue-run.lock`` (tfx_pipeline.run_lock), with real
processes. A second run stops at once naming the holder, or waits with
--wait-for-lock; the kernel drops the lock of a killed holder.

No TensorFlow here: the holder is a small Python process, and the `clue run`
under test stops at its (cheap) log check right after taking the lock."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tfx_pipeline.run_lock import LOCK_FILE, RunLockBusy, run_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 60  # any one process here (start-up included, 2 shared cores)


def wait_until(predicate, timeout_s, what):
    """Polls ``predicate`` until truthy and returns its value (a bounded wait)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)

HOLDER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {repo!r})
    from tfx_pipeline.run_lock import run_lock
    with run_lock({root!r}):
        open({ready!r}, "w").close()
        deadline = time.monotonic() + {timeout}
        while not os.path.exists({release!r}) and time.monotonic() < deadline:
            time.sleep(0.05)
""")


def _hold(tmp_path, root):
    """Starts a process that holds ROOT's lock until ``release`` exists; returns
    (process, release path) once it holds it."""
    ready, release = tmp_path / "ready", tmp_path / "release"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(
        repo=REPO, root=str(root), ready=str(ready), release=str(release), timeout=TIMEOUT_S)])
    wait_until(lambda: ready.exists() or proc.poll() is not None, TIMEOUT_S, "the holder")
    assert proc.poll() is None, "the lock holder exited early"
    return proc, release


def _bad_logs(tmp_path):
    """Logs `clue run` refuses in its log check (a missing column): a run that got
    the lock stops there, in a second, exit status 2."""
    data = tmp_path / "logs"
    data.mkdir()
    (data / "export.csv").write_text("user_id,service,timestamp\nu1,news,1\n")
    return data


def _clue_run(root, data, *extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, "-m", "clue_cli.main", "run", "--root", str(root),
                             "--data", str(data), "--no-evaluate", *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    root = tmp_path / "root"
    proc, release = _hold(tmp_path, root)
    try:
        with pytest.raises(RunLockBusy) as err:
            with run_lock(str(root)):
                pass
        assert f"another clue run (pid {proc.pid}, started 20" in str(err.value)
        assert str(err.value).endswith(f") is using {root}; wait for it or use another --root")
        with pytest.raises(RunLockBusy):  # a bounded wait gives up too
            with run_lock(str(root), wait=True, timeout_s=0.3, poll_s=0.05):
                pass
    finally:
        release.touch()
        proc.wait(timeout=TIMEOUT_S)
    with run_lock(str(root)) as me:  # free again once the holder ended
        assert me["pid"] == os.getpid()
    assert (root / LOCK_FILE).read_text() == ""  # emptied on release


def test_the_lock_of_a_killed_holder_is_free_at_once(tmp_path):
    root = tmp_path / "root"
    proc, _ = _hold(tmp_path, root)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=TIMEOUT_S)
    with run_lock(str(root)) as me:
        assert me["pid"] == os.getpid()


def test_clue_run_refuses_a_busy_root_at_once_and_waits_with_wait_for_lock(tmp_path):
    root, data = tmp_path / "root", _bad_logs(tmp_path)
    proc, release = _hold(tmp_path, root)
    try:
        refused = _clue_run(root, data)
        out, err = refused.communicate(timeout=TIMEOUT_S)
        assert refused.returncode == 2, err
        assert f"clue run: another clue run (pid {proc.pid}, started " in err
        assert f"is using {root}; wait for it or use another --root" in err
        assert "cannot go through the pipeline" not in err  # it did not start

        waiting = _clue_run(root, data, "--wait-for-lock")
        try:
            line = waiting.stdout.readline()  # bounded: the holder lets go after TIMEOUT_S
            assert line.startswith(f"waiting for the clue run (pid {proc.pid}, started ")
            assert f"using {root} to finish" in line
            assert waiting.poll() is None  # still waiting while the holder holds it
        finally:
            release.touch()
        out, err = waiting.communicate(timeout=TIMEOUT_S)
        assert waiting.returncode == 2  # it ran once the lock was free: the log check
        assert "the behaviour logs cannot go through the pipeline" in err
        assert "item_text" in err
    finally:
        release.touch()
        proc.wait(timeout=TIMEOUT_S)
