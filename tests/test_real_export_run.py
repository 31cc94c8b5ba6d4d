"""A user's own export through `clue run`, as a user would run it (issue 10's headline test).

The fixture is written by hand here (not by `clue synth`), shaped like a real export:

* ``DATA/export_2026-11.csv``, the only file of the data directory: behaviour logs
  ``user_id,service,timestamp,item_text`` with numeric user ids, timestamps that mix
  unix seconds, ISO-8601 UTC and ISO-8601 with a +09:00 zone, rows in no particular
  order, two services plus single-service users, item texts drawn from the user's
  topic (so there is real signal), one 200 kB text (under Python csv's 131,072
  characters, so CsvExampleGen reads it; the byte cap cuts it), and malformed rows
  that preprocessing drops and counts: two without a user id, two with a bad
  timestamp, two with an empty text;
* ``TASKS/clicks.csv``, one file and no catalogue: ``user_id,item_id,timestamp,
  item_text`` with numeric ids, timestamps mixing ISO-8601 and unix seconds, users
  overlapping the logs (and 20 who are not in the logs: cold-start), items from
  the same user topics.

A CSV cell that is not UTF-8 stops CsvExampleGen (`clue_keras.data.csvfile`), so it
is a stop, not a drop: the first `clue run` sees a Latin-1 ``Café`` and stops in
the pre-flight, naming file, line and column, before any component runs; the user
re-encodes the file, and the second `clue run` trains, evaluates on the task,
blesses (margins of -1: a deterministic verdict) and pushes. The summary counts
every dropped row by reason, the ids are decimal strings in the records and the
task, and the pushed SavedModel embeds a numeric-id user's raw history (the 200 kB
text included) exactly as the Evaluator's route embeds that user's preprocessed
record.
"""

import csv
import glob
import io
import json
import os
import random
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import tensorflow as tf

from clue_cli import main as cli
from clue_keras.config import get_preset
from clue_keras.data.input import load_split_arrays
from clue_keras.tokenizer import load_vocab_info, register_text_ops
from tfx_pipeline import local_runner
from tfx_pipeline import pipeline as pl

BEAM_IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
COMPONENTS = [pl.EXAMPLE_GEN, pl.TASK_EXAMPLE_GEN, pl.STATISTICS_GEN, pl.SCHEMA_GEN,
              pl.EXAMPLE_VALIDATOR, pl.BEHAVIOR_PREPROCESS, pl.TRAINER, pl.EVALUATOR,
              pl.PUSHER]
LOGS_NAME, TASK_NAME = "export_2026-11.csv", "clicks.csv"
MAX_TEXT_BYTES = 256

TOPICS = {
    "football": ["goal", "striker", "league", "stadium", "penalty", "derby", "keeper", "transfer"],
    "cooking": ["pasta", "kimchi", "sourdough", "braise", "spice", "noodle", "dumpling", "oven"],
    "astronomy": ["galaxy", "nebula", "telescope", "comet", "orbit", "eclipse", "quasar", "rover"],
    "jazz": ["saxophone", "bebop", "trumpet", "swing", "ballad", "quartet", "vinyl", "improv"],
}
TOPIC_NAMES = sorted(TOPICS)
LOG_USERS = 240      # u < 200 in both services, 200 <= u < 239 in one, u = 239 has one item
TASK_LOG_USERS = 220  # task users from the logs: u < 220 (all kept by preprocessing)
COLD_USERS = 20       # task users without any behaviour log
ITEMS_PER_TOPIC = 40
T0 = 1_793_000_000    # 2026-10-26, unix seconds
HUGE_USER, BAD_TS_USERS, EMPTY_TEXT_USERS, LATIN1_USER = 5, (5, 9), (5, 13), 12
#: The 200 kB text: topic words, then 11,800 x 17 bytes of Korean (82,600 characters).
HUGE_TAIL = "한국어 리뷰 " * 11_800


