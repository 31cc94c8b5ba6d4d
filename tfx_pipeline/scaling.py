"""Scaling-law studies (paper section 5.3, Figures 4 and 5): ``clue scale``.

A *grid* (YAML, see ``examples/scaling_grid_tiny.yaml``) names model sizes,
global batch sizes B and sequence lengths S (``max_items``, items per user and
service: the paper's "sequence length" axis), optionally token lengths L
(``max_tokens``), and a fixed number of training steps. ``run_grid`` trains
every combination once and records, per run:

* ``params``: trainable parameters of the pre-trainer (embeddings included);
* ``tokens_seen`` = B x steps x S x L: token slots per service sequence fed
  to the model (padding included, as the paper's formula uses the configured
  sequence length, not the data's fill);
* ``pf_days`` = 6 x params x B x steps x (S x L) / 8.64e19 (the paper's
  formula; its "sequence length" is taken as the S x L token slots of one
  service's behaviour sequence). The P services of a user are *not*
  multiplied in: the paper's formula has no such factor, and for one data set
  P is a constant, so it scales every C by the same factor, leaves the fitted
  exponent b unchanged and multiplies a by P^b;
* ``final_train_loss``: contrastive loss at the training batch size, mean over
  the last checkpoint interval (not comparable across batch sizes: the CLIP
  loss of a batch of B users is bounded by about log B);
* ``heldout_loss``: contrastive loss of the trained model on held-out users
  (the ``eval`` and ``test`` splits) at ONE fixed batch size for the whole
  grid (``heldout_batch_size``), so it is comparable across runs: this is the
  paper's "test loss on the training distribution" (Figure 5 left);
* ``downstream``: MRR of the U-MLP on CLUE features on a downstream task
  (:func:`clue_tfrs.run.run_evaluation`), with the untrained-encoder and
  TopPop MRR for reference (Figure 5 right).

Bookkeeping: a run's id is a hash of its full configuration (model, training,
evaluation settings); its files live in ``<out>/runs/<id>/``; it is finished
when ``<out>/runs/<id>/result.json`` exists, which is written atomically and
last. An interrupted grid re-run skips finished runs (``skip (done)``) and an
interrupted run resumes from its own checkpoints (``clue_keras.train.train``).
``results.csv``, ``fit.json``, the figures and ``REPORT.md`` are always rebuilt
from the ``result.json`` files of the grid's runs.

Fit: the compute frontier is the set of runs whose held-out loss is lower than
that of every run with less compute (the Pareto frontier of (C, loss)). On it
``loss = a * C^-b + c`` is fitted with ``c >= 0`` (``scipy.optimize.curve_fit``,
parameterised by log a, with bounds) and the pure power law ``loss = a * C^-b``
(least squares in log-log space); each with R^2 on the loss values.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import json
import math
import os
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from clue_keras import config as cfg_lib
from clue_keras.atomic import write_json_atomic, write_text_atomic  # noqa: F401
from clue_keras.config import PRESETS, ModelConfig, TrainConfig, param_count

PF_DAY_FLOPS = 8.64e19  # one petaFLOP/s-day in FLOPs: 1e15 * 86400
RESULT_FILE = "result.json"
STUDY_FILE = "study.json"
RESULTS_CSV = "results.csv"
FIT_FILE = "fit.json"
REPORT_FILE = "REPORT.md"
FIGURE4 = "figure4_scaling_factors.png"
FIGURE5 = "figure5_frontier_transfer.png"
CURVES = "learning_curves.png"
HELDOUT_SPLITS = ("eval", "test")

GRID_KEYS = ("name", "steps", "models", "batch_sizes", "max_items", "max_tokens",
             "vocab_size", "train", "precision", "heldout_batch_size", "downstream", "seed")
DOWNSTREAM_KEYS = ("task", "epochs", "sequence_models")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


class GridError(ValueError):
    """A grid file that cannot be run; the message names the file and the key."""


# --------------------------------------------------------------------------
# Compute arithmetic
# --------------------------------------------------------------------------


def tokens_seen(batch_size: int, steps: int, max_items: int, max_tokens: int) -> int:
    """Token slots fed per service sequence over training: B x steps x S x L."""
    return int(batch_size) * int(steps) * int(max_items) * int(max_tokens)


def pf_days(params: int, batch_size: int, steps: int, sequence_length: int) -> float:
    """Training compute in PF-days, as in the paper (section 5.3).

    ``6 x params x batch_size x steps x sequence_length / 8.64e19``; in this
    project ``sequence_length`` is S x L token slots (see the module docstring).
    """
    return 6.0 * params * batch_size * steps * sequence_length / PF_DAY_FLOPS


# --------------------------------------------------------------------------
# Grid
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DownstreamSpec:
    """Downstream evaluation of every run: ``<data>/downstream/<task>``."""

    task: str
    epochs: int = 1
    sequence_models: bool = False


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One point of the grid: a model label, its full configs and the eval settings."""

    model: str
    model_config: ModelConfig
    train_config: TrainConfig
    precision: str
    heldout_batch_size: int
    downstream: Optional[DownstreamSpec]

    def canonical(self) -> Dict[str, Any]:
        """Everything that determines the run's numbers (the label is not part of it)."""
        return {"model_config": cfg_lib.to_dict(self.model_config),
                "train_config": cfg_lib.to_dict(self.train_config),
                "precision": self.precision,
                "heldout_batch_size": self.heldout_batch_size,
                "heldout_splits": list(HELDOUT_SPLITS),
                "downstream": (dataclasses.asdict(self.downstream)
                               if self.downstream else None)}

    @property
    def run_id(self) -> str:
        """12 hex digits of the SHA-256 of the canonical JSON of :meth:`canonical`."""
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]

    @property
    def batch_size(self) -> int:
        return self.train_config.batch_size

    @property
    def steps(self) -> int:
        return self.train_config.train_steps

    @property
    def max_items(self) -> int:
        return self.model_config.max_items

    @property
    def max_tokens(self) -> int:
        return self.model_config.max_tokens

    @property
    def sequence_length(self) -> int:
        """S x L token slots of one service's behaviour sequence."""
        return self.max_items * self.max_tokens

    @property
    def planned_params(self) -> int:
        return param_count(self.model_config)

    @property
    def planned_pf_days(self) -> float:
        return pf_days(self.planned_params, self.batch_size, self.steps, self.sequence_length)

    def describe(self) -> str:
        return (f"{self.model} B={self.batch_size} S={self.max_items} L={self.max_tokens} "
                f"steps={self.steps}")


