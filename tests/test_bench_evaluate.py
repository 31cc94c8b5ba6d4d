"""clue_bench.evaluate: the task written once reads back equal, the protocol fingerprint
tells protocols apart, and the before/after comparison reports ratios and differences."""

import numpy as np
import pandas as pd

from clue_bench import evaluate as bench
from clue_tfrs.protocol import EvalConfig


def _small():
    return bench.synthetic_task(users=60, interactions=600, items=150, topics=4, seed=3)


def test_a_written_task_reads_back_equal(tmp_path):
    frame, catalogue, sets = _small()
    bench.write_task(str(tmp_path), frame, catalogue, sets)
    frame2, catalogue2, sets2 = bench.read_task(str(tmp_path))
    pd.testing.assert_frame_equal(frame, frame2)
    pd.testing.assert_frame_equal(catalogue, catalogue2)
    assert sorted(sets2) == sorted(sets) == ["CLUE", "Untrained"]
    for name, (users, items) in sets.items():
        for original, back in ((users, sets2[name][0]), (items, sets2[name][1])):
            assert list(back) == [str(k) for k in original]
            np.testing.assert_array_equal(np.stack(list(back.values())),
                                          np.stack(list(original.values())))


def test_the_protocol_fingerprint_is_stable_and_changes_with_the_seed_or_negatives():
    frame, catalogue, _ = _small()
    cfg = EvalConfig()
    first = bench.protocol_fingerprint(frame, catalogue, cfg, seed=0)
    assert first == bench.protocol_fingerprint(frame.sample(frac=1.0, random_state=1),
                                               catalogue, cfg, seed=0)
    assert first["test_positives"] > 0
    assert bench.protocol_fingerprint(frame, catalogue, cfg, seed=1) != first
    assert bench.protocol_fingerprint(frame, catalogue, cfg, seed=0, num_negatives=50) != first


def _result(wall, cpu, mrr, protocol="abc", toppop=0.1):
    seconds = {"TopPop (and task preparation)": 1.0, "U-MLP (CLUE)": wall}
    return {"seconds": seconds, "total_seconds": 1.0 + wall,
            "model_cpu_seconds": {"TopPop (and task preparation)": 1.0, "U-MLP (CLUE)": cpu},
            "cpu_seconds": 1.0 + cpu, "mrr": {"TopPop": toppop, "U-MLP (CLUE)": mrr},
            "values": {"TopPop": {"MRR": toppop}}, "protocol": {"sha256": protocol}}


def test_the_comparison_prints_speed_ups_and_flags_a_different_protocol():
    text = bench.format_comparison(_result(30.0, 60.0, 0.25), _result(10.0, 15.0, 0.26))
    row = next(line for line in text.splitlines() if line.startswith("U-MLP (CLUE)"))
    assert "3.00x" in row and "4.00x" in row and "0.2500 / 0.2600" in row
    total = next(line for line in text.splitlines() if line.startswith("total"))
    assert "2.82x" in total  # 31 / 11
    assert "protocol identical" in text and "TopPop metrics identical" in text
    other = bench.format_comparison(_result(30.0, 60.0, 0.25, "xyz", 0.2),
                                    _result(10.0, 15.0, 0.26))
    assert "protocol DIFFERENT" in other and "TopPop metrics DIFFERENT" in other
