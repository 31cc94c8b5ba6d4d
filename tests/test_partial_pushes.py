"""`tfx_pipeline.output_dirs.remove_partial_pushes` per Pusher: a half-copied version
left by an unfinished LookupPusher is removed from the lookup model's serving
directory, and only that Pusher's unfinished execution counts there.

The MLMD store is written by hand with the records LocalDagRunner leaves after a
kill (a ``node`` context per component, the killed execution RUNNING); the
whole flow with a real kill is in tests/test_faults_pipeline.py."""

import os
import shutil
import time

import pytest
import tensorflow as tf

from tfx_pipeline import pipeline as pl
from tfx_pipeline.mlmd_query import NODE_CONTEXT_TYPE, open_store
from tfx_pipeline.output_dirs import remove_partial_pushes


def _store_with_running(metadata_path, component):
    from ml_metadata.proto import metadata_store_pb2 as pb

    store = open_store(metadata_path)
    ctx_type = store.put_context_type(pb.ContextType(name=NODE_CONTEXT_TYPE))
    ex_type = store.put_execution_type(pb.ExecutionType(name=component))
    [ctx] = store.put_contexts([pb.Context(type_id=ctx_type, name=f"clue.{component}")])
    execution = pb.Execution(type_id=ex_type, last_known_state=pb.Execution.RUNNING)
    store.put_execution(execution, [], store.get_contexts_by_id([ctx]))


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("m") / "model")
    module = tf.Module()
    module.v = tf.Variable([1.0, 2.0])
    module.f = tf.function(lambda: module.v * 2.0, input_signature=[])
    tf.saved_model.save(module, path)
    return path


def _versions(tmp_path, saved_model):
    serving = tmp_path / "serving_user_lookup"
    whole = serving / "1"
    shutil.copytree(saved_model, whole)
    partial = serving / str(int(time.time()) + 5)  # copied after the Pusher started
    shutil.copytree(os.path.join(saved_model, "variables"), partial / "variables")
    return serving, whole, partial


def test_a_half_copied_lookup_push_is_removed_for_the_lookup_pusher(tmp_path, saved_model):
    meta = str(tmp_path / "metadata.db")
    _store_with_running(meta, pl.LOOKUP_PUSHER)
    serving, whole, partial = _versions(tmp_path, saved_model)

    # The encoder's Pusher has no unfinished execution: nothing of its own to clean.
    assert remove_partial_pushes(meta, "clue", str(serving)) == []
    assert partial.exists()

    removed = remove_partial_pushes(meta, "clue", str(serving), pl.LOOKUP_PUSHER)
    assert [path for path, _ in removed] == [str(partial)]
    assert "saved_model.pb" in removed[0][1]
    assert not partial.exists() and sorted(os.listdir(serving)) == ["1"]
    assert (whole / "saved_model.pb").exists()  # a whole version is never touched