@dataclasses.dataclass(frozen=True)
class Grid:
    """A parsed grid; :meth:`runs` is the cross product, in file order."""

    name: str
    source: str
    steps: int
    models: Tuple[Tuple[str, ModelConfig], ...]
    batch_sizes: Tuple[int, ...]
    max_items: Tuple[Optional[int], ...]   # (None,) = each model's own S
    max_tokens: Tuple[Optional[int], ...]  # (None,) = each model's own L
    train_overrides: Mapping[str, Any]
    precision: str
    heldout_batch_size: int
    downstream: Optional[DownstreamSpec]
    seed: int
    raw: Mapping[str, Any]

    def runs(self) -> List[RunSpec]:
        out = []
        for name, base in self.models:
            for s in self.max_items:
                for l in self.max_tokens:  # noqa: E741
                    mc = base.replace(max_items=s if s is not None else base.max_items,
                                      max_tokens=l if l is not None else base.max_tokens)
                    for b in self.batch_sizes:
                        tc = TrainConfig(**{**self.train_overrides, "batch_size": b,
                                            "train_steps": self.steps, "seed": self.seed})
                        out.append(RunSpec(name, mc, tc, self.precision,
                                           self.heldout_batch_size, self.downstream))
        return out


def _err(source: str, key: str, msg: str) -> GridError:
    return GridError(f"{source}: {key}: {msg}")


