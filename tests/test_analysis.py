"""Tests of optstudy.analysis on a small store of hand-made records."""

from __future__ import annotations

import math
import sqlite3

import matplotlib
import pandas as pd
import pytest

from optstudy import analysis, plots, store
from optstudy.study import load_study, plan_cell

matplotlib.use("Agg")

CLASSES = {
    "sgd": "torch.optim.SGD",
    "adam": "torch.optim.Adam",
    "lion": "pytorch_optimizer.lion",
    "adagrad": "torch.optim.Adagrad",
}
STEPS_PER_EPOCH = 10


def make_config(dataset, optimizer, lr, seed, epochs=2):
    return {
        "dataset": dataset,
        "optimizer": optimizer,
        "optimizer_class": CLASSES[optimizer],
        "hyperparameters": {"lr": lr},
        "seed": seed,
        "epochs": epochs,
        "batch_size": 32,
        "train_size": 320,
        "valid_size": 100,
        "test_size": None,
        "needs_closure": False,
        "loss_samples_per_epoch": 2,
    }


def make_record(config, status, valid, test, valid_loss, lossy=False, threads=2):
    """Build a record shaped like the output of optstudy.train.train, linear curves."""
    epochs = config["epochs"]
    completed = status == "completed"
    last_epoch = epochs if completed else 0
    history = []
    for epoch in range(last_epoch + 1):
        share = epoch / epochs
        history.append({
            "epoch": epoch,
            "step": epoch * STEPS_PER_EPOCH,
            "train_loss": None if epoch == 0 else 2.0 - share,
            "valid_loss": 2.3 - share * (2.3 - valid_loss) if completed else 2.3,
            "valid_accuracy": 0.1 + share * (valid - 0.1) if completed else 0.1,
            "test_loss": 2.3,
            "test_accuracy": 0.1 + share * (test - 0.1) if completed else 0.1,
            "seconds": float(epoch),
        })
    steps = epochs * STEPS_PER_EPOCH if completed else 3
    samples = [{"step": step, "loss": 2.0 - step / (10 * steps)}
               for step in range(1, steps + 1, 5)]
    return {
        "config": config,
        "status": status,
        "divergence": None if completed else {"step": 3, "loss": None},
        "optimizer_class": config["optimizer_class"],
        "optimizer_version": "0.0",
        "model": "3c3d" if config["dataset"] == "cifar10" else "2c2d",
        "model_parameters": 895210 if config["dataset"] == "cifar10" else 3274634,
        "cifar_lossy": lossy,
        "history": history,
        "loss_samples": samples,
        "steps": steps,
        "final_valid_accuracy": valid if completed else None,
        "final_valid_loss": valid_loss if completed else None,
        "final_test_accuracy": test if completed else None,
        "final_test_loss": 2.0 if completed else None,
        "environment": {
            "device": "cpu",
            "device_name": "x86_64",
            "threads": threads,
            "python": "3.11.7",
            "platform": "Linux-test",
            "versions": {"torch": "2.0.0", "numpy": "2.0.0"},
        },
    }


class StoreBuilder:
    """Write hand-made runs into a fresh store through store.save_run."""

    def __init__(self, path, profile="tiny"):
        self.path = path
        self.profile = profile
        self.connection = store.connect(path)

    def add(self, phase, dataset, optimizer, lr, seed, status="completed",
            valid=None, test=None, valid_loss=1.0, lossy=False, seconds_wall=10.0):
        run_id = f"{dataset}-{optimizer}-{lr:g}-{seed}-{phase}"
        config = make_config(dataset, optimizer, lr, seed)
        record = None
        if status in store.DONE_STATUSES:
            record = make_record(config, status, valid, test, valid_loss, lossy)
        store.save_run(
            self.connection, run_id, self.profile, phase, config, status, record,
            error="boom" if record is None else None, seconds_wall=seconds_wall,
        )
        return run_id


