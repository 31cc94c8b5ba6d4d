"""The preprocessing Beam graph on a distributed engine: a dask.distributed cluster.

The slow test starts a scheduler and two worker processes on loopback
(``distributed.LocalCluster``), runs `clue_keras.data.preprocess.build_pipeline`
there through `clue_keras.data.dask_runner.DaskRunner` with two Dask partitions
per created collection, and checks that records (per user and split), vocabulary
files and ``stats.json`` equal the DirectRunner's on the same raw files. The fast
tests pin down what Beam 2.74's own DaskRunner gets wrong (bundles of a ParDo
that share one worker repeat each other's outputs) and the portable pieces of
`clue_keras.data.engines`.

Flink and Spark are not tested: Beam's Python SDK starts their job server from a
jar it fetches from Maven Central, which these machines cannot reach.
"""

import json
import os
import time

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions

import clue_synth
from clue_cli.main import main as clue_main
from clue_keras.config import get_preset
from clue_keras.data import engines
from clue_keras.data import preprocess as pp
from clue_keras.data.formats import BEHAVIOR_COLUMNS, read_table
from clue_keras.data.prepare import IN_PROCESS_OPTIONS, write_raw_examples
from clue_keras.data.records import SPLITS, parse_user_example
from clue_keras.data.tables import behavior_files
from clue_keras.tokenizer import load_vocab_info

USERS = 200
VOCAB_FILES = ("vocab.json", "merges.txt", "clue_vocab.json")
WAIT_MS = 480_000  # a run that takes longer than this fails instead of hanging


def _run(options, build, out_file=None):
    p = beam.Pipeline(options=PipelineOptions(options))
    build(p)
    result = p.run()
    try:
        result.wait_until_finish(duration=WAIT_MS)
    finally:
        engines.close_client(result)
    return json.load(open(out_file)) if out_file else None


def _ten_times_side_input(runner, address, out_file):
    """``[0, 10, ..., 50]`` made in 3 partitions and read as a side input."""
    def build(p):
        tens = p | "Six" >> beam.Create(list(range(6))) | "Times10" >> beam.Map(lambda x: x * 10)
        _ = (p | "One" >> beam.Create([None])
             | "Write" >> beam.Map(lambda _, xs: open(out_file, "w").write(json.dumps(sorted(xs))),
                                   beam.pvalue.AsList(tens)))
    return _run(engines.dask_beam_args(address, npartitions=3, runner=runner), build, out_file)


