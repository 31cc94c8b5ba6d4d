"""`clue bench preprocess`: how the BehaviorPreprocess Beam pipeline scales with users.

For each user count N (not timed): `clue_synth.generate` writes Parquet
behaviour logs, then they are converted into what the pipeline's ExampleGen
hands to BehaviorPreprocess: gzipped TFRecord files of raw tf.Examples (one per
behaviour row), with tfx_bsl's Arrow -> tf.Example encoder.

Timed, separately:

* ``beam``: `clue_keras.data.preprocess.build_pipeline` (what BehaviorPreprocess
  runs) alone, on the Beam DirectRunner (multi-processing by default, one worker per core),
  from the raw tf.Examples to the finished per-user records, vocabulary and
  stats: parse, clean, dedup, split by user, BPE training, tokenisation,
  writing. The TFX wrapper (ExampleGen, StatisticsGen, SchemaGen, the
  schema / anomaly checks of the executor) is not included.
* ``local``: `clue_keras.data.prepare.prepare_local`, the same preprocessing in
  one Python process with pandas, reading the Parquet files itself.
* ``pandas``: the plain pandas baseline of issue 14 (`clue_bench.pandas_baseline`):
  one core reads the same Parquet files, normalises, drops repeats, orders by
  time, keeps the newest S per (user, service), drops inactive users and
  tokenises every kept text in batch with the vocabulary the Beam run trained;
  it writes nothing. ``per_core_ratio`` = (Beam seconds x cores Beam used) /
  pandas seconds: the issue's target is <= 3.

Reported per N: wall seconds, behaviours/s and users/s; over all N the growth
exponent k of ``time ~ N^k`` (least-squares fit of log time on log N; 1 is
linear). `clue_bench.preprocess.bench_preprocess` returns the figures
and ``--json`` writes them.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

from clue_keras.data.direct_runner import local_beam_args

#: Default user counts of `clue bench preprocess`.
DEFAULT_USERS = (10_000, 100_000)


def write_raw_examples(data_dir: str, out_dir: str, batch_rows: int = 65_536) -> int:
    """Converts ``data_dir``'s Parquet behaviour shards into gzipped TFRecords of tf.Examples.

    One file per shard, ``out_dir/data_tfrecord-SSSSS.gz``; features ``user_id``,
    ``service``, ``item_text`` (bytes) and ``timestamp`` (int64), as the
    pipeline's ExampleGen writes them. Returns the number of rows.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import tensorflow as tf
    from tfx_bsl.coders import example_coder

    from clue_keras.atomic import atomic_file
    from clue_keras.data.tables import behavior_files

    os.makedirs(out_dir, exist_ok=True)
    rows = 0
    for i, path in enumerate(behavior_files(data_dir)):
        if not path.endswith(".parquet"):
            raise ValueError(f"{path}: the benchmark generates Parquet; got another format")
        out = os.path.join(out_dir, f"data_tfrecord-{i:05d}.gz")
        with atomic_file(out) as tmp, tf.io.TFRecordWriter(tmp, options="GZIP") as writer:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
                offsets = pa.array(np.arange(batch.num_rows + 1, dtype=np.int32))
                columns, names = [], []
                for name in ("user_id", "service", "timestamp", "item_text"):
                    col = batch.column(batch.schema.get_field_index(name))
                    col = col.cast(pa.int64() if name == "timestamp" else pa.binary())
                    columns.append(pa.ListArray.from_arrays(offsets, col))
                    names.append(name)
                for record in example_coder.RecordBatchToExamples(
                        pa.RecordBatch.from_arrays(columns, names=names)):
                    writer.write(record)
                rows += batch.num_rows
    return rows


def beam_options(mode: str = "multi_processing", workers: int = 0) -> List[str]:
    """DirectRunner options (without its Prism attempt: `clue_keras.data.direct_runner`);
    ``workers`` 0 = one per CPU core."""
    return local_beam_args(mode, workers)