def uid(u):
    return 100_000 + 7 * u


def _stamp(ts, kind):
    """``ts`` written as unix seconds, ISO-8601 UTC or ISO-8601 at +09:00."""
    if kind == 0:
        return str(ts)
    if kind == 1:
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    local = datetime.fromtimestamp(ts, timezone(timedelta(hours=9)))
    return local.strftime("%Y-%m-%d %H:%M:%S+09:00")


def _csv_line(cells):
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(cells)
    return buf.getvalue()


def make_logs(rng):
    """``(lines, history, drops, latin1_line)``: the export's lines (str, header first,
    rows shuffled), each kept user's valid rows ``[(service, ts, text)]``, the rows
    preprocessing drops by stats key, and the 1-based line of the ``Café`` row."""
    history, rows = {}, []
    for u in range(LOG_USERS):
        words = TOPICS[TOPIC_NAMES[u % 4]]
        if u < 200:
            counts = {"video": 3 + u % 3, "shop": 2 + u % 3}
        elif u < 239:
            counts = {("video", "shop")[u % 2]: 3}
        else:
            counts = {"video": 1}
        items = []
        for service, n in counts.items():
            for k in range(n):
                a, b = rng.sample(words, 2)
                kind = "highlights episode" if service == "video" else "gear no."
                items.append((service, f"{a} {b} {kind} {k}"))
        if u == HUGE_USER:
            items.append(("video", f"{words[0]} {words[1]} live commentary {HUGE_TAIL}"))
        if u == LATIN1_USER:
            items.append(("shop", f"Café {words[2]} tasting set"))
        rng.shuffle(items)
        history[uid(u)] = [(s, T0 + 86_400 * u + 3_600 * i, t) for i, (s, t) in enumerate(items)]
        rows += [(uid(u), s, ts, t) for s, ts, t in history[uid(u)]]
    bad = [
        ("", "video", T0 + 5, "anonymous visit to the stadium"),
        ("", "shop", T0 + 6, "guest checkout kimchi jar"),
    ]
    bad_ts = [(uid(BAD_TS_USERS[0]), "shop", "not a date", "goal striker gear no. 99"),
              (uid(BAD_TS_USERS[1]), "video", "2026-02-30T10:00:00Z", "comet orbit episode 99")]
    empty = [(uid(EMPTY_TEXT_USERS[0]), "video", T0 + 86_400 * 5 + 50_000, ""),
             (uid(EMPTY_TEXT_USERS[1]), "shop", T0 + 86_400 * 13 + 50_000, "   ")]
    lines = []
    for n, (user, service, ts, text) in enumerate(rows + bad + empty):
        lines.append(_csv_line([user, service, _stamp(ts, n % 3), text]))
    lines += [_csv_line(r) for r in bad_ts]
    rng.shuffle(lines)
    lines = ["user_id,service,timestamp,item_text"] + lines
    latin1_line = next(n for n, line in enumerate(lines, 1) if "Café" in line)
    drops = {"rows_dropped_empty_user": len(bad), "rows_dropped_bad_timestamp": len(bad_ts),
             "rows_dropped_empty_text": len(empty)}
    return lines, history, drops, latin1_line


def make_task(rng):
    """``(lines, items)``: the task's lines (header first) and ``{item_id: text}`` of the
    items clicked; each user clicks 3-6 items, 85% of them from the user's topic."""
    texts = {}
    for t, name in enumerate(TOPIC_NAMES):
        for j in range(ITEMS_PER_TOPIC):
            a, b = rng.sample(TOPICS[name], 2)
            texts[5_000 + 100 * t + j] = f"{a} {b} story {j}"
    users = [(uid(u), u % 4) for u in range(TASK_LOG_USERS)]
    users += [(300_000 + i, i % 4) for i in range(COLD_USERS)]
    rows, used = [], {}
    for n, (user, topic) in enumerate(users):
        picked = set()
        for k in range(3 + n % 4):
            t = topic if rng.random() < 0.85 else rng.randrange(4)
            item = 5_000 + 100 * t + rng.randrange(ITEMS_PER_TOPIC)
            if item in picked:
                continue
            picked.add(item)
            used[item] = texts[item]
            ts = T0 + 400 * 86_400 + 86_400 * n + 600 * k
            rows.append(_csv_line([user, item, _stamp(ts, k % 2), texts[item]]))
    rng.shuffle(rows)
    return ["user_id,item_id,timestamp,item_text"] + rows, used