def test_stock_dask_runner_repeats_outputs_of_earlier_bundles_and_ours_does_not(tmp_path):
    """Beam 2.74's ParDo translation shares one never-emptied output list among
    a ParDo's partitions; partitions that run in one worker return the outputs
    of the ones before them again (here, in-process, every time)."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                           dashboard_address=None)
    try:
        stock = _ten_times_side_input(engines.STOCK_DASK_RUNNER, cluster.scheduler_address,
                                      str(tmp_path / "stock.json"))
        ours = _ten_times_side_input(engines.DASK_RUNNER, cluster.scheduler_address,
                                     str(tmp_path / "ours.json"))
    finally:
        cluster.close(timeout=60)
    assert ours == [0, 10, 20, 30, 40, 50]
    assert len(stock) > 6 and sorted(set(stock)) == ours, stock


def test_dask_beam_args():
    assert engines.dask_beam_args("tcp://127.0.0.1:8786", npartitions=4, timeout_s=30) == [
        "--runner=clue_keras.data.dask_runner.DaskRunner",
        "--dask_client_address=tcp://127.0.0.1:8786", "--dask_npartitions=4",
        "--dask_connection_timeout=30"]


def test_read_tfrecords_reads_every_matching_file_and_names_an_empty_pattern(tmp_path):
    for name, compression in (("a.gz", "GZIP"), ("b", "")):
        with tf.io.TFRecordWriter(str(tmp_path / name), compression) as w:
            for i in range(3):
                w.write(f"{name}{i}".encode())
    out = str(tmp_path / "out.json")
    _run(list(IN_PROCESS_OPTIONS), lambda p: (
        p | engines.ReadTFRecords(str(tmp_path / "*"))  # pylint: disable=no-value-for-parameter
        | beam.combiners.ToList()
        | beam.Map(lambda xs: open(out, "w").write(json.dumps(sorted(x.decode() for x in xs))))))
    assert json.load(open(out)) == ["a.gz0", "a.gz1", "a.gz2", "b0", "b1", "b2"]
    with pytest.raises(OSError, match="No files found"):
        _ = beam.Pipeline() | engines.ReadTFRecords(str(tmp_path / "none-*"))  # pylint: disable=no-value-for-parameter


def test_select_tags_and_remove_write_leftovers(tmp_path):
    out = str(tmp_path / "out.json")

    def build(p):
        parts = engines.select_tags(p | beam.Create([("a", 1), ("b", 2), ("a", 3)]), ("a", "b"))
        keyed = [parts[k] | f"Key[{k}]" >> beam.Map(lambda v, k=k: (k, v)) for k in ("a", "b")]
        _ = (keyed | beam.Flatten() | beam.combiners.ToList()
             | beam.Map(lambda kv: open(out, "w").write(json.dumps(sorted(kv)))))
    _run(list(IN_PROCESS_OPTIONS), build)
    assert json.load(open(out)) == [["a", 1], ["a", 3], ["b", 2]]
    split = tmp_path / "Split-train"
    (split / "beam-temp-data_tfrecord-1").mkdir(parents=True)
    (split / "beam-temp-data_tfrecord-1" / "x.gz").write_bytes(b"x")
    (split / "data_tfrecord-00000-of-00001.gz").write_bytes(b"")
    removed = engines.remove_write_leftovers([str(split / "data_tfrecord-00000-of-00001.gz")])
    assert [os.path.basename(r) for r in removed] == ["beam-temp-data_tfrecord-1"]
    assert os.listdir(split) == ["data_tfrecord-00000-of-00001.gz"]


# ---------------------------------------------------------------------------
# The whole graph on a dask.distributed cluster on loopback.
# ---------------------------------------------------------------------------

def _records(out, services):
    per_split = {}
    for split in SPLITS:
        users = {}
        for path in tf.io.gfile.glob(os.path.join(out, f"Split-{split}", "*")):
            for raw in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
                user_id, items = parse_user_example(raw, services)
                assert user_id not in users
                users[user_id] = items
        per_split[split] = users
    return per_split


@pytest.fixture(scope="module")
def dask_and_direct(tmp_path_factory):
    from distributed import Client, LocalCluster, get_task_stream

    root = tmp_path_factory.mktemp("dask")
    data = str(root / "data")
    clue_synth.generate(data, users=USERS, seed=11, tasks=())
    rows = []
    for path in behavior_files(data):
        df = read_table(path, BEHAVIOR_COLUMNS, raw=True)
        rows += list(zip(*(df[c].tolist() for c in BEHAVIOR_COLUMNS)))
    (root / "raw").mkdir()
    for i in range(2):  # two input files: two partitions of the raw rows on Dask
        write_raw_examples(rows[i::2], str(root / "raw" / f"part-{i}.tfrecord.gz"))
    pattern = str(root / "raw" / "*")
    mc = get_preset("tiny")
    params = {"max_items": mc.max_items, "max_tokens": mc.max_tokens,
              "vocab_size": mc.vocab_size, "min_items_per_user": 3, "min_services_per_user": 2,
              "eval_percent": 20, "test_percent": 20, "bpe_sample_size": 200_000,
              "num_shards": 2}
    direct, dask_out = str(root / "direct"), str(root / "dask")
    _run(list(IN_PROCESS_OPTIONS), lambda p: pp.build_pipeline(p, pattern, direct, params))

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    try:
        with Client(cluster, timeout=60) as client:
            worker_pids = client.run(os.getpid)
            started = time.time()
            with get_task_stream(client) as stream:
                _run(engines.dask_beam_args(cluster.scheduler_address, npartitions=2,
                                            timeout_s=60),
                     lambda p: pp.build_pipeline(p, pattern, dask_out, params))
            seconds = time.time() - started
            task_workers = {t["worker"] for t in stream.data}
            # The pipeline's default num_shards=0 ("the runner decides"): Beam's DaskRunner
            # wrote empty files for it, so preprocessing asks for one shard there.
            default_shards = str(root / "dask_default_shards")
            _run(engines.dask_beam_args(cluster.scheduler_address, timeout_s=60),
                 lambda p: pp.build_pipeline(p, pattern, default_shards,
                                             dict(params, num_shards=0)))
            # `clue prepare` as a user runs it on the cluster: --beam-arg options.
            cli_argv = ["prepare", "--behaviors", data, "--preset", "tiny", "--min-items", "3",
                        "--min-services", "2", "--eval-percent", "20", "--test-percent", "20"]
            dask_args = [f"--beam-arg={a}" for a in engines.dask_beam_args(
                cluster.scheduler_address, timeout_s=60)]
            assert clue_main(cli_argv + ["--out", str(root / "cli_dask")] + dask_args) == 0
    finally:
        cluster.close(timeout=60)
    assert clue_main(cli_argv + ["--out", str(root / "cli_direct")]) == 0
    return direct, dask_out, {"worker_pids": worker_pids, "task_workers": task_workers,
                              "seconds": seconds, "cli": (root / "cli_direct", root / "cli_dask"),
                              "default_shards": default_shards}


@pytest.mark.slow
def test_dask_ran_on_two_worker_processes(dask_and_direct):
    _, _, run = dask_and_direct
    pids = set(run["worker_pids"].values())
    assert len(pids) == 2 and os.getpid() not in pids
    assert run["task_workers"] == set(run["worker_pids"]), run["task_workers"]


@pytest.mark.slow
def test_dask_stats_and_vocabulary_equal_the_direct_runners(dask_and_direct):
    direct, dask_out, _ = dask_and_direct
    with open(os.path.join(direct, pp.STATS_FILENAME)) as f:
        a = json.load(f)
    with open(os.path.join(dask_out, pp.STATS_FILENAME)) as f:
        assert json.load(f) == a
    assert min(a[f"users_{s}"] for s in SPLITS) > 0 and a["rows_dropped_empty_text"] > 0
    for name in VOCAB_FILES:
        with open(os.path.join(direct, pp.VOCAB_DIRNAME, name), "rb") as f:
            expected = f.read()
        with open(os.path.join(dask_out, pp.VOCAB_DIRNAME, name), "rb") as f:
            assert f.read() == expected, name


@pytest.mark.slow
def test_clue_prepare_with_dask_beam_args_equals_the_direct_run(dask_and_direct):
    direct, on_dask = dask_and_direct[2]["cli"]
    with open(direct / pp.STATS_FILENAME) as f:
        expected = json.load(f)
    with open(on_dask / pp.STATS_FILENAME) as f:
        assert json.load(f) == expected
    assert expected["users_train"] > 0
    services = load_vocab_info(str(direct / pp.VOCAB_DIRNAME)).services
    assert _records(str(direct), services) == _records(str(on_dask), services)


@pytest.mark.slow
def test_dask_with_runner_decided_shards_writes_every_record(dask_and_direct):
    direct, _, run = dask_and_direct
    services = load_vocab_info(os.path.join(direct, pp.VOCAB_DIRNAME)).services
    assert _records(run["default_shards"], services) == _records(direct, services)


@pytest.mark.slow
def test_dask_records_equal_the_direct_runners_per_user(dask_and_direct):
    direct, dask_out, _ = dask_and_direct
    services = load_vocab_info(os.path.join(direct, pp.VOCAB_DIRNAME)).services
    a, b = _records(direct, services), _records(dask_out, services)
    for split in SPLITS:
        assert a[split] and a[split] == b[split], split
        # Only the final shards: no beam-temp-* folder left behind.
        assert sorted(os.listdir(os.path.join(dask_out, f"Split-{split}"))) == [
            f"data_tfrecord-0000{i}-of-00002.gz" for i in range(2)]
