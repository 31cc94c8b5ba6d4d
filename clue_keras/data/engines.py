"""Running the preprocessing Beam graph on engines other than the DirectRunner.

Pipeline options for a dask.distributed cluster (`dask_beam_args`: the runner
`clue_keras.data.dask_runner.DaskRunner`, Beam's with its bundles fixed), and the
portable building blocks `clue_keras.data.preprocess` uses where a stock Beam
transform misbehaves on Beam 2.74's DaskRunner
(``apache_beam.runners.dask.dask_runner.DaskRunner``, which has no short name):

* ``beam.io.ReadFromTFRecord`` (a ``Read`` of a bounded source) has no Dask
  translation: building the graph fails with ``AttributeError: 'NoneType'
  object has no attribute 'map'``. `ReadTFRecords` lists the files and reads
  them with ``ReadAllFromTFRecord`` (ParDos) instead: the same records.
* A multi-output ParDo (``with_outputs``, ``beam.Partition``) hands every
  output to each consumer on Dask; `select_tags` splits ``(tag, value)`` pairs
  with one filter per tag instead.
* Its ParDo translation shares one output list among all partitions of a
  ParDo, never emptied: with more than one partition, elements repeat
  (`clue_keras.data.dask_runner.DaskRunner` fixes that; `DASK_RUNNER`).
* It recomputes a side input in every task that reads it (so each side input
  re-runs its part of the graph: `preprocess.WriteStats` takes one for all
  counts), and ``WriteToTFRecord``'s side inputs start extra writes whose
  ``beam-temp-*`` folders stay behind; `remove_write_leftovers` removes them
  once every file is final.
* It computes only the last transform of the graph (the rest through side
  inputs, so every sink must feed the last step), and opens a
  ``distributed.Client`` it never closes (`close_client`; the fixed runner does).

Flink and Spark: Beam's Python SDK starts their job server from a jar fetched
from Maven Central at run time (``beam-runners-flink-2.0-job-server`` /
``beam-runners-spark-3-job-server``), or takes ``--job_endpoint`` of one
already running.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions

#: `clue_keras.data.dask_runner.DaskRunner` (Beam's, bundles fixed); Beam 2.74's own
#: has no short name either.
DASK_RUNNER = "clue_keras.data.dask_runner.DaskRunner"
STOCK_DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"

__all__ = ["DASK_RUNNER", "STOCK_DASK_RUNNER", "dask_beam_args", "close_client",
           "ReadTFRecords", "select_tags", "remove_write_leftovers"]


def dask_beam_args(address: str, npartitions: Optional[int] = None,
                   timeout_s: Optional[int] = None, runner: str = DASK_RUNNER) -> List[str]:
    """Beam options that run a pipeline on the dask.distributed scheduler at
    ``address`` (``tcp://HOST:PORT``); ``npartitions``: Dask partitions per
    created collection (here: the list of input files), default the runner's
    (one for fewer than 128 files)."""
    args = [f"--runner={runner}", f"--dask_client_address={address}"]
    if npartitions:
        args.append(f"--dask_npartitions={int(npartitions)}")
    if timeout_s:
        args.append(f"--dask_connection_timeout={int(timeout_s)}")
    return args


def close_client(result: Any) -> None:
    """Closes the ``distributed.Client`` a stock DaskRunner run opened (no-op for
    other runners); call after ``wait_until_finish``, before the cluster goes away."""
    client = getattr(result, "client", None)
    if client is not None and hasattr(client, "close"):
        client.close()


@beam.ptransform_fn
def ReadTFRecords(pbegin: beam.pvalue.PBegin, pattern: str) -> beam.PCollection:  # pylint: disable=invalid-name
    """Every record of the TFRecord files matching ``pattern`` (compression from
    the file name), as ``ReadFromTFRecord`` reads them; the files are listed
    now, as ``ReadFromTFRecord`` checks them now, and a pattern matching
    nothing is an error here too."""
    from apache_beam.io.filesystems import FileSystems

    files = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    if not files:
        raise OSError(f"No files found based on the file pattern {pattern}")
    return (pbegin | "Files" >> beam.Create(files)
            | "Read" >> beam.io.ReadAllFromTFRecord())


def _value_if(tagged: Tuple[str, Any], tag: str) -> List[Any]:
    return [tagged[1]] if tagged[0] == tag else []


def select_tags(tagged: beam.PCollection, tags: Sequence[str],
                label: str = "Select") -> Dict[str, beam.PCollection]:
    """``(tag, value)`` pairs -> ``{tag: values}``: a multi-output ParDo that
    every runner runs (one filter per tag)."""
    return {tag: tagged | f"{label}[{tag}]" >> beam.FlatMap(_value_if, tag=tag)
            for tag in tags}


def remove_write_leftovers(written: Iterable[str]) -> List[str]:
    """Removes ``beam-temp-*`` folders next to the ``written`` files (local or
    remote); returns what was removed. Beam's file sink removes its own: only a
    runner that recomputes side inputs (Dask) leaves any."""
    import tensorflow as tf

    from clue_keras.uri import glob  # matches gs:// directories too

    removed = []
    for folder in sorted({os.path.dirname(f) for f in written}):
        for leftover in glob(os.path.join(folder, "beam-temp-*")):
            tf.io.gfile.rmtree(leftover)
            removed.append(leftover)
    return removed


def num_shards(p: beam.Pipeline, params: Dict[str, Any]) -> int:
    """``params["num_shards"]``; 0 or absent lets the runner decide, except on Dask,
    whose runner writes empty files for a runner-decided count (seen with Beam
    2.74): there one shard per split."""
    shards = int(params.get("num_shards") or 0)
    runner = str(p.options.view_as(StandardOptions).runner or "")
    return shards or (1 if runner.endswith("DaskRunner") else 0)
