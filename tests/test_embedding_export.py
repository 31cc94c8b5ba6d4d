"""EmbeddingExport (the user-id lookup model out of the pipeline) and serving it beside
the encoder: `components.embedding_export`, `clue serve` with several models,
`clue serving-config` / `read_models_config`.

The records come from `clue prepare` (BehaviorPreprocess's layout and code) and the
encoder is an untrained ``tiny`` CLUE exported with their vocabulary, as the
pipeline's Trainer exports one; the executor runs on Beam's in-memory DirectRunner.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

BEAM_IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """60 synthetic users, their per-user records (3 splits) and an untrained tiny CLUE
    export with the records' vocabulary."""
    import clue_synth as synth
    from clue_keras.config import PRESETS
    from clue_keras.data.prepare import prepare_local
    from clue_keras.export import export_saved_model
    from clue_keras.tokenizer import load_vocab_info
    from clue_keras.train import build_pretrainer

    root = tmp_path_factory.mktemp("embedding_export")
    data = str(root / "data")
    synth.generate(data, users=60, seed=3, tasks=())
    mc = PRESETS["tiny"]
    records = str(root / "records")
    stats = prepare_local(data, records, max_items=mc.max_items, max_tokens=mc.max_tokens,
                          vocab_size=300, beam_args=BEAM_IN_MEMORY)
    vocab = os.path.join(records, "vocab")
    model = build_pretrainer(mc.replace(vocab_size=load_vocab_info(vocab).vocab_size))
    export = export_saved_model(model, vocab, str(root / "model" / "Format-Serving"))
    return root, data, records, export, stats


def _artifacts(root, records, export, blessed):
    """Input and output artifacts as the pipeline hands them to the executor."""
    from tfx.types import artifact_utils, standard_artifacts

    model = standard_artifacts.Model()
    model.uri = os.path.dirname(export)  # the serving SavedModel is <uri>/Format-Serving
    examples = standard_artifacts.Examples()
    examples.uri = records
    examples.split_names = artifact_utils.encode_split_names(["train", "eval", "test"])
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(root / f"blessing{int(blessed)}")
    blessing.set_int_custom_property("blessed", int(blessed))
    out = standard_artifacts.Model()
    out.uri = str(root / f"lookup{int(blessed)}")
    return ({"model": [model], "user_examples": [examples], "blessing": [blessing]},
            {"lookup_model": [out]}, out)


def _texts_by_user(data, export):
    """user_id -> object [P, S]: each user's cleaned raw history, as serving_default takes it."""
    from clue_keras.data.tables import read_behaviors
    from clue_keras.embeddings.user_rows import read_model_layout, user_text_row

    services, max_items = read_model_layout(export)
    df = read_behaviors(data)
    df = df[df["service"].isin(services)]
    return {uid: user_text_row(zip(g["service"], g["timestamp"], g["item_text"]),
                               services, max_items)
            for uid, g in df.groupby(df["user_id"].astype(str))}


def _record_users(records):
    from clue_keras.data.records import USER_ID_KEY

    ids = []
    for path in tf.io.gfile.glob(os.path.join(records, "Split-*", "*")):
        for raw in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
            ex = tf.train.Example.FromString(raw)
            ids.append(ex.features.feature[USER_ID_KEY].bytes_list.value[0].decode())
    return ids


@pytest.fixture(scope="module")
def exported(tiny):
    """The executor run on a blessed model: (root, data, records, encoder, stats, output)."""
    from components.embedding_export.executor import Executor
    from tfx.dsl.components.base.base_beam_executor import BaseBeamExecutor

    root, data, records, export, stats = tiny
    inputs, outputs, out = _artifacts(root, records, export, blessed=True)
    context = BaseBeamExecutor.Context(beam_pipeline_args=BEAM_IN_MEMORY,
                                       tmp_dir=str(root / "tmp"))
    Executor(context).Do(inputs, outputs, {"batch_size": 16, "num_shards": 2})
    return root, data, records, export, stats, out


def test_every_kept_user_of_every_split_is_looked_up_as_the_encoder_embeds_them(exported):
    """lookup(user_id) == serving_default(the user's raw history) for every kept user of
    train, eval and test; an unknown id gets zeros and found=False."""
    from clue_keras.embeddings.table import read_embeddings
    from clue_keras.tokenizer import register_text_ops

    root, data, records, export, stats, out = exported
    users = _record_users(records)
    assert len(users) == stats["users_kept"] == len(set(users))
    assert min(stats["users_train"], stats["users_eval"], stats["users_test"]) > 0
    table = read_embeddings(os.path.join(out.uri, "embeddings"))
    assert sorted(table.user_ids) == sorted(users)
    assert table.manifest["dtype"] == "float32" and len(table.manifest["shards"]) == 2
    props = out.mlmd_artifact.custom_properties
    assert props["users"].int_value == len(users) and props["skipped"].int_value == 0

    lookup = tf.saved_model.load(os.path.join(out.uri, "Format-Serving"))
    got = lookup.signatures["serving_default"](user_id=tf.constant(users + ["nobody", ""]))
    found, vectors = got["found"].numpy(), got["embedding"].numpy()
    assert found.tolist() == [True] * len(users) + [False, False]
    np.testing.assert_array_equal(vectors[-2:], 0.0)

    register_text_ops()
    encoder = tf.saved_model.load(export).signatures["serving_default"]
    texts = _texts_by_user(data, export)
    expected = encoder(item_texts=tf.constant(
        np.stack([texts[u] for u in users]).astype(str)))["embedding"].numpy()
    assert vectors.shape[1] == expected.shape[1] > 0
    np.testing.assert_allclose(vectors[:len(users)], expected, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(expected, axis=1), 1.0, rtol=1e-4)


