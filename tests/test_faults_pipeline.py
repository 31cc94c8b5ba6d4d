"""Faults of a local `clue run`, for real: kill -9 at every stage, a full serving
disk, a read-only serving directory, unreadable input.

Slow tests start `clue run` (tiny preset, in-memory Beam, a one-epoch evaluation
without sequence models) as a subprocess in its own process group, wait for a
stage by polling the pipeline root (bounded waits, no fixed sleeps), SIGKILL the
group and run the same command again. One root is reused across kill points
(ExampleGen, BehaviorPreprocess, training, evaluation, the push). The Pusher's
copy of a tiny model lasts milliseconds, so the run killed during the push has a
``sitecustomize`` on its PYTHONPATH that makes TFX's file copy sleep before each
file it copies into the serving directory (that process only).

Here tests run as root, for whom chmod stops nothing: a read-only serving
directory is a read-only tmpfs mount or, through ``setpriv``, a chmod-ed
directory seen by a process without CAP_DAC_OVERRIDE; a full disk is a small
tmpfs. Each of these is skipped, saying why, where it cannot be set up.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from clue_cli import main as cli
from tfx_pipeline import local_runner
from tfx_pipeline import pipeline as pl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Bound of every wait for one stage of one run (start-up included, 2 shared cores).
STAGE_TIMEOUT_S = 900
STEPS, EVERY = 120, 10
#: ``--no-lookup``: no EmbeddingExport / LookupPusher (the lookup model is pushed by a
#: second stock Pusher, the same copy as the encoder's), for shorter runs.
RUN_ARGS = ["--users", "150", "--preset", "tiny", "--train-steps", str(STEPS),
            "--batch-size", "16", "--checkpoint-every", str(EVERY),
            "--eval-epochs", "1", "--no-sequence-models", "--no-lookup",
            "--margin-over-toppop=-1", "--margin-over-untrained=-1",
            "--beam-arg=--direct_running_mode=in_memory", "--beam-arg=--direct_num_workers=1"]
#: A curated schema for every run: without one, the first run that completes keeps
#: the inferred schema in ROOT/schema and the next switches to ImportSchemaGen of
#: it, which would re-run everything after SchemaGen once.
SCHEMA = "".join(
    f'feature {{ name: "{name}" type: {kind} presence {{ min_fraction: 1.0 min_count: 1 }} }}\n'
    for name, kind in (("item_text", "BYTES"), ("service", "BYTES"), ("timestamp", "INT"),
                       ("user_id", "BYTES")))
UPSTREAM = [pl.EXAMPLE_GEN, pl.CATALOGUE_EXAMPLE_GEN, pl.TASK_EXAMPLE_GEN, pl.STATISTICS_GEN,
            pl.SCHEMA_GEN, pl.EXAMPLE_VALIDATOR]
#: The components killed, in order, on one ROOT by the `killed_runs` fixture.
KILLED = [pl.EXAMPLE_GEN, pl.BEHAVIOR_PREPROCESS, pl.TRAINER, pl.EVALUATOR, pl.PUSHER]
#: Seconds the slowed Pusher sleeps before copying each file into the serving directory.
SLOW_COPY_S = 1.0
#: Loaded at start-up by the process killed during the push (its PYTHONPATH only):
#: wraps ``tfx.dsl.io.fileio.copy`` (what ``io_utils.copy_dir`` / ``copy_file``, and
#: so the Pusher, copy with) once TFX imports it, to sleep before every copy whose
#: destination is under $CLUE_TEST_SLOW_COPY_DIR.
SLOW_COPY_SITECUSTOMIZE = """
import importlib.abc, importlib.util, os, sys, time

_UNDER = os.path.join(os.path.realpath(os.environ["CLUE_TEST_SLOW_COPY_DIR"]), "")
_SLEEP = float(os.environ["CLUE_TEST_SLOW_COPY_S"])


