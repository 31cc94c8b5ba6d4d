"""BehaviorPreprocess behind TFX's own ExampleGen / StatisticsGen / SchemaGen /
ExampleValidator (LocalDagRunner, SQLite MLMD) on a hand-written, export-shaped
CSV: integer user ids (SchemaGen infers INT), ISO timestamps (BYTES), empty user
ids and unparseable timestamps. The component accepts the types, drops and counts
the bad rows (artifact custom properties = stats.json) and writes records whose
user ids are the decimal strings.
"""

import glob
import json
import os

import pytest
import tensorflow as tf

from clue_keras.data.records import parse_user_example
from clue_keras.tokenizer import load_vocab_info

pytestmark = pytest.mark.slow

BEAM_IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
TITLES = ["Red running shoes", "Budget vote tonight", "서울 날씨 맑음", "Kimchi stew recipe",
          "Wireless earbuds", "Champions League final", "Café crème", "LG OLED TV"]


def _write_export(folder):
    lines = ["user_id,service,timestamp,item_text,rating"]
    for u in range(30):
        for j in range(3):
            service = "shopping" if j < 2 or u % 3 else "news"
            ts = f"2021-04-{10 + j:02d}T0{u % 10}:00:00+09:00" if u % 2 else f"2021-04-{10 + j:02d}"
            lines.append(f'{5000 + u},{service},{ts},"{TITLES[(u + j) % len(TITLES)]}",{j}')
    lines += [",news,2021-04-20,anonymous,1",              # empty user id -> dropped
              "5001,news,someday,Lost date,2",             # bad timestamp -> dropped
              "5002,news,2021-04-21,,3"]                   # empty text -> skipped
    os.makedirs(folder)
    with open(os.path.join(folder, "ratings_export_2021.csv"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def test_behavior_preprocess_accepts_integer_ids_and_iso_timestamps(tmp_path):
    from tfx import v1 as tfx
    from tfx.orchestration import metadata

    from components.behavior_preprocess.component import BehaviorPreprocess

    data = str(tmp_path / "data")
    _write_export(data)
    example_gen = tfx.components.CsvExampleGen(input_base=data)
    stats = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema = tfx.components.SchemaGen(statistics=stats.outputs["statistics"],
                                      infer_feature_shape=False)
    validator = tfx.components.ExampleValidator(statistics=stats.outputs["statistics"],
                                                schema=schema.outputs["schema"])
    preprocess = BehaviorPreprocess(
        examples=example_gen.outputs["examples"], schema=schema.outputs["schema"],
        statistics=stats.outputs["statistics"], anomalies=validator.outputs["anomalies"],
        max_items=4, max_tokens=8, vocab_size=300, min_items_per_user=2,
        min_services_per_user=2, eval_percent=20, test_percent=20, bpe_sample_size=1000,
        num_shards=1, max_text_bytes=64, input_base=data, input_format="csv",
        file_pattern="*.csv")
    root = str(tmp_path / "root")
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="real-data", pipeline_root=root,
        components=[example_gen, stats, schema, validator, preprocess],
        metadata_connection_config=metadata.sqlite_metadata_connection_config(
            os.path.join(root, "metadata.sqlite")),
        beam_pipeline_args=BEAM_IN_MEMORY)
    tfx.orchestration.LocalDagRunner().run(pipeline)

    out = glob.glob(os.path.join(root, "BehaviorPreprocess", "user_examples", "*"))
    assert len(out) == 1
    with open(os.path.join(out[0], "stats.json")) as f:
        result = json.load(f)
    assert result["rows_read"] == 93
    assert (result["rows_dropped_empty_user"], result["rows_dropped_bad_timestamp"],
            result["rows_dropped_empty_text"]) == (1, 1, 1)
    # users 5000, 5003, ... (u % 3 == 0) have news too; the rest one service only.
    assert (result["users_read"], result["users_kept"]) == (30, 10)
    assert result["users_dropped_few_services"] == 20
    info = load_vocab_info(os.path.join(out[0], "vocab"))
    assert info.max_text_bytes == 64 and info.services == ("news", "shopping")
    users = set()
    for path in glob.glob(os.path.join(out[0], "Split-*", "*.gz")):
        for raw in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
            users.add(parse_user_example(raw, info.services)[0])
    assert users == {str(5000 + u) for u in range(0, 30, 3)}

    import ml_metadata as mlmd

    store = mlmd.MetadataStore(metadata.sqlite_metadata_connection_config(
        os.path.join(root, "metadata.sqlite")))
    [artifact] = [a for a in store.get_artifacts_by_type("Examples") if a.uri == out[0]]
    props = {k: v.int_value for k, v in artifact.custom_properties.items() if v.HasField("int_value")}
    assert props["rows_dropped_empty_user"] == 1 and props["users_dropped_few_services"] == 20
