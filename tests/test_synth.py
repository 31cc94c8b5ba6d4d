"""Tests for the synthetic data generator (clue_synth) and `clue synth`."""

import collections
import filecmp
import hashlib
import json
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import clue_synth as synth
from clue_cli import main as cli
from clue_keras.data import formats, tables
from clue_synth import users as synth_users

N_USERS = 200
SEED = 3


def _interactions(data_dir, task):
    return tables.read_interactions(tables.task_dir(data_dir, task))


def _gen(path, users=N_USERS, **kw):
    kw.setdefault("seed", SEED)
    return synth.generate(str(path), users, **kw)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """200 users, CSV, 3 shards of 70/70/60 users."""
    out = tmp_path_factory.mktemp("synth") / "csv"
    manifest = _gen(out, fmt="csv", users_per_shard=70)
    return {
        "dir": str(out),
        "manifest": manifest,
        "behaviors": tables.read_behaviors(str(out)),
        "truth": synth.read_user_interests(str(out)).set_index("user_id"),
    }


def _all_files(root):
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


# ------------------------------------------------------------------ determinism


def test_same_seed_gives_byte_identical_files(tmp_path):
    for fmt in ("csv", "parquet"):
        a, b = tmp_path / f"a_{fmt}", tmp_path / f"b_{fmt}"
        _gen(a, users=80, fmt=fmt, users_per_shard=30)
        _gen(b, users=80, fmt=fmt, users_per_shard=30)
        files = _all_files(a)
        assert files == _all_files(b)
        assert len([f for f in files if f.startswith("behaviors")]) == 3
        match, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
        assert mismatch == [] and errors == [] and len(match) == len(files)


# sha256 over (relative path, bytes) of every file, sorted by path; computed with the
# generator as it was before it moved from clue_keras/synth.py to clue_synth/.
DIGESTS = {
    "default_csv": "821619dae6ab8b2f1ee6e72c90ed6c5a4af83b951162e80caab8d0fbe9535206",
    "jsonl_all_tasks": "85f447f9f43bd68e8872e62a610107129445dcbee21e3ffdcfb151cce0ca69a0",
}


def _digest(root):
    h = hashlib.sha256()
    for d, _, fs in sorted(os.walk(root)):
        for path in (os.path.join(d, f) for f in sorted(fs)):
            with open(path, "rb") as fh:
                h.update(os.path.relpath(path, root).encode() + b"\0" + fh.read())
    return h.hexdigest()


def test_output_is_byte_identical_to_the_recorded_digest(tmp_path):
    synth.generate(str(tmp_path / "a"), users=300, seed=7)
    assert _digest(tmp_path / "a") == DIGESTS["default_csv"]
    synth.generate(str(tmp_path / "b"), users=300, seed=7, fmt="jsonl",
                   tasks=("movies", "books", "webtoon"), users_per_shard=120)
    assert _digest(tmp_path / "b") == DIGESTS["jsonl_all_tasks"]


def test_different_seed_changes_data(data, tmp_path):
    other = _gen(tmp_path / "other", seed=SEED + 1, users_per_shard=70)
    df = tables.read_behaviors(str(tmp_path / "other"))
    assert other["files"] != data["manifest"]["files"]
    assert not df["item_text"].head(50).equals(data["behaviors"]["item_text"].head(50))


def test_rows_do_not_depend_on_sharding(data, tmp_path):
    out = tmp_path / "one_shard"
    manifest = _gen(out, users_per_shard=1000)
    assert manifest["num_shards"] == 1 and data["manifest"]["num_shards"] == 3
    pd.testing.assert_frame_equal(tables.read_behaviors(str(out)), data["behaviors"])
    for rel in ("truth/user_interests.jsonl", "downstream/movies/interactions.csv",
                "downstream/books/interactions.csv", "downstream/books/catalogue.jsonl"):
        assert filecmp.cmp(out / rel, os.path.join(data["dir"], rel), shallow=False), rel