@pytest.fixture
def builder(tmp_path):
    built = StoreBuilder(tmp_path / "results.sqlite")
    yield built
    built.connection.close()


@pytest.fixture
def study_store(builder):
    """A store with one cell per case the analysis must handle.

    mnist/adam: a finished study (grid, one diverged grid point, two seed runs).
    mnist/sgd: best grid point at the edge, a diverged extension, and seed runs
    of which one diverged and one failed.
    mnist/lion: only the grid so far, with a tie on validation accuracy.
    mnist/adagrad: every grid point diverged.
    """
    add = builder.add
    add("grid", "mnist", "adam", 1e-4, 0, valid=0.80, test=0.79)
    add("grid", "mnist", "adam", 1e-3, 0, valid=0.90, test=0.92)
    add("grid", "mnist", "adam", 1e-2, 0, status="diverged")
    add("seed", "mnist", "adam", 1e-3, 1, valid=0.91, test=0.91)
    add("seed", "mnist", "adam", 1e-3, 2, valid=0.89, test=0.93)

    add("grid", "mnist", "sgd", 1e-3, 0, valid=0.50, test=0.50)
    add("grid", "mnist", "sgd", 1e-2, 0, valid=0.60, test=0.61)
    add("grid", "mnist", "sgd", 1e-1, 0, valid=0.70, test=0.71)
    add("extension", "mnist", "sgd", 1.0, 0, status="diverged")
    add("seed", "mnist", "sgd", 1e-1, 1, valid=0.72, test=0.75)
    add("seed", "mnist", "sgd", 1e-1, 2, status="diverged")
    add("seed", "mnist", "sgd", 1e-1, 3, status="failed")

    add("grid", "mnist", "lion", 1e-5, 0, valid=0.85, test=0.80, valid_loss=0.6)
    add("grid", "mnist", "lion", 1e-4, 0, valid=0.85, test=0.82, valid_loss=0.5)
    add("grid", "mnist", "lion", 1e-3, 0, valid=0.40, test=0.40)

    for lr in (1e-3, 1e-2, 1e-1):
        add("grid", "mnist", "adagrad", lr, 0, status="diverged")
    return builder


def read_runs(builder):
    connection = analysis.open_store(builder.path)
    try:
        return analysis.load_runs(connection)
    finally:
        connection.close()


def cell(runs, optimizer, dataset="mnist"):
    return runs[(runs["dataset"] == dataset) & (runs["optimizer"] == optimizer)]


def summary_row(summary, optimizer, dataset="mnist"):
    rows = summary[
        (summary["dataset"] == dataset) & (summary["optimizer"] == optimizer)
    ]
    assert len(rows) == 1
    return rows.iloc[0]


# --- Opening the store -----------------------------------------------------------


def test_open_store_missing_file_raises(tmp_path):
    missing = tmp_path / "absent.sqlite"
    with pytest.raises(store.StoreNotFoundError, match="results store not found"):
        analysis.open_store(missing)
    assert not missing.exists()


def test_store_path_relative_to_repo_root(monkeypatch):
    monkeypatch.setenv(store.STORE_ENV, "results/x/results.sqlite")
    path = analysis.store_path()
    assert path.is_absolute()
    assert path == store.REPO_ROOT / "results" / "x" / "results.sqlite"


def test_store_path_absolute_kept(monkeypatch, tmp_path):
    monkeypatch.setenv(store.STORE_ENV, str(tmp_path / "a.sqlite"))
    assert analysis.store_path() == (tmp_path / "a.sqlite").resolve()


def test_store_path_default_without_env(monkeypatch):
    monkeypatch.delenv(store.STORE_ENV, raising=False)
    assert analysis.store_path() == store.DEFAULT_STORE


def test_open_store_is_read_only(study_store):
    connection = analysis.open_store(study_store.path)
    with pytest.raises(sqlite3.OperationalError):
        connection.execute("DELETE FROM runs")
    connection.close()


