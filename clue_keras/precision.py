"""Mixed-precision policy selection.

``mixed_float16`` (with loss scaling) on GPUs, ``mixed_bfloat16`` on CPUs with
native bf16 (AVX512_BF16 / AMX), ``float32`` otherwise. The policy is passed to
every layer explicitly; nothing reads the global policy.
"""

from __future__ import annotations

import tensorflow as tf

POLICIES = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


def cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_policy(name: str = "auto") -> str:
    if name not in POLICIES:
        raise ValueError(f"unknown precision {name!r}; choose one of {POLICIES}")
    if name != "auto":
        return name
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    if cpu_has_bf16():
        return "mixed_bfloat16"
    return "float32"
