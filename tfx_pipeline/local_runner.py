"""Run the pipeline with LocalDagRunner and SQLite MLMD; summarise the run from MLMD.

Thin: paths and runner options come in through `PipelineConfig`; the
definition is `tfx_pipeline.pipeline.create_pipeline`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional

from tfx_pipeline.config import ENCODER_MODEL_NAME, LOOKUP_MODEL_NAME, PipelineConfig

from tfx_pipeline.mlmd_query import RUN_CONTEXT_TYPE as _RUN_CONTEXT_TYPE
from tfx_pipeline.mlmd_query import custom_properties as _custom
from tfx_pipeline.mlmd_query import node_ids as _node_ids
from tfx_pipeline.mlmd_query import open_store as _store
from tfx_pipeline.mlmd_query import outputs as _outputs


@dataclasses.dataclass
class RunSummary:
    """What one run did, read back from MLMD and the output artifacts.

    Attributes:
      run_id: the MLMD ``pipeline_run`` context name.
      executions: ``{component id: state}``, state one of ``COMPLETE``,
        ``CACHED``, ``FAILED``, ... for every component that ran in this run.
      cached: number of this run's executions that reused cached outputs.
      preprocess_stats: BehaviorPreprocess counts (``rows_read``,
        ``users_train`` ...) from its output artifact's custom properties.
      train_result: ``train_result.json`` of the Trainer (``final_loss``,
        ``steps``, ``num_params`` ...), or {} when the Trainer did not run.
      model_uri: the Trainer's Model artifact (serving SavedModel under
        ``Format-Serving``).
      blessed: True / False when the Evaluator ran, None when the pipeline has
        no evaluator (``PipelineConfig.evaluate=False``; then nothing is pushed)
        or it did not get to run.
      blessing_reason: the Evaluator's verdict with the MRR numbers it compared.
      evaluation_uri: the Evaluator's ModelEvaluation artifact (results.json,
        results.md, results.png, blessing.json).
      evaluation_table: ``results.md`` of that artifact (Markdown), or None.
      mrr: ``{model column: MRR}`` from the evaluation artifact's properties
        (the SQLite MLMD store keeps about 6 significant digits; results.json
        has the full values).
      pushed_to: the pushed model version's directory
        (``<serving_model_dir>/<unix time>``), or None.
      log_path: the file third-party log output went to (quiet runs), or None.
      durations: ``{component id: seconds}`` from MLMD (creation to last update).
      model_run_uri: the Trainer's ModelRun artifact (checkpoints, TensorBoard logs,
        train_result.json with the full history).
      report_path: the run report `tfx_pipeline.report.write_report` wrote, or None.
      lookup_pushed_to: the pushed user-id lookup model's version directory
        (``<lookup_serving_model_dir>/<unix time>``), or None.
      lookup_users: users in the lookup model EmbeddingExport built, or None.
    """

    run_id: str
    executions: Dict[str, str]
    cached: int
    preprocess_stats: Dict[str, Any]
    train_result: Dict[str, Any]
    model_uri: Optional[str]
    blessed: Optional[bool]
    pushed_to: Optional[str]
    blessing_reason: Optional[str] = None
    evaluation_uri: Optional[str] = None
    evaluation_table: Optional[str] = None
    mrr: Dict[str, float] = dataclasses.field(default_factory=dict)
    log_path: Optional[str] = None
    durations: Dict[str, float] = dataclasses.field(default_factory=dict)
    model_run_uri: Optional[str] = None
    report_path: Optional[str] = None
    lookup_pushed_to: Optional[str] = None
    lookup_users: Optional[int] = None

    #: Model names `serve_instructions` suggests for TF Serving / `clue serve`.
    MODEL_NAME = ENCODER_MODEL_NAME
    LOOKUP_MODEL_NAME = LOOKUP_MODEL_NAME

    def serve_instructions(self) -> List[str]:
        """Shell commands that serve the pushed model and query it (empty when not pushed)."""
        if not self.pushed_to:
            return []
        base = os.path.dirname(self.pushed_to.rstrip("/"))
        lookup = (f" --model-base-path {os.path.dirname(self.lookup_pushed_to.rstrip('/'))} "
                  f"--model-name {self.LOOKUP_MODEL_NAME}" if self.lookup_pushed_to else "")
        return [
            f"clue serve --model-base-path {base} --model-name {self.MODEL_NAME}{lookup} "
            "--port 8500",
            f"clue embed --server 127.0.0.1:8500 --model {self.MODEL_NAME} "
            "--input users.jsonl --out embeddings.parquet",
        ]

    def _verdict_detail(self) -> str:
        """The blessing reason without its leading ``blessed: `` / ``not blessed: ``."""
        reason = self.blessing_reason or "no reason recorded"
        for prefix in ("not blessed: ", "blessed: "):
            if reason.startswith(prefix):
                return reason[len(prefix):]
        return reason

    def format(self) -> str:
        """A few human-readable lines."""
        s = self.preprocess_stats
        lines = [f"run {self.run_id}: {len(self.executions)} executions, "
                 f"{self.cached} reused from cache"]
        lines.append("  " + ", ".join(f"{k}={v}" for k, v in self.executions.items()))
        if s:
            lines.append(f"  rows read {s.get('rows_read')}, users read {s.get('users_read')}, "
                         f"kept train/eval/test {s.get('users_train')}/{s.get('users_eval')}/"
                         f"{s.get('users_test')}, services {s.get('services')}")
            dropped = {k: v for k, v in sorted(s.items())
                       if (k.startswith(("rows_dropped_", "users_dropped_")) or k in (
                           "rows_duplicate", "rows_text_capped", "users_kept_single_service"))
                       and v}
            if dropped:
                lines.append("  dropped or changed: " + ", ".join(
                    f"{k.replace('_', ' ')} {v:,}" for k, v in dropped.items()))
        if self.train_result:
            t = self.train_result
            lines.append(f"  model: {t.get('num_params'):,} parameters, {t.get('steps')} steps, "
                         f"final training loss {t.get('final_loss'):.4f}"
                         + (f", held-out loss {t['eval_loss']:.4f}"
                            if t.get("eval_loss") is not None else "")
                         + f" ({self.model_uri})")
            lines.append(f"  trained with {t.get('strategy') or 'the default strategy'} on "
                         f"{t.get('replicas', 1)} replica(s), precision policy "
                         f"{t.get('precision', '?')}")
            if t.get("best_step") is not None:
                lines.append(f"  kept step {t['best_step']} (best held-out loss "
                             f"{t['best_eval_loss']:.4f} of {t.get('evaluations')} evaluations)"
                             + (", stopped early" if t.get("stopped_early") else ""))
            lines.extend(f"  warning: {w}" for w in t.get("warnings") or [])
        if self.evaluation_table:
            lines.append(f"  downstream evaluation ({self.evaluation_uri}):")
            lines.extend("    " + line if line else "" for line in
                         self.evaluation_table.rstrip("\n").split("\n"))
        if self.blessed is None:
            lines.append("  not pushed: the pipeline has no evaluator (evaluation switched "
                         "off, or the run stopped before it), so no blessing")
        elif not self.blessed:
            lines.append(f"  NOT BLESSED, so not pushed: {self._verdict_detail()}")
        else:
            lines.append(f"  BLESSED: {self._verdict_detail()}")
            if self.pushed_to:
                lines.append(f"  pushed to {self.pushed_to}")
                if self.lookup_pushed_to:
                    lines.append(f"  user-id lookup model ({self.lookup_users} users) pushed "
                                 f"to {self.lookup_pushed_to}")
                lines.append("  serve and query it with:")
                lines.extend("    " + c for c in self.serve_instructions())
            else:
                lines.append("  blessed, but the Pusher did not push (see its log)")
        if self.model_run_uri:
            lines.append(f"  TensorBoard: tensorboard --logdir {os.path.join(self.model_run_uri, 'logs')}")
        if self.report_path:
            lines.append(f"  report: {self.report_path}")
        if self.log_path:
            lines.append(f"  full log: {self.log_path}")
        return "\n".join(lines)


def summarize(metadata_path: str, pipeline_name: str) -> RunSummary:
    """Summarises the newest run of ``pipeline_name`` recorded in ``metadata_path``."""
    from ml_metadata.proto import metadata_store_pb2
    from tfx.dsl.io import fileio

    from tfx_pipeline import pipeline as p

    store = _store(metadata_path)
    runs = [c for c in store.get_contexts_by_type(_RUN_CONTEXT_TYPE)]
    if not runs:
        raise RuntimeError(f"no pipeline run recorded in {metadata_path}")
    node_of = _node_ids(store, pipeline_name)
    runs = [c for c in runs if any(ex.id in node_of for ex in store.get_executions_by_context(c.id))]
    run = max(runs, key=lambda c: (c.create_time_since_epoch, c.id))
    executions = sorted(store.get_executions_by_context(run.id), key=lambda e: e.id)
    state_name = metadata_store_pb2.Execution.State.Name
    states = {node_of.get(ex.id, str(ex.id)): state_name(ex.last_known_state)
              for ex in executions}
    durations = {node_of.get(ex.id, str(ex.id)):
                 max(0, ex.last_update_time_since_epoch - ex.create_time_since_epoch) / 1000
                 for ex in executions}
    cached = sum(ex.last_known_state == metadata_store_pb2.Execution.CACHED for ex in executions)
    by_node = {node_of.get(ex.id): ex for ex in executions}

    stats: Dict[str, Any] = {}
    if p.BEHAVIOR_PREPROCESS in by_node:
        arts = _outputs(store, by_node[p.BEHAVIOR_PREPROCESS].id).get("user_examples", [])
        if arts:
            stats = _custom(arts[0])
    train_result: Dict[str, Any] = {}
    model_uri = model_run_uri = None
    if p.TRAINER in by_node:
        outs = _outputs(store, by_node[p.TRAINER].id)
        if outs.get("model"):
            model_uri = outs["model"][0].uri
        if outs.get("model_run"):
            model_run_uri = outs["model_run"][0].uri
            path = os.path.join(model_run_uri, "train_result.json")
            if fileio.exists(path):
                with fileio.open(path) as f:
                    train_result = json.load(f)
                train_result.pop("history", None)
    blessed = pushed_to = reason = evaluation_uri = table = None
    mrr: Dict[str, float] = {}
    if p.EVALUATOR in by_node:
        outs = _outputs(store, by_node[p.EVALUATOR].id)
        if outs.get("blessing"):
            props = _custom(outs["blessing"][0])
            blessed = bool(props.get("blessed"))
            reason = props.get("blessing_message")
        if outs.get("evaluation"):
            evaluation_uri = outs["evaluation"][0].uri
            props = _custom(outs["evaluation"][0])
            mrr = {k[len("mrr/"):]: v for k, v in props.items() if k.startswith("mrr/")}
            path = os.path.join(evaluation_uri, "results.md")
            if fileio.exists(path):
                with fileio.open(path, "rb") as f:
                    table = f.read().decode("utf-8")
    if p.PUSHER in by_node:
        pushed = _outputs(store, by_node[p.PUSHER].id).get("pushed_model", [])
        if pushed and _custom(pushed[0]).get("pushed"):
            pushed_to = _custom(pushed[0]).get("pushed_destination")
    lookup_pushed_to = lookup_users = None
    if p.LOOKUP_PUSHER in by_node:
        pushed = _outputs(store, by_node[p.LOOKUP_PUSHER].id).get("pushed_model", [])
        if pushed and _custom(pushed[0]).get("pushed"):
            lookup_pushed_to = _custom(pushed[0]).get("pushed_destination")
    if p.EMBEDDING_EXPORT in by_node:
        built = _outputs(store, by_node[p.EMBEDDING_EXPORT].id).get("lookup_model", [])
        if built and "users" in _custom(built[0]):
            lookup_users = int(_custom(built[0])["users"])
    return RunSummary(run_id=run.name, executions=states, cached=int(cached), durations=durations,
                      lookup_pushed_to=lookup_pushed_to, lookup_users=lookup_users,
                      model_run_uri=model_run_uri,
                      preprocess_stats=stats, train_result=train_result,
                      model_uri=model_uri, blessed=blessed, pushed_to=pushed_to,
                      blessing_reason=reason, evaluation_uri=evaluation_uri,
                      evaluation_table=table, mrr=mrr)


def keep_inferred_schema(metadata_path: str, pipeline_name: str, schema_file: str
                         ) -> Optional[str]:
    """Copies the schema SchemaGen inferred in the newest run to ``schema_file``
    (unless that file exists); returns the path written, or None.

    The copy is the user's to curate (``tfdv`` or a text editor); runs given it
    as ``PipelineConfig.schema_path`` validate new logs against it, so a lost
    column or a changed type stops the run at ExampleValidator.
    """
    from tfx.dsl.io import fileio

    from clue_keras.atomic import write_text_atomic
    from tfx_pipeline import pipeline as p

    if os.path.exists(schema_file):
        return None
    store = _store(metadata_path)
    node_of = _node_ids(store, pipeline_name)
    executions = [i for i, name in node_of.items() if name == p.SCHEMA_GEN]
    for execution_id in sorted(executions, reverse=True):
        for artifact in _outputs(store, execution_id).get("schema", []):
            inferred = os.path.join(artifact.uri, "schema.pbtxt")
            if fileio.exists(inferred):
                os.makedirs(os.path.dirname(os.path.abspath(schema_file)), exist_ok=True)
                with fileio.open(inferred, "rb") as f:
                    write_text_atomic(schema_file, f.read().decode("utf-8"))
                return schema_file
    return None


def _failed_components(metadata_path: str, pipeline_name: str) -> List[str]:
    """Components of the newest run whose execution FAILED ([] if none or unknown)."""
    try:
        summary = summarize(metadata_path, pipeline_name)
    except Exception:  # pylint: disable=broad-except
        return []  # no run recorded yet (the failure came first)
    return [name for name, state in summary.executions.items() if state == "FAILED"]


def _remove_partial_pushes(config: PipelineConfig, stream) -> None:
    from tfx_pipeline.output_dirs import remove_partial_pushes
    from tfx_pipeline.pipeline import LOOKUP_PUSHER, PUSHER

    targets = [(PUSHER, config.serving_model_dir)]
    if config.export_lookup:
        targets.append((LOOKUP_PUSHER, config.lookup_serving_model_dir))
    for pusher, serving_dir in targets:
        for path, why in remove_partial_pushes(config.metadata_path, config.pipeline_name,
                                               serving_dir, pusher):
            print(f"removed {path}: an interrupted push left it half-copied "
                  f"({why.splitlines()[0]})",
                  file=stream, flush=True)


def run(config: PipelineConfig, verbose: bool = True, log_dir: Optional[str] = None,
        stream=None, exclusive: bool = False) -> RunSummary:
    """Runs ``create_pipeline(config)`` with LocalDagRunner; returns the run's summary.

    Prints one line per component as it starts and ends (`ComponentProgress`)
    to ``stream`` (stdout). With ``verbose=False`` third-party output on standard
    error goes to a log file in ``log_dir`` (default: ``ROOT/logs`` where ROOT is
    the metadata directory's parent), whose path is the summary's ``log_path``.
    The run report (`tfx_pipeline.report`) goes to ``ROOT/reports/<run id>.html``.

    Before any component runs, the pipeline root, the metadata directory and (with
    an Evaluator, hence a Pusher) the serving directory must be writable
    (`output_dirs.check_writable`). With ``exclusive`` (the caller guarantees no
    other run uses this store: `clue run` holds ``ROOT/.clue-run.lock``), version
    directories that an interrupted or failed Pusher left half-copied in the
    serving directory are removed, before the run and after a failure
    (`output_dirs.remove_partial_pushes`), each named on ``stream``.

    Raises whatever a failing component raised (e.g. BehaviorPreprocess's
    `InputValidationError`), with ``clue_failed_components`` (component ids) and
    ``clue_log_path`` set on it; components after it do not run.
    `output_dirs.OutputDirError` when an output directory is not writable.
    """
    if not config.metadata_path:
        raise ValueError("a local run needs config.metadata_path (the SQLite MLMD file)")
    from tfx_pipeline.output_dirs import check_writable

    metadata_dir = os.path.dirname(os.path.abspath(config.metadata_path))
    check_writable(metadata_dir, "the metadata directory")
    check_writable(config.pipeline_root, "the pipeline root")
    if config.evaluate:
        check_writable(config.serving_model_dir, "the serving directory")
        if config.export_lookup:
            check_writable(config.lookup_serving_model_dir, "the lookup model's serving directory")

    from tfx import v1 as tfx

    from tfx_pipeline.pipeline import create_pipeline
    from tfx_pipeline.progress import ComponentProgress
    from tfx_pipeline.run_log import quiet_stderr

    os.makedirs(metadata_dir, exist_ok=True)
    if exclusive and config.evaluate:
        _remove_partial_pushes(config, stream)
    log_dir = log_dir or os.path.join(os.path.dirname(metadata_dir), "logs")
    with quiet_stderr(log_dir, verbose=verbose) as log_path:
        try:
            with ComponentProgress(config.metadata_path, config.pipeline_name, stream=stream):
                tfx.orchestration.LocalDagRunner().run(create_pipeline(config))
        except BaseException as e:
            if log_path:
                e.clue_log_path = log_path  # the CLI names it next to the error
            e.clue_failed_components = _failed_components(config.metadata_path,
                                                          config.pipeline_name)
            if exclusive and config.evaluate and isinstance(e, Exception):
                try:
                    _remove_partial_pushes(config, stream)
                except Exception:  # pylint: disable=broad-except
                    pass  # the original error is the one to report
            raise
    summary = summarize(config.metadata_path, config.pipeline_name)
    summary.log_path = log_path
    from tfx_pipeline.report import write_report

    summary.report_path = write_report(
        summary, config, os.path.join(os.path.dirname(metadata_dir), "reports"))
    return summary
