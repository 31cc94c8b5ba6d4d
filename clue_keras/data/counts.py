"""Counts of the preprocessing Beam graph and its ``stats.json`` (`WriteStats`).

`clue_keras.data.preprocess.build_pipeline` counts rows and users with
`count`, `count_keys` and `sum_of` and writes them all with `WriteStats`,
after every record file is written.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Tuple

import apache_beam as beam

from clue_keras.atomic import write_json_atomic
from clue_keras.data.engines import remove_write_leftovers

__all__ = ["count", "count_keys", "sum_of", "sum_dicts", "WriteStats"]



def count(pcoll: beam.PCollection, label: str) -> beam.PCollection:
    """One element: how many ``pcoll`` holds."""
    return pcoll | label >> beam.combiners.Count.Globally()


def count_keys(keys: beam.PCollection, names: Tuple[str, ...], label: str) -> beam.PCollection:
    """Strings -> one ``{name: count}`` dict with every one of ``names`` (0 if unseen)."""
    return (keys | f"{label}PerKey" >> beam.combiners.Count.PerElement()
            | f"{label}Dict" >> beam.combiners.ToDict()
            | f"{label}All" >> beam.Map(lambda d: {k: int(d.get(k, 0)) for k in names}))


def sum_of(pcoll: beam.PCollection, fn, label: str) -> beam.PCollection:
    """One element: the sum of ``fn`` over ``pcoll``."""
    return (pcoll | f"{label}Values" >> beam.Map(fn)
            | label >> beam.CombineGlobally(sum))


def _sum_keys(dicts: Iterable[Dict[str, int]], keys: Tuple[str, ...]) -> Dict[str, int]:
    dicts = list(dicts)
    return {k: sum(d.get(k, 0) for d in dicts) for k in keys}


def sum_dicts(pcoll: beam.PCollection, keys: Tuple[str, ...], label: str) -> beam.PCollection:
    """Dicts of counts -> one ``{key: sum}`` dict with every one of ``keys`` (0 when
    ``pcoll`` is empty): one combine for several counts."""
    return pcoll | label >> beam.CombineGlobally(_sum_keys, keys=keys)


def _named(value: Any, name: str) -> Tuple[str, Any]:
    return name, value


def _write_stats(_, path: str, services: List[str], counts: Dict[str, Any],
                 written: List[str]) -> None:
    remove_write_leftovers(written)  # none but on Dask (`clue_keras.data.engines`)
    stats: Dict[str, Any] = {}
    for key, value in counts.items():
        if isinstance(value, dict):  # several counts at once (`count_keys`)
            stats.update({k: int(v) for k, v in value.items()})
        else:
            stats[key] = int(value)
    stats["services"] = list(services)
    write_json_atomic(path, stats)


@beam.ptransform_fn
def WriteStats(pbegin: beam.pvalue.PBegin, path: str, services: beam.PCollection,  # pylint: disable=invalid-name
               counts: Mapping[str, beam.PCollection],
               written: Mapping[str, beam.PCollection]) -> beam.PCollection:
    """Writes ``{count name: int, ..., "services": [...]}`` to ``path`` (JSON, atomic)
    once the ``counts`` (one-element PCollections of an int, or of a dict of
    named ints merged in) are known and the files
    ``written`` (PCollections of file names) are complete. One side input for all
    counts: Dask recomputes each side input (`clue_keras.data.engines`)."""
    named = [pcoll | f"Name[{k}]" >> beam.Map(_named, name=k) for k, pcoll in counts.items()]
    all_counts = named | "Counts" >> beam.Flatten() | "CountsDict" >> beam.combiners.ToDict()
    files = list(written.values()) | "Written" >> beam.Flatten()
    return (pbegin | "Trigger" >> beam.Create([None])
            | "Write" >> beam.Map(
                _write_stats, path=path, services=beam.pvalue.AsSingleton(services),
                counts=beam.pvalue.AsSingleton(all_counts), written=beam.pvalue.AsList(files)))
