"""Small read-only queries on a run's ML Metadata store (shared by the run
summary and the live progress lines)."""

from __future__ import annotations

from typing import Any, Dict, List

#: MLMD context types LocalDagRunner records.
RUN_CONTEXT_TYPE = "pipeline_run"
NODE_CONTEXT_TYPE = "node"


def open_store(metadata_path: str):
    """A read/write `MetadataStore` on the SQLite file ``metadata_path``."""
    import ml_metadata as mlmd
    from tfx.orchestration import metadata

    return mlmd.MetadataStore(metadata.sqlite_metadata_connection_config(metadata_path))


def node_ids(store, pipeline_name: str) -> Dict[int, str]:
    """execution id -> component id, through the ``node`` contexts."""
    out = {}
    prefix = pipeline_name + "."
    for ctx in store.get_contexts_by_type(NODE_CONTEXT_TYPE):
        if not ctx.name.startswith(prefix):
            continue
        for ex in store.get_executions_by_context(ctx.id):
            out[ex.id] = ctx.name[len(prefix):]
    return out


def outputs(store, execution_id: int) -> Dict[str, List[Any]]:
    """Output artifacts of an execution, by output key."""
    from ml_metadata.proto import metadata_store_pb2

    kinds = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
    events = [e for e in store.get_events_by_execution_ids([execution_id]) if e.type in kinds]
    arts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    out: Dict[str, List[Any]] = {}
    for e in events:
        if e.artifact_id in arts:
            key = e.path.steps[0].key if e.path.steps else ""
            out.setdefault(key, []).append(arts[e.artifact_id])
    return out


def custom_properties(artifact) -> Dict[str, Any]:
    """An artifact's int / double / string custom properties as a dict."""
    out = {}
    for k, v in artifact.custom_properties.items():
        kind = v.WhichOneof("value")
        out[k] = getattr(v, kind) if kind in ("int_value", "double_value", "string_value") else None
    return out