class _SlowCopy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "tfx.dsl.io.fileio":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            copy = module.copy

            def slow_copy(src, dst, *args, **kwargs):
                if os.path.realpath(str(dst)).startswith(_UNDER):
                    time.sleep(_SLEEP)
                return copy(src, dst, *args, **kwargs)

            module.copy = slow_copy

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _SlowCopy())
"""


# ---------------------------------------------------------------- helpers

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


def _clue_run(root):
    """The `clue run` command line of every run on ``root`` (the schema beside it)."""
    schema = os.path.join(os.path.dirname(str(root)), "schema.pbtxt")
    if not os.path.exists(schema):
        with open(schema, "w") as f:
            f.write(SCHEMA)
    return [sys.executable, "-m", "clue_cli.main", "run", "--root", str(root),
            "--schema", schema, *RUN_ARGS]


class Run:
    """`clue run` in a subprocess of its own process group, output to a log file."""

    def __init__(self, root, log, *extra, env=None):
        self.log = str(log)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
        argv = _clue_run(root) + list(extra)
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def text(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def wait_for(self, predicate, what):
        """Polls ``predicate`` until truthy (bounded); fails if the run ends first."""
        def ready():
            value = predicate()
            if not value and self.proc.poll() is not None:
                raise AssertionError(f"clue run ended (rc {self.proc.returncode}) before "
                                     f"{what}:\n{self.text()[-3000:]}")
            return value
        return wait_until(ready, STAGE_TIMEOUT_S, what)

    def kill(self):
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)

    def finish(self):
        try:
            self.proc.wait(timeout=STAGE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return self.proc.returncode


def _executions(metadata_path):
    """[(execution id, component id, state name)] in order of creation."""
    from ml_metadata.proto import metadata_store_pb2 as pb

    from tfx_pipeline.mlmd_query import node_ids, open_store

    store = open_store(metadata_path)
    node_of = node_ids(store, "clue")
    return [(ex.id, node_of.get(ex.id), pb.Execution.State.Name(ex.last_known_state))
            for ex in sorted(store.get_executions(), key=lambda e: e.id)]


def _newest_state(metadata_path, component):
    return [s for _, c, s in _executions(metadata_path) if c == component][-1]


def _input_uris(metadata_path, component, key):
    """URIs of ``key`` inputs of every execution of ``component``."""
    from ml_metadata.proto import metadata_store_pb2 as pb

    from tfx_pipeline.mlmd_query import open_store

    store = open_store(metadata_path)
    ids = [i for i, c, _ in _executions(metadata_path) if c == component]
    events = [e for e in store.get_events_by_execution_ids(ids)
              if e.type == pb.Event.INPUT and e.path.steps[0].key == key]
    return {a.uri for a in store.get_artifacts_by_id([e.artifact_id for e in events])}


def _variables(saved_model_dir):
    reader = tf.train.load_checkpoint(os.path.join(saved_model_dir, "variables", "variables"))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if not k.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")}


def _assert_same_weights(a_dir, b_dir):
    a, b = _variables(a_dir), _variables(b_dir)
    assert sorted(a) == sorted(b) and len(a) > 5
    for name in a:
        if a[name].dtype.kind in "fc":
            np.testing.assert_allclose(a[name], b[name], atol=1e-5, err_msg=name)
        else:  # ints, and strings (e.g. the tokenizer's table)
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _listing(path):
    return sorted((os.path.relpath(os.path.join(r, n), path),
                   os.path.getsize(os.path.join(r, n)))
                  for r, _, names in os.walk(path) for n in names)


def _uninterrupted_trainer(metadata_path, out_dir):
    """The Trainer of the completed run, again, uninterrupted and in another directory:
    ``run_fn`` with the same ``custom_config`` on the same examples; returns the
    serving SavedModel directory it exported."""
    from tfx.components.trainer.fn_args_utils import FnArgs

    from tfx_pipeline.mlmd_query import custom_properties, open_store
    from tfx_pipeline.trainer_module import run_fn

    (trainer,) = [i for i, c, s in _executions(metadata_path)
                  if c == pl.TRAINER and s == "COMPLETE"]
    ex = open_store(metadata_path).get_executions_by_id([trainer])[0]
    (examples,) = _input_uris(metadata_path, pl.TRAINER, "examples")
    serving = os.path.join(out_dir, "model", "Format-Serving")
    run_fn(FnArgs(train_files=[os.path.join(examples, "Split-train", "*")],
                  eval_files=[os.path.join(examples, "Split-eval", "*")],
                  model_run_dir=os.path.join(out_dir, "Trainer", "model_run", "1"),
                  serving_model_dir=serving,
                  custom_config=json.loads(custom_properties(ex)["custom_config"])))
    return serving


def _slow_push_env(base, serving):
    """Environment of a `clue run` whose Pusher sleeps before each file it copies."""
    site = base / "slow_push_site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SLOW_COPY_SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "CLUE_TEST_SLOW_COPY_DIR": str(serving),
            "CLUE_TEST_SLOW_COPY_S": str(SLOW_COPY_S)}


def _partial_version(serving):
    """A version directory in ``serving`` with some files copied and no saved_model.pb."""
    for version in sorted(glob.glob(f"{serving}/[0-9]*")):
        if _listing(version) and not os.path.exists(os.path.join(version, "saved_model.pb")):
            return version
    return None


def _lock_pid(lock):
    try:
        return json.loads(lock.read_text()).get("pid")
    except (OSError, ValueError):
        return None


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory):
    """One ROOT: `clue run` killed during ExampleGen, during BehaviorPreprocess, during
    training (after its first checkpoint), during evaluation, during the push (a
    version directory half-copied); then the same command to the end. Returns what
    each step saw, for the tests below to check."""
    from clue_keras.serving.version_dirs import incomplete_reason

    base = tmp_path_factory.mktemp("faults")
    root = base / "runs"
    meta = str(root / "metadata" / "metadata.db")
    p = root / "pipeline"
    seen = {"root": root, "meta": meta, "base": base}

    # 0. Killed during ExampleGen (its output directory exists, i.e. it runs).
    run = Run(root, base / "run0.log")
    (orphan,) = run.wait_for(lambda: glob.glob(f"{p}/{pl.EXAMPLE_GEN}/examples/*"),
                             "ExampleGen to start")
    run.kill()
    seen["example_gen_orphan"] = orphan
    seen["after_kill0"] = _executions(meta)

    # 1. Killed during BehaviorPreprocess (its output directory exists, i.e. it runs).
    run = Run(root, base / "run1.log")
    lock = root / ".clue-run.lock"
    run.wait_for(lambda: _lock_pid(lock) == run.proc.pid, "the run lock")
    second = subprocess.run(_clue_run(root), cwd=REPO, capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    seen["second"] = (second.returncode, second.stderr, run.proc.pid)
    (orphan,) = run.wait_for(lambda: glob.glob(f"{p}/{pl.BEHAVIOR_PREPROCESS}/user_examples/*"),
                             "BehaviorPreprocess to start")
    run.kill()
    seen["preprocess_orphan"] = orphan
    seen["after_kill1"] = _executions(meta)

    # 2. Killed in training, once the first checkpoint is in the resumable directory.
    run = Run(root, base / "run2.log")
    (index,) = run.wait_for(
        lambda: glob.glob(f"{p}/{pl.TRAINER}/resumable/*/checkpoints/checkpoint"),
        "the Trainer's first checkpoint")
    run.kill()
    seen["checkpoint_at_kill"] = tf.train.latest_checkpoint(os.path.dirname(index))
    seen["resumable"] = os.path.dirname(os.path.dirname(index))
    seen["after_kill2"] = _executions(meta)

    # 3. Killed during evaluation.
    run = Run(root, base / "run3.log")
    (evaluation,) = run.wait_for(lambda: glob.glob(f"{p}/{pl.EVALUATOR}/evaluation/*"),
                                 "the Evaluator to start")
    run.kill()
    seen["evaluation_orphan"] = evaluation
    seen["after_kill3"] = _executions(meta)
    seen["resumable_after_training"] = os.path.exists(seen["resumable"])

    # 4. Killed during the push, with a version directory half-copied (slowed copy).
    serving = root / "serving"
    run = Run(root, base / "run4.log", env=_slow_push_env(base, serving))
    partial = run.wait_for(lambda: _partial_version(serving), "a half-copied version")
    run.kill()
    seen["push_orphan"] = partial
    seen["push_orphan_why"] = incomplete_reason(partial)
    seen["after_kill4"] = _executions(meta)

    # 5. The same command, to the end.
    run = Run(root, base / "run5.log")
    assert run.finish() == 0, run.text()[-5000:]
    seen["out"] = run.text()
    seen["summary"] = local_runner.summarize(meta, "clue")
    return seen


# ---------------------------------------------------------------- kill -9, then again

@pytest.mark.slow
def test_a_second_run_on_the_same_root_is_refused_at_once(killed_runs):
    rc, err, first_pid = killed_runs["second"]
    assert rc == 2
    assert f"clue run: another clue run (pid {first_pid}, started " in err
    assert f"is using {killed_runs['root']}; wait for it or use another --root" in err


@pytest.mark.slow
def test_kill_9_leaves_the_execution_running_and_the_rerun_never_reads_its_outputs(
        killed_runs):
    meta = killed_runs["meta"]
    # What LocalDagRunner leaves: the killed component's execution stays RUNNING in
    # MLMD (nothing marks it), its half-written directory stays on disk, and no
    # output artifact of it is registered; everything before it is COMPLETE.
    for k in range(len(KILLED)):
        states = killed_runs[f"after_kill{k}"]
        assert states[-1][1:] == (KILLED[k], "RUNNING"), states
        assert [c for _, c, s in states if s == "RUNNING"] == KILLED[:k + 1], states
        assert {s for _, _, s in states} <= {"RUNNING", "COMPLETE", "CACHED"}, states
    final = _executions(meta)
    assert [c for _, c, s in final if s == "RUNNING"] == KILLED  # the orphans stay so

    # The re-run: components done before a kill come from the cache, the killed one
    # runs again in new directories, and nothing reads an orphan's directory.
    summary = killed_runs["summary"]
    assert summary.executions == {**{c: "CACHED" for c in UPSTREAM},
                                  pl.BEHAVIOR_PREPROCESS: "CACHED", pl.TRAINER: "CACHED",
                                  pl.EVALUATOR: "CACHED", pl.PUSHER: "COMPLETE"}
    for component, key, orphan in (
            (pl.STATISTICS_GEN, "examples", killed_runs["example_gen_orphan"]),
            (pl.BEHAVIOR_PREPROCESS, "examples", killed_runs["example_gen_orphan"]),
            (pl.TRAINER, "examples", killed_runs["preprocess_orphan"]),
            (pl.EVALUATOR, "user_examples", killed_runs["preprocess_orphan"])):
        uris = _input_uris(meta, component, key)
        assert uris and orphan not in uris, (component, key)
    assert killed_runs["evaluation_orphan"] != summary.evaluation_uri
    assert summary.blessed is True and summary.pushed_to
    assert os.listdir(os.path.dirname(summary.pushed_to)) == [
        os.path.basename(summary.pushed_to)]


@pytest.mark.slow
def test_a_push_killed_half_way_is_removed_named_and_pushed_again_whole(killed_runs):
    """kill -9 during the Pusher's copy (slowed down in that process): the version
    directory it left is not a whole SavedModel; the next run removes it, names it,
    re-runs only the Pusher, and the model it pushes is whole and equal, file for
    file, to the Trainer's serving model."""
    from clue_keras.serving.version_dirs import incomplete_reason

    partial = killed_runs["push_orphan"]
    assert killed_runs["push_orphan_why"]  # killed mid-copy: not a whole SavedModel
    assert not os.path.exists(partial)
    assert f"removed {partial}: an interrupted push left it half-copied" in killed_runs["out"]
    summary = killed_runs["summary"]
    assert [c for c, s in summary.executions.items() if s != "CACHED"] == [pl.PUSHER]
    assert summary.pushed_to != partial and incomplete_reason(summary.pushed_to) is None
    trained = os.path.join(summary.model_uri, "Format-Serving")
    assert _listing(summary.pushed_to) == _listing(trained)
    for name, _ in _listing(trained):
        with open(os.path.join(trained, name), "rb") as a, \
                open(os.path.join(summary.pushed_to, name), "rb") as b:
            assert a.read() == b.read(), name


