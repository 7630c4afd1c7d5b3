"""The statistics over seeds, on hand-made tables with known answers."""

import math

import numpy as np
import pandas as pd
import pytest

from optstudy import stats


def test_bootstrap_of_two_values_spans_both():
    # Resampling [0, 1] gives means 0, 0.5 and 1 with chances 1/4, 1/2, 1/4,
    # so the 2.5th and 97.5th percentiles are 0 and 1.
    mean, low, high = stats.bootstrap_mean([0.0, 1.0])
    assert mean == 0.5
    assert low == 0.0
    assert high == 1.0


def test_bootstrap_of_constant_has_no_width():
    mean, low, high = stats.bootstrap_mean([0.9, 0.9, 0.9])
    assert (mean, low, high) == pytest.approx((0.9, 0.9, 0.9))


def test_bootstrap_matches_normal_approximation():
    values = np.random.default_rng(1).normal(10.0, 2.0, size=400)
    mean, low, high = stats.bootstrap_mean(values)
    half_width = 1.96 * values.std(ddof=1) / math.sqrt(len(values))
    assert mean == pytest.approx(values.mean())
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)


def test_bootstrap_of_one_value_has_no_interval():
    mean, low, high = stats.bootstrap_mean([0.7])
    assert mean == 0.7
    assert math.isnan(low)
    assert math.isnan(high)


def test_bootstrap_ignores_missing_values():
    assert stats.bootstrap_mean([0.5, None, math.nan])[0] == 0.5
    assert all(math.isnan(v) for v in stats.bootstrap_mean([]))


def _table(values: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([
        {"optimizer": name, "seed": seed, "value": value}
        for name, column in values.items() for seed, value in enumerate(column)
    ])


def test_paired_differences_use_shared_seeds_only():
    frame = _table({"adam": [0.90, 0.91, 0.92], "sgd": [0.95, 0.93]})
    row = stats.paired_differences(frame, "adam").set_index("optimizer").loc["sgd"]
    assert row["pairs"] == 2
    assert row["mean"] == pytest.approx(0.035)
    assert row["ahead"] == 2
    assert row["low"] == pytest.approx(0.02)
    assert row["high"] == pytest.approx(0.05)


def test_paired_differences_leave_out_the_reference():
    frame = _table({"adam": [0.9], "sgd": [0.8]})
    assert list(stats.paired_differences(frame, "adam")["optimizer"]) == ["sgd"]


def test_separated_ranks_are_certain():
    frame = _table({"a": [0.9, 0.91, 0.92], "b": [0.5, 0.51, 0.52],
                    "c": [0.1, 0.11, 0.12]})
    ranks = stats.bootstrap_ranks(frame).set_index("optimizer")
    assert list(ranks["rank"]) == [1, 2, 3]
    assert list(ranks["rank_low"]) == [1, 2, 3]
    assert list(ranks["rank_high"]) == [1, 2, 3]
    assert ranks.loc["a", "p_first"] == 1.0


def test_overlapping_ranks_are_uncertain():
    frame = _table({"a": [0.90, 0.70, 0.80], "b": [0.85, 0.75, 0.79]})
    ranks = stats.bootstrap_ranks(frame).set_index("optimizer")
    assert ranks.loc["a", "rank"] == 1
    assert ranks.loc["a", "rank_high"] == 2
    assert 0 < ranks.loc["b", "p_first"] < 1


def test_performance_profile_on_hand_made_table():
    # Problem 1: a takes 10, b 20, c never. Problem 2: a 30, b 15, c 15.
    # Problem 3: nobody reaches the target.
    times = pd.DataFrame({"a": [10, 30, np.nan], "b": [20, 15, np.nan],
                          "c": [np.inf, 15, np.nan]})
    profile = stats.performance_profile(times, [1, 2, 4]).set_index(["optimizer",
                                                                     "tau"])
    share = profile["share"]
    assert share[("a", 1.0)] == pytest.approx(1 / 3)
    assert share[("a", 2.0)] == pytest.approx(2 / 3)
    assert share[("b", 1.0)] == pytest.approx(1 / 3)
    assert share[("b", 2.0)] == pytest.approx(2 / 3)
    assert share[("c", 1.0)] == pytest.approx(1 / 3)
    assert share[("c", 4.0)] == pytest.approx(1 / 3)


def test_first_reach_finds_first_check():
    checks = pd.DataFrame({"step": [0, 10, 20, 30],
                           "train_seconds": [0.0, 1.0, 2.0, 3.0],
                           "valid_accuracy": [0.1, 0.85, 0.90, 0.95]})
    assert stats.first_reach(checks, 0.9) == (20.0, 2.0)
    assert stats.first_reach(checks, 0.85) == (10.0, 1.0)


def test_first_reach_missed_target_is_nan():
    checks = pd.DataFrame({"step": [0, 10], "train_seconds": [0.0, 1.0],
                           "valid_accuracy": [0.1, 0.5]})
    step, seconds = stats.first_reach(checks, 0.9)
    assert math.isnan(step)
    assert math.isnan(seconds)
