"""Typed configs with named presets.

Shapes used throughout the project:
  P = number of pre-training services (``len(services)``),
  S = ``max_items``  items kept per (user, service), newest last,
  L = ``max_tokens`` tokens per item, the first one the service token, 0 = pad.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Optional


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of the CLUE encoder (paper section 2.1)."""

    vocab_size: int = 1024          # BPE vocabulary size incl. special tokens
    max_items: int = 8              # S
    max_tokens: int = 16            # L
    hidden_dim: int = 32            # D_in = D_out (token and item width)
    child_layers: int = 1           # layers of the child transformer T_c
    parent_layers: int = 1          # layers of the parent transformer T_p
    num_heads: int = 2
    intermediate_dim: int = 64      # feed-forward width of every layer
    projection_dim: int = 32        # width of f(z) = W2 sigma(W1 z)
    output_dim: Optional[int] = None  # paper 5.4 output-dimension layer; None = hidden_dim
    dropout: float = 0.0
    logit_scale_init: float = 14.27
    logit_scale_max: float = 100.0

    @property
    def embedding_dim(self) -> int:
        """Per-service user embedding width (after the optional output layer)."""
        return self.output_dim or self.hidden_dim

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation (paper section 2.2)."""

    batch_size: int = 32            # GLOBAL batch (all replicas together)
    train_steps: int = 200
    learning_rate: float = 5e-4
    weight_decay: float = 0.1
    warmup_fraction: float = 0.01   # linear warm-up over the first 1% of steps
    final_lr_fraction: float = 0.1  # cosine decay down to 10% of the peak
    clipnorm: float = 0.01          # global-norm gradient clipping
    checkpoint_every: int = 100     # and at the end (0: only at the end)
    log_every: int = 10
    seed: int = 0
    # Set: train_steps = ceil(epochs * users with >= min_services services / batch_size),
    # counted in the training records (one pass), in place of ``train_steps``.
    epochs: Optional[float] = None
    eval_every: int = 0             # held-out loss every N steps; 0: max(1, train_steps // 10)
    patience: int = 3               # stop after N evaluations without a better held-out
                                    # loss (the best step's weights are kept); 0: never
    min_services: int = 2           # pre-training users need >= this many non-empty
                                    # services: the others contribute no loss term

    def replace(self, **kw) -> "TrainConfig":
        return dataclasses.replace(self, **kw)


#: Precision policies: ``auto`` picks by device (see `clue_keras.precision`).
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


#: Training sized for the ``tiny`` preset on a 2-core machine: the defaults of
#: `clue run`, `clue train` and `PipelineConfig` (a local run finishes in
#: minutes). `TrainConfig()`'s own defaults are the paper's (lr 5e-4).
#: ``checkpoint_every=0`` checkpoints once, at the end.
LOCAL_TRAIN = TrainConfig(train_steps=400, batch_size=64, learning_rate=2e-3, checkpoint_every=0)


# Presets. Parameter counts (vocabulary included) are printed by
# `clue presets` and pinned by tests/test_config.py; they span the paper's
# sweep of about 4M to 160M parameters, plus `tiny` for tests.
PRESETS: Dict[str, ModelConfig] = {
    "tiny": ModelConfig(),
    "clue-4m": ModelConfig(vocab_size=16000, max_items=32, max_tokens=24, hidden_dim=192,
                           child_layers=2, parent_layers=2, num_heads=4,
                           intermediate_dim=512, projection_dim=128),
    "clue-20m": ModelConfig(vocab_size=32000, max_items=64, max_tokens=32, hidden_dim=384,
                            child_layers=4, parent_layers=4, num_heads=6,
                            intermediate_dim=1024, projection_dim=256),
    "clue-60m": ModelConfig(vocab_size=50000, max_items=128, max_tokens=32, hidden_dim=512,
                            child_layers=6, parent_layers=6, num_heads=8,
                            intermediate_dim=2048, projection_dim=512),
    "clue-160m": ModelConfig(vocab_size=50000, max_items=256, max_tokens=32, hidden_dim=768,
                             child_layers=9, parent_layers=9, num_heads=12,
                             intermediate_dim=3072, projection_dim=768),
}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def to_dict(cfg: Any) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def _from_dict(cls, d: Dict[str, Any]):
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - fields
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return cls(**d)


def model_config_from_dict(d: Dict[str, Any]) -> ModelConfig:
    return _from_dict(ModelConfig, d)


def train_config_from_dict(d: Dict[str, Any]) -> TrainConfig:
    return _from_dict(TrainConfig, d)


def dumps(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), sort_keys=True)


def param_count(mc: ModelConfig) -> int:
    """Trainable parameters of the CLUE pre-trainer built from ``mc`` (closed form).

    Embeddings (tokens, token and item positions) + (child + parent) transformer
    blocks (attention 4(d^2 + d), feed-forward 2 d ff + ff + d, two LayerNorms 4d)
    + optional output layer + projection head + the logit scale. Pinned against
    the built Keras model in tests/test_config.py.
    """
    d, ff = mc.hidden_dim, mc.intermediate_dim
    embeddings = (mc.vocab_size + mc.max_tokens + mc.max_items) * d
    block = 4 * (d * d + d) + (d * ff + ff) + (ff * d + d) + 4 * d
    blocks = (mc.child_layers + mc.parent_layers) * block
    o = mc.embedding_dim
    output = (d * o + o) if mc.output_dim else 0
    projection = (o * o + o) + (o * mc.projection_dim + mc.projection_dim)
    return embeddings + blocks + output + projection + 1
