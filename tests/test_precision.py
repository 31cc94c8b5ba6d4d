"""`--precision auto` picks a policy that is never slower than float32 here."""

import pytest
import tensorflow as tf

from clue_keras import precision


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: [] if kind == "GPU" else ["cpu"])


def test_auto_on_a_bf16_cpu_is_mixed_bfloat16_only_for_wide_models(cpu_only, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    wide = precision.BF16_MIN_HIDDEN
    policy, reason = precision.choose_policy("auto", wide)
    assert policy == "mixed_bfloat16" and f"{wide} wide" in reason and "faster" in reason
    assert precision.resolve_policy("auto", 384) == "mixed_bfloat16"       # clue-20m
    for narrow in (wide - 1, 32, None):                                     # tiny; unknown
        policy, reason = precision.choose_policy("auto", narrow)
        assert policy == "float32" and "measured no faster" in reason


def test_auto_is_float32_on_cpus_without_bf16_whatever_the_width(cpu_only, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    for width in (None, 32, 192, 384):
        assert precision.choose_policy("auto", width) == (
            "float32", "auto: CPU without native bf16")


def test_auto_is_mixed_float16_on_a_gpu_and_explicit_choices_win(monkeypatch):
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: ["gpu"] if kind == "GPU" else ["cpu"])
    assert precision.choose_policy("auto", 32) == ("mixed_float16", "auto: a GPU is present")
    assert precision.choose_policy("mixed_bfloat16") == ("mixed_bfloat16", "asked for")
    assert precision.choose_policy("float32", 384) == ("float32", "asked for")
    assert precision.resolve_policy("float32") == "float32"
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        precision.choose_policy("fp8")
