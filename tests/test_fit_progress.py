"""Progress a person can watch: `clue_keras.progress_bar.ProgressBar` and the downstream fits.

Outside a terminal the bar is plain lines (CI logs, Kubeflow), on a terminal a
tqdm bar. The downstream fitting's lines name the model and the epoch, and the
losses they print are the fit's own history (``ResultsTable.info["training"]``).
"""

import dataclasses
import io
import re

import pytest

import clue_tfrs  # noqa: F401  (Keras 2 for TFRS)

from clue_bench.evaluate import synthetic_task
from clue_keras.progress_bar import ProgressBar, format_duration, is_terminal
from clue_tfrs import evaluate as ev
from clue_tfrs import protocol


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_outside_a_terminal_one_per_line_every_and_a_last_one():
    out = io.StringIO()
    assert not is_terminal(out)
    with ProgressBar(None, desc="export", unit="users", stream=out, line_every=100) as bar:
        assert not bar.is_bar
        for _ in range(5):
            bar.update(64)                    # 64, 128, 192, 256, 320
    assert out.getvalue().splitlines() == [
        "export: users 128", "export: users 256", "export: users 320"]

    out = io.StringIO()
    bar = ProgressBar(3, desc="m", unit="epoch", stream=out)
    bar.update(1, "loss 1.0000")
    bar.write("a note")
    bar.update(2, "loss 0.5000")
    bar.close(summary="done")
    assert out.getvalue().splitlines() == [
        "m: epoch 1/3  loss 1.0000", "a note", "m: epoch 3/3  loss 0.5000", "done"]


def test_a_terminal_gets_a_tqdm_bar_and_line_every_0_leaves_lines_to_the_caller():
    tty = _Tty()
    bar = ProgressBar(4, desc="U-MLP (CLUE)", unit="epoch", stream=tty)
    assert bar.is_bar
    bar.update(1, "loss 0.7000")
    bar.write("above the bar")
    bar.close()
    text = tty.getvalue()
    assert "U-MLP (CLUE)" in text and "1/4" in text and "loss 0.7000" in text
    assert "above the bar\n" in text

    lines = []
    quiet = ProgressBar(10, stream=io.StringIO(), printer=lines.append, line_every=0)
    quiet.update(10)
    quiet.write("only this")
    quiet.close()
    assert lines == ["only this"]
    assert [format_duration(s) for s in (4, 185, 7620)] == ["4s", "3m05s", "2h07m"]


def test_downstream_fits_print_a_line_per_epoch_with_the_history_s_own_losses():
    """U-MLP fits with early stopping (a large learning rate overfits): every epoch a
    line ``<model>: epoch k/E  loss L  val_loss V``, the early stop, the kept epoch."""
    frame, catalogue, sets = synthetic_task(users=200, interactions=2400, items=300, topics=8,
                                            feature_dim=16)
    cfg = protocol.EvalConfig(umlp_width=16, umlp_learning_rate=0.1, patience=1, max_epochs=12,
                              run_sequence_models=False)
    out = io.StringIO()
    table = ev.evaluate_task(frame, catalogue, {"CLUE": sets["CLUE"]}, config=cfg,
                             progress=out)
    text = out.getvalue()
    column = "U-MLP (CLUE)"
    history = table.info["training"][column]
    used, best = table.info["epochs_used"][column], table.info["best_epoch"][column]
    assert 1 < used < 12, history  # stopped early

    pattern = re.compile(re.escape(column) + r": epoch (\d+)/12  loss ([\d.]+)  "
                         r"val_loss ([\d.]+)( \(best\))?$")
    epochs = [pattern.match(line) for line in text.splitlines() if pattern.match(line)]
    assert [int(m.group(1)) for m in epochs] == list(range(1, used + 1)), text
    assert [float(m.group(2)) for m in epochs] == pytest.approx(history["loss"], abs=6e-5)
    assert [float(m.group(3)) for m in epochs] == pytest.approx(history["val_loss"], abs=6e-5)
    # "(best)" marks the epochs that improved; the last one marked is the kept epoch.
    assert max(int(m.group(1)) for m in epochs if m.group(4)) == best
    assert f"{column}: early stop after epoch {used}/12" in text
    mrr = table.values[column]["MRR"]
    assert (f"{column}: kept epoch {best} of {used} (val_loss "
            f"{history['val_loss'][best - 1]:.4f}); test MRR {mrr:.4f}") in text
    assert "TopPop" not in text  # nothing to fit


def test_no_progress_stream_prints_nothing(capsys):
    frame, catalogue, sets = synthetic_task(users=120, interactions=900, items=300, topics=4,
                                            feature_dim=8)
    cfg = dataclasses.replace(protocol.EvalConfig(umlp_width=8, max_epochs=1),
                              run_sequence_models=False)
    ev.evaluate_task(frame, catalogue, {"CLUE": sets["CLUE"]}, config=cfg)
    assert "epoch" not in capsys.readouterr().out