def test_users_are_a_prefix_of_a_larger_run_and_tasks_do_not_change_behaviours(data, tmp_path):
    small = tmp_path / "small"
    _gen(small, users=50, tasks=("movies",))
    df = tables.read_behaviors(str(small))
    first50 = data["behaviors"][data["behaviors"]["user_id"] < synth.user_id_for(50)]
    pd.testing.assert_frame_equal(df, first50.reset_index(drop=True))
    movies = _interactions(str(small), "movies")
    full = _interactions(data["dir"], "movies")
    pd.testing.assert_frame_equal(movies, full[full["user_id"] < synth.user_id_for(50)].reset_index(drop=True))


# ---------------------------------------------------------------------- formats


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_formats_round_trip_to_the_same_rows(data, tmp_path, fmt):
    out = tmp_path / fmt
    manifest = _gen(out, fmt=fmt, users_per_shard=70)
    assert manifest["format"] == fmt
    assert sorted(os.listdir(out / "behaviors")) == [
        f"behaviors-0000{i}-of-00003.{fmt}" for i in range(3)]
    df = tables.read_behaviors(str(out))
    assert list(df.columns) == ["user_id", "service", "timestamp", "item_text"]
    assert df["timestamp"].dtype == np.int64
    # CSV, JSONL and Parquet hold exactly the same rows, text byte for byte.
    pd.testing.assert_frame_equal(df, data["behaviors"])
    for task in ("movies", "books"):
        pd.testing.assert_frame_equal(
            _interactions(str(out), task), _interactions(data["dir"], task))
    if fmt == "parquet":
        schema = pq.read_schema(out / "behaviors" / "behaviors-00000-of-00003.parquet")
        assert [(f.name, str(f.type)) for f in schema] == [
            ("user_id", "string"), ("service", "string"), ("timestamp", "int64"), ("item_text", "string")]
    else:
        with open(out / "behaviors" / "behaviors-00000-of-00003.jsonl", encoding="utf-8") as f:
            text = f.read()
        # ensure_ascii=False: Hangul is written as UTF-8, not as \\uXXXX escapes
        assert "\\u" not in text and any("\uac00" <= c <= "\ud7a3" for c in text)
        assert list(json.loads(text.splitlines()[0])) == ["user_id", "service", "timestamp", "item_text"]


def test_csv_quotes_commas_and_quotes(data):
    df = data["behaviors"]
    assert df["item_text"].str.contains(",").any()
    assert df["item_text"].str.contains('"').any()
    with open(os.path.join(data["dir"], "behaviors", "behaviors-00000-of-00003.csv"), encoding="utf-8") as f:
        assert f.readline() == "user_id,service,timestamp,item_text\n"


# ------------------------------------------------------------------- edge cases


def test_contains_the_edge_cases_a_pipeline_must_handle(data):
    df, truth = data["behaviors"], data["truth"]
    texts = df["item_text"]
    # exact repeats: same user, service and text at different timestamps
    dup = df[df.duplicated(["user_id", "service", "item_text"], keep=False) & (texts.str.strip() != "")]
    assert len(dup) > 50
    assert dup.groupby(["user_id", "service", "item_text"])["timestamp"].nunique().max() > 1
    # non-ASCII: Hangul and accented Latin
    assert texts.map(lambda t: any("\uac00" <= c <= "\ud7a3" for c in t)).mean() > 0.05
    assert texts.str.contains("é|ü|ô|ú", regex=True).any()
    # empty and whitespace-only texts, and texts needing whitespace normalisation
    assert 1 <= (texts.str.strip() == "").sum() < 0.01 * len(df)
    assert (texts == "").any() and texts.isin([" ", "  \t "]).any()
    assert texts.str.contains("  ").any()
    # users in one service only, light and heavy users
    per_user = df.groupby("user_id")
    n_services = per_user["service"].nunique()
    n_rows = per_user.size()
    assert (n_services == 1).sum() >= 0.05 * N_USERS
    assert (n_services == 3).sum() >= 0.2 * N_USERS
    assert (n_rows <= 2).sum() >= 3
    assert n_rows.max() >= 200
    # cold-start users: in the truth and downstream, but without behaviours
    cold = set(truth.index[truth["services"].map(len) == 0])
    assert 1 <= len(cold) <= 0.15 * N_USERS
    assert not cold & set(df["user_id"])
    downstream_users = set().union(*(set(_interactions(data["dir"], t)["user_id"])
                                     for t in ("movies", "books")))
    assert cold <= downstream_users
    assert len(cold) < 0.2 * len(downstream_users)


