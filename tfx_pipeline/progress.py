"""One line per component as a local run starts and finishes it, read from MLMD.

`ComponentProgress` polls the run's SQLite ML Metadata store from a
background thread while `LocalDagRunner` works, so it needs no hook in TFX and
reports exactly what MLMD records: the component id, executed or reused from
the cache (or failed), the elapsed time between the execution's creation and
its last update, and a few key counts from its output artifacts. The lines go
to a stream (stdout by default) and are plain text, one per event, so they read
the same in a terminal, in CI logs and in Kubeflow's log viewer.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any, Callable, Dict, Optional, Set, TextIO

from tfx_pipeline.mlmd_query import RUN_CONTEXT_TYPE, custom_properties as _custom
from tfx_pipeline.mlmd_query import node_ids, open_store, outputs as _outputs

_TERMINAL = {"COMPLETE": "done", "CACHED": "cached", "FAILED": "FAILED", "CANCELED": "canceled"}


def _read_json(path: str) -> Dict[str, Any]:
    from tfx.dsl.io import fileio

    try:
        with fileio.open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except Exception:  # OSError, ValueError, or a gfile NotFoundError: nothing yet
        return {}


def key_counts(component: str, outputs: Dict[str, list]) -> str:
    """A few numbers that say what a finished component produced ("" if none)."""
    if "user_examples" in outputs:
        s = _custom(outputs["user_examples"][0])
        if s:
            return (f"{s.get('rows_read', '?')} rows, users train/eval/test "
                    f"{s.get('users_train', '?')}/{s.get('users_eval', '?')}/"
                    f"{s.get('users_test', '?')}")
    if "model_run" in outputs:
        t = _read_json(os.path.join(outputs["model_run"][0].uri, "train_result.json"))
        if t:
            return f"{t.get('steps')} steps, final loss {t.get('final_loss', float('nan')):.4f}"
    if "blessing" in outputs:
        b = _custom(outputs["blessing"][0])
        return "blessed" if b.get("blessed") else "not blessed"
    if "pushed_model" in outputs:
        p = _custom(outputs["pushed_model"][0])
        return f"pushed to {p['pushed_destination']}" if p.get("pushed") else "not pushed"
    return ""


class ComponentProgress:
    """Prints component start/end lines of the newest run of ``pipeline_name``.

    Use as a context manager around the runner call; the thread stops (after a
    last poll, so the final component's line is not lost) when the block ends.
    """

    def __init__(self, metadata_path: str, pipeline_name: str,
                 stream: Optional[TextIO] = None, interval_s: float = 0.5,
                 clock: Callable[[], float] = time.time):
        self.metadata_path, self.pipeline_name = metadata_path, pipeline_name
        self.stream = stream or sys.stdout
        self.interval_s = interval_s
        self._started_after_ms = int(clock() * 1000) - 1000
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._seen: Set[int] = set()
        self._done: Set[int] = set()
        self.lines: list = []

    def __enter__(self) -> "ComponentProgress":
        self._thread = threading.Thread(target=self._loop, name="clue-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)
        self.poll()  # whatever finished between the last poll and the end

    def _emit(self, line: str) -> None:
        self.lines.append(line)
        print(line, file=self.stream, flush=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception:  # pylint: disable=broad-except
                # The store may be locked or not yet created: the next poll retries.
                continue

    def poll(self) -> None:
        """Reads MLMD once and prints lines for new events."""
        if not os.path.exists(self.metadata_path):
            return
        from ml_metadata.proto import metadata_store_pb2

        store = open_store(self.metadata_path)
        node_of = node_ids(store, self.pipeline_name)
        runs = [c for c in store.get_contexts_by_type(RUN_CONTEXT_TYPE)
                if c.create_time_since_epoch >= self._started_after_ms]
        state_name = metadata_store_pb2.Execution.State.Name
        for run in sorted(runs, key=lambda c: c.id):
            for ex in sorted(store.get_executions_by_context(run.id), key=lambda e: e.id):
                name = node_of.get(ex.id)
                if name is None:
                    continue
                state = state_name(ex.last_known_state)
                if ex.id not in self._seen:
                    self._seen.add(ex.id)
                    if state not in _TERMINAL:
                        self._emit(f"[{name}] started")
                if state in _TERMINAL and ex.id not in self._done:
                    self._done.add(ex.id)
                    seconds = max(0, ex.last_update_time_since_epoch
                                  - ex.create_time_since_epoch) / 1000
                    counts = ""
                    if state in ("COMPLETE", "CACHED"):
                        counts = key_counts(name, _outputs(store, ex.id))
                    self._emit(f"[{name}] {_TERMINAL[state]} in {seconds:.1f} s"
                               + (f": {counts}" if counts else ""))
