"""Mixed-precision policy selection.

``auto``: ``mixed_float16`` (with loss scaling) on GPUs; on CPUs with native
bf16 (AVX512-BF16 / AMX) ``mixed_bfloat16`` for models at least
`BF16_MIN_HIDDEN` wide and ``float32`` for narrower ones; ``float32`` on other
CPUs. `choose_policy` says why; the Trainer logs it. The policy is passed to
every layer explicitly; nothing reads the global policy.
"""

from __future__ import annotations

from typing import Optional, Tuple

import tensorflow as tf

from clue_keras.config import PRECISIONS as POLICIES

#: Narrowest model (``hidden_dim``) for which ``auto`` trains in ``mixed_bfloat16`` on a
#: CPU with native bf16. `clue bench train` on a Xeon with AMX and on an AMD EPYC with
#: AVX512-BF16 (docs/PERFORMANCE.md, "Precision"): clue-4m (192 wide) and clue-20m (384)
#: step 1.5-1.7x faster in mixed_bfloat16 than in float32 on both; tiny (32) is 1.1-1.3x
#: faster on the AMD, but no faster bucketed and slower padded, its default, on the Xeon.
BF16_MIN_HIDDEN = 128


def cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_policy(name: str = "auto", hidden_dim: Optional[int] = None) -> Tuple[str, str]:
    """The policy to train with and why, as ``(policy, reason)``.

    ``auto`` picks ``mixed_float16`` (with loss scaling) on a GPU. On a CPU with
    native bf16 it picks ``mixed_bfloat16`` when the model is at least
    `BF16_MIN_HIDDEN` wide (``hidden_dim``; unknown counts as narrow), where
    `clue bench train` measured it faster than float32, and ``float32`` for
    narrower models, where it was not; on other CPUs ``float32``. So ``auto`` is
    never slower than float32 by those measurements. Any other name is taken as asked.
    """
    if name not in POLICIES:
        raise ValueError(f"unknown precision {name!r}; choose one of {POLICIES}")
    if name != "auto":
        return name, "asked for"
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16", "auto: a GPU is present"
    if not cpu_has_bf16():
        return "float32", "auto: CPU without native bf16"
    if hidden_dim is not None and hidden_dim >= BF16_MIN_HIDDEN:
        return "mixed_bfloat16", (
            f"auto: CPU with native bf16 and a model {hidden_dim} wide (>= {BF16_MIN_HIDDEN}), "
            "where mixed_bfloat16 measured faster than float32 (docs/PERFORMANCE.md)")
    width = "of unknown width" if hidden_dim is None else f"{hidden_dim} wide"
    return "float32", (
        f"auto: CPU with native bf16, but a model {width} (< {BF16_MIN_HIDDEN}), "
        "where mixed_bfloat16 measured no faster than float32 (docs/PERFORMANCE.md)")


def resolve_policy(name: str = "auto", hidden_dim: Optional[int] = None) -> str:
    """The policy `choose_policy` picks."""
    return choose_policy(name, hidden_dim)[0]