def test_timestamps_and_ids(data):
    df = data["behaviors"]
    lo, hi = data["manifest"]["time_window"]
    assert hi - lo == 730 * 86400
    assert df["timestamp"].between(lo, hi - 1).all()
    assert df["user_id"].str.fullmatch(r"u\d{7}").all()
    assert set(df["service"]) == {"news", "search", "shopping"}
    # users are contiguous and each user's rows are oldest first
    assert df["user_id"].is_monotonic_increasing
    assert df.groupby("user_id")["timestamp"].apply(lambda s: s.is_monotonic_increasing).all()


def test_manifest_and_truth_agree_with_files(data):
    m, df, truth = data["manifest"], data["behaviors"], data["truth"]
    assert (m["seed"], m["users"], m["format"]) == (SEED, N_USERS, "csv")
    assert m["services"] == ["news", "search", "shopping"] and m["tasks"] == ["books", "movies"]
    assert [t["id"] for t in m["topics"]] == list(range(len(synth.TOPICS)))
    with open(os.path.join(data["dir"], "manifest.json"), encoding="utf-8") as f:
        assert json.load(f) == m
    # row counts per file are the real ones
    shard_rows = [len(formats.read_table(p, formats.BEHAVIOR_COLUMNS)) for p in tables.behavior_files(data["dir"])]
    assert shard_rows == [n for f, n in m["files"].items() if f.startswith("behaviors/")]
    assert m["files"]["truth/user_interests.jsonl"] == len(truth) == N_USERS
    for task in ("movies", "books"):
        assert m["files"][f"downstream/{task}/interactions.csv"] == len(_interactions(data["dir"], task))
        assert m["files"][f"downstream/{task}/catalogue.jsonl"] == len(synth.TOPICS) * synth.ITEMS_PER_TOPIC
    assert m["stats"]["behaviors_per_service"] == df["service"].value_counts().to_dict()
    # truth: 1-3 distinct topics, weights sum to 1 strongest first, services as in the logs
    assert truth["interests"].map(lambda t: 1 <= len(t) == len(set(t)) <= 3).all()
    assert np.allclose(truth["weights"].map(sum), 1.0, atol=1e-5)
    assert truth["weights"].map(lambda w: w == sorted(w, reverse=True)).all()
    seen = df.groupby("user_id")["service"].apply(lambda s: sorted(set(s)))
    assert (truth.loc[seen.index, "services"] == seen).all()


# ------------------------------------------------------------ learnable signal


def _tfidf(df, users, vocab):
    m = np.zeros((len(users), len(vocab)))
    row = {u: i for i, u in enumerate(users)}
    for u, text in zip(df["user_id"], df["item_text"]):
        for w in text.lower().split():
            m[row[u], vocab[w]] += 1
    return m


def test_one_service_predicts_another_for_the_same_user(data):
    """Bag-of-words of a user's shopping titles finds the same user's news headlines
    at top-1 far above chance (1 / number of users)."""
    df = data["behaviors"]
    a, b = df[df["service"] == "shopping"], df[df["service"] == "news"]
    users = sorted(set(a["user_id"]) & set(b["user_id"]))
    vocab = {w: i for i, w in enumerate(sorted({w for t in pd.concat([a, b])["item_text"] for w in t.lower().split()}))}
    ma, mb = _tfidf(a[a["user_id"].isin(users)], users, vocab), _tfidf(b[b["user_id"].isin(users)], users, vocab)
    idf = np.log(2 * len(users) / (1 + (ma > 0).sum(0) + (mb > 0).sum(0)))
    ma, mb = ma * idf, mb * idf
    ma /= np.linalg.norm(ma, axis=1, keepdims=True) + 1e-9
    mb /= np.linalg.norm(mb, axis=1, keepdims=True) + 1e-9
    top1 = np.mean((ma @ mb.T).argmax(axis=1) == np.arange(len(users)))
    chance = 1.0 / len(users)
    assert len(users) >= 60
    assert top1 > 10 * chance, (top1, chance)


