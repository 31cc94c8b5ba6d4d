"""`generate`: writes a whole synthetic data set (see the `clue_synth` docstring).

Users are generated and written in batches of ``BATCH_USERS``, so memory does
not grow with ``users``. Every file is written under a temporary name in its
final directory and renamed when complete; ``manifest.json`` is written last,
so a directory with a manifest is a complete data set.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Sequence

import numpy as np

from clue_keras.atomic import write_text_atomic
from clue_keras.data.formats import BEHAVIOR_COLUMNS, INTERACTION_TABLE_COLUMNS
from clue_synth import downstream
from clue_synth import users as user_model
from clue_synth.settings import (BATCH_USERS, KNOWN_SERVICES, KNOWN_TASKS, MANIFEST_VERSION,
                                 OUTPUT_FORMATS, WINDOW_SECONDS, WINDOW_START)
from clue_synth.vocabulary import TOPICS
from clue_synth.writer import (BEHAVIOR_TYPES, INTERACTION_TYPES, TableWriter, jsonl,
                               remove_stale, shard_name)

#: ``manifest.json["generator"]``: still the module name from before the generator moved
#: to `clue_synth`, so that a seed keeps giving byte-identical files (manifest included).
GENERATOR_NAME = "clue_keras.synth"


def _check_names(kind: str, names: Sequence[str], known: Sequence[str], allow_empty: bool) -> List[str]:
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    names = [n.strip() for n in names]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {kind} {unknown}; choose from {list(known)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{kind} listed twice: {names}")
    if not names and not allow_empty:
        raise ValueError(f"at least one of {kind} {list(known)} is needed")
    return sorted(names)


def generate(
    out_dir: str,
    users: int,
    seed: int = 0,
    fmt: str = "csv",
    services: Sequence[str] = ("news", "search", "shopping"),
    tasks: Sequence[str] = ("movies", "books"),
    users_per_shard: int = 50_000,
    progress: bool = False,
) -> Dict[str, Any]:
    """Writes a synthetic data set for ``users`` users under ``out_dir``; returns the manifest.

    Args:
      out_dir: output directory (created). An existing ``manifest.json`` is removed first,
        and behaviour shards / interaction files of an earlier run that this run does not
        rewrite are removed at the end, so the directory holds exactly one data set.
      users: number of users (>= 1), ids ``user_id_for(0 .. users-1)``.
      seed: base seed; same seed and arguments give byte-identical files.
      fmt: ``"csv"`` (header row, RFC 4180 quoting), ``"jsonl"`` (UTF-8, one object per
        line) or ``"parquet"`` (string / int64 columns).
      services: pre-training services, a subset of ``KNOWN_SERVICES`` (written sorted).
      tasks: downstream tasks, a subset of ``KNOWN_TASKS`` (may be empty).
      users_per_shard: users per behaviour shard (>= 1); does not change any row.
      progress: show a tqdm progress bar on stderr.

    Returns:
      The manifest dict also written to ``out_dir/manifest.json``: ``seed``, ``users``,
      ``format``, ``services``, ``tasks``, ``topics`` ([{"id", "name"}]), ``time_window``
      (unix seconds, ``[start, end)``), ``files`` ({relative path: data rows}) and
      ``stats`` (behaviours per service, cold-start / single-service / heavy users, ...).
    """
    if isinstance(users, bool) or not isinstance(users, (int, np.integer)) or users < 1:
        raise ValueError(f"users must be an integer >= 1, got {users!r}")
    if isinstance(users_per_shard, bool) or not isinstance(users_per_shard, (int, np.integer)) or users_per_shard < 1:
        raise ValueError(f"users_per_shard must be an integer >= 1, got {users_per_shard!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {list(OUTPUT_FORMATS)}")
    services = _check_names("services", services, KNOWN_SERVICES, allow_empty=False)
    tasks = _check_names("tasks", tasks, KNOWN_TASKS, allow_empty=True)
    users, seed, users_per_shard = int(users), int(seed), int(users_per_shard)

    manifest_path = os.path.join(out_dir, "manifest.json")
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)  # the directory is incomplete until the new one lands

    files: Dict[str, int] = {}
    catalogues = {task: downstream.make_catalogue(seed, task) for task in tasks}
    for task, cat in catalogues.items():
        rel = f"downstream/{task}/catalogue.jsonl"
        write_text_atomic(os.path.join(out_dir, rel), jsonl(
            {"item_id": i, "item_text": x, "topic": t} for i, x, t in zip(cat.item_ids, cat.texts, cat.topics)))
        files[rel] = len(cat.item_ids)

    num_shards = -(-users // users_per_shard)
    stats = {"behaviors_per_service": {s: 0 for s in services}, "users_with_behaviors": 0,
             "cold_start_users": 0, "single_service_users": 0, "heavy_users": 0, "max_behaviors_per_user": 0,
             "users_per_task": {t: 0 for t in tasks}}
    writers: List[TableWriter] = []
    try:
        truth = TableWriter(os.path.join(out_dir, "truth", "user_interests.jsonl"), "jsonl",
                             ("user_id", "interests", "weights", "services", "tasks"), {})
        writers.append(truth)
        inter = {task: TableWriter(os.path.join(out_dir, "downstream", task, f"interactions.{fmt}"), fmt,
                                    INTERACTION_TABLE_COLUMNS, INTERACTION_TYPES) for task in tasks}
        writers.extend(inter.values())
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=users, unit="user", desc="clue synth")
        for shard in range(num_shards):
            rel = f"behaviors/{shard_name(shard, num_shards, fmt)}"
            bw = TableWriter(os.path.join(out_dir, rel), fmt, BEHAVIOR_COLUMNS, BEHAVIOR_TYPES)
            writers.append(bw)
            lo, hi = shard * users_per_shard, min(users, (shard + 1) * users_per_shard)
            # Batches start at multiples of BATCH_USERS inside the shard.
            for b_lo in range(lo, hi, BATCH_USERS):
                b_hi = min(hi, b_lo + BATCH_USERS)
                bcols: Dict[str, list] = {c: [] for c in BEHAVIOR_COLUMNS}
                icols = {task: {c: [] for c in INTERACTION_TABLE_COLUMNS} for task in tasks}
                tcols: Dict[str, list] = {c: [] for c in truth.columns}
                for index in range(b_lo, b_hi):
                    p, rng = user_model.make_profile(seed, index, services, tasks)
                    rows = user_model.behaviors(p, rng)
                    uid = p.user_id
                    bcols["user_id"].extend([uid] * len(rows))
                    for ts, svc, text in rows:
                        bcols["timestamp"].append(ts)
                        bcols["service"].append(svc)
                        bcols["item_text"].append(text)
                    for task in p.tasks:
                        cat = catalogues[task]
                        clicks = downstream.interactions(p, seed, cat)
                        ic = icols[task]
                        ic["user_id"].extend([uid] * len(clicks))
                        for ts, item in clicks:
                            ic["item_id"].append(cat.item_ids[item])
                            ic["item_text"].append(cat.texts[item])
                            ic["timestamp"].append(ts)
                        stats["users_per_task"][task] += 1
                    tcols["user_id"].append(uid)
                    tcols["interests"].append(p.interests)
                    tcols["weights"].append(p.weights)
                    tcols["services"].append(p.services)
                    tcols["tasks"].append(p.tasks)
                    for s, n in p.counts.items():
                        stats["behaviors_per_service"][s] += n
                    stats["users_with_behaviors"] += bool(p.services)
                    stats["cold_start_users"] += not p.services
                    stats["single_service_users"] += len(p.services) == 1
                    stats["heavy_users"] += any(n >= 200 for n in p.counts.values())
                    stats["max_behaviors_per_user"] = max(stats["max_behaviors_per_user"], len(rows))
                bw.write(bcols)
                truth.write(tcols)
                for task in tasks:
                    inter[task].write(icols[task])
                if bar is not None:
                    bar.update(b_hi - b_lo)
            bw.close()
            writers.remove(bw)
            files[rel] = bw.rows
        for task in tasks:
            inter[task].close()
            writers.remove(inter[task])
            files[f"downstream/{task}/interactions.{fmt}"] = inter[task].rows
        truth.close()
        writers.remove(truth)
        files["truth/user_interests.jsonl"] = truth.rows
        if bar is not None:
            bar.close()
    except BaseException:
        for w in writers:
            w.abort()
        raise

    remove_stale(out_dir, files)
    manifest = {
        "generator": GENERATOR_NAME,
        "manifest_version": MANIFEST_VERSION,
        "seed": seed,
        "users": users,
        "format": fmt,
        "services": services,
        "tasks": tasks,
        "users_per_shard": users_per_shard,
        "num_shards": num_shards,
        "time_window": [WINDOW_START, WINDOW_START + WINDOW_SECONDS],
        "topics": [{"id": i, "name": t.name} for i, t in enumerate(TOPICS)],
        "files": dict(sorted(files.items())),
        "stats": stats,
    }
    write_text_atomic(manifest_path, json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")
    return manifest