def time_beam(raw_pattern: str, out_dir: str, params: Dict[str, Any],
              options: Sequence[str]) -> Dict[str, Any]:
    """Runs the BehaviorPreprocess Beam graph once; returns seconds and its stats.json."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from clue_keras.data import preprocess as bp

    start = time.perf_counter()
    with beam.Pipeline(options=PipelineOptions(list(options))) as p:
        bp.build_pipeline(p, raw_pattern, out_dir, params)
    seconds = time.perf_counter() - start
    with open(os.path.join(out_dir, bp.STATS_FILENAME)) as f:
        return {"seconds": seconds, "stats": json.load(f)}


def time_local(data_dir: str, out_dir: str, params: Dict[str, Any]) -> Dict[str, Any]:
    """Runs `prepare_local` once on the same data; returns seconds and its stats."""
    from clue_keras.data.prepare import prepare_local

    start = time.perf_counter()
    stats = prepare_local(data_dir, out_dir, max_items=params["max_items"],
                          max_tokens=params["max_tokens"], vocab_size=params["vocab_size"],
                          min_items=params["min_items_per_user"],
                          eval_percent=params["eval_percent"],
                          test_percent=params["test_percent"])
    return {"seconds": time.perf_counter() - start, "stats": stats}


def beam_cores(mode: str, workers: int) -> int:
    """Cores a DirectRunner run uses: ``workers`` (0: every core) when it runs
    several processes, else 1 (threads share the interpreter lock)."""
    if mode != "multi_processing":
        return 1
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return int(workers) or (len(cpus) if cpus else (os.cpu_count() or 1))


def per_core_ratio(beam_s: float, cores: int, pandas_s: float) -> float:
    """(Beam seconds x cores it used) / (pandas seconds x 1 core)."""
    return beam_s * cores / pandas_s


def growth_exponent(users: Sequence[int], seconds: Sequence[float]) -> Optional[float]:
    """Slope k of the least-squares line log(seconds) = k log(users) + c (None if < 2 points)."""
    import numpy as np

    points = [(u, s) for u, s in zip(users, seconds) if s and s > 0]
    if len({u for u, _ in points}) < 2:
        return None
    x = np.log([u for u, _ in points])
    y = np.log([s for _, s in points])
    return float(np.polyfit(x, y, 1)[0])


def machine() -> Dict[str, Any]:
    """Where the figures were taken: CPU cores, memory, platform, date."""
    mem_gb = None
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
        mem_gb = round(kb / 2 ** 20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {"cpu_cores": len(cpus) if cpus else os.cpu_count(), "memory_gib": mem_gb,
            "platform": platform.platform(), "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def bench_preprocess(users: Sequence[int], work_dir: Optional[str] = None, preset: str = "clue-4m",
                     seed: int = 0, beam_mode: str = "multi_processing", workers: int = 0,
                     run_local: bool = True, keep: bool = False,
                     baseline_users: int = 100, run_pandas: bool = True,
                     reuse_data: bool = False, log=print) -> Dict[str, Any]:
    """Benchmarks preprocessing for each user count; see the module docstring.

    Args:
      users: user counts N (each >= 1).
      work_dir: where data and outputs go (a temporary directory if None);
        removed per N afterwards unless ``keep``.
      preset: model preset fixing S, L and the BPE vocabulary size.
      seed: synthetic data seed.
      beam_mode, workers: DirectRunner running mode and worker count (0 = cores).
      run_local: also time `prepare_local`.
      run_pandas: also time the pandas baseline (`clue_bench.pandas_baseline`)
        and report ``per_core_ratio``.
      keep: keep the data under ``work_dir`` (the outputs are removed after each N).
      baseline_users: a small run measured first to estimate the fixed cost
        (Beam runner start-up, ...); each run then also gets
        ``marginal_behaviors_per_s`` / ``marginal_users_per_s`` = extra rows
        (users) over extra seconds relative to it. 0 skips it.
      reuse_data: use the data and raw tf.Examples an earlier ``keep`` run left in
        ``work_dir`` for the same N and seed instead of generating them again.
      log: progress callback (one line per step).

    Returns:
      ``{"machine", "settings", "baseline", "runs": [{"users", "behaviors",
      "beam": {...}, "local": {...}, "pandas": {...}, "per_core_ratio": r}],
      "growth_exponent": {"beam": k, "local": k, "pandas": k}}``
      where each timing has ``seconds``, ``behaviors_per_s``, ``users_per_s``
      (and the marginal rates when there is a baseline).
    """
    import clue_synth as synth
    from clue_keras.config import get_preset
    from tfx_pipeline.config import PipelineConfig

    if not users or any(int(n) < 1 for n in users):
        raise ValueError(f"user counts must be >= 1, got {list(users)}")
    mc = get_preset(preset)
    defaults = PipelineConfig(pipeline_root="-", data_root="-", serving_model_dir="-")
    params = {"max_items": mc.max_items, "max_tokens": mc.max_tokens,
              "vocab_size": mc.vocab_size,
              "min_items_per_user": defaults.min_items_per_user,
              "min_services_per_user": defaults.min_services_per_user,
              "eval_percent": defaults.eval_percent, "test_percent": defaults.test_percent,
              "bpe_sample_size": defaults.bpe_sample_size, "num_shards": 0}
    options = beam_options(beam_mode, workers)
    cores = beam_cores(beam_mode, workers)
    owned = work_dir is None
    work_dir = work_dir or tempfile.mkdtemp(prefix="clue-bench-preprocess-")

    def measure(n: int) -> Dict[str, Any]:
        base = os.path.join(work_dir, f"users-{n}")
        data, raw = os.path.join(base, "data"), os.path.join(base, "raw")
        marker = os.path.join(base, "data.json")  # written once data and raw are complete
        try:
            with open(marker) as f:
                made = json.load(f) if reuse_data else {}
        except (OSError, ValueError):
            made = {}
        if made.get("seed") == seed and made.get("users") == n:
            rows, generate_s, convert_s = int(made["rows"]), None, None
            log(f"[{n:,} users] reusing {rows:,} behaviours in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
            log(f"[{n:,} users] generating synthetic Parquet logs (not timed) ...")
            t0 = time.perf_counter()
            synth.generate(data, users=n, seed=seed, fmt="parquet", tasks=())
            generate_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            rows = write_raw_examples(data, raw)
            convert_s = time.perf_counter() - t0
            with open(marker, "w") as f:
                json.dump({"users": n, "seed": seed, "rows": rows}, f)
            log(f"[{n:,} users] {rows:,} behaviours; generated in {generate_s:.1f} s, "
                f"converted to raw tf.Examples in {convert_s:.1f} s (neither is timed below)")
        run: Dict[str, Any] = {"users": n, "behaviors": rows, "generate_s": generate_s,
                               "convert_to_examples_s": convert_s}
        log(f"[{n:,} users] Beam ({beam_mode}, workers={workers or 'all cores'}) ...")
        beam = time_beam(os.path.join(raw, "*.gz"), os.path.join(base, "beam_out"),
                         params, options)
        if beam["stats"]["rows_read"] != rows:
            raise RuntimeError(
                f"the Beam pipeline read {beam['stats']['rows_read']} rows of {rows}")
        run["beam"] = _rates(beam["seconds"], rows, n)
        run["beam"]["users_kept"] = beam["stats"]["users_kept"]
        log(f"[{n:,} users] Beam: {_line(run['beam'])}")
        if run_pandas:
            from clue_bench.pandas_baseline import time_pandas

            pandas = time_pandas(data, os.path.join(base, "beam_out", "vocab"), params)
            run["pandas"] = _rates(pandas["seconds"], rows, n)
            run["pandas"]["users_kept"] = pandas["users"]
            run["per_core_ratio"] = per_core_ratio(run["beam"]["seconds"], cores,
                                                   pandas["seconds"])
            log(f"[{n:,} users] pandas baseline: {_line(run['pandas'])}; Beam / pandas per "
                f"core: {run['per_core_ratio']:.1f}x ({cores} Beam cores)")
        if run_local:
            local = time_local(data, os.path.join(base, "local_out"), params)
            run["local"] = _rates(local["seconds"], rows, n)
            log(f"[{n:,} users] prepare_local: {_line(run['local'])}")
        for out in ("beam_out", "local_out"):
            shutil.rmtree(os.path.join(base, out), ignore_errors=True)
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
        return run

    methods = ["beam"] + (["local"] if run_local else []) + (["pandas"] if run_pandas else [])
    try:
        baseline = measure(int(baseline_users)) if baseline_users else None
        runs = [measure(int(n)) for n in users]
    finally:
        if owned and not keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    if baseline:
        # Rates above the fixed cost (runner start-up, BPE on little data ...).
        for run in runs:
            for m in methods:
                extra = run[m]["seconds"] - baseline[m]["seconds"]
                rows, n = run["behaviors"] - baseline["behaviors"], run["users"] - baseline["users"]
                run[m]["marginal_behaviors_per_s"] = rows / extra if extra > 0 else None
                run[m]["marginal_users_per_s"] = n / extra if extra > 0 else None
    growth = {m: growth_exponent([r["users"] for r in runs], [r[m]["seconds"] for r in runs])
              for m in methods}
    return {
        "machine": machine(),
        "settings": {"preset": preset, "seed": seed, "format": "parquet",
                     "beam_options": options, "beam_cores": cores, "params": params,
                     "timed": {"beam": "clue_keras.data.preprocess.build_pipeline "
                                       "on raw tf.Example TFRecords (ExampleGen output), "
                                       "DirectRunner",
                               "local": "clue_keras.data.prepare.prepare_local on the Parquet "
                                        "files, one process",
                               "pandas": "clue_bench.pandas_baseline on the Parquet files, "
                                         "one process, tokenisation included, nothing "
                                         "written"}},
        "baseline": baseline,
        "runs": runs,
        "growth_exponent": growth,
    }


def _rates(seconds: float, rows: int, users: int) -> Dict[str, float]:
    return {"seconds": seconds, "behaviors_per_s": rows / seconds, "users_per_s": users / seconds}


def _line(t: Dict[str, float]) -> str:
    return (f"{t['seconds']:.1f} s, {t['behaviors_per_s']:,.0f} behaviours/s, "
            f"{t['users_per_s']:,.0f} users/s")


def format_report(result: Dict[str, Any]) -> str:
    """A plain-text table of `bench_preprocess`'s result."""
    m = result["machine"]
    lines = [f"machine: {m['cpu_cores']} CPU cores, {m['memory_gib']} GiB, {m['platform']}; "
             f"{m['date']}",
             f"preset {result['settings']['preset']}; Beam options "
             f"{' '.join(result['settings']['beam_options'])}",
             f"beam  = {result['settings']['timed']['beam']}",
             f"local = {result['settings']['timed']['local']}",
             f"pandas = {result['settings']['timed'].get('pandas', 'not run')}",
             "",
             f"{'users':>10} {'behaviours':>12} {'method':>6} {'seconds':>9} "
             f"{'behaviours/s':>13} {'users/s':>9} {'marginal behaviours/s':>22}"]
    baseline = result.get("baseline")
    for r in ([baseline] if baseline else []) + result["runs"]:
        for method in ("beam", "local", "pandas"):
            if method not in r:
                continue
            t = r[method]
            marginal = t.get("marginal_behaviors_per_s")
            last = ("(baseline)" if r is baseline else
                    f"{marginal:,.0f}" if marginal else "n/a")
            lines.append(f"{r['users']:>10,} {r['behaviors']:>12,} {method:>6} "
                         f"{t['seconds']:>9.1f} {t['behaviors_per_s']:>13,.0f} "
                         f"{t['users_per_s']:>9,.0f} {last:>22}")
    cores = result["settings"].get("beam_cores", 1)
    for r in result["runs"]:
        if "per_core_ratio" in r:
            lines.append(f"{r['users']:>10,} users: Beam / pandas per core = "
                         f"{r['beam']['seconds']:.1f} s x {cores} / "
                         f"{r['pandas']['seconds']:.1f} s = {r['per_core_ratio']:.1f}x "
                         f"(target <= 3)")
    for method, k in result["growth_exponent"].items():
        lines.append(f"growth exponent ({method}): "
                     + ("n/a (needs two user counts)" if k is None else
                        f"time ~ N^{k:.2f}"))
    return "\n".join(lines)