def test_each_service_reveals_the_ground_truth_topics(data):
    """Counting topic vocabulary in one service's logs recovers the user's top interest."""
    word_topic = {}
    for t, topic in enumerate(synth.TOPICS):
        for w in topic.nouns + topic.brands + topic.entities + topic.korean:
            word_topic[w.lower()] = t
    df, truth = data["behaviors"], data["truth"]
    for service in ("news", "search", "shopping"):
        hits = 0
        sub = df[df["service"] == service]
        users = [u for u, n in sub.groupby("user_id").size().items() if n >= 10]
        for u, texts in sub[sub["user_id"].isin(users)].groupby("user_id")["item_text"]:
            counts = collections.Counter(t for text in texts for w, t in word_topic.items() if w in text.lower())
            hits += counts.most_common(1)[0][0] in truth.loc[u, "interests"]
        assert len(users) >= 30
        assert hits / len(users) > 0.85, service


def test_downstream_clicks_concentrate_on_the_users_topics(data):
    truth = data["truth"]
    for task in ("movies", "books"):
        cat = tables.read_catalogue(tables.task_dir(data["dir"], task))
        assert cat["item_id"].is_unique and cat["item_text"].is_unique
        assert (cat["topic"].value_counts() == synth.ITEMS_PER_TOPIC).all()
        inter = _interactions(data["dir"], task)
        assert not inter.duplicated(["user_id", "item_id"]).any()
        merged = inter.merge(cat, on="item_id", suffixes=("", "_cat"), validate="many_to_one")
        assert (merged["item_text"] == merged["item_text_cat"]).all()
        on_topic = np.mean([t in truth.loc[u, "interests"] for u, t in zip(merged["user_id"], merged["topic"])])
        chance = truth["interests"].map(len).mean() / len(synth.TOPICS)
        assert on_topic > 0.75 and chance < 0.1, (on_topic, chance)
        # and not only that: some off-topic noise
        assert on_topic < 0.95
        lo, hi = data["manifest"]["time_window"]
        assert inter["timestamp"].between(lo, hi - 1).all()


# ------------------------------------------------------------ files and errors


def test_rewriting_a_directory_removes_stale_shards_and_temp_files(tmp_path):
    out = tmp_path / "d"
    _gen(out, users=40, users_per_shard=10)
    assert len(os.listdir(out / "behaviors")) == 4
    _gen(out, users=40, users_per_shard=40, fmt="jsonl")
    assert os.listdir(out / "behaviors") == ["behaviors-00000-of-00001.jsonl"]
    assert sorted(os.listdir(out / "downstream" / "movies")) == ["catalogue.jsonl", "interactions.jsonl"]
    assert not [f for f in _all_files(out) if ".tmp-" in f]


