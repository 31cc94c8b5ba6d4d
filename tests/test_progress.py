"""Live component lines read from MLMD, and quiet runs that keep third-party
output in a log file."""

import io
import os
import subprocess
import sys

from tfx_pipeline.progress import ComponentProgress
from tfx_pipeline.run_log import quiet_stderr

BEAM_IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


def _run_example_gen(tmp_path, stream):
    from tfx import v1 as tfx

    data = tmp_path / "data"
    if not data.exists():  # rewriting would change the input fingerprint
        data.mkdir()
        (data / "rows.csv").write_text("user_id,x\n1,2\n3,4\n")
    metadata_path = str(tmp_path / "m.db")
    gen = tfx.components.CsvExampleGen(input_base=str(data)).with_id("Gen")
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="p", pipeline_root=str(tmp_path / "root"), components=[gen],
        enable_cache=True, beam_pipeline_args=BEAM_IN_MEMORY,
        metadata_connection_config=tfx.orchestration.metadata
        .sqlite_metadata_connection_config(metadata_path))
    with ComponentProgress(metadata_path, "p", stream=stream, interval_s=0.2) as progress:
        tfx.orchestration.LocalDagRunner().run(pipeline)
    return progress.lines


def test_component_lines_say_executed_then_cached(tmp_path):
    out = io.StringIO()
    first = _run_example_gen(tmp_path, out)
    assert [line for line in first if line.startswith("[Gen] ")][-1].startswith("[Gen] done in ")
    assert sum("[Gen] done" in line for line in first) == 1  # one line per event, not per poll
    second = _run_example_gen(tmp_path, out)
    assert len(second) == 1 and second[0].startswith("[Gen] cached in "), second
    assert out.getvalue().count("\n") == len(first) + len(second)


def test_quiet_stderr_sends_fd2_of_this_and_child_processes_to_the_log(tmp_path, capfd):
    with quiet_stderr(str(tmp_path / "logs")) as path:
        os.write(2, b"native noise\n")
        print("python noise", file=sys.stderr)
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('child noise\\n')"],
                       check=True)
        print("for the user")
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == "for the user\n"
    text = open(path, encoding="utf-8").read()
    assert all(s in text for s in ("native noise", "python noise", "child noise"))
    os.write(2, b"after\n")  # restored
    assert capfd.readouterr().err == "after\n"


def test_quiet_stderr_restores_on_error_and_verbose_redirects_nothing(tmp_path, capfd):
    try:
        with quiet_stderr(str(tmp_path / "logs")):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    os.write(2, b"visible\n")
    assert capfd.readouterr().err == "visible\n"
    with quiet_stderr(str(tmp_path / "v"), verbose=True) as path:
        os.write(2, b"loud\n")
    assert path is None and capfd.readouterr().err == "loud\n"
    assert not (tmp_path / "v").exists()
