"""Mixed-precision policy selection.

``auto``: ``mixed_float16`` (with loss scaling) on GPUs, ``float32`` on CPUs
(see `choose_policy` for why not ``mixed_bfloat16`` on CPUs with native bf16).
The policy is passed to every layer explicitly; nothing reads the global policy.
"""

from __future__ import annotations

from typing import Tuple

import tensorflow as tf

from clue_keras.config import PRECISIONS as POLICIES


def cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_policy(name: str = "auto") -> Tuple[str, str]:
    """The policy to train with and why, as ``(policy, reason)``.

    ``auto`` picks ``mixed_float16`` (with loss scaling) on a GPU and
    ``float32`` on a CPU, also on CPUs with native bf16 (AVX512-BF16 / AMX):
    there `clue bench train` measured ``mixed_bfloat16`` no faster for clue-4m
    and 1.6x slower for the tiny preset (docs/PERFORMANCE.md), so ``auto`` is
    never slower than float32. Ask for ``mixed_bfloat16`` explicitly to use it.
    """
    if name not in POLICIES:
        raise ValueError(f"unknown precision {name!r}; choose one of {POLICIES}")
    if name != "auto":
        return name, "asked for"
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16", "auto: a GPU is present"
    if cpu_has_bf16():
        return "float32", ("auto: CPU with native bf16, but mixed_bfloat16 measured no faster "
                           "than float32 on such CPUs (docs/PERFORMANCE.md)")
    return "float32", "auto: CPU without native bf16"


def resolve_policy(name: str = "auto") -> str:
    """The policy `choose_policy` picks."""
    return choose_policy(name)[0]