# --- Loading ---------------------------------------------------------------------


def test_load_runs_unpacks_budget_and_environment(study_store):
    runs = read_runs(study_store)
    assert len(runs) == 18
    adam = runs[runs["run_id"] == "mnist-adam-0.001-0-grid"].iloc[0]
    assert adam["epochs"] == 2
    assert adam["train_size"] == 320
    assert adam["test_size"] is None
    assert adam["threads"] == 2
    assert adam["device"] == "cpu"
    assert adam["versions"] == {"torch": "2.0.0", "numpy": "2.0.0"}
    assert adam["model_parameters"] == 3274634


def test_load_runs_rejects_mixed_profiles(study_store):
    other = StoreBuilder(study_store.path, profile="other")
    other.add("grid", "mnist", "adam", 1e-3, 0, valid=0.5, test=0.5)
    other.connection.close()
    connection = analysis.open_store(study_store.path)
    with pytest.raises(ValueError, match="several profiles"):
        analysis.load_runs(connection)
    assert len(analysis.load_runs(connection, profile="other")) == 1
    connection.close()


# --- Tuned learning rate ---------------------------------------------------------


def test_choose_lr_uses_seed_phase(study_store):
    runs = read_runs(study_store)
    assert analysis.choose_lr(cell(runs, "adam")) == pytest.approx(1e-3)
    assert analysis.choose_lr(cell(runs, "sgd")) == pytest.approx(1e-1)


def test_choose_lr_prefers_seed_phase_over_grid(builder):
    # The seed runs carry the runner's choice even when a later grid run
    # (say, one retried after a failure) now scores higher.
    builder.add("grid", "mnist", "adam", 1e-3, 0, valid=0.80, test=0.80)
    builder.add("grid", "mnist", "adam", 1e-2, 0, valid=0.95, test=0.95)
    builder.add("seed", "mnist", "adam", 1e-3, 1, valid=0.81, test=0.81)
    runs = read_runs(builder)
    assert analysis.choose_lr(cell(runs, "adam")) == pytest.approx(1e-3)


def test_choose_lr_breaks_ties_by_valid_loss(study_store):
    runs = read_runs(study_store)
    assert analysis.choose_lr(cell(runs, "lion")) == pytest.approx(1e-4)


def test_choose_lr_breaks_full_ties_by_lower_lr(builder):
    for lr in (1e-2, 1e-3, 1e-1):
        builder.add("grid", "mnist", "sgd", lr, 0, valid=0.11, test=0.1, valid_loss=2.3)
    runs = read_runs(builder)
    assert analysis.choose_lr(cell(runs, "sgd")) == pytest.approx(1e-3)


def test_choose_lr_all_diverged_is_none(study_store):
    runs = read_runs(study_store)
    assert analysis.choose_lr(cell(runs, "adagrad")) is None


def test_tuned_runs_are_seed_runs_plus_first_seed(study_store):
    tuned = analysis.tuned_runs(read_runs(study_store))
    adam = set(tuned[tuned["optimizer"] == "adam"]["run_id"])
    assert adam == {
        "mnist-adam-0.001-0-grid", "mnist-adam-0.001-1-seed", "mnist-adam-0.001-2-seed",
    }
    sgd = set(tuned[tuned["optimizer"] == "sgd"]["run_id"])
    assert sgd == {
        "mnist-sgd-0.1-0-grid", "mnist-sgd-0.1-1-seed", "mnist-sgd-0.1-2-seed",
        "mnist-sgd-0.1-3-seed",
    }
    assert set(tuned[tuned["optimizer"] == "lion"]["run_id"]) == {
        "mnist-lion-0.0001-0-grid"
    }
    assert "adagrad" not in set(tuned["optimizer"])


# --- Aggregates ------------------------------------------------------------------