@pytest.mark.slow
def test_the_killed_trainer_resumes_from_its_checkpoint_to_the_same_weights(
        killed_runs, tmp_path):
    """Checkpoints live in Trainer/resumable/<key>; the retry found them, resumed, and
    the pushed model equals an uninterrupted Trainer's on the same examples."""
    step = int(killed_runs["checkpoint_at_kill"].rsplit("-", 1)[1])
    assert 0 < step < STEPS and step % EVERY == 0
    summary = killed_runs["summary"]
    t = summary.train_result
    assert t["resumed_from_step"] == step and t["steps"] == STEPS
    run_dir = os.path.join(os.path.dirname(os.path.dirname(summary.model_uri)), "model_run",
                           os.path.basename(summary.model_uri))
    with open(os.path.join(run_dir, "resume_key.json")) as f:
        key = json.load(f)
    assert key["key"] == os.path.basename(killed_runs["resumable"])
    assert set(os.listdir(run_dir)) >= {"checkpoints", "logs", "pretrainer.keras",
                                        "train_result.json"}
    assert not killed_runs["resumable_after_training"]  # moved into model_run when done

    reference = _uninterrupted_trainer(killed_runs["meta"], str(tmp_path))
    _assert_same_weights(summary.pushed_to, reference)


# ---------------------------------------------------------------- a full serving disk

