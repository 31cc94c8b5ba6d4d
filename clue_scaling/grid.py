"""Scaling grids: the YAML grid file, the run specs it expands to, and the compute
accounting (tokens seen, PF-days) of each run. See `clue_scaling` for the study."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

from clue_keras import config as cfg_lib
from clue_keras.config import PRECISIONS, PRESETS, ModelConfig, TrainConfig, param_count

PF_DAY_FLOPS = 8.64e19  # one petaFLOP/s-day in FLOPs: 1e15 * 86400
HELDOUT_SPLITS = ("eval", "test")

GRID_KEYS = ("name", "steps", "models", "batch_sizes", "max_items", "max_tokens",
             "vocab_size", "train", "precision", "heldout_batch_size", "downstream", "seed")
DOWNSTREAM_KEYS = ("task", "epochs", "sequence_models")


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
    project ``sequence_length`` is S x L token slots (see `clue_scaling`).
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
