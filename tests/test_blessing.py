"""The blessing rule: a lead must be real (paired bootstrap over test users), not noise.

The interval is checked against two NumPy references: the same resampling
written as a plain loop, and the exact bootstrap distribution enumerated over
every resample of a tiny example.
"""

import itertools
import json
import re

import numpy as np
import pytest

from clue_tfrs import metrics
from clue_tfrs.reporting import PerExample, ResultsTable, write_results
from components.clue_evaluator.blessing import blessing_decision

K = 100  # sampled negatives per positive


# --------------------------------------------------------------------------
# The bootstrap against NumPy references
# --------------------------------------------------------------------------


def _loop_bootstrap(a, b, groups, confidence, resamples, seed):
    """Textbook cluster bootstrap, one replicate at a time."""
    rng = np.random.default_rng(seed)
    users = np.unique(groups)
    stats = []
    for _ in range(resamples):
        picked = users[rng.integers(0, len(users), size=len(users))]
        diffs = np.concatenate([a[groups == u] - b[groups == u] for u in picked])
        stats.append(diffs.mean())
    return np.quantile(stats, 1 - confidence), np.quantile(stats, confidence)


def test_paired_bootstrap_equals_a_plain_loop():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(7), rng.integers(1, 6, size=7))  # users with 1-5 positives
    a, b = rng.random(len(groups)), rng.random(len(groups))
    got = metrics.paired_bootstrap(a, b, groups, confidence=0.9, resamples=300, seed=5)
    lower, upper = _loop_bootstrap(a, b, groups, 0.9, 300, 5)
    assert got["lower"] == pytest.approx(lower, abs=1e-12)
    assert got["upper"] == pytest.approx(upper, abs=1e-12)
    assert got["difference"] == pytest.approx(np.mean(a - b), abs=1e-15)
    assert (got["groups"], got["positives"], got["resamples"]) == (7, len(groups), 300)


def test_paired_bootstrap_matches_the_exact_bootstrap_distribution():
    """4 users: all 4^4 = 256 equally likely resamples give the exact distribution of
    the statistic; 20,000 Monte Carlo replicates must land on its quantiles."""
    groups = np.array([0, 0, 1, 2, 2, 2, 3])
    a = np.array([1.0, 0.5, 0.2, 1.0, 1 / 3, 0.25, 0.1])
    b = np.array([0.5, 0.5, 0.25, 0.2, 1 / 3, 0.1, 0.5])
    d = a - b
    exact = np.sort([
        np.concatenate([d[groups == u] for u in pick]).mean()
        for pick in itertools.product(range(4), repeat=4)
    ])
    got = metrics.paired_bootstrap(a, b, groups, confidence=0.95, resamples=20000, seed=1)
    cdf = lambda x: np.mean(exact <= x + 1e-12)  # noqa: E731
    assert abs(cdf(got["lower"]) - 0.05) < 0.02
    assert abs(cdf(got["upper"]) - 0.95) < 0.02


def test_paired_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="confidence"):
        metrics.paired_bootstrap([1.0], [0.0], [0], confidence=0.4)
    with pytest.raises(ValueError, match="one length"):
        metrics.paired_bootstrap([1.0, 2.0], [0.0], [0, 0])
    with pytest.raises(ValueError, match="N = 0"):
        metrics.paired_bootstrap([], [], [])


def test_metric_from_counts_equals_the_score_based_metrics():
    rng = np.random.default_rng(2)
    pos, neg = rng.integers(0, 4, 50).astype(float), rng.integers(0, 4, (50, 9)).astype(float)
    greater, ties = metrics.rank_counts(pos, neg)
    for name, ref in (("MRR", metrics.reciprocal_rank(pos, neg)),
                      ("HR@1", metrics.hit_rate_at_k(pos, neg, 1)),
                      ("NDCG@10", metrics.ndcg_at_k(pos, neg, 10))):
        np.testing.assert_allclose(metrics.metric_from_counts(name, greater, ties, 9), ref,
                                   atol=1e-15, err_msg=name)


