"""`--precision auto` picks a policy that is never slower than float32 here."""

import pytest
import tensorflow as tf

from clue_keras import precision


def test_auto_is_float32_on_cpus_with_or_without_bf16(monkeypatch):
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: [] if kind == "GPU" else ["cpu"])
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    policy, reason = precision.choose_policy("auto")
    assert policy == "float32" and "measured no faster" in reason
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert precision.choose_policy("auto") == ("float32", "auto: CPU without native bf16")


def test_auto_is_mixed_float16_on_a_gpu_and_explicit_choices_win(monkeypatch):
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: ["gpu"] if kind == "GPU" else ["cpu"])
    assert precision.choose_policy("auto") == ("mixed_float16", "auto: a GPU is present")
    assert precision.choose_policy("mixed_bfloat16") == ("mixed_bfloat16", "asked for")
    assert precision.resolve_policy("float32") == "float32"
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        precision.choose_policy("fp8")
