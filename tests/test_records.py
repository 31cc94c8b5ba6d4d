"""Per-user cleaning, splitting and tf.train.Example round trip (clue_keras.data.records)."""

import random
import subprocess
import sys

import pytest

from clue_keras.data import records as R

# One user's rows: (service, timestamp, text).
ALICE = [
    ("shop", 30, "red  shoes"),       # repeat of t=10 after normalisation -> dropped
    ("shop", 10, " red shoes "),
    ("shop", 20, "blue hat"),
    ("news", 15, "election results"),
    ("news", 5, "   "),               # empty after normalisation -> skipped
    ("shop", 40, "green bag"),
    ("shop", 50, "socks"),
    ("news", 15, "election results"), # exact repeat, same time -> dropped
    ("search", 25, "red shoes"),      # same text, other service -> kept
    ("shop", 50, "belt"),             # same time as "socks": ordered by text
]


def test_clean_behaviors_exact_output():
    cleaned = R.clean_behaviors(ALICE, max_items=3)
    # shop, chronological after dedup: red shoes(10), blue hat(20), green bag(40),
    # belt(50), socks(50) -> newest 3, oldest first.
    assert cleaned.items == {"news": ["election results"], "search": ["red shoes"],
                             "shop": ["green bag", "belt", "socks"]}
    assert (cleaned.n_rows, cleaned.n_empty, cleaned.n_duplicates, cleaned.n_truncated) == \
        (10, 1, 2, 2)
    assert cleaned.n_items == 5


def test_clean_behaviors_ignores_row_order():
    rows = list(ALICE)
    want = R.clean_behaviors(rows, max_items=3).items
    rng = random.Random(0)
    for _ in range(5):
        rng.shuffle(rows)
        assert R.clean_behaviors(rows, max_items=3).items == want


def test_dedup_keeps_earliest_occurrence():
    rows = [("a", 9, "x"), ("a", 3, "x"), ("a", 5, "y"), ("b", 1, "x")]
    assert R.dedup_user_service(rows) == [("b", 1, "x"), ("a", 3, "x"), ("a", 5, "y")]


def test_keep_newest():
    assert R.keep_newest(["1", "2", "3", "4"], 2) == ["3", "4"]
    assert R.keep_newest(["1"], 5) == ["1"]
    with pytest.raises(ValueError, match="max_items"):
        R.keep_newest(["1"], 0)


def test_clean_behaviors_all_empty():
    cleaned = R.clean_behaviors([("a", 1, ""), ("a", 2, "\t")], max_items=4)
    assert cleaned.items == {} and cleaned.n_items == 0 and cleaned.n_empty == 2


def test_is_active():
    assert R.is_active(2, 2) and R.is_active(3, 2) and not R.is_active(1, 2)


def test_split_of_golden_values():
    # md5(id)[:8] as big-endian int mod 100: u0 -> 9, u9 -> 17, u1 -> 42, bob -> 66.
    assert [R.split_of(u, 10, 10) for u in ["u0", "u9", "u1", "bob"]] == \
        ["test", "eval", "train", "train"]
    assert R.split_of("u1", 50, 0) == "eval"
    assert {R.split_of(f"u{i}", 0, 0) for i in range(50)} == {"train"}
    assert {R.split_of(f"u{i}", 0, 100) for i in range(50)} == {"test"}
    with pytest.raises(ValueError, match="sum <= 100"):
        R.split_of("u", 60, 50)


def test_split_of_stable_when_users_added_and_across_processes():
    first = {f"user-{i}": R.split_of(f"user-{i}", 10, 20) for i in range(2000)}
    more = {f"user-{i}": R.split_of(f"user-{i}", 10, 20) for i in range(4000)}
    assert all(more[u] == s for u, s in first.items())
    share = {s: sum(v == s for v in more.values()) / len(more) for s in R.SPLITS}
    assert share["eval"] == pytest.approx(0.10, abs=0.02)
    assert share["test"] == pytest.approx(0.20, abs=0.02)
    # A fresh interpreter (different PYTHONHASHSEED) gives the same splits.
    code = ("from clue_keras.data.records import split_of;"
            "print(''.join(split_of(f'user-{i}', 10, 20)[1] for i in range(200)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "123"}).stdout.strip()
    assert out == "".join(first[f"user-{i}"][1] for i in range(200))


def test_records_module_does_not_import_tensorflow():
    code = ("import sys, clue_keras.data.records as r; r.clean_behaviors([('a', 1, 'x')], 2);"
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


SERVICES = ["news", "search", "shop"]


def test_example_round_trip():
    items = {"news": [[3, 10, 11], [3, 12]], "shop": [[5, 7]]}
    ex = R.build_user_example("사용자-1", items, SERVICES)
    f = ex.features.feature
    assert list(f["tokens/news"].int64_list.value) == [3, 10, 11, 3, 12]
    assert list(f["lengths/news"].int64_list.value) == [3, 2]
    assert list(f["tokens/search"].int64_list.value) == []
    assert list(f["lengths/search"].int64_list.value) == []
    assert "lengths/search" in f       # present even when empty
    assert f["user_id"].bytes_list.value == ["사용자-1".encode("utf-8")]
    user, parsed = R.parse_user_example(ex.SerializeToString(), SERVICES)
    assert user == "사용자-1"
    assert parsed == {"news": [[3, 10, 11], [3, 12]], "search": [], "shop": [[5, 7]]}


def test_build_example_errors():
    with pytest.raises(ValueError, match="'music'"):
        R.build_user_example("u", {"music": [[1]]}, SERVICES)
    with pytest.raises(ValueError, match="item 1 is empty"):
        R.build_user_example("u", {"news": [[3, 4], []]}, SERVICES)


def test_parse_example_errors():
    ex = R.build_user_example("u", {"news": [[3, 4]]}, ["news"])
    with pytest.raises(ValueError, match="'tokens/shop'"):
        R.parse_user_example(ex, ["news", "shop"])
    del ex.features.feature["lengths/news"].int64_list.value[:]
    ex.features.feature["lengths/news"].int64_list.value.append(5)
    with pytest.raises(ValueError, match="sum to 5 but there are 2 tokens"):
        R.parse_user_example(ex, ["news"])
