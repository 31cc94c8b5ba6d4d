"""The embedding export's progress: users embedded, counted by the Beam workers.

`clue_keras.embeddings.progress` carries counts from worker processes to the
process that shows them; the export's lines (no terminal here) end with the
number of users the manifest holds. The export test uses a stand-in model (a
fixed vector per user) so it needs no trained SavedModel.
"""

import io
import json
import os
import subprocess
import sys

import numpy as np

from clue_keras.embeddings import batch
from clue_keras.embeddings.progress import ProgressFile, read_new, watch
from clue_keras.progress_bar import ProgressBar

BEAM = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


def test_counts_from_other_processes_add_up_and_half_written_lines_wait(tmp_path):
    path = str(tmp_path / "count")
    code = ("import sys; from clue_keras.embeddings.progress import ProgressFile; "
            "p = ProgressFile(sys.argv[1]); [p.record(7) for _ in range(50)]; p.close()")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    procs = [subprocess.Popen([sys.executable, "-c", code, path], cwd=root) for _ in range(3)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    total, offset = read_new(path, 0)
    assert total == 3 * 50 * 7 and offset == os.path.getsize(path)

    with open(path, "ab") as f:
        f.write(b"12")                                   # a line still being written
    assert read_new(path, offset) == (0, offset)
    with open(path, "ab") as f:
        f.write(b"3\n")
    assert read_new(path, offset) == (123, offset + 4)
    assert read_new(str(tmp_path / "none"), 0) == (0, 0)  # nothing recorded yet


def test_watch_moves_the_bar_by_every_recorded_count_and_a_broken_path_is_harmless(tmp_path):
    out = io.StringIO()
    path = str(tmp_path / "count")
    bar = ProgressBar(None, desc="embedding", unit="users", stream=out, line_every=100)
    with watch(path, bar, interval_s=0.01):
        writer = ProgressFile(path)
        for _ in range(9):
            writer.record(32)
        writer.close()
    assert bar.n == 288
    lines = out.getvalue().splitlines()
    assert lines[-1] == "embedding: users 288"
    assert set(lines[:-1]) <= {"embedding: users 288", "embedding: users 256",
                               "embedding: users 224", "embedding: users 192",
                               "embedding: users 160", "embedding: users 128"}

    broken = ProgressFile(str(tmp_path / "no-such-dir" / "count"))
    broken.record(5)                                     # no error, nothing written
    broken.record(5)
    assert not os.path.exists(tmp_path / "no-such-dir")


class _FakeModel:
    """Stands in for the SavedModel: user i's vector is [number of non-empty texts, 1, 0]."""

    def __init__(self, model_dir, signature):
        def fn(item_texts):
            texts = item_texts.numpy()
            counts = np.array([[sum(bool(t) for t in row.reshape(-1)), 1.0, 0.0]
                               for row in texts], np.float32)
            import tensorflow as tf

            return {batch.OUTPUT_NAME: tf.constant(counts)}

        self.fn = fn


def test_export_prints_the_users_embedded_ending_at_the_manifest_count(tmp_path, monkeypatch,
                                                                        capsys):
    import clue_synth

    data = str(tmp_path / "data")
    clue_synth.generate(data, users=60, seed=2, tasks=())
    model = tmp_path / "model"
    (model / "assets").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"")
    (model / "assets" / "clue_vocab.json").write_text(
        json.dumps({"services": ["news", "search", "shopping"], "max_items": 4}))
    monkeypatch.setattr(batch, "_LoadedModel", _FakeModel)
    monkeypatch.setattr(batch, "PROGRESS_LINE_EVERY", 16)

    out = io.StringIO()
    manifest = batch.export_embeddings(str(model), data, str(tmp_path / "emb"), batch_size=8,
                                       beam_args=BEAM, progress=out)
    lines = out.getvalue().splitlines()
    assert manifest["count"] > 16
    assert lines[-1] == f"embedding: users {manifest['count']}"
    counts = [int(line.rsplit(" ", 1)[1]) for line in lines]
    assert counts == sorted(counts), lines       # how many lines on the way: timing

    capsys.readouterr()
    batch.export_embeddings(str(model), data, str(tmp_path / "emb2"), beam_args=BEAM)
    assert "embedding:" not in capsys.readouterr().out  # off unless asked for
