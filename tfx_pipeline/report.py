"""The run report: one self-contained HTML file per `clue run`.

`write_report(summary, config, out_dir)` reads what the run recorded (MLMD
through `RunSummary`, the Trainer's ``train_result.json`` with its full
history, the Evaluator's ``results.md`` / ``results.png``) and writes
``<out_dir>/<run id>.html``: the components with their state and time, the
data summary (users, services, items per user, dropped rows), training curves
(loss, held-out loss, logit scale, tokens/s), the downstream table and its
chart, the blessing decision with its evidence, and where the model was
pushed. Images are embedded as ``data:`` URIs, so the file can be mailed or
attached to a ticket on its own.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import time
from typing import Any, Dict, List, Optional

from clue_keras.atomic import write_text_atomic

_CSS = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
        "padding:.2em .6em;text-align:right}th{background:#f4f4f4}"
        "td:first-child,th:first-child{text-align:left}.bad{color:#b00}.good{color:#070}"
        "img{max-width:100%}code{background:#f4f4f4;padding:0 .2em}")


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _table(header: List[str], rows: List[List[Any]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: Optional[bytes], alt: str) -> str:
    return f'<p><img alt="{_esc(alt)}" src="{_png_data_uri(png)}"></p>' if png else ""


def training_curves_png(history: List[Dict[str, Any]]) -> Optional[bytes]:
    """Loss (and held-out loss), logit scale and tokens/s against the step, as PNG."""
    rows = sorted((h for h in history if "step" in h), key=lambda h: h["step"])
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    windows = [h for h in rows if h.get("loss") is not None]  # training windows
    train = [(h["step"], h["loss"]) for h in rows if h.get("loss") is not None]
    held = [(h["step"], h["eval_loss"]) for h in rows if h.get("eval_loss") is not None]
    if train:
        axes[0].plot(*zip(*train), label="training")
    if held:
        axes[0].plot(*zip(*held), marker="o", label="held-out")
    axes[0].set_title("contrastive loss")
    axes[0].legend()
    axes[1].plot([h["step"] for h in windows], [h.get("logit_scale", float("nan")) for h in windows])
    axes[1].set_title("logit scale")
    axes[2].plot([h["step"] for h in windows], [h.get("tokens_per_s", float("nan")) for h in windows])
    axes[2].set_title("non-padding tokens/s")
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _read(path: str, binary: bool = False):
    """A file's bytes (``binary``) or UTF-8 text; None when absent. Any
    ``tf.io.gfile`` path (a gs:// pipeline root)."""
    from tfx.dsl.io import fileio

    if not path or not fileio.exists(path):
        return None
    with fileio.open(path, "rb") as f:
        data = f.read()
    return data if binary else data.decode("utf-8")


def _markdown_table_html(markdown: str) -> str:
    """A GitHub-style Markdown table (results.md) as an HTML table; other lines as text."""
    rows, out = [], []
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                rows.append(cells)
        elif line.strip():
            out.append(f"<p>{_esc(line)}</p>")
    table = _table(rows[0], rows[1:]) if rows else ""
    return table + "".join(out)


def _data_section(stats: Dict[str, Any]) -> str:
    if not stats:
        return "<p>BehaviorPreprocess did not run.</p>"
    rows = [[k.replace("_", " "), f"{v:,}" if isinstance(v, int) else v]
            for k, v in sorted(stats.items())
            if k.startswith(("rows_", "users_", "items_")) and v not in (None, "")]
    per_user = [f"{split}: {stats[f'items_{split}'] / stats[f'users_{split}']:.1f}"
                for split in ("train", "eval", "test")
                if stats.get(f"items_{split}") and stats.get(f"users_{split}")]
    return (f"<p>Services: <code>{_esc(stats.get('services', '?'))}</code>."
            + (f" Items per kept user ({', '.join(per_user)}).</p>" if per_user else "</p>")
            + _table(["count", "value"], rows))


def _training_section(summary, history: List[Dict[str, Any]]) -> str:
    t = summary.train_result
    if not t:
        return "<p>The Trainer did not run.</p>"
    facts = [["parameters", f"{t.get('num_params', 0):,}"], ["steps", t.get("steps")],
             ["final training loss", f"{t.get('final_loss', float('nan')):.4f}"],
             ["strategy", f"{t.get('strategy') or 'default'} on {t.get('replicas', 1)} replica(s)"],
             ["precision policy", t.get("precision")]]
    if t.get("eval_loss") is not None:
        facts.append(["held-out loss", f"{t['eval_loss']:.4f}"])
    for key in ("best_step", "best_eval_loss", "stopped_early", "resumed_from_step"):
        if t.get(key) not in (None, 0, False):
            facts.append([key.replace("_", " "), t[key]])
    out = _table(["", ""], facts) + _img(training_curves_png(history), "training curves")
    if summary.model_run_uri:
        out += (f"<p>TensorBoard: <code>tensorboard --logdir "
                f"{_esc(os.path.join(summary.model_run_uri, 'logs'))}</code></p>")
    return out


def _evaluation_section(summary) -> str:
    if summary.blessed is None and not summary.evaluation_uri:
        return "<p>No Evaluator in this run, so no blessing and no push.</p>"
    out = ""
    if summary.evaluation_table:
        out += _markdown_table_html(summary.evaluation_table)
    if summary.evaluation_uri:
        out += _img(_read(os.path.join(summary.evaluation_uri, "results.png"), binary=True),
                    "downstream results")
    verdict = {True: ('good', 'BLESSED'), False: ('bad', 'NOT BLESSED')}.get(summary.blessed)
    if verdict:
        out += (f'<p class="{verdict[0]}"><b>{verdict[1]}</b>: '
                f"{_esc(summary.blessing_reason or 'no reason recorded')}</p>")
    out += (f"<p>Pushed to <code>{_esc(summary.pushed_to)}</code>.</p>" if summary.pushed_to
            else "<p>Nothing was pushed.</p>")
    if getattr(summary, "lookup_pushed_to", None):
        out += (f"<p>User-id lookup model ({summary.lookup_users} users) pushed to "
                f"<code>{_esc(summary.lookup_pushed_to)}</code>.</p>")
    return out


def render_report(summary, config=None) -> str:
    """The report's HTML text for a `RunSummary` (and the run's `PipelineConfig`)."""
    history: List[Dict[str, Any]] = []
    if summary.model_run_uri:
        raw = _read(os.path.join(summary.model_run_uri, "train_result.json"))
        if raw:
            history = json.loads(raw).get("history") or []
    states = {"COMPLETE": "executed", "CACHED": "reused from cache"}
    components = [[name, states.get(state, state), f"{summary.durations.get(name, 0):.1f} s"]
                  for name, state in summary.executions.items()]
    settings = ""
    if config is not None:
        tc = config.train
        settings = _table(["setting", "value"], [
            ["data", config.data_root], ["preset", config.preset],
            ["steps / batch / learning rate", f"{tc.train_steps} / {tc.batch_size} / "
                                              f"{tc.learning_rate:g}"],
            ["precision / CPU replicas", f"{config.precision} / {config.cpu_replicas}"],
            ["pipeline root", config.pipeline_root]])
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>CLUE run "
        f"{_esc(summary.run_id)}</title><style>{_CSS}</style></head><body>",
        f"<h1>CLUE run {_esc(summary.run_id)}</h1>",
        f"<p>Written {time.strftime('%Y-%m-%d %H:%M:%S')}.</p>", settings,
        "<h2>Components</h2>", _table(["component", "state", "time"], components),
        "<h2>Data</h2>", _data_section(summary.preprocess_stats),
        "<h2>Training</h2>", _training_section(summary, history),
        "<h2>Downstream evaluation and blessing</h2>", _evaluation_section(summary),
    ]
    if summary.log_path:
        parts.append(f"<p>Full log: <code>{_esc(summary.log_path)}</code></p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(summary, config, out_dir: str) -> str:
    """Writes ``<out_dir>/<run id>.html`` (atomically); returns its path."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", summary.run_id) + ".html"
    path = os.path.join(out_dir, name)
    write_text_atomic(path, render_report(summary, config))
    return path
