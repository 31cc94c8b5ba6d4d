"""Beam 2.74's DaskRunner with its ParDo bundles fixed; ``--runner=clue_keras.data.dask_runner.DaskRunner``.

Beam's ``apache_beam.runners.dask`` translates each ParDo into one Dask task
per partition, all sharing one output list (``OneReceiver``) that is never
emptied: when two partitions of a ParDo run in one worker process (they do on
a dask.distributed cluster, in the computations of side inputs), the second
returns the first's outputs again. With one partition per collection (the
runner's default for a small ``Create``) nothing is duplicated, but nothing
runs in parallel either; with ``--dask_npartitions=2`` the stock runner
duplicates elements (`tests/test_beam_dask.py` shows both).

`DaskRunner` here gives every bundle its own receivers, its own DoFn instance
(deserialized, as Beam's other runners do) and its own context, and closes the
``distributed.Client`` the run opened once the run ends. Everything else is
Beam's runner, with its other limits (`clue_keras.data.engines`).

Imports dask: only a pipeline that names this runner imports this module.
"""

from __future__ import annotations

import threading
import typing as t

import apache_beam as beam
from apache_beam.internal import pickler
from apache_beam.runners.common import DoFnContext, DoFnSignature, _OutputHandler
from apache_beam.runners.dask import dask_runner
from apache_beam.runners.dask import transform_evaluator as te

__all__ = ["DaskRunner", "run_bundle", "FreshBundleParDo"]

_TRANSLATING = threading.Lock()


def run_bundle(items: t.Iterable[t.Any], fn_bytes: bytes, label: str, window_fn: t.Any,
               invoker_kwargs: t.Dict[str, t.Any]) -> t.List[t.Any]:
    """One Dask partition through a fresh copy of the DoFn, with its own receivers."""
    receivers = te.OneReceiver()
    handler = _OutputHandler(
        window_fn=window_fn, main_receivers=receivers[None], tagged_receivers=receivers,
        per_element_output_counter=None, output_batch_converter=None,
        process_yields_batches=False, process_batch_yields_elements=False)
    kwargs = dict(invoker_kwargs, context=DoFnContext(label, state=None))
    return te.apply_dofn_to_bundle(
        items, [DoFnSignature(pickler.loads(fn_bytes)), handler], kwargs, receivers)


class FreshBundleParDo(te.ParDo):
    """`te.ParDo` (a ParDo as ``map_partitions``) running each partition with `run_bundle`."""

    def apply(self, input_bag, side_inputs=None):
        transform = t.cast(beam.ParDo, self.transform)
        args, kwargs = transform.raw_side_inputs
        main_input = next(iter(self.applied.main_inputs.values()))
        window_fn = getattr(getattr(main_input, "windowing", None), "windowfn", None)
        invoker_kwargs = dict(side_inputs=side_inputs, input_args=list(args),
                              input_kwargs=kwargs, user_state_context=None,
                              bundle_finalizer_param=beam.DoFn.BundleFinalizerParam())
        return input_bag.map(te.get_windowed_value, window_fn).map_partitions(
            run_bundle, pickler.dumps(transform.fn), transform.label, window_fn, invoker_kwargs)


class _ClosingResult(dask_runner.DaskRunnerResult):
    """Closes the run's client once waiting ends (done, failed or timed out)."""

    def wait_until_finish(self, duration=None) -> str:
        try:
            return super().wait_until_finish(duration)
        finally:
            self.client.close()


class DaskRunner(dask_runner.DaskRunner):
    """Beam's DaskRunner with `FreshBundleParDo` for every ParDo (its translation
    table is swapped only while this runner translates a pipeline)."""

    def run_pipeline(self, pipeline, options):
        with _TRANSLATING:
            stock = te.TRANSLATIONS[beam.ParDo]
            te.TRANSLATIONS[beam.ParDo] = FreshBundleParDo
            try:
                result = super().run_pipeline(pipeline, options)
            finally:
                te.TRANSLATIONS[beam.ParDo] = stock
        return _ClosingResult(result.client, result.futures)