def _mount_tmpfs(path, kib):
    os.makedirs(path, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(path)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): no full-disk test")


def _umount(path):
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


@pytest.mark.slow
def test_a_full_serving_disk_fails_the_push_naming_it_and_keeps_the_previous_model(
        killed_runs):
    """The serving directory on a tmpfs that holds the previous model and less than
    another: the Pusher fails with ENOSPC, the CLI names the Pusher and the
    directory, the half-copied version is removed, the previous model is untouched
    and the Trainer's outputs are still cached; with room again only the Pusher runs."""
    from clue_keras.serving.version_dirs import incomplete_reason

    pushed = killed_runs["summary"].pushed_to
    pages = sum(-(-size // 4096) for _, size in _listing(pushed))
    disk = killed_runs["base"] / "full"
    _mount_tmpfs(disk, 4 * (pages + pages // 2))
    try:
        serving = disk / "serving"
        shutil.copytree(pushed, serving / "1")
        before = _listing(serving / "1")
        root, meta = killed_runs["root"], killed_runs["meta"]

        run = Run(root, killed_runs["base"] / "full_disk.log", "--serving-dir", str(serving))
        assert run.finish() != 0
        out = run.text()
        assert f"clue run: {pl.PUSHER} failed: " in out
        assert "No space left on device" in out or "ResourceExhausted" in out, out[-3000:]
        assert f"removed {serving}/" in out and "an interrupted push left it half-copied" in out
        assert os.listdir(serving) == ["1"] and _listing(serving / "1") == before
        summary = local_runner.summarize(meta, "clue")
        assert summary.executions[pl.PUSHER] == "FAILED"
        assert summary.executions[pl.TRAINER] == summary.executions[pl.EVALUATOR] == "CACHED"

        subprocess.run(["mount", "-o", f"remount,size={8 * (pages + 64)}k", str(disk)],
                       check=True, timeout=30)
        # What a kill -9 in the middle of a copy leaves (a real one is in killed_runs;
        # here it is laid out by hand): variables copied, no saved_model.pb yet.
        partial = serving / str(int(time.time()))
        shutil.copytree(os.path.join(pushed, "variables"), partial / "variables")
        run = Run(root, killed_runs["base"] / "room_again.log", "--serving-dir", str(serving))
        assert run.finish() == 0, run.text()[-3000:]
        assert f"removed {partial}: an interrupted push left it half-copied" in run.text()
        summary = local_runner.summarize(meta, "clue")
        assert summary.executions == {**{c: "CACHED" for c in summary.executions},
                                      pl.PUSHER: "COMPLETE"}
        assert os.path.dirname(summary.pushed_to) == str(serving)
        assert sorted(os.listdir(serving)) == ["1", os.path.basename(summary.pushed_to)]
        assert incomplete_reason(summary.pushed_to) is None
        _assert_same_weights(summary.pushed_to, pushed)
        assert _listing(serving / "1") == before
    finally:
        _umount(disk)


# ---------------------------------------------------------------- before anything runs

def _small_inputs(tmp_path):
    """Hand-written logs and a task: `clue run` checks them in a second."""
    logs = tmp_path / "logs" / "export.csv"
    logs.parent.mkdir()
    rows = ["user_id,service,timestamp,item_text"] + [
        f"user{u},{s},{1_600_000_000 + 10 * u + i},item {u % 5} {s} {i}"
        for u in range(12) for i, s in enumerate(("news", "shop", "news", "shop"))]
    logs.write_text("\n".join(rows) + "\n")
    task = tmp_path / "task" / "clicks.csv"
    task.parent.mkdir()
    task.write_text("user_id,item_id,timestamp,item_text\n" + "".join(
        f"user{u},i{u % 4},{100 + u},film {u % 4}\n" for u in range(12)))
    return logs, task


def _previous_model(serving):
    """A previously pushed version (its files only matter: they must stay as they are)."""
    version = serving / "1700000000"
    (version / "variables").mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"pb")
    (version / "variables" / "variables.index").write_bytes(b"index")
    return version


def _argv(tmp_path, logs, task, serving):
    return ["run", "--root", str(tmp_path / "root"), "--data", str(logs.parent),
            "--task", str(task), "--serving-dir", str(serving)]


def _setpriv_without_dac():
    """The command prefix that runs a process as root without CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH (so file modes apply to it), or None where it cannot."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0:
        return []  # file modes apply already
    if not setpriv:
        return None
    prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search",
              "--inh-caps=-dac_override,-dac_read_search"]
    probe = subprocess.run(prefix + ["true"], capture_output=True, timeout=30)
    return prefix if probe.returncode == 0 else None


def _run_cli_as(prefix, argv):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(prefix + [sys.executable, "-m", "clue_cli.main", *argv], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("how", ["under_a_file", "read_only_mount", "chmod_555"])
def test_a_serving_dir_that_cannot_be_written_stops_the_run_before_it_starts(tmp_path, capsys,
                                                                             how):
    """... naming the directory and the reason; the model pushed before is untouched."""
    logs, task = _small_inputs(tmp_path)
    serving = tmp_path / "serving"
    argv = _argv(tmp_path, logs, task, serving)
    if how == "under_a_file":
        (tmp_path / "file").write_text("not a directory")
        serving = tmp_path / "file" / "serving"
        argv = _argv(tmp_path, logs, task, serving)
        rc, err = cli.main(argv), capsys.readouterr().err
        expected = f"{serving}: {tmp_path / 'file'} is not a directory"
    elif how == "read_only_mount":
        _mount_tmpfs(serving, 256)
        try:
            previous = _previous_model(serving)
            before = _listing(previous)
            subprocess.run(["mount", "-o", "remount,ro", str(serving)], check=True, timeout=30)
            rc, err = cli.main(argv), capsys.readouterr().err
            assert _listing(previous) == before
        finally:
            _umount(serving)
        expected = f"{serving}: Read-only file system ({serving})"
    else:
        prefix = _setpriv_without_dac()
        if prefix is None:
            pytest.skip("running as root without setpriv: chmod cannot stop root's writes")
        previous = _previous_model(serving)
        before = _listing(previous)
        os.chmod(serving, 0o555)
        try:
            done = _run_cli_as(prefix, argv)
        finally:
            os.chmod(serving, 0o755)
        rc, err = done.returncode, done.stderr
        assert _listing(previous) == before
        expected = f"{serving}: Permission denied ({serving})"
    assert rc == 2, err
    assert f"clue run: cannot write to the serving directory {expected}" in err, err
    assert not (tmp_path / "root" / "metadata" / "metadata.db").exists()  # nothing ran


@pytest.mark.parametrize("how", ["chmod_000", "a_directory", "a_dangling_link"])
def test_an_unreadable_log_file_stops_the_run_naming_it(tmp_path, capsys, how):
    logs, task = _small_inputs(tmp_path)
    serving = tmp_path / "serving"
    previous = _previous_model(serving)
    before = _listing(previous)
    bad = logs.parent / "more.csv"
    argv = _argv(tmp_path, logs, task, serving)
    if how == "chmod_000":
        prefix = _setpriv_without_dac()
        if prefix is None:
            pytest.skip("running as root without setpriv: chmod cannot stop root's reads")
        shutil.copy(logs, bad)
        os.chmod(bad, 0)
        done = _run_cli_as(prefix, argv)
        rc, err, reason = done.returncode, done.stderr, "Permission denied"
    else:
        if how == "a_directory":
            bad.mkdir()
            reason = "Is a directory"
        else:
            bad.symlink_to(tmp_path / "gone.csv")
            reason = "No such file or directory"
        rc, err = cli.main(argv), capsys.readouterr().err
    assert rc == 2, err
    assert "clue run: the behaviour logs cannot go through the pipeline" in err
    assert f"{reason}: '{bad}'" in err, err
    assert _listing(previous) == before
    assert not (tmp_path / "root" / "metadata" / "metadata.db").exists()


def test_the_resume_key_names_inputs_and_settings_and_publishing_is_one_rename(tmp_path):
    from tfx_pipeline.trainer_resume import KEY_FILE, publish_run, resumable_dir, resume_key

    files, cc = ["/r/BehaviorPreprocess/user_examples/5/Split-train/*"], {"train": {"seed": 0}}
    key = resume_key(files, cc, "float32")
    assert key == resume_key(list(files), json.loads(json.dumps(cc)), "float32")
    assert len({key["key"], resume_key(["/r/other/Split-train/*"], cc, "float32")["key"],
                resume_key(files, {"train": {"seed": 1}}, "float32")["key"],
                resume_key(files, cc, "mixed_float16")["key"]}) == 4
    run_dir = tmp_path / "Trainer" / "model_run" / "7"
    run_dir.mkdir(parents=True)  # as TFX pre-creates it
    work = resumable_dir(str(run_dir), key)
    assert work == str(tmp_path / "Trainer" / "resumable" / key["key"])
    with open(os.path.join(work, KEY_FILE)) as f:
        assert json.load(f) == key
    (tmp_path / "Trainer" / "resumable" / key["key"] / "train_result.json").write_text("{}")
    assert publish_run(work, str(run_dir)) == str(run_dir)
    assert not os.path.exists(work)
    assert sorted(os.listdir(run_dir)) == [KEY_FILE, "train_result.json"]
    again = resumable_dir(str(run_dir), key)
    with pytest.raises(OSError):  # a published run is never replaced
        publish_run(again, str(run_dir))
    assert os.path.isdir(again) and sorted(os.listdir(run_dir)) == [KEY_FILE,
                                                                   "train_result.json"]