def test_summary_aggregates_completed_seeds(study_store):
    runs = read_runs(study_store)
    summary = analysis.summarise(runs, load_study())
    adam = summary_row(summary, "adam")
    assert adam["lr"] == pytest.approx(1e-3)
    assert adam["seeds"] == 3
    assert adam["test_mean"] == pytest.approx(0.92)
    assert adam["test_std"] == pytest.approx(0.01)
    assert adam["test_min"] == pytest.approx(0.91)
    assert adam["test_max"] == pytest.approx(0.93)
    assert adam["valid_mean"] == pytest.approx(0.90)
    assert adam["rank"] == 1


def test_summary_counts_diverged_and_failed(study_store):
    summary = analysis.summarise(read_runs(study_store), load_study())
    sgd = summary_row(summary, "sgd")
    assert sgd["seeds"] == 2
    assert sgd["seeds_diverged"] == 1
    assert sgd["seeds_failed"] == 1
    assert sgd["test_mean"] == pytest.approx(0.73)
    assert sgd["grid_runs"] == 4
    assert sgd["grid_diverged"] == 1
    assert sgd["diverged_share"] == pytest.approx(0.25)


def test_summary_single_seed_has_no_std(study_store):
    lion = summary_row(analysis.summarise(read_runs(study_store), load_study()), "lion")
    assert lion["seeds"] == 1
    assert lion["test_mean"] == pytest.approx(0.82)
    assert math.isnan(lion["test_std"])


def test_summary_all_diverged_cell(study_store):
    adagrad = summary_row(
        analysis.summarise(read_runs(study_store), load_study()), "adagrad"
    )
    assert adagrad["seeds"] == 0
    assert math.isnan(adagrad["lr"])
    assert math.isnan(adagrad["test_mean"])
    assert math.isnan(adagrad["rank"])
    assert adagrad["diverged_share"] == pytest.approx(1.0)


def test_summary_follows_study_order(study_store):
    summary = analysis.summarise(read_runs(study_store), load_study())
    order = list(load_study().optimizers)
    positions = [order.index(name) for name in summary["optimizer"]]
    assert positions == sorted(positions)


def test_sensitivity_keeps_diverged_runs(study_store):
    frame = analysis.sensitivity(read_runs(study_store), "mnist")
    sgd = frame[frame["optimizer"] == "sgd"]
    assert list(sgd["lr"]) == pytest.approx([1e-3, 1e-2, 1e-1, 1.0])
    diverged = sgd[sgd["status"] == "diverged"]
    assert list(diverged["lr"]) == pytest.approx([1.0])
    assert diverged["final_valid_accuracy"].isna().all()
    assert list(sgd[sgd["chosen"]]["lr"]) == pytest.approx([1e-1])
    assert "seed" not in set(frame["phase"])


def test_sensitivity_all_diverged_has_no_chosen(study_store):
    frame = analysis.sensitivity(read_runs(study_store), "mnist")
    adagrad = frame[frame["optimizer"] == "adagrad"]
    assert len(adagrad) == 3
    assert not adagrad["chosen"].any()


def test_accuracy_curves_mean_over_completed_seeds(study_store):
    connection = analysis.open_store(study_store.path)
    runs = analysis.load_runs(connection)
    tuned = analysis.tuned_runs(runs)
    curves = analysis.accuracy_curves(tuned, analysis.load_epochs(connection,
                                                                  tuned["run_id"]))
    connection.close()
    sgd_last = curves[(curves["optimizer"] == "sgd") & (curves["epoch"] == 2)].iloc[0]
    assert sgd_last["count"] == 2
    assert sgd_last["mean"] == pytest.approx(0.71)
    assert sgd_last["min"] == pytest.approx(0.70)
    assert sgd_last["max"] == pytest.approx(0.72)


