"""Tests of optstudy.downloads on a small store of hand-made runs."""

from __future__ import annotations

import csv
import sqlite3

import pytest

from optstudy import downloads, store


def make_config(dataset, optimizer, lr, seed):
    return {
        "dataset": dataset, "optimizer": optimizer,
        "optimizer_class": f"torch.optim.{optimizer.capitalize()}",
        "hyperparameters": {"lr": lr}, "seed": seed, "epochs": 1, "batch_size": 8,
        "train_size": 16, "valid_size": 8, "test_size": 8,
    }


def make_record(config, valid_accuracy):
    history = [
        {"epoch": epoch, "step": 2 * epoch, "train_loss": None if epoch == 0 else 1.5,
         "valid_loss": 2.0 - epoch, "valid_accuracy": 0.1 + epoch * (valid_accuracy - 0.1),
         "test_loss": 2.0 - epoch, "test_accuracy": 0.5, "seconds": float(epoch)}
        for epoch in range(2)
    ]
    return {
        "config": config, "status": "completed", "history": history,
        "loss_samples": [{"step": 1, "loss": 1.8}, {"step": 2, "loss": 1.4}],
        "steps": 2, "final_valid_accuracy": valid_accuracy, "final_valid_loss": 1.0,
        "final_test_accuracy": 0.5, "final_test_loss": 1.0,
    }


@pytest.fixture
def small_store(tmp_path):
    """A store with an mnist cell tuned to lr 0.01, a diverged grid point and a cifar10 run."""
    path = tmp_path / "results.sqlite"
    connection = store.connect(path)
    runs = [
        ("grid", "mnist", "adam", 0.1, 0, "diverged", None),
        ("grid", "mnist", "adam", 0.001, 0, "completed", 0.6),
        ("grid", "mnist", "adam", 0.01, 0, "completed", 0.9),
        ("seed", "mnist", "adam", 0.01, 1, "completed", 0.8),
        ("grid", "cifar10", "sgd", 0.01, 0, "completed", 0.4),
    ]
    for phase, dataset, optimizer, lr, seed, status, accuracy in runs:
        config = make_config(dataset, optimizer, lr, seed)
        record = make_record(config, accuracy) if status == "completed" else {
            "config": config, "status": "diverged", "divergence": {"step": 1}}
        run_id = f"{dataset}-{optimizer}-{lr:g}-{seed}"
        store.save_run(connection, run_id, "tiny", phase, config, status, record)
    connection.close()
    return path


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_runs_csv_has_one_row_per_run(small_store, tmp_path):
    paths = downloads.write_dataset_csvs("mnist", small_store, tmp_path / "out")
    rows = read_csv(paths["runs"])
    assert len(rows) == 4
    assert {row["dataset"] for row in rows} == {"mnist"}


def test_runs_csv_header_lists_columns(small_store, tmp_path):
    paths = downloads.write_dataset_csvs("mnist", small_store, tmp_path / "out")
    header = paths["runs"].read_text().splitlines()[0].split(",")
    expected = ["run_id", "dataset", "optimizer", "phase", "lr", "seed", "status",
                "tuned", "final_valid_accuracy", "final_test_accuracy"]
    for column in expected:
        assert column in header, column


def test_runs_csv_sorted_by_numeric_lr(small_store, tmp_path):
    paths = downloads.write_dataset_csvs("mnist", small_store, tmp_path / "out")
    grid = [row for row in read_csv(paths["runs"]) if row["phase"] == "grid"]
    assert [float(row["lr"]) for row in grid] == [0.001, 0.01, 0.1]


def test_runs_csv_marks_tuned_runs(small_store, tmp_path):
    paths = downloads.write_dataset_csvs("mnist", small_store, tmp_path / "out")
    tuned = {row["run_id"] for row in read_csv(paths["runs"]) if row["tuned"] == "True"}
    assert tuned == {"mnist-adam-0.01-0", "mnist-adam-0.01-1"}


def test_runs_csv_leaves_diverged_metrics_empty(small_store, tmp_path):
    paths = downloads.write_dataset_csvs("mnist", small_store, tmp_path / "out")
    diverged = [row for row in read_csv(paths["runs"]) if row["status"] == "diverged"]
    assert len(diverged) == 1
    assert diverged[0]["final_valid_accuracy"] == ""
    assert diverged[0]["diverged_step"] == "1"


def test_epochs_csv_has_row_per_epoch(small_store, tmp_path):
    paths = downloads.write_dataset_csvs("mnist", small_store, tmp_path / "out")
    rows = read_csv(paths["epochs"])
    assert len(rows) == 3 * 2
    assert {row["epoch"] for row in rows} == {"0", "1"}
    assert all(row["optimizer"] == "adam" for row in rows)


def test_loss_samples_csv_has_run_keys(small_store, tmp_path):
    paths = downloads.write_dataset_csvs("mnist", small_store, tmp_path / "out")
    rows = read_csv(paths["loss_samples"])
    assert len(rows) == 3 * 2
    assert set(rows[0]) >= {"run_id", "lr", "seed", "step", "loss"}


def test_csv_of_absent_dataset_has_header_only(small_store, tmp_path):
    paths = downloads.write_dataset_csvs("fashion_mnist", small_store, tmp_path / "out")
    lines = paths["runs"].read_text().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("run_id,")


def test_missing_store_raises(tmp_path):
    with pytest.raises(store.StoreNotFoundError):
        downloads.write_dataset_csvs("mnist", tmp_path / "absent.sqlite", tmp_path)
    assert not (tmp_path / "absent.sqlite").exists()


def test_copy_store_keeps_every_run(small_store, tmp_path):
    copy = downloads.copy_store(small_store, tmp_path / "out")
    connection = sqlite3.connect(copy)
    (count,) = connection.execute("SELECT COUNT(*) FROM runs").fetchone()
    (epochs,) = connection.execute("SELECT COUNT(*) FROM epochs").fetchone()
    connection.close()
    assert count == 5
    assert epochs == 4 * 2


def test_data_section_links_each_csv(small_store, tmp_path, monkeypatch):
    monkeypatch.setattr(downloads, "DOWNLOADS_DIR", tmp_path / "out")
    text = downloads.data_section("mnist", small_store)
    for kind in downloads.CSV_KINDS:
        link = f"{{download}}`mnist_{kind}.csv <downloads/mnist_{kind}.csv>`"
        assert link in text
    assert "(4 rows)" in text