def _positive_int(value, source: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _err(source, key, f"expected a positive integer, got {value!r}")
    return value


def _int_list(value, source: str, key: str) -> Tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _err(source, key, f"expected a non-empty list of positive integers, got {value!r}")
    items = tuple(_positive_int(v, source, f"{key}[{i}]") for i, v in enumerate(value))
    if len(set(items)) != len(items):
        raise _err(source, key, f"has repeated values {list(items)}")
    return items


_MODEL_FIELDS = {f.name: f for f in dataclasses.fields(ModelConfig)}
_TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _coerce_field(value, default, source: str, key: str):
    """YAML 1.1 reads ``2e-3`` as a string: coerce to the type of the field's default."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise _err(source, key, f"expected true/false, got {value!r}")
        return value
    if isinstance(default, int) or (default is None and isinstance(value, int)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _err(source, key, f"expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool):
            raise _err(source, key, f"expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise _err(source, key, f"expected a number, got {value!r}") from None
    return value


def _parse_model(name: str, spec, source: str) -> ModelConfig:
    key = f"models.{name}"
    if isinstance(spec, str):
        spec = {"base": spec}
    if not isinstance(spec, dict):
        raise _err(source, key, f"expected a preset name or a mapping with 'base', got {spec!r}")
    if "base" not in spec:
        raise _err(source, key, f"missing 'base' (a preset: {sorted(PRESETS)})")
    base = spec["base"]
    if base not in PRESETS:
        raise _err(source, f"{key}.base", f"unknown preset {base!r}; choose one of {sorted(PRESETS)}")
    overrides = {}
    for field, value in spec.items():
        if field == "base":
            continue
        if field in ("max_items", "max_tokens"):
            raise _err(source, f"{key}.{field}",
                       f"set {field} with the grid's top-level {field} list, not per model")
        if field not in _MODEL_FIELDS:
            raise _err(source, f"{key}.{field}",
                       f"unknown ModelConfig field; known: {sorted(_MODEL_FIELDS)}")
        overrides[field] = _coerce_field(value, getattr(PRESETS[base], field), source,
                                         f"{key}.{field}")
    mc = PRESETS[base].replace(**overrides)
    if mc.hidden_dim % mc.num_heads:
        raise _err(source, key, f"hidden_dim {mc.hidden_dim} is not divisible by "
                                f"num_heads {mc.num_heads}")
    return mc


def parse_grid(raw: Mapping[str, Any], source: str = "grid") -> Grid:
    """Validates a grid mapping (the YAML's content); raises :class:`GridError`."""
    if not isinstance(raw, dict):
        raise GridError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(GRID_KEYS))
    if unknown:
        raise _err(source, unknown[0], f"unknown key; known keys: {list(GRID_KEYS)}")
    for key in ("steps", "models", "batch_sizes"):
        if key not in raw:
            raise _err(source, key, "required key is missing")
    steps = _positive_int(raw["steps"], source, "steps")

    models_raw = raw["models"]
    if isinstance(models_raw, list):
        if not all(isinstance(m, str) for m in models_raw):
            raise _err(source, "models", "a list must hold preset names; use a mapping "
                                         "name -> {base: preset, ...} for overrides")
        models_raw = {m: m for m in models_raw}
    if not isinstance(models_raw, dict) or not models_raw:
        raise _err(source, "models", f"expected a non-empty mapping name -> preset or "
                                     f"{{base: preset, field: value}}, got {models_raw!r}")
    models = tuple((str(n), _parse_model(str(n), s, source)) for n, s in models_raw.items())

    batch_sizes = _int_list(raw["batch_sizes"], source, "batch_sizes")
    max_items = _int_list(raw["max_items"], source, "max_items") if "max_items" in raw else (None,)
    max_tokens = (_int_list(raw["max_tokens"], source, "max_tokens")
                  if "max_tokens" in raw else (None,))
    if "vocab_size" in raw:
        v = _positive_int(raw["vocab_size"], source, "vocab_size")
        for name, _ in models:
            spec = models_raw[name]
            if isinstance(spec, dict) and "vocab_size" in spec:
                raise _err(source, f"models.{name}.vocab_size",
                           "set either the top-level vocab_size or per-model ones, not both")
        models = tuple((n, m.replace(vocab_size=v)) for n, m in models)

    train_raw = raw.get("train") or {}
    if not isinstance(train_raw, dict):
        raise _err(source, "train", f"expected a mapping of TrainConfig fields, got {train_raw!r}")
    train = {}
    for field, value in train_raw.items():
        key = f"train.{field}"
        if field in ("batch_size", "train_steps", "seed"):
            top = {"batch_size": "batch_sizes", "train_steps": "steps", "seed": "seed"}[field]
            raise _err(source, key, f"set it with the top-level {top!r} key")
        if field not in _TRAIN_FIELDS:
            raise _err(source, key, f"unknown TrainConfig field; known: {sorted(_TRAIN_FIELDS)}")
        train[field] = _coerce_field(value, getattr(TrainConfig(), field), source, key)
    if "checkpoint_every" not in train:
        train["checkpoint_every"] = steps // 4 if steps % 4 == 0 else steps
    ce = train["checkpoint_every"]
    if ce < 1 or steps % ce:
        raise _err(source, "train.checkpoint_every",
                   f"must be a positive divisor of steps ({steps}), got {ce}")
    train.setdefault("log_every", max(1, min(TrainConfig().log_every, steps)))

    precision = raw.get("precision", "float32")
    if precision not in PRECISIONS:
        raise _err(source, "precision", f"expected one of {list(PRECISIONS)}, got {precision!r}")
    heldout_batch_size = _positive_int(raw.get("heldout_batch_size", min(batch_sizes)), source,
                                       "heldout_batch_size")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise _err(source, "seed", f"expected a non-negative integer, got {seed!r}")

    downstream = None
    ds_raw = raw.get("downstream")
    if ds_raw is not None:
        if isinstance(ds_raw, str):
            ds_raw = {"task": ds_raw}
        if not isinstance(ds_raw, dict):
            raise _err(source, "downstream", f"expected a mapping with 'task', got {ds_raw!r}")
        bad = sorted(set(ds_raw) - set(DOWNSTREAM_KEYS))
        if bad:
            raise _err(source, f"downstream.{bad[0]}", f"unknown key; known: {list(DOWNSTREAM_KEYS)}")
        if not isinstance(ds_raw.get("task"), str) or not ds_raw.get("task"):
            raise _err(source, "downstream.task", f"expected a task name, got {ds_raw.get('task')!r}")
        epochs = _positive_int(ds_raw.get("epochs", 1), source, "downstream.epochs")
        seq = ds_raw.get("sequence_models", False)
        if not isinstance(seq, bool):
            raise _err(source, "downstream.sequence_models", f"expected true/false, got {seq!r}")
        downstream = DownstreamSpec(ds_raw["task"], epochs, seq)

    name = str(raw.get("name") or os.path.splitext(os.path.basename(source))[0])
    return Grid(name=name, source=source, steps=steps, models=models, batch_sizes=batch_sizes,
                max_items=max_items, max_tokens=max_tokens, train_overrides=train,
                precision=precision, heldout_batch_size=heldout_batch_size,
                downstream=downstream, seed=seed, raw=dict(raw))


def load_grid(path: str) -> Grid:
    """Reads and validates a YAML grid file."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise GridError(f"{path}: grid file not found") from None
    except yaml.YAMLError as e:
        raise GridError(f"{path}: not valid YAML: {e}") from None
    return parse_grid(raw, source=path)


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


def run_dir(out_dir: str, run_id: str) -> str:
    return os.path.join(out_dir, "runs", run_id)


def is_finished(out_dir: str, run_id: str) -> bool:
    return os.path.exists(os.path.join(run_dir(out_dir, run_id), RESULT_FILE))


def data_fingerprint(data_dir: str) -> str:
    """SHA-256 of ``manifest.json`` (a `clue synth` directory) or of the behaviour
    files' names and sizes; ties an output directory to one data set."""
    manifest = os.path.join(data_dir, "manifest.json")
    h = hashlib.sha256()
    if os.path.exists(manifest):
        with open(manifest, "rb") as f:
            h.update(f.read())
        return h.hexdigest()
    behaviors = os.path.join(data_dir, "behaviors")
    if not os.path.isdir(behaviors):
        raise FileNotFoundError(f"{data_dir}: neither manifest.json nor behaviors/ found; "
                                "--data must be a `clue synth` style data directory")
    for name in sorted(os.listdir(behaviors)):
        h.update(f"{name}:{os.path.getsize(os.path.join(behaviors, name))}\n".encode())
    return h.hexdigest()


def _check_study(out_dir: str, data_dir: str, grid: Grid) -> None:
    """Records which data the output directory belongs to; refuses other data."""
    path = os.path.join(out_dir, STUDY_FILE)
    fp = data_fingerprint(data_dir)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old.get("data_fingerprint") != fp:
            raise ValueError(
                f"{out_dir} holds runs on other data ({old.get('data_dir')}, fingerprint "
                f"{str(old.get('data_fingerprint'))[:12]}); --data {data_dir} has fingerprint "
                f"{fp[:12]}. Use a new --out directory.")
    write_json_atomic(path, {"data_dir": os.path.abspath(data_dir), "data_fingerprint": fp,
                             "grid": grid.raw, "grid_source": grid.source})


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------

Executor = Callable[[RunSpec, str, str, Callable[[str], None]], Dict[str, Any]]


@dataclasses.dataclass
class GridOutcome:
    finished: List[str]   # run ids finished in this invocation
    skipped: List[str]    # run ids that were already finished
    failed: Dict[str, str]  # run id -> error message
    pending: List[str]    # run ids not attempted (max_runs reached)


def run_grid(grid: Grid, data_dir: str, out_dir: str, max_runs: Optional[int] = None,
             printer: Callable[[str], None] = print,
             executor: Optional[Executor] = None) -> GridOutcome:
    """Trains every unfinished run of ``grid``; finished runs are skipped.

    Args:
      grid: the parsed grid.
      data_dir: a `clue synth` style data directory (``behaviors/``,
        ``downstream/<task>/``).
      out_dir: study directory (``runs/<id>/``, ``records/``, ``study.json``).
      max_runs: stop after this many runs were trained in this call
        (``None``: all); the rest stay pending for the next call.
      printer: progress lines.
      executor: ``executor(spec, data_dir, run_dir, printer) -> measurements``
        with ``params``, ``final_train_loss``, ``heldout_loss``, ``downstream``
        and ``history``; default :func:`execute_run` (real training).

    Returns:
      What happened to each run id. A run that raises is recorded in
      ``runs/<id>/error.json`` and retried on the next call.
    """
    executor = executor or execute_run
    if grid.downstream:
        task_dir = os.path.join(data_dir, "downstream", grid.downstream.task)
        if not os.path.isdir(task_dir):
            raise FileNotFoundError(f"downstream task {grid.downstream.task!r}: {task_dir} "
                                    f"does not exist (grid {grid.source}, key downstream.task)")
    os.makedirs(out_dir, exist_ok=True)
    _check_study(out_dir, data_dir, grid)
    runs = grid.runs()
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        dup = next(r for r in runs if ids.count(r.run_id) > 1)
        raise GridError(f"{grid.source}: models: two model names give the same configuration "
                        f"({dup.describe()}); give each model distinct settings")
    outcome = GridOutcome([], [], {}, [])
    for i, spec in enumerate(runs, 1):
        rid = spec.run_id
        head = f"[{i}/{len(runs)}] {rid} {spec.describe()}"
        if is_finished(out_dir, rid):
            printer(f"{head}: skip (done)")
            outcome.skipped.append(rid)
            continue
        if max_runs is not None and len(outcome.finished) + len(outcome.failed) >= max_runs:
            outcome.pending.append(rid)
            continue
        rdir = run_dir(out_dir, rid)
        os.makedirs(rdir, exist_ok=True)
        write_json_atomic(os.path.join(rdir, "config.json"),
                          {"run_id": rid, "model": spec.model, **spec.canonical()})
        printer(f"{head}: {spec.planned_params:,} params, {spec.planned_pf_days:.3g} PF-days")
        start = time.time()
        try:
            measured = executor(spec, data_dir, rdir, printer)
        except Exception as e:  # noqa: BLE001  (recorded, reported, retried next call)
            msg = f"{type(e).__name__}: {e}"
            write_json_atomic(os.path.join(rdir, "error.json"), {"error": msg})
            printer(f"{head}: FAILED {msg}")
            outcome.failed[rid] = msg
            continue
        result = make_result(spec, measured, wall_seconds=time.time() - start)
        write_json_atomic(os.path.join(rdir, RESULT_FILE), result)
        if os.path.exists(os.path.join(rdir, "error.json")):
            os.remove(os.path.join(rdir, "error.json"))
        outcome.finished.append(rid)
        mrr = (result["downstream"] or {}).get("mrr")
        printer(f"{head}: done in {result['wall_seconds']:.0f} s, held-out loss "
                f"{result['heldout_loss']:.4f}" + (f", MRR {mrr:.4f}" if mrr is not None else ""))
    if outcome.pending:
        printer(f"stopped after {max_runs} run(s); {len(outcome.pending)} pending "
                f"(run again to continue)")
    return outcome


def make_result(spec: RunSpec, measured: Mapping[str, Any], wall_seconds: float) -> Dict[str, Any]:
    """The ``result.json`` record: the spec, the measurements and the compute bookkeeping."""
    params = int(measured["params"])
    return {
        "run_id": spec.run_id,
        "model": spec.model,
        "params": params,
        "batch_size": spec.batch_size,
        "steps": spec.steps,
        "max_items": spec.max_items,
        "max_tokens": spec.max_tokens,
        "sequence_length": spec.sequence_length,
        "tokens_seen": tokens_seen(spec.batch_size, spec.steps, spec.max_items, spec.max_tokens),
        "pf_days": pf_days(params, spec.batch_size, spec.steps, spec.sequence_length),
        "final_train_loss": float(measured["final_train_loss"]),
        "heldout_loss": float(measured["heldout_loss"]),
        "heldout_batch_size": spec.heldout_batch_size,
        "heldout_users": measured.get("heldout_users"),
        "downstream": measured.get("downstream"),
        "history": list(measured.get("history", [])),
        "wall_seconds": float(wall_seconds),
        "stage_seconds": dict(measured.get("stage_seconds", {})),
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": spec.canonical(),
    }


def records_dir(out_dir: str, max_items: int, max_tokens: int, vocab_size: int) -> str:
    """Cache of prepared records per distinct (S, L, V)."""
    return os.path.join(out_dir, "records", f"S{max_items}_L{max_tokens}_V{vocab_size}")


def ensure_records(data_dir: str, out_dir: str, mc: ModelConfig,
                   printer: Callable[[str], None] = print) -> str:
    """Prepares (once) the records for the model's S, L and vocabulary size; returns the dir.

    ``stats.json`` is written last by :func:`clue_keras.prepare.prepare_local`, so its
    presence marks a complete cache entry.
    """
    from clue_keras.prepare import prepare_local

    path = records_dir(out_dir, mc.max_items, mc.max_tokens, mc.vocab_size)
    if not os.path.exists(os.path.join(path, "stats.json")):
        printer(f"preparing records S={mc.max_items} L={mc.max_tokens} V={mc.vocab_size} "
                f"into {path}")
        prepare_local(data_dir, path, max_items=mc.max_items, max_tokens=mc.max_tokens,
                      vocab_size=mc.vocab_size)
    return path


def heldout_loss(pretrainer, records: str, batch_size: int) -> Tuple[float, int]:
    """Contrastive loss on the held-out users at a fixed batch size.

    Mean over all (user, A, B) terms of the full batches of ``batch_size``
    users from the ``eval`` and ``test`` splits (file order, no shuffling).

    Returns:
      (loss, users scored).
    """
    from clue_keras.data import make_dataset
    from clue_keras.tokenizer import load_vocab_info

    info = load_vocab_info(os.path.join(records, "vocab"))
    files = [os.path.join(records, f"Split-{s}", "*.tfrecord.gz") for s in HELDOUT_SPLITS]
    ds = make_dataset(files, info, batch_size, shuffle=False, repeat=False, drop_remainder=True)
    total, terms, users = 0.0, 0.0, 0
    for batch in ds:
        loss, pairs = pretrainer.compute_contrastive_loss({"token_ids": batch["token_ids"]})
        total += float(loss) * float(pairs)
        terms += float(pairs)
        users += int(batch["token_ids"].shape[0])
    if not users:
        raise ValueError(f"fewer held-out users in {records} than heldout_batch_size="
                         f"{batch_size}; lower heldout_batch_size or add users")
    return total / max(terms, 1.0), users


def execute_run(spec: RunSpec, data_dir: str, rdir: str,
                printer: Callable[[str], None] = print) -> Dict[str, Any]:
    """Trains one run (resuming from its checkpoints), scores held-out loss, exports the
    SavedModel and evaluates downstream. Each stage's output is reused if complete."""
    import keras

    from clue_keras.train import load_pretrainer, train

    out_dir = os.path.dirname(os.path.dirname(rdir))
    seconds: Dict[str, float] = {}
    t0 = time.time()
    records = ensure_records(data_dir, out_dir, spec.model_config, printer)
    seconds["records"], t0 = time.time() - t0, time.time()
    vocab_dir = os.path.join(records, "vocab")
    model_dir = os.path.join(rdir, "model")
    done = os.path.join(model_dir, "train_result.json")
    trained = None
    if os.path.exists(done):
        with open(done) as f:
            trained = json.load(f)
        if trained.get("steps") != spec.steps:
            trained = None
    if trained is None:
        res = train(os.path.join(records, "Split-train", "*.tfrecord.gz"), vocab_dir,
                    spec.model_config, spec.train_config, model_dir,
                    precision=spec.precision, printer=printer)
        trained = dataclasses.asdict(res)
    seconds["train"], t0 = time.time() - t0, time.time()
    pretrainer = load_pretrainer(os.path.join(model_dir, "pretrainer.keras"))
    loss, users = heldout_loss(pretrainer, records, spec.heldout_batch_size)
    seconds["heldout"], t0 = time.time() - t0, time.time()
    printer(f"held-out contrastive loss {loss:.4f} ({users} users, batch "
            f"{spec.heldout_batch_size}, chance about {math.log(spec.heldout_batch_size):.3f})")
    downstream = None
    if spec.downstream:
        downstream = _downstream(spec, pretrainer, vocab_dir, data_dir, rdir, printer)
        seconds["downstream"] = time.time() - t0
    keras.backend.clear_session()
    printer("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    return {"params": trained["num_params"], "final_train_loss": trained["final_loss"],
            "heldout_loss": loss, "heldout_users": users, "downstream": downstream,
            "history": trained.get("history", []), "stage_seconds": seconds}


def _downstream(spec: RunSpec, pretrainer, vocab_dir: str, data_dir: str, rdir: str,
                printer: Callable[[str], None]) -> Dict[str, Any]:
    from clue_keras.export import export_saved_model

    cached = os.path.join(rdir, "downstream.json")
    if os.path.exists(cached):
        with open(cached) as f:
            return json.load(f)
    export_dir = os.path.join(rdir, "export")
    if not os.path.exists(os.path.join(export_dir, "saved_model.pb")):
        export_saved_model(pretrainer, vocab_dir, export_dir)
    from clue_tfrs.evaluate import TOPPOP, umlp_column  # tf.keras must be Keras 2 here
    from clue_tfrs.run import run_evaluation

    ds = spec.downstream
    outcome = run_evaluation(export_dir, os.path.join(data_dir, "downstream", ds.task),
                             out_dir=os.path.join(rdir, "downstream"), data_dir=data_dir,
                             epochs=ds.epochs, seed=spec.train_config.seed,
                             sequence_models=ds.sequence_models)
    table = outcome.table
    result = {"task": ds.task, "mrr": table.value(umlp_column("CLUE"), "MRR"),
              "mrr_untrained": table.value(umlp_column("Untrained"), "MRR"),
              "mrr_toppop": table.value(TOPPOP, "MRR"),
              "hr1": table.value(umlp_column("CLUE"), "HR@1"),
              "ndcg10": table.value(umlp_column("CLUE"), "NDCG@10")}
    printer(f"downstream {ds.task}: MRR {result['mrr']:.4f} (untrained "
            f"{result['mrr_untrained']:.4f}, TopPop {result['mrr_toppop']:.4f})")
    write_json_atomic(cached, result)
    try:
        import tf_keras

        tf_keras.backend.clear_session()
    except ImportError:  # pragma: no cover
        pass
    return result


# --------------------------------------------------------------------------
# Results, fit, plots, report
# --------------------------------------------------------------------------

CSV_COLUMNS = ("run_id", "model", "params", "batch_size", "max_items", "max_tokens", "steps",
               "tokens_seen", "pf_days", "final_train_loss", "heldout_loss", "downstream_mrr",
               "downstream_mrr_untrained", "wall_seconds")


def collect_results(out_dir: str, run_ids: Optional[Iterable[str]] = None) -> List[Dict[str, Any]]:
    """``result.json`` of the given runs (default: all finished runs), sorted by PF-days."""
    runs_root = os.path.join(out_dir, "runs")
    if run_ids is None:
        run_ids = sorted(os.listdir(runs_root)) if os.path.isdir(runs_root) else []
    results = []
    for rid in run_ids:
        path = os.path.join(runs_root, rid, RESULT_FILE)
        if os.path.exists(path):
            with open(path) as f:
                results.append(json.load(f))
    return sorted(results, key=lambda r: (r["pf_days"], r["run_id"]))


def _row(r: Mapping[str, Any]) -> Dict[str, Any]:
    ds = r.get("downstream") or {}
    return {"run_id": r["run_id"], "model": r["model"], "params": r["params"],
            "batch_size": r["batch_size"], "max_items": r["max_items"],
            "max_tokens": r["max_tokens"], "steps": r["steps"], "tokens_seen": r["tokens_seen"],
            "pf_days": r["pf_days"], "final_train_loss": r["final_train_loss"],
            "heldout_loss": r["heldout_loss"], "downstream_mrr": ds.get("mrr", ""),
            "downstream_mrr_untrained": ds.get("mrr_untrained", ""),
            "wall_seconds": round(r.get("wall_seconds", float("nan")), 1)}


def write_results_csv(results: Sequence[Mapping[str, Any]], path: str) -> None:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in results:
        writer.writerow(_row(r))
    write_text_atomic(path, buf.getvalue())


def compute_frontier(compute: Sequence[float], loss: Sequence[float]) -> List[int]:
    """Indices of the compute frontier, in increasing compute.

    A point is on the frontier when its loss is strictly lower than the loss of
    every point with less (or equal, and listed earlier after sorting) compute:
    the Pareto front of (compute, loss), both minimised.
    """
    c, l = np.asarray(compute, float), np.asarray(loss, float)  # noqa: E741
    order = np.lexsort((l, c))  # by compute, ties by loss
    best, keep = math.inf, []
    for i in order:
        if np.isfinite(l[i]) and l[i] < best:
            keep.append(int(i))
            best = l[i]
    return keep


@dataclasses.dataclass
class PowerLawFit:
    """``loss = a * C^-b + c`` fitted on ``n`` points (``c`` is 0 for the pure power law).

    ``r2``: coefficient of determination on the loss values; ``r2_log``: on log(loss).
    ``ok`` is False (with ``reason``) when there were too few points or the fit failed.
    """

    with_offset: bool
    n: int
    a: float = float("nan")
    b: float = float("nan")
    c: float = 0.0
    r2: float = float("nan")
    r2_log: float = float("nan")
    ok: bool = True
    reason: str = ""

    def predict(self, compute) -> np.ndarray:
        return self.a * np.power(np.asarray(compute, float), -self.b) + self.c

    def formula(self) -> str:
        if not self.ok:
            return f"not fitted ({self.reason})"
        tail = f" + {self.c:.4g}" if self.with_offset else ""
        return f"L = {self.a:.4g} * C^-{self.b:.4g}{tail}"


def _r2(y, pred) -> float:
    y, pred = np.asarray(y, float), np.asarray(pred, float)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0.0:
        return float("nan")
    return 1.0 - float(np.sum((y - pred) ** 2)) / ss_tot


def fit_power_law(compute: Sequence[float], loss: Sequence[float],
                  with_offset: bool = True) -> PowerLawFit:
    """Fits ``loss = a * C^-b (+ c)`` by least squares.

    Without offset: ordinary least squares of log L on log C (needs 2 points).
    With offset: ``scipy.optimize.curve_fit`` of ``exp(log_a - b log C) + c`` with
    ``0 <= c <= min(L)`` and ``b >= 0`` started from the pure power law (needs 4
    points: 3 parameters plus one degree of freedom).
    """
    c_arr, l_arr = np.asarray(compute, float), np.asarray(loss, float)
    good = np.isfinite(c_arr) & np.isfinite(l_arr) & (c_arr > 0) & (l_arr > 0)
    c_arr, l_arr = c_arr[good], l_arr[good]
    n = int(c_arr.size)
    need = 4 if with_offset else 2
    fit = PowerLawFit(with_offset=with_offset, n=n)
    if n < need or np.unique(c_arr).size < min(need, 2):
        fit.ok, fit.reason = False, f"needs >= {need} points with distinct compute, has {n}"
        return fit
    x, y = np.log(c_arr), np.log(l_arr)
    slope, intercept = np.polyfit(x, y, 1)
    fit.a, fit.b = float(math.exp(intercept)), float(-slope)
    if with_offset:
        from scipy.optimize import curve_fit

        def model(xx, log_a, b, c):
            return np.exp(log_a - b * xx) + c

        c_max = float(l_arr.min())
        c0 = 0.5 * c_max
        # start from the log-log fit of the loss above half the lowest value
        s0, i0 = np.polyfit(x, np.log(np.maximum(l_arr - c0, 1e-12)), 1)
        p0 = [i0, max(-s0, 1e-6), c0]
        try:
            popt, _ = curve_fit(model, x, l_arr, p0=p0,
                                bounds=([-np.inf, 0.0, 0.0], [np.inf, np.inf, c_max]),
                                maxfev=20000)
        except (RuntimeError, ValueError) as e:
            fit.ok, fit.reason = False, f"curve_fit failed: {e}"
            return fit
        fit.a, fit.b, fit.c = float(math.exp(popt[0])), float(popt[1]), float(popt[2])
    pred = fit.predict(c_arr)
    fit.r2 = _r2(l_arr, pred)
    fit.r2_log = _r2(np.log(l_arr), np.log(np.maximum(pred, 1e-300)))
    return fit


def fit_frontier(results: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Frontier of held-out loss vs PF-days and both fits, as a JSON-able dict."""
    compute = [r["pf_days"] for r in results]
    loss = [r["heldout_loss"] for r in results]
    idx = compute_frontier(compute, loss)
    fc, fl = [compute[i] for i in idx], [loss[i] for i in idx]
    fits = {"offset": fit_power_law(fc, fl, with_offset=True),
            "pure": fit_power_law(fc, fl, with_offset=False)}
    out: Dict[str, Any] = {"frontier_run_ids": [results[i]["run_id"] for i in idx],
                           "frontier": [{"pf_days": c, "heldout_loss": l} for c, l in zip(fc, fl)],
                           "fits": {k: dataclasses.asdict(v) for k, v in fits.items()}}
    mrr = [((r.get("downstream") or {}).get("mrr"), r["heldout_loss"]) for r in results]
    mrr = [(m, l) for m, l in mrr if m is not None]
    if len(mrr) >= 3:
        from scipy.stats import pearsonr, spearmanr

        m, l = zip(*mrr)  # noqa: E741
        out["transfer"] = {"n": len(mrr), "spearman": float(spearmanr(l, m).statistic),
                           "pearson": float(pearsonr(l, m).statistic)}
    return out


def _fits_from(fit_json: Mapping[str, Any]) -> Dict[str, PowerLawFit]:
    return {k: PowerLawFit(**v) for k, v in fit_json["fits"].items()}


def _groups(results, key_fn, sort_fn):
    groups: Dict[Any, List[Mapping[str, Any]]] = {}
    for r in results:
        groups.setdefault(key_fn(r), []).append(r)
    return {k: sorted(v, key=sort_fn) for k, v in sorted(groups.items(), key=lambda kv: str(kv[0]))}


def plot_figure4(results: Sequence[Mapping[str, Any]], path: str) -> None:
    """Figure-4-like: held-out loss (top) and downstream MRR (bottom) vs PF-days.

    Columns vary one factor along each line, holding the other two fixed:
    model size (dots in increasing parameters), batch size, sequence length S.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_mrr = any((r.get("downstream") or {}).get("mrr") is not None for r in results)
    rows = [("heldout_loss", "held-out contrastive loss")]
    if has_mrr:
        rows.append(("mrr", "downstream MRR (U-MLP on CLUE)"))
    panels = [
        ("model size", lambda r: f"B={r['batch_size']} S={r['max_items']} L={r['max_tokens']}",
         lambda r: r["params"]),
        ("batch size", lambda r: f"{r['model']} S={r['max_items']} L={r['max_tokens']}",
         lambda r: r["batch_size"]),
        ("sequence length S", lambda r: f"{r['model']} B={r['batch_size']} L={r['max_tokens']}",
         lambda r: (r["max_items"], r["max_tokens"])),
    ]
    fig, axes = plt.subplots(len(rows), 3, figsize=(15, 4.2 * len(rows)), squeeze=False)
    for ri, (field, ylabel) in enumerate(rows):
        for ci, (title, key_fn, sort_fn) in enumerate(panels):
            ax = axes[ri][ci]
            for label, group in _groups(results, key_fn, sort_fn).items():
                xs = [g["pf_days"] for g in group]
                ys = [g[field] if field != "mrr" else (g.get("downstream") or {}).get("mrr")
                      for g in group]
                pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=label)
            ax.set_xscale("log")
            ax.set_xlabel("compute (PF-days)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"varying {title} along each line")
            ax.grid(True, which="both", alpha=0.3)
            if ri == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def plot_figure5(results: Sequence[Mapping[str, Any]], fit_json: Mapping[str, Any],
                 path: str) -> None:
    """Figure-5-like. Left: held-out loss vs PF-days (log-log), frontier and fits.
    Right: downstream MRR vs held-out pre-training loss, one dot per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    models = sorted({r["model"] for r in results},
                    key=lambda m: min(r["params"] for r in results if r["model"] == m))
    colors = {m: f"C{i % 10}" for i, m in enumerate(models)}
    for m in models:
        rs = [r for r in results if r["model"] == m]
        left.scatter([r["pf_days"] for r in rs], [r["heldout_loss"] for r in rs],
                     color=colors[m], alpha=0.6, label=m)
    front = fit_json["frontier"]
    if front:
        fx = [p["pf_days"] for p in front]
        fy = [p["heldout_loss"] for p in front]
        left.plot(fx, fy, "k--", lw=1, marker="s", mfc="none", ms=9, label="frontier")
        grid_x = np.geomspace(min(r["pf_days"] for r in results),
                              max(r["pf_days"] for r in results), 100)
        for (name, fit), style in zip(_fits_from(fit_json).items(), ("-", ":")):
            if fit.ok:
                left.plot(grid_x, fit.predict(grid_x), "r" + style,
                          label=f"{fit.formula()} (R²={fit.r2:.3f})")
    left.set_xscale("log")
    left.set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter

    left.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))
    left.yaxis.set_minor_formatter(FormatStrFormatter("%.2f"))
    left.set_xlabel("compute (PF-days)")
    left.set_ylabel("held-out contrastive loss")
    left.set_title("test loss on the training distribution vs compute")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7)
    pts = [(r["heldout_loss"], (r.get("downstream") or {}).get("mrr"), r["model"]) for r in results]
    pts = [p for p in pts if p[1] is not None]
    if pts:
        for m in models:
            mp = [p for p in pts if p[2] == m]
            if mp:
                right.scatter([p[0] for p in mp], [p[1] for p in mp], color=colors[m], label=m)
        base = [(r.get("downstream") or {}).get("mrr_untrained") for r in results]
        base = [b for b in base if b is not None]
        if base:
            right.axhline(float(np.mean(base)), color="gray", ls=":",
                          label="untrained encoder (mean)")
        tr = fit_json.get("transfer")
        title = "downstream MRR vs pre-training loss"
        if tr:
            title += f" (Spearman {tr['spearman']:.2f})"
        right.set_title(title)
        right.legend(fontsize=7)
    else:
        right.text(0.5, 0.5, "no downstream evaluation in this grid", ha="center",
                   transform=right.transAxes)
    right.set_xlabel("held-out contrastive loss")
    right.set_ylabel("downstream MRR (U-MLP on CLUE)")
    right.grid(True, alpha=0.3)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def plot_learning_curves(results: Sequence[Mapping[str, Any]], path: str) -> None:
    """Training loss vs compute spent so far (PF-days at each logged step), one curve per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, r in enumerate(results):
        hist = [h for h in r.get("history", []) if math.isfinite(h.get("loss", float("nan")))]
        if not hist:
            continue
        x = [pf_days(r["params"], r["batch_size"], h["step"], r["sequence_length"]) for h in hist]
        ax.plot(x, [h["loss"] for h in hist], lw=1, color=plt.get_cmap("tab20")(i % 20),
                label=f"{r['model']} B={r['batch_size']} S={r['max_items']}")
    ax.set_xscale("log")
    ax.set_xlabel("compute so far (PF-days)")
    ax.set_ylabel("training loss at the run's batch B")
    ax.set_title("learning curves (running mean within each checkpoint interval)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def _savefig(fig, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fmt(v, spec=".4f") -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan"
    return format(v, spec)


def results_table_markdown(results: Sequence[Mapping[str, Any]],
                           frontier_ids: Sequence[str] = ()) -> str:
    """One row per run, in increasing PF-days; frontier runs marked with *."""
    lines = ["| run | model | params | B | S | L | steps | tokens seen | PF-days | train loss "
             "| held-out loss | MRR | MRR untrained |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        ds = r.get("downstream") or {}
        mark = " *" if r["run_id"] in frontier_ids else ""
        lines.append(
            f"| `{r['run_id']}`{mark} | {r['model']} | {r['params']:,} | {r['batch_size']} | "
            f"{r['max_items']} | {r['max_tokens']} | {r['steps']} | {r['tokens_seen']:,} | "
            f"{r['pf_days']:.3e} | {_fmt(r['final_train_loss'])} | {_fmt(r['heldout_loss'])} | "
            f"{_fmt(ds.get('mrr'))} | {_fmt(ds.get('mrr_untrained'))} |")
    return "\n".join(lines) + "\n"


def fit_markdown(fit_json: Mapping[str, Any]) -> str:
    lines = ["| fit | a | b | c | R² (loss) | R² (log loss) | frontier points |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    names = {"offset": "L = a·C^-b + c (c ≥ 0)", "pure": "L = a·C^-b"}
    for key, fit in _fits_from(fit_json).items():
        if fit.ok:
            lines.append(f"| {names[key]} | {fit.a:.4g} | {fit.b:.4f} | {fit.c:.4f} | "
                         f"{fit.r2:.4f} | {fit.r2_log:.4f} | {fit.n} |")
        else:
            lines.append(f"| {names[key]} | - | - | - | - | - | {fit.n} ({fit.reason}) |")
    return "\n".join(lines) + "\n"


def write_report(out_dir: str, grid: Grid, results: Sequence[Mapping[str, Any]],
                 fit_json: Mapping[str, Any], command: Optional[str] = None,
                 pending: int = 0) -> str:
    """Writes ``<out>/REPORT.md`` (figures referenced by relative path); returns its path."""
    total_s = sum(r.get("wall_seconds", 0.0) for r in results)
    tr = fit_json.get("transfer")
    parts = [
        f"# Scaling study `{grid.name}`\n",
        f"Grid `{grid.source}`: {len(grid.models)} model(s) x {len(grid.batch_sizes)} batch "
        f"size(s) x {len(grid.max_items)} S x {len(grid.max_tokens)} L, {grid.steps} steps "
        f"each; {len(results)} finished run(s)"
        + (f", {pending} pending" if pending else "") + f", {total_s / 60:.1f} min of runs.\n",
    ]
    if command:
        parts.append(f"```\n{command}\n```\n")
    parts += [
        "PF-days = 6 x params x B x steps x (S x L) / 8.64e19; tokens seen = B x steps x S x L "
        "(token slots of one service sequence, padding included; the P services of a user are "
        "not multiplied in). Held-out loss: contrastive loss on the eval+test users at batch "
        f"{grid.heldout_batch_size} for every run (chance about ln {grid.heldout_batch_size} = "
        f"{math.log(grid.heldout_batch_size):.3f}). Train loss is at the run's own batch size "
        "and is not comparable across batch sizes. Runs marked * are on the compute frontier.\n",
        "## Runs\n", results_table_markdown(results, fit_json["frontier_run_ids"]),
        "## Power-law fit on the compute frontier\n", fit_markdown(fit_json),
    ]
    if tr:
        parts.append(f"Downstream MRR vs held-out loss over {tr['n']} runs: Spearman "
                     f"{tr['spearman']:.3f}, Pearson {tr['pearson']:.3f} (negative = lower "
                     "pre-training loss, higher MRR).\n")
    parts += ["## Figures\n", f"![Figure 4-like]({FIGURE4})\n", f"![Figure 5-like]({FIGURE5})\n",
              f"![learning curves]({CURVES})\n"]
    path = os.path.join(out_dir, REPORT_FILE)
    write_text_atomic(path, "\n".join(parts))
    return path


def summarize(out_dir: str, grid: Grid, command: Optional[str] = None) -> Dict[str, Any]:
    """Rebuilds ``results.csv``, ``fit.json``, the figures and ``REPORT.md`` from the
    ``result.json`` files of the grid's runs; returns the fit dict."""
    ids = [r.run_id for r in grid.runs()]
    results = collect_results(out_dir, ids)
    if not results:
        raise ValueError(f"{out_dir}: no finished run of grid {grid.source} yet")
    write_results_csv(results, os.path.join(out_dir, RESULTS_CSV))
    fit_json = fit_frontier(results)
    write_json_atomic(os.path.join(out_dir, FIT_FILE), fit_json)
    plot_figure4(results, os.path.join(out_dir, FIGURE4))
    plot_figure5(results, fit_json, os.path.join(out_dir, FIGURE5))
    plot_learning_curves(results, os.path.join(out_dir, CURVES))
    write_report(out_dir, grid, results, fit_json, command=command,
                 pending=len(ids) - len(results))
    return fit_json