def test_loss_curves_epoch_axis(study_store):
    connection = analysis.open_store(study_store.path)
    tuned = analysis.tuned_runs(analysis.load_runs(connection))
    curves = analysis.loss_curves(
        tuned, analysis.load_loss_samples(connection, tuned["run_id"])
    )
    connection.close()
    adam = curves[curves["optimizer"] == "adam"]
    assert adam["count"].max() == 3
    assert adam["epoch"].tolist() == pytest.approx(
        [step / STEPS_PER_EPOCH for step in adam["step"]]
    )


# --- Wording ---------------------------------------------------------------------


def test_ranking_sentence_runner_up_single_seed(study_store):
    summary = analysis.summarise(read_runs(study_store), load_study())
    sentence = analysis.ranking_sentence(summary, "mnist")
    assert sentence.startswith("On MNIST, Adam ranked first")
    assert "92.00% over 3 seeds" in sentence
    assert "Adam leads Lion (82.00%) by 10.00 percentage points" in sentence
    assert "single seed" in sentence
    assert "SGD ranked last with 73.00%" in sentence


def test_ranking_sentence_separated(builder):
    builder.add("grid", "mnist", "adam", 1e-3, 0, valid=0.9, test=0.95)
    builder.add("seed", "mnist", "adam", 1e-3, 1, valid=0.9, test=0.96)
    builder.add("grid", "mnist", "sgd", 1e-1, 0, valid=0.9, test=0.91)
    builder.add("seed", "mnist", "sgd", 1e-1, 1, valid=0.9, test=0.92)
    summary = analysis.summarise(read_runs(builder), load_study())
    sentence = analysis.ranking_sentence(summary, "mnist")
    assert "Adam ranked first" in sentence
    assert "every seed of Adam scored above every seed of SGD" in sentence
    assert "ranked last" not in sentence


def test_comparison_sentence_single_optimizer(builder):
    builder.add("grid", "mnist", "adam", 1e-3, 0, valid=0.9, test=0.95)
    summary = analysis.summarise(read_runs(builder), load_study())
    assert analysis.comparison_sentence(summary, "mnist") == (
        "Adam is the only optimizer with a finished tuned run."
    )


def test_ranking_sentence_overlapping(builder):
    builder.add("grid", "mnist", "adam", 1e-3, 0, valid=0.9, test=0.90)
    builder.add("seed", "mnist", "adam", 1e-3, 1, valid=0.9, test=0.94)
    builder.add("grid", "mnist", "sgd", 1e-1, 0, valid=0.9, test=0.91)
    builder.add("seed", "mnist", "sgd", 1e-1, 1, valid=0.9, test=0.92)
    summary = analysis.summarise(read_runs(builder), load_study())
    sentence = analysis.ranking_sentence(summary, "mnist")
    assert "Adam ranked first" in sentence
    assert "overlap" in sentence
    assert "not settled" in sentence


def test_ranking_sentence_single_seed(builder):
    builder.add("grid", "mnist", "adam", 1e-3, 0, valid=0.9, test=0.95)
    builder.add("grid", "mnist", "sgd", 1e-1, 0, valid=0.9, test=0.91)
    summary = analysis.summarise(read_runs(builder), load_study())
    assert "single seed" in analysis.ranking_sentence(summary, "mnist")


def test_ranking_sentence_without_runs(study_store):
    summary = analysis.summarise(read_runs(study_store), load_study())
    assert analysis.ranking_sentence(summary, "cifar10") == (
        "No optimizer finished a tuned run on CIFAR-10, so there is no ranking."
    )


@pytest.mark.parametrize("values, expected", [
    ([], "none"),
    ([3, 3], "3"),
    ([2, 3, 3], "2 to 3"),
    ([128, 256], "128 or 256"),
    ([6000], "6,000"),
    ([None, 500], "500 or all"),
    ([0.5], "0.5"),
])
def test_describe_values(values, expected):
    assert analysis.describe_values(values) == expected


def test_count_text_plural():
    assert analysis.count_text([1], "epoch") == "1 epoch"
    assert analysis.count_text([2], "epoch") == "2 epochs"
    assert analysis.count_text([2, 3], "seed") == "2 to 3 seeds"