# --------------------------------------------------------------------------
# The rule on synthetic per-user ranks
# --------------------------------------------------------------------------


def _table(greater, users):
    """A ResultsTable from per-positive ``greater`` counts per column (no ties)."""
    ties = {c: np.zeros_like(g) for c, g in greater.items()}
    pe = PerExample(users=users, greater=greater, ties=ties, num_negatives=K)
    values = {c: {"MRR": float(pe.values(c).mean())} for c in greater}
    table = ResultsTable(columns=list(greater), rows=["MRR"], values=values, per_example=pe)
    table.info["paired"] = table.paired_comparisons()
    return table


def _ranks(rng, n, scale):
    """Ranks - 1 of n positives: geometric-like, smaller scale = better model."""
    return np.minimum(rng.exponential(scale, n).astype(np.int64), K)


USERS = np.repeat(np.arange(150), 6)  # 150 test users, 6 positives each


def test_a_truly_better_model_is_blessed_and_the_reason_shows_the_interval():
    rng = np.random.default_rng(0)
    n = len(USERS)
    table = _table({"TopPop": _ranks(rng, n, 12.0), "U-MLP (CLUE)": _ranks(rng, n, 4.0),
                    "U-MLP (Untrained)": _ranks(rng, n, 10.0)}, USERS)
    blessed, reason = blessing_decision(table.to_dict())
    assert blessed, reason
    pattern = (r"U-MLP \(CLUE\) MRR (0\.\d{4}) vs TopPop (0\.\d{4}): \+(0\.\d{4}) "
               r"\[95% CI \+(0\.\d{4}), \+(0\.\d{4})\], lower bound \+(0\.\d{4}) > margin 0\.0000")
    m = re.search(pattern, reason)
    assert m, reason
    clue, top, diff, lo, hi, lo2 = (float(x) for x in m.groups())
    assert lo == lo2 and lo < diff < hi
    assert diff == pytest.approx(clue - top, abs=2e-4)
    assert "vs U-MLP (Untrained)" in reason
    # The same verdict from the ResultsTable itself and after a JSON round trip.
    assert blessing_decision(table) == (blessed, reason)
    assert blessing_decision(json.loads(json.dumps(table.to_dict()))) == (blessed, reason)


def test_identical_models_plus_noise_are_not_blessed():
    """CLUE = the untrained encoder's ranks with a little noise: the mean may lead by
    about 0.001, which the old rule (means, margin 0) blessed; the interval holds 0."""
    rng = np.random.default_rng(1)
    n = len(USERS)
    untrained = _ranks(rng, n, 6.0)
    noisy = np.clip(untrained + rng.integers(-1, 2, n), 0, K)
    table = _table({"TopPop": _ranks(rng, n, 12.0), "U-MLP (CLUE)": noisy,
                    "U-MLP (Untrained)": untrained}, USERS)
    c = next(c for c in table.info["paired"]
             if (c["model"], c["baseline"]) == ("U-MLP (CLUE)", "U-MLP (Untrained)"))
    assert c["lower"] < 0 < c["upper"]
    blessed, reason = blessing_decision(table)
    assert not blessed
    assert re.search(r"vs U-MLP \(Untrained\) 0\.\d{4}: [+-]0\.\d{4} \[95% CI -0\.\d{4}, "
                     r"\+0\.\d{4}\], lower bound -0\.\d{4} <= margin 0\.0000", reason), reason
    # The untrained baseline alone decided it: without it, CLUE beats TopPop.
    assert blessing_decision(table, margin_over_untrained=None)[0]


def test_equal_means_that_the_old_rule_blessed_are_not_blessed():
    """One positive moved up one place: CLUE leads by a hair in the mean."""
    rng = np.random.default_rng(2)
    n = len(USERS)
    base = _ranks(rng, n, 6.0) + 1
    clue = base.copy()
    clue[0] -= 1
    table = _table({"TopPop": base + 5, "U-MLP (CLUE)": clue, "U-MLP (Untrained)": base}, USERS)
    assert table.value("U-MLP (CLUE)", "MRR") > table.value("U-MLP (Untrained)", "MRR")
    means_only = {k: v for k, v in table.to_dict().items() if k != "info"}
    assert blessing_decision(means_only)[0]  # the old rule, on a table without comparisons
    assert "means only" in blessing_decision(means_only)[1]
    assert not blessing_decision(table)[0]


