"""The local Beam runner of every default: Beam's DirectRunner without Prism.

Beam 2.74's ``DirectRunner`` (``SwitchingDirectRunner``) first tries to run a
batch pipeline on Prism, a Go runner it downloads from GitHub on first use
(``urlopen`` without a timeout), and falls back to the Python ``FnApiRunner``
only when that fails. So the same ``--runner=DirectRunner`` pipeline runs on
Prism where github.com answers, on the FnApiRunner where the name does not
resolve (this project's CI and tests), and may wait for a TCP timeout, at every
pipeline start, behind a firewall that drops the connection. Prism also ignores
``--direct_running_mode``.

`LocalDirectRunner` is that DirectRunner with the Prism attempt switched off
(through the one flag Beam consults for it, ``_is_interactive``): batch pipelines
run on the FnApiRunner, in the ``--direct_running_mode`` asked for, everywhere,
as they were tested and measured (docs/PERFORMANCE.md). ``--runner=DirectRunner``
(or ``PrismRunner``) passed explicitly still gets Beam's own choice.
"""

from __future__ import annotations

from typing import List

#: ``--runner`` value of the local defaults (:func:`local_beam_args`).
LOCAL_RUNNER = "clue_keras.data.direct_runner.LocalDirectRunner"


def local_beam_args(mode: str = "multi_processing", workers: int = 0) -> List[str]:
    """Options for `LocalDirectRunner` in ``mode`` (``in_memory``,
    ``multi_threading``, ``multi_processing``) with ``workers`` (0: one per core)."""
    return [f"--runner={LOCAL_RUNNER}", f"--direct_running_mode={mode}",
            f"--direct_num_workers={workers}"]


def _runner_class():
    from apache_beam.runners.direct.direct_runner import SwitchingDirectRunner

    class LocalDirectRunner(SwitchingDirectRunner):
        """Beam's DirectRunner that never tries Prism: the FnApiRunner for batch
        pipelines (the BundleBasedDirectRunner for what it cannot run)."""

        # SwitchingDirectRunner reads this only to decide whether to try Prism
        # (Prism does not run interactive pipelines); nothing else uses it.
        _is_interactive = True

    LocalDirectRunner.__module__ = __name__
    return LocalDirectRunner


def __getattr__(name: str):
    # The class is built on first use, so that the options above can be imported
    # (by configs and CLIs) without importing Beam.
    if name == "LocalDirectRunner":
        cls = _runner_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