def test_markdown_table_keeps_text_and_escapes_pipes():
    frame = pd.DataFrame({"optimizer": ["a|b"], "std": ["1.10"]})
    table = analysis.markdown_table(frame)
    assert "a\\|b" in table
    assert "1.10" in table


# --- Page reports ----------------------------------------------------------------


def test_dataset_report_values(study_store):
    report = analysis.dataset_report("mnist", study_store.path)
    values = report.values
    assert values["n_runs"] == 18
    assert values["best_label"] == "Adam"
    assert values["best_test_mean"] == pytest.approx(0.92)
    assert values["best_seeds_text"] == "3 seeds"
    assert values["comparison"].startswith("Adam leads Lion")
    assert values["n_tuning"] == 13
    assert values["n_tuning_diverged"] == 5
    assert values["n_failed"] == 1
    assert values["epochs_text"] == "2 epochs"
    assert "failed or crashed" in values["notice_md"]
    assert "Adagrad" in values["notice_md"]
    report.context.connection.close()


def test_dataset_report_without_runs(study_store):
    report = analysis.dataset_report("fashion_mnist", study_store.path)
    values = report.values
    assert values["n_runs"] == 0
    assert math.isnan(values["best_test_mean"])
    assert "contains no runs for Fashion-MNIST" in values["notice_md"]
    assert report.summary.empty
    for figure in (
        plots.plot_learning_curves(report.loss_curves, report.accuracy_curves,
                                   report.context.colours, report.context.labels),
        plots.plot_sensitivity(report.sensitivity, report.context.colours,
                               report.context.labels),
    ):
        assert figure.axes
        matplotlib.pyplot.close(figure)
    report.context.connection.close()


def test_lossy_cifar_note(builder):
    builder.add("grid", "cifar10", "adam", 1e-3, 0, valid=0.4, test=0.4, lossy=True)
    report = analysis.dataset_report("cifar10", builder.path)
    assert "decoded from JPEG files (quality 75, 4:2:0" in report.values["notice_md"]
    assert "JPEG" in analysis.method_values(report.context)["cifar_note_md"]
    report.context.connection.close()


def test_lossless_cifar_has_no_note(builder):
    builder.add("grid", "cifar10", "adam", 1e-3, 0, valid=0.4, test=0.4, lossy=False)
    report = analysis.dataset_report("cifar10", builder.path)
    assert "JPEG" not in report.values["notice_md"]
    assert analysis.method_values(report.context)["cifar_note_md"] == ""
    report.context.connection.close()


def test_method_values_unknown_profile(builder):
    builder.add("grid", "mnist", "adam", 1e-3, 0, valid=0.4, test=0.4)
    context = analysis.load_context(builder.path)
    values = analysis.method_values(context)
    assert values["profile"] == "tiny"
    assert values["grid_points"] == "unknown"
    assert values["epochs_text"] == "2 epochs"
    context.connection.close()


def save_planned(builder, run, valid):
    """Store a run planned by the runner's planner, completed at ``valid`` accuracy."""
    config = run.config.to_dict()
    record = make_record(config, "completed", valid, valid, 1.0)
    store.save_run(builder.connection, run.run_id, builder.profile, run.phase, config,
                   "completed", record)


