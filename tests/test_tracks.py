"""The two tracks, their summaries and sentences, on a hand-made store."""

from __future__ import annotations

import math

import pytest

from optstudy import analysis, tracks
from test_analysis import StoreBuilder


@pytest.fixture
def context(tmp_path):
    """MNIST with seeds 0-2 for adam and sgd.

    adam: grid at seed 0 where 1e-3 (its library default) wins on validation
    although 1e-4 has the higher test accuracy; seeds 1 and 2 at 1e-3.
    sgd: tuned at 0.1 (seed 2 diverged), out of the box at 1e-3 (torch's
    default) with seed 1 missing.
    """
    builder = StoreBuilder(tmp_path / "results.sqlite")
    add = builder.add
    add("grid", "mnist", "adam", 1e-4, 0, valid=0.80, test=0.99)
    add("grid", "mnist", "adam", 1e-3, 0, valid=0.90, test=0.90)
    add("grid", "mnist", "adam", 1e-2, 0, valid=0.70, test=0.70)
    add("seed", "mnist", "adam", 1e-3, 1, valid=0.91, test=0.92)
    add("seed", "mnist", "adam", 1e-3, 2, valid=0.89, test=0.94)
    add("grid", "mnist", "sgd", 1e-3, 0, valid=0.50, test=0.50)
    add("grid", "mnist", "sgd", 1e-2, 0, valid=0.60, test=0.60)
    add("grid", "mnist", "sgd", 1e-1, 0, valid=0.70, test=0.95)
    add("extension", "mnist", "sgd", 1.0, 0, status="diverged")
    add("seed", "mnist", "sgd", 1e-1, 1, valid=0.72, test=0.96)
    add("seed", "mnist", "sgd", 1e-1, 2, status="diverged")
    add("out_of_box", "mnist", "sgd", 1e-3, 2, valid=0.52, test=0.53)
    # Checks of adam's seed-1 run: 0.88 is MNIST's target in study.yml.
    with builder.connection:
        builder.connection.executemany(
            "INSERT INTO checks VALUES (?, ?, ?, ?, ?, ?)",
            [("mnist-adam-0.001-1-seed", 0, 0.0, 0.0, 2.3, 0.1),
             ("mnist-adam-0.001-1-seed", 5, 0.5, 1.5, 0.5, 0.87),
             ("mnist-adam-0.001-1-seed", 10, 1.0, 3.0, 0.3, 0.90),
             ("mnist-adam-0.001-1-seed", 15, 1.5, 4.5, 0.2, 0.95)],
        )
    builder.connection.close()
    loaded = analysis.load_context(builder.path)
    yield loaded
    loaded.connection.close()


def rows(frame, optimizer, track):
    return frame[(frame["optimizer"] == optimizer) & (frame["track"] == track)]


def test_tuned_track_uses_validation_choice(context):
    frame = tracks.track_runs(context)
    assert set(rows(frame, "adam", "tuned")["lr"]) == {1e-3}


def test_tuned_track_has_every_seed(context):
    frame = tracks.track_runs(context)
    assert sorted(rows(frame, "adam", "tuned")["seed"]) == [0, 1, 2]


def test_out_of_box_uses_library_default(context):
    frame = tracks.track_runs(context)
    assert set(rows(frame, "sgd", "out_of_box")["lr"]) == {1e-3}
    assert sorted(rows(frame, "sgd", "out_of_box")["seed"]) == [0, 2]


def test_default_run_counts_in_both_tracks(context):
    frame = tracks.track_runs(context)
    both = set(rows(frame, "adam", "tuned")["run_id"]) & set(
        rows(frame, "adam", "out_of_box")["run_id"])
    assert len(both) == 3


def test_time_to_target_from_first_check(context):
    frame = tracks.track_runs(context).set_index(["run_id", "track"])
    row = frame.loc[("mnist-adam-0.001-1-seed", "tuned")]
    assert row["target_step"] == 10
    assert row["target_seconds"] == 3.0


def test_no_checks_no_time_to_target(context):
    frame = tracks.track_runs(context).set_index(["run_id", "track"])
    assert math.isnan(frame.loc[("mnist-adam-0.001-2-seed", "tuned"), "target_step"])


def test_diverged_seed_makes_cell_incomplete(context):
    report = tracks.track_report(context)
    sgd = rows(report.summary, "sgd", "tuned").iloc[0]
    assert sgd["completed"] == 2
    assert sgd["diverged"] == 1
    assert not sgd["complete"]


def test_missing_seed_makes_cell_incomplete(context):
    report = tracks.track_report(context)
    assert not rows(report.summary, "sgd", "out_of_box").iloc[0]["complete"]


def test_complete_cell_is_not_flagged(context):
    report = tracks.track_report(context)
    assert rows(report.summary, "adam", "tuned").iloc[0]["complete"]


def test_table_marks_incomplete_cells(context):
    report = tracks.track_report(context)
    table = tracks.accuracy_table(report.summary, report.tracks, "mnist",
                                  context.labels).set_index("optimizer")
    assert "incomplete" in table.loc["SGD", "tuned seeds"]
    assert "incomplete" not in table.loc["Adam", "tuned seeds"]


def test_mean_covers_completed_seeds(context):
    report = tracks.track_report(context)
    sgd = rows(report.summary, "sgd", "tuned").iloc[0]
    assert sgd["test_mean"] == pytest.approx((0.95 + 0.96) / 2)


def test_paired_difference_against_adam(context):
    report = tracks.track_report(context)
    paired = tracks.paired_table(report.tracks, "mnist", "tuned").set_index(
        "optimizer")
    # Shared completed seeds 0 and 1: 0.95 - 0.90 and 0.96 - 0.92.
    assert paired.loc["sgd", "pairs"] == 2
    assert paired.loc["sgd", "mean"] == pytest.approx(0.045)


def test_tuning_gain_names_largest_gain(context):
    report = tracks.track_report(context)
    sentence = tracks.tuning_gain_sentence(report.summary, context.labels)
    assert "SGD on MNIST" in sentence


def test_first_choice_names_best_default(context):
    report = tracks.track_report(context)
    sentence = tracks.first_choice_sentence(report.ranks, context.labels)
    assert sentence.startswith("At its library defaults, Adam had the best mean rank")


def test_profile_counts_unsolved_problems(context):
    report = tracks.track_report(context)
    times = tracks.profile_times(report.tracks, "tuned")
    # Three (dataset, seed) problems, only one of which any run solved.
    assert len(times) == 3
