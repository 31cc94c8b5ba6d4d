"""The local Beam runner of every default: Beam's DirectRunner without its Prism
attempt (`clue_keras.data.direct_runner`), so pipelines run on the FnApiRunner
whether or not github.com answers."""

import subprocess
import sys

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability import prism_runner
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.testing.util import assert_that, equal_to

from clue_bench.preprocess import beam_options
from clue_keras.data.direct_runner import LOCAL_RUNNER, local_beam_args
from clue_keras.data.prepare import IN_PROCESS_OPTIONS
from clue_keras.embeddings.batch import DEFAULT_BEAM_ARGS as EXPORT_ARGS
from tfx_pipeline.config import DEFAULT_BEAM_ARGS as PIPELINE_ARGS


@pytest.fixture
def runners_used(monkeypatch):
    """Records which runner ran each pipeline; Prism, when tried, fails as it does
    without network (so Beam falls back, as here)."""
    used = []

    def prism(self, pipeline, options):
        used.append("prism")
        raise RuntimeError("no prism binary in this test")

    real = fn_runner.FnApiRunner.run_pipeline

    def fnapi(self, pipeline, options):
        used.append("fnapi")
        return real(self, pipeline, options)

    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", prism)
    monkeypatch.setattr(fn_runner.FnApiRunner, "run_pipeline", fnapi)
    return used


def _double(options):
    with beam.Pipeline(options=PipelineOptions(options)) as p:
        assert_that(p | beam.Create([1, 2, 3]) | beam.Map(lambda x: 2 * x), equal_to([2, 4, 6]))


def test_every_local_default_names_the_local_runner():
    runner = f"--runner={LOCAL_RUNNER}"
    for args in (PIPELINE_ARGS, EXPORT_ARGS, IN_PROCESS_OPTIONS, beam_options()):
        assert runner in args, args
    assert local_beam_args("in_memory", 1) == [runner, "--direct_running_mode=in_memory",
                                               "--direct_num_workers=1"]


def test_the_local_runner_never_tries_prism(runners_used):
    _double(local_beam_args("in_memory", 1))
    assert runners_used == ["fnapi"]


def test_beams_own_direct_runner_tries_prism_first(runners_used):
    """Why the local runner exists: if this starts failing, Beam's DirectRunner no
    longer tries Prism and `clue_keras.data.direct_runner` can go."""
    _double(["--runner=DirectRunner", "--direct_running_mode=in_memory",
             "--direct_num_workers=1"])
    assert runners_used == ["prism", "fnapi"]


def test_the_options_import_without_beam():
    code = ("import sys; import clue_keras.data.direct_runner as m, tfx_pipeline.config; "
            "assert m.LOCAL_RUNNER; print('apache_beam' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