def test_unfinished_optimizers_follow_planner(tmp_path):
    builder = StoreBuilder(tmp_path / "results.sqlite", profile="smoke")
    study = load_study()
    profile = study.profile("smoke")
    planned, _ = plan_cell(study, profile, study.optimizers["sgd"], "mnist", {})
    for run, valid in zip(planned, (0.5, 0.8, 0.6)):
        save_planned(builder, run, valid)

    context = analysis.load_context(builder.path)
    assert analysis.unfinished_optimizers(context, "mnist") == ["sgd", "adam"]
    assert analysis.unfinished_optimizers(context, "cifar10") == []
    assert "CIFAR-10 (no runs yet)" in analysis.progress_notice(context)
    context.connection.close()

    results = store.load_statuses(builder.connection)
    sgd = study.optimizers["sgd"]
    planned, final = plan_cell(study, profile, sgd, "mnist", results)
    assert final
    for run in planned:
        if run.run_id not in results:
            save_planned(builder, run, 0.8)
    context = analysis.load_context(builder.path)
    assert analysis.unfinished_optimizers(context, "mnist") == ["adam"]
    report = analysis.dataset_report("mnist", builder.path)
    assert "runs of Adam are still missing" in report.values["notice_md"]
    report.context.connection.close()
    context.connection.close()
    builder.connection.close()


def test_pages_with_empty_store(tmp_path):
    store.connect(tmp_path / "results.sqlite").close()
    context = analysis.load_context(tmp_path / "results.sqlite")
    assert context.runs.empty
    assert context.profile == "none"
    ranks, values = analysis.conclusions(context)
    assert ranks.empty
    assert values["progress_md"] == ""
    assert values["ranking_mnist"].startswith("No optimizer finished")
    method = analysis.method_values(context)
    assert method["n_runs"] == 0
    assert method["grid_points"] == "unknown"
    reproducibility = analysis.reproducibility_values(context)
    assert reproducibility["wall_text"] == "unknown"
    report = analysis.dataset_report("mnist", tmp_path / "results.sqlite")
    assert "contains no runs for MNIST" in report.values["notice_md"]
    figure = plots.plot_final_accuracy(analysis.summarise(context.runs, context.study),
                                       context.colours, analysis.DATASET_NAMES)
    assert figure.axes
    matplotlib.pyplot.close(figure)
    report.context.connection.close()
    context.connection.close()


def test_conclusions_ranks(study_store):
    context = analysis.load_context(study_store.path)
    ranks, values = analysis.conclusions(context)
    assert ranks.loc["adam", "mnist"] == 1
    assert ranks.loc["lion", "mnist"] == 2
    assert ranks.loc["sgd", "mnist"] == 3
    assert "adagrad" not in ranks.index
    assert "fewer than two datasets" in values["overall"]
    context.connection.close()


def test_timing_and_versions(study_store):
    study_store.connection.execute(
        "UPDATE runs SET finished_at = '2026-01-01T00:00:00+00:00' "
        "WHERE run_id = 'mnist-adam-0.0001-0-grid'"
    )
    study_store.connection.execute(
        "UPDATE runs SET finished_at = '2026-01-01T02:30:00+00:00' "
        "WHERE run_id = 'mnist-adam-0.001-0-grid'"
    )
    study_store.connection.execute(
        "UPDATE runs SET finished_at = '2026-01-01T01:00:00+00:00' "
        "WHERE run_id NOT IN ('mnist-adam-0.0001-0-grid', 'mnist-adam-0.001-0-grid')"
    )
    study_store.connection.commit()
    runs = read_runs(study_store)
    timing = analysis.timing_values(runs)
    assert timing["wall_hours"] == pytest.approx(18 * 10.0 / 3600)
    assert timing["span_hours"] == pytest.approx(2.5)
    assert timing["n_timed"] == 18
    assert timing["span_text"] == "2.50 hours"
    assert timing["wall_text"] == "3.0 minutes"
    assert timing["first_finished"] == "2026-01-01 00:00:00 UTC"
    assert timing["active_hours"] == pytest.approx(30 / 3600)
    versions = analysis.versions_table(runs).set_index("package")["versions"]
    assert versions["torch"] == "2.0.0"
    assert versions["python"] == "3.11.7"


def test_hardware_text(study_store):
    text = analysis.hardware_text(read_runs(study_store))
    assert text == "cpu (x86_64) with 2 threads per run"