def test_an_unblessed_model_is_not_embedded(tiny):
    from components.embedding_export.executor import Executor
    from tfx.dsl.components.base.base_beam_executor import BaseBeamExecutor

    root, _, records, export, _ = tiny
    inputs, outputs, out = _artifacts(root, records, export, blessed=False)
    Executor(BaseBeamExecutor.Context(beam_pipeline_args=BEAM_IN_MEMORY)).Do(
        inputs, outputs, {})
    assert not os.path.exists(out.uri) or not os.listdir(out.uri)
    props = out.mlmd_artifact.custom_properties
    assert props["skipped"].int_value == 1
    assert "not blessed" in props["skipped_reason"].string_value


def test_records_of_another_vocabulary_are_refused(tiny, tmp_path):
    import shutil

    from components.embedding_export.executor import check_vocabulary, export_lookup

    _, _, records, export, _ = tiny
    check_vocabulary(records, export)  # its own: fine
    other = tmp_path / "other"
    shutil.copytree(records, other)
    with open(other / "vocab" / "merges.txt", "a", encoding="utf-8") as f:
        f.write("x y\n")
    with pytest.raises(ValueError, match=r"another vocabulary .*\(merges.txt differ\)"):
        export_lookup(str(other), export, str(tmp_path / "out"), beam_pipeline=None)
    with pytest.raises(FileNotFoundError, match="no per-user records"):
        export_lookup(str(tmp_path), export, str(tmp_path / "out"), beam_pipeline=None)


def _predict(address, model, inputs, signature="serving_default"):
    """One Predict over gRPC: {output name: ndarray}."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    with grpc.insecure_channel(address) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=30)
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


@pytest.mark.slow
def test_one_server_serves_the_encoder_and_the_lookup_from_a_models_config(
        exported, tmp_path, capsys, model_base_factory):
    """`clue serving-config` names both models; a server started from that file answers
    each by name with its own model, and the lookup equals the encoder over gRPC."""
    import grpc

    from clue_cli import main as cli
    from clue_keras.serving.models_config import read_models_config
    from clue_keras.serving.server import serve
    from tfx_pipeline.config import ENCODER_MODEL_NAME, LOOKUP_MODEL_NAME

    root, data, records, export, _, out = exported
    encoder_base, lookup_base = model_base_factory("clue"), model_base_factory("lk")
    for base, source in ((encoder_base, export),
                         (lookup_base, os.path.join(out.uri, "Format-Serving"))):
        os.makedirs(base.path)
        base.push(source, version=7)
    config = str(tmp_path / "models.config")
    assert cli.main(["serving-config", "--model-name", ENCODER_MODEL_NAME, "--base-path",
                     encoder_base.path, "--model-name", LOOKUP_MODEL_NAME, "--base-path",
                     lookup_base.path, "--out", config]) == 0
    models = read_models_config(config)
    assert models == [(ENCODER_MODEL_NAME, encoder_base.path),
                      (LOOKUP_MODEL_NAME, lookup_base.path)]

    server = serve(None, None, models=models, port=0, poll_seconds=0.05)
    try:
        users = sorted(_record_users(records))[:3]
        texts = _texts_by_user(data, export)
        by_id = _predict(server.address, LOOKUP_MODEL_NAME, {"user_id": users + ["nobody"]})
        utf8 = np.vectorize(lambda t: t.encode("utf-8"), otypes=[object])
        by_texts = _predict(server.address, ENCODER_MODEL_NAME, {"item_texts": utf8(np.stack(
            [texts[u] for u in users]))})
        assert by_id["found"].tolist() == [True, True, True, False]
        np.testing.assert_allclose(by_id["embedding"][:3], by_texts["embedding"], atol=2e-5)
        with pytest.raises(grpc.RpcError) as err:
            _predict(server.address, "other", {"user_id": ["x"]})
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert f"{ENCODER_MODEL_NAME!r}, {LOOKUP_MODEL_NAME!r}" in err.value.details()
    finally:
        server.stop(grace=0)
    with pytest.raises(ValueError, match="distinct"):
        serve(None, None, models=[("m", encoder_base.path), ("m", lookup_base.path)], port=0)
    bad = tmp_path / "bad.config"
    bad.write_text("model_config_list { config { name: 'x' } }")
    with pytest.raises(ValueError, match="needs a name and a base_path"):
        read_models_config(str(bad))
    assert cli.main(["serve", "--model-config-file", config, "--model-name", "x"]) == 2
    assert "not both" in capsys.readouterr().err
