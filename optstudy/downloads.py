"""Write the results behind the book's chapters as files that readers can download.

Each results chapter offers its dataset's runs as CSV, and the
reproducibility chapter offers a copy of the whole store and the study file.
The files go to ``book/downloads/`` (gitignored), and the pages link them with
MyST's ``{download}`` role, so Sphinx copies each linked file into the built
site under ``_downloads/``. The links are written relative to ``book/``,
where every page of the book lives.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pandas as pd

from . import analysis, store

DOWNLOADS_DIR = store.REPO_ROOT / "book" / "downloads"
# Link targets are relative to the pages, which all live in book/.
LINK_PREFIX = "downloads"
STUDY_FILE = store.REPO_ROOT / "study.yml"

RUN_COLUMNS = [
    "run_id", "profile", "dataset", "optimizer", "optimizer_class", "phase", "lr",
    "seed", "status", "final_train_loss", "final_valid_loss",
    "final_valid_accuracy", "final_test_loss", "final_test_accuracy",
    "diverged_step", "steps", "gradient_evaluations", "seconds_wall", "finished_at",
]
EPOCH_COLUMNS = [
    "epoch", "step", "train_loss", "valid_loss", "valid_accuracy", "test_loss",
    "test_accuracy", "seconds",
]
# Columns of the runs table repeated on every epoch and loss-sample row, so each
# file can be filtered on its own.
RUN_KEYS = ["run_id", "dataset", "optimizer", "phase", "lr", "seed", "status"]
SORT_KEYS = ["optimizer", "phase", "lr", "seed"]
# Integer columns that SQL NULL would otherwise turn into floats ("12.0").
INTEGER_COLUMNS = ["seed", "diverged_step", "steps", "gradient_evaluations"]

CSV_KINDS = {
    "runs": "one row per run: configuration, status and final metrics",
    "epochs": "one row per run and epoch (epoch 0 is before training)",
    "loss_samples": "the sampled mini-batch training losses, one row per run and step",
}


def read_runs(connection, dataset: str) -> pd.DataFrame:
    """Return one dataset's runs with a ``tuned`` column, sorted by optimizer, phase, lr, seed.

    ``tuned`` marks the runs that the results chapter aggregates: the seed runs
    and the first-seed tuning run at the tuned learning rate.
    """
    frame = pd.read_sql_query(
        f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE dataset = ?",
        connection, params=(dataset,),
    )
    frame = frame.astype({column: "Int64" for column in INTEGER_COLUMNS})
    tuned = analysis.tuned_runs(frame)
    frame.insert(RUN_COLUMNS.index("status") + 1, "tuned",
                 frame["run_id"].isin(set(tuned["run_id"])))
    return frame.sort_values(SORT_KEYS, kind="stable").reset_index(drop=True)


def read_epochs(connection, runs: pd.DataFrame) -> pd.DataFrame:
    """Return the per-epoch rows of ``runs``, each with its run's keys."""
    epochs = pd.read_sql_query(
        f"SELECT run_id, {', '.join(EPOCH_COLUMNS)} FROM epochs", connection
    )
    merged = runs[RUN_KEYS].merge(epochs, on="run_id", how="inner")
    return merged.sort_values(SORT_KEYS + ["epoch"], kind="stable").reset_index(drop=True)


def read_loss_samples(connection, runs: pd.DataFrame) -> pd.DataFrame:
    """Return the sampled mini-batch losses of ``runs``, each with its run's keys."""
    samples = pd.read_sql_query("SELECT run_id, step, loss FROM loss_samples", connection)
    merged = runs[RUN_KEYS].merge(samples, on="run_id", how="inner")
    return merged.sort_values(SORT_KEYS + ["step"], kind="stable").reset_index(drop=True)


def csv_name(dataset: str, kind: str) -> str:
    return f"{dataset}_{kind}.csv"


def write_dataset_csvs(dataset: str, store_path: str | Path | None = None,
                       folder: str | Path | None = None) -> dict[str, Path]:
    """Write one dataset's runs, epochs and loss samples as CSV files.

    Returns the written paths by kind (the keys of ``CSV_KINDS``). The store is
    opened read-only (``store_path``, else ``$OPTSTUDY_STORE``, else the
    default store), and a missing store raises StoreNotFoundError. A dataset
    without runs still gets files, with a header row only.
    """
    folder = Path(folder) if folder else DOWNLOADS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    connection = analysis.open_store(store_path)
    try:
        runs = read_runs(connection, dataset)
        frames = {
            "runs": runs,
            "epochs": read_epochs(connection, runs),
            "loss_samples": read_loss_samples(connection, runs),
        }
    finally:
        connection.close()
    paths = {}
    for kind, frame in frames.items():
        path = folder / csv_name(dataset, kind)
        frame.to_csv(path, index=False)
        paths[kind] = path
    return paths


def data_section(dataset: str, store_path: str | Path | None = None) -> str:
    """Write a dataset's CSV files and return Markdown that links them.

    The Markdown is a bullet list of ``{download}`` links with each file's row
    count, followed by the units of the columns, for a ``{glue:md}`` directive
    on a page in ``book/``.
    """
    paths = write_dataset_csvs(dataset, store_path)
    lines = []
    for kind, path in paths.items():
        rows = _count_rows(path)
        lines.append(
            f"- {{download}}`{path.name} <{LINK_PREFIX}/{path.name}>`: "
            f"{CSV_KINDS[kind]} ({rows:,} rows)"
        )
    lines.append("")
    lines.append(
        "Accuracies are fractions in [0, 1], losses are cross-entropy in nats, and "
        "times are in seconds. Diverged, failed and crashed runs have empty final "
        "metrics. The column `tuned` marks the runs that the tables and figures "
        "above aggregate."
    )
    return "\n".join(lines)


def _count_rows(path: Path) -> int:
    """Return the number of data rows of a CSV file written by this module."""
    return len(pd.read_csv(path))


def copy_store(store_path: str | Path | None = None, folder: str | Path | None = None,
               name: str = "results.sqlite") -> Path:
    """Copy the results store into one self-contained SQLite file.

    SQLite's backup API takes a consistent snapshot and folds a write-ahead
    log into the copy, which copying the file alone would miss.
    """
    folder = Path(folder) if folder else DOWNLOADS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    target.unlink(missing_ok=True)
    source = analysis.open_store(store_path)
    destination = sqlite3.connect(target)
    try:
        source.backup(destination)
    finally:
        destination.close()
        source.close()
    return target


def store_section(store_path: str | Path | None = None,
                  study_file: str | Path = STUDY_FILE) -> str:
    """Copy the store and the study file into the downloads folder and return links to them."""
    store_copy = copy_store(store_path)
    study_copy = DOWNLOADS_DIR / Path(study_file).name
    shutil.copyfile(study_file, study_copy)
    size = store_copy.stat().st_size / 2**20
    return "\n".join([
        f"- {{download}}`{store_copy.name} <{LINK_PREFIX}/{store_copy.name}>`: the "
        f"results store ({size:.1f} MiB, SQLite; tables `runs`, `epochs` and "
        "`loss_samples`)",
        f"- {{download}}`{study_copy.name} <{LINK_PREFIX}/{study_copy.name}>`: the "
        "study file, which lists the optimizers and the profiles",
    ])