def test_optimizer_table_marks_library_default():
    table = analysis.optimizer_table(load_study()).set_index("name")
    assert table.loc["adam", "centre is the library default"] == "yes"
    assert table.loc["sgd", "centre is the library default"] == "no"
    nesterov = table.loc["nesterov", "fixed hyperparameters"]
    assert nesterov == "momentum=0.9, nesterov=True"


def test_illustration_diverges_at_largest_lr():
    paths, values = analysis.illustration()
    largest = max(paths)
    assert abs(paths[largest][-1]) > analysis.ILLUSTRATION_BOUND
    assert values["steps_3"] < analysis.ILLUSTRATION_STEPS
    assert values["local_minimum"] > 0 > values["global_minimum"]


def test_benchmark_values_without_records(tmp_path):
    values = analysis.benchmark_values(tmp_path)
    assert "benchmarks/threads.py" in values["threads_md"]
    assert "benchmarks/workers.py" in values["workers_md"]
    assert "benchmarks/run_all.py" in values["speed_md"]


def test_benchmark_values_quote_worker_record(tmp_path):
    import json

    record = {
        "profile": "smoke", "speedup_2_over_1": 1.62, "same_statuses": True,
        "machine": {"cpu_model": "Test CPU", "usable_cores": 2, "torch": "x",
                    "date": "today"},
        "workers": {"1": {"wall_seconds": 162.0, "runs": 27},
                    "2": {"wall_seconds": 100.0, "runs": 27}},
    }
    (tmp_path / "workers.json").write_text(json.dumps(record))
    text = analysis.benchmark_values(tmp_path)["workers_md"]
    assert "162 s with one Dask worker" in text
    assert "100 s with two" in text
    assert "1.62x" in text


def test_busy_seconds_merges_overlaps_and_skips_gaps():
    runs = pd.DataFrame({
        "finished_at": pd.to_datetime([
            "2026-01-01T00:01:00", "2026-01-01T00:01:30", "2026-01-01T05:00:00",
        ], utc=True),
        "seconds_wall": [60.0, 60.0, 10.0],
    })
    # 00:00:00-00:01:00 and 00:00:30-00:01:30 overlap: 90 s; then 10 s hours later.
    assert analysis.busy_seconds(runs) == pytest.approx(100.0)


def test_speed_explanation_bounds_the_pipeline_gain():
    record = {
        "ceiling": {"models": {"mnist": {"model_step": {"images_per_second": 1300.0}}}},
        "workloads": [{
            "workload": {"model": "2c2d", "dataset": "mnist"},
            "summaries": {
                "idiom": {"train_images_per_second": 1000.0},
                "notebook": {"wall_seconds": 64.0, "train_seconds": 47.0,
                             "launch_to_call_seconds": 2.5},
                "direct": {"wall_seconds": 54.0, "train_seconds": 41.0,
                           "launch_to_call_seconds": 1.5},
            },
        }],
    }
    text = analysis.speed_explanation(record)
    assert "more than 1.30x faster than the idiom" in text
    assert "took 10.0 s longer" in text
    assert "1.0 s before the training call (papermill" in text
    assert "6.0 s in the training steps" in text


def test_speed_explanation_compares_one_thread_record():
    def record(notebook_train, direct_train, threads):
        return {
            "settings": {"threads": threads},
            "ceiling": {"models": {}},
            "workloads": [{
                "workload": {"model": "3c3d", "dataset": "cifar10"},
                "summaries": {
                    "notebook": {"wall_seconds": 90.0, "train_seconds": notebook_train,
                                 "launch_to_call_seconds": 2.3},
                    "direct": {"wall_seconds": 82.0, "train_seconds": direct_train,
                               "launch_to_call_seconds": 1.3},
                },
            }],
        }

    text = analysis.speed_explanation(record(108.0, 100.0, 2), record(95.0, 100.0, 1))
    assert "took -5.0% against the direct call's" in text
    assert "compared with +8.0% with 2 threads" in text
    assert "competing with torch's threads" in text