def test_a_failed_run_leaves_no_manifest_and_no_temp_files(tmp_path, monkeypatch):
    out = tmp_path / "d"
    _gen(out, users=30)
    calls = {"n": 0}
    real = synth_users.behaviors

    def flaky(p, rng):
        calls["n"] += 1
        if calls["n"] == 20:
            raise RuntimeError("disk on fire")
        return real(p, rng)

    monkeypatch.setattr(synth_users, "behaviors", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        _gen(out, users=30)
    assert not (out / "manifest.json").exists()
    assert not [f for f in _all_files(out) if ".tmp-" in f]


@pytest.mark.parametrize("kwargs, message", [
    ({"users": 0}, "users must be an integer >= 1"),
    ({"users": 2.5}, "users must be an integer >= 1"),
    ({"fmt": "xml"}, "unknown format 'xml'"),
    ({"services": ("shopping", "video")}, r"unknown services \['video'\]"),
    ({"services": ()}, "at least one of services"),
    ({"tasks": ("movies", "music")}, r"unknown tasks \['music'\]"),
    ({"users_per_shard": 0}, "users_per_shard must be an integer >= 1"),
])
def test_generate_rejects_bad_arguments(tmp_path, kwargs, message):
    args = {"users": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        synth.generate(str(tmp_path / "x"), **args)


def test_single_service_and_no_tasks(tmp_path):
    m = _gen(tmp_path / "d", users=30, services=("search",), tasks=())
    df = tables.read_behaviors(str(tmp_path / "d"))
    assert set(df["service"]) == {"search"} and m["tasks"] == []
    assert not (tmp_path / "d" / "downstream").exists()


def test_readers_name_the_file_at_fault(tmp_path):
    bdir = tmp_path / "d" / "behaviors"
    bdir.mkdir(parents=True)
    bad_csv = bdir / "behaviors-00000-of-00001.csv"
    bad_csv.write_text("user_id,service,item_text\nu1,news,hello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"behaviors-00000-of-00001\.csv: missing column\(s\) \['timestamp'\]"):
        tables.read_behaviors(str(tmp_path / "d"))
    bad_csv.write_text("user_id,service,timestamp,item_text\nu1,news,yesterday,hello\n", encoding="utf-8")
    # A timestamp that is not one is dropped and counted, as preprocessing does.
    df = tables.read_behaviors(str(tmp_path / "d"))
    assert len(df) == 0 and df.attrs["rows_dropped"]["rows_dropped_bad_timestamp"] == 1
    bad_csv.unlink()
    bad_jsonl = bdir / "behaviors-00000-of-00001.jsonl"
    bad_jsonl.write_text('{"user_id": "u1", "service": "news", "timestamp": 1, "item_text": "a"}\n{"user_id": \n',
                         encoding="utf-8")
    with pytest.raises(ValueError, match=r"behaviors-00000-of-00001\.jsonl:2: not valid JSON"):
        tables.read_behaviors(str(tmp_path / "d"))
    bad_jsonl.unlink()
    (bdir / "behaviors-00000-of-00001.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=r"behaviors-00000-of-00001\.parquet: cannot parse as parquet"):
        tables.read_behaviors(str(tmp_path / "d"))
    with pytest.raises(FileNotFoundError, match="nothing: no such file or directory"):
        tables.read_behaviors(str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="no downstream task 'movies'"):
        _interactions(str(tmp_path / "d"), "movies")


# -------------------------------------------------------------------------- CLI


def test_cli_writes_a_data_set(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = cli.main(["synth", "--users", "40", "--seed", "7", "--out", str(out), "--format", "parquet",
                   "--services", "shopping,news", "--tasks", "webtoon", "--shard-users", "15", "--quiet"])
    assert rc == 0
    assert "40 users" in capsys.readouterr().out
    m = synth.load_manifest(str(out))
    assert (m["users"], m["seed"], m["format"], m["num_shards"]) == (40, 7, "parquet", 3)
    assert m["services"] == ["news", "shopping"] and m["tasks"] == ["webtoon"]
    assert m == _gen(tmp_path / "api", users=40, seed=7, fmt="parquet", services=("shopping", "news"),
                     tasks=("webtoon",), users_per_shard=15)
    webtoon = _interactions(str(out), "webtoon")
    assert len(webtoon) == m["files"]["downstream/webtoon/interactions.parquet"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--format", "xml"], "argument --format: invalid choice: 'xml'"),
    (["--services", "shopping,video"], "argument --services: unknown name(s) ['video']"),
    (["--users", "0"], "argument --users: must be >= 1, got 0"),
    (["--shard-users", "many"], "argument --shard-users: expected an integer, got 'many'"),
])
def test_cli_rejects_bad_arguments_clearly(tmp_path, capsys, argv, message):
    base = ["synth", "--users", "5", "--out", str(tmp_path / "x")]
    with pytest.raises(SystemExit) as e:
        cli.main(base + argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