def _write_logs(path, lines, latin1_line=None):
    """The export as bytes: UTF-8, except line ``latin1_line`` encoded as Latin-1."""
    raw = [line.encode("latin-1" if n == latin1_line else "utf-8")
           for n, line in enumerate(lines, 1)]
    path.write_bytes(b"\n".join(raw) + b"\n")


def _serving_input(history, services, max_items):
    """``item_texts`` [1, P, S] of one user's raw rows: per service oldest first, padded."""
    texts = np.full((1, len(services), max_items), "", dtype=object)
    for p, service in enumerate(services):
        items = [t for s, _, t in sorted(history, key=lambda r: r[1]) if s == service]
        texts[0, p, :len(items)] = items[-max_items:]
    return tf.constant(texts.astype(str))


@pytest.mark.slow
def test_clue_run_on_a_users_own_export_and_task(tmp_path, capsys):
    rng = random.Random(2026)
    lines, history, drops, latin1_line = make_logs(rng)
    task_lines, task_items = make_task(rng)
    data, tasks, root = tmp_path / "my_export", tmp_path / "my_tasks", tmp_path / "runs"
    data.mkdir()
    tasks.mkdir()
    logs, task = data / LOGS_NAME, tasks / TASK_NAME
    task.write_text("\n".join(task_lines) + "\n", encoding="utf-8")
    argv = ["run", "--root", str(root), "--data", str(data), "--task", str(task),
            "--preset", "tiny", "--train-steps", "20", "--batch-size", "16",
            "--eval-every", "10", "--patience", "0", "--max-text-bytes", str(MAX_TEXT_BYTES),
            "--eval-epochs", "1", "--no-sequence-models",
            "--margin-over-toppop=-1", "--margin-over-untrained=-1",
            *[f"--beam-arg={a}" for a in BEAM_IN_MEMORY]]

    # 1. A Latin-1 byte in a text: CsvExampleGen would crash on it, so the pre-flight
    #    stops the run in seconds, naming file, line and column; nothing runs.
    _write_logs(logs, lines, latin1_line)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{logs}:{latin1_line}: column 'item_text' is not valid UTF-8 (byte 0xe9" in err
    assert "Re-encode the file as UTF-8" in err
    assert not (root / "pipeline").exists() and not (root / "metadata").exists()

    # 2. Re-encoded as UTF-8, the same export goes through the whole pipeline.
    _write_logs(logs, lines)
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    metadata_path = str(root / "metadata" / "metadata.db")
    summary = local_runner.summarize(metadata_path, "clue")
    # (the task has no catalogue file: no TaskCatalogueExampleGen; later components may
    # follow the Pusher)
    assert set(COMPONENTS) <= set(summary.executions) and pl.CATALOGUE_EXAMPLE_GEN not in \
        summary.executions
    assert set(summary.executions.values()) == {"COMPLETE"}, summary.executions

    # The pre-flight and BehaviorPreprocess count the same drops, and the summary says so.
    n_rows = len(lines) - 1
    assert ("checked the logs: rows preprocessing will drop: "
            + ", ".join(f"{k}={drops[k]}" for k in ("rows_dropped_empty_user",
                                                     "rows_dropped_bad_timestamp",
                                                     "rows_dropped_empty_text"))) in out
    assert "checked the logs: warning: timestamps mix ISO-8601 dates" in out
    s = summary.preprocess_stats
    changed = dict(drops, rows_text_capped=1, users_dropped_few_items=1,
                   users_kept_single_service=39)
    assert {k: s[k] for k in changed} == changed
    assert s["rows_dropped_bad_utf8"] == s["rows_dropped_bad_value"] == 0
    assert s["rows_duplicate"] == s["users_dropped_few_services"] == 0
    assert (s["rows_read"], s["users_read"], s["users_kept"]) == (n_rows, LOG_USERS, LOG_USERS - 1)
    assert s["services"] == "shop,video"
    assert f"rows read {n_rows}, users read {LOG_USERS}, kept train/eval/test " in out
    assert "  dropped or changed: " + ", ".join(
        f"{k.replace('_', ' ')} {v}" for k, v in sorted(changed.items())) in out

    # The task: one file, no catalogue (derived), checked up front.
    n_task_users = TASK_LOG_USERS + COLD_USERS
    assert (f"downstream task {task}: {len(task_lines) - 1} interactions, {n_task_users} users, "
            f"{len(task_items)} items; catalogue derived from the interactions") in out

    # The Evaluator ran on that task; numeric ids matched between the records and the task
    # (only the 20 users without logs are cold-start); blessed with margins of -1.
    with open(os.path.join(summary.evaluation_uri, "results.json")) as f:
        info = json.load(f)["info"]
    assert info["task"] == "clicks"
    assert info["num_items"] == len(task_items)
    assert sum(info["num_users"].values()) == n_task_users
    assert sum(info["cold_start_users"]["CLUE"].values()) == COLD_USERS
    assert info["cold_items"]["CLUE"] == 0
    with open(os.path.join(summary.evaluation_uri, "blessing.json")) as f:
        assert json.load(f)["blessed"] is True
    assert summary.blessed is True
    assert summary.blessing_reason.count("margin -1.0000") == 2
    assert "[95% CI " in summary.blessing_reason
    assert "BLESSED: U-MLP (CLUE) MRR" in out

    # Pushed: one version, and it serves.
    serving = root / "serving"
    (version,) = os.listdir(serving)
    assert summary.pushed_to == str(serving / version)
    assert f"pushed to {summary.pushed_to}" in out

    # The records hold the kept users under their decimal ids.
    vocab_dir = s["vocab_dir"]
    info_v = load_vocab_info(vocab_dir)
    assert info_v.services == ("shop", "video") and info_v.max_text_bytes == MAX_TEXT_BYTES
    files = sorted(glob.glob(os.path.join(os.path.dirname(vocab_dir), "Split-*", "*.gz")))
    records = load_split_arrays(files, info_v)
    assert sorted(records["user_id"]) == sorted(str(uid(u)) for u in range(LOG_USERS - 1))

    # The pushed model embeds the raw history of user 100035 (numeric id; the 200 kB text,
    # a dropped bad-timestamp row and a dropped empty text among its rows) through
    # serving_default exactly as the Evaluator's route (embed_tokens on its record) does.
    register_text_ops()
    with open(os.path.join(summary.pushed_to, "assets", "clue_vocab.json")) as f:
        layout = json.load(f)
    assert layout["services"] == ["shop", "video"] and layout["max_text_bytes"] == MAX_TEXT_BYTES
    model = tf.saved_model.load(summary.pushed_to)
    user = uid(HUGE_USER)
    assert any(len(t.encode()) > 200_000 for _, _, t in history[user])
    served = model.signatures["serving_default"](
        item_texts=_serving_input(history[user], layout["services"], layout["max_items"]))
    row = list(records["user_id"]).index(str(user))
    from_record = model.signatures["embed_tokens"](
        token_ids=tf.constant(records["token_ids"][row:row + 1]))
    emb = served["embedding"].numpy()
    assert emb.shape == (1, 2 * get_preset("tiny").embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(emb), 1.0, rtol=1e-4)
    np.testing.assert_allclose(emb, from_record["embedding"].numpy(), atol=1e-5)