def test_the_margin_applies_to_the_lower_bound():
    rng = np.random.default_rng(3)
    n = len(USERS)
    table = _table({"TopPop": _ranks(rng, n, 12.0), "U-MLP (CLUE)": _ranks(rng, n, 4.0)}, USERS)
    c = table.info["paired"][1]
    assert (c["model"], c["baseline"]) == ("U-MLP (CLUE)", "TopPop")
    assert c["lower"] < c["difference"]
    kw = {"margin_over_untrained": None}
    assert blessing_decision(table, margin_over_toppop=c["lower"] - 1e-4, **kw)[0]
    # A margin below the mean lead but above the lower bound is not enough.
    assert not blessing_decision(table, margin_over_toppop=(c["lower"] + c["difference"]) / 2,
                                 **kw)[0]


def test_results_json_keeps_the_per_example_ranks(tmp_path):
    rng = np.random.default_rng(4)
    n = len(USERS)
    table = _table({"TopPop": _ranks(rng, n, 12.0), "U-MLP (CLUE)": _ranks(rng, n, 4.0),
                    "U-MLP (Untrained)": _ranks(rng, n, 10.0)}, USERS)
    paths = write_results(table, str(tmp_path))
    with open(paths["json"]) as f:
        text = f.read()
    assert len(text.splitlines()) < 400  # the per-positive lists are one line each
    back = ResultsTable.from_dict(json.loads(text))
    np.testing.assert_array_equal(back.per_example.users, USERS)
    for c in table.columns:
        np.testing.assert_array_equal(back.per_example.greater[c], table.per_example.greater[c])
    assert back.compare("U-MLP (CLUE)", "TopPop") == table.compare("U-MLP (CLUE)", "TopPop")
    assert blessing_decision(json.loads(text)) == blessing_decision(table)
    md = open(paths["md"]).read()
    assert "Paired differences (bootstrap over the 150 test users, 2000 resamples" in md
    assert re.search(r"\* U-MLP \(CLUE\) MRR 0\.\d{4} vs TopPop 0\.\d{4}: \+0\.\d{4} "
                     r"\[95% CI \+0\.\d{4}, \+0\.\d{4}\]", md)


def test_the_confidence_level_decides_a_small_lead():
    """A lead whose one-sided 60% bound is above zero and whose 99.9% bound is not:
    the level chosen (`clue run --blessing-confidence`) decides, and the reason says
    which level was used."""
    rng = np.random.default_rng(4)
    n = len(USERS)
    base = _ranks(rng, n, 6.0) + 1
    # Each positive one place up (16%), down (24%) or kept: a small mean lead in MRR
    # (1/rank gains more going up than it loses going down), and noisy.
    clue = np.clip(base + rng.choice([-1, 0, 1], size=n, p=[0.16, 0.60, 0.24]), 0, K)
    table = _table({"TopPop": base + 5, "U-MLP (CLUE)": clue, "U-MLP (Untrained)": base}, USERS)
    loose = table.paired_comparisons(confidence=0.6)
    strict = table.paired_comparisons(confidence=0.999)
    pick = lambda cs: next(c for c in cs if (c["model"], c["baseline"]) ==  # noqa: E731
                           ("U-MLP (CLUE)", "U-MLP (Untrained)"))
    assert pick(strict)["lower"] <= 0 < pick(loose)["lower"], (pick(strict), pick(loose))
    table.info["paired"] = loose
    blessed, reason = blessing_decision(table)
    assert blessed and "[60% CI" in reason, reason
    table.info["paired"] = strict
    blessed, reason = blessing_decision(table)
    assert not blessed and "[99.9% CI" in reason, reason
