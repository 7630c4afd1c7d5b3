"""The results store: one SQLite file, WAL mode, one transaction per finished run."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

STORE_ENV = "OPTSTUDY_STORE"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STORE = REPO_ROOT / "results" / "default" / "results.sqlite"

# Terminal outcomes of a run. "completed" and "diverged" are results. "failed"
# (an exception in the notebook) and "crashed" (the kernel died or timed out)
# are stored too, and rerun only with the runner's --retry-failed.
STATUSES = ("completed", "diverged", "failed", "crashed")
DONE_STATUSES = ("completed", "diverged")

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    profile TEXT NOT NULL,
    phase TEXT NOT NULL,
    dataset TEXT NOT NULL,
    optimizer TEXT NOT NULL,
    optimizer_class TEXT NOT NULL,
    optimizer_version TEXT,
    lr REAL NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    final_train_loss REAL,
    final_valid_loss REAL,
    final_valid_accuracy REAL,
    final_test_loss REAL,
    final_test_accuracy REAL,
    diverged_step INTEGER,
    steps INTEGER,
    gradient_evaluations INTEGER,
    optimizer_state_bytes INTEGER,
    seconds_total REAL,
    seconds_train REAL,
    seconds_eval REAL,
    seconds_wall REAL,
    config_json TEXT NOT NULL,
    record_json TEXT,
    notebook_path TEXT,
    finished_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    step INTEGER NOT NULL,
    train_loss REAL,
    valid_loss REAL,
    valid_accuracy REAL,
    test_loss REAL,
    test_accuracy REAL,
    seconds REAL,
    PRIMARY KEY (run_id, epoch)
);
CREATE TABLE IF NOT EXISTS claims (
    run_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    heartbeat REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS checks (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    epoch REAL NOT NULL,
    train_seconds REAL NOT NULL,
    valid_loss REAL,
    valid_accuracy REAL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS loss_samples (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    loss REAL,
    PRIMARY KEY (run_id, step)
);
"""


class StoreNotFoundError(FileNotFoundError):
    """Raised when a read-only store is opened at a path where no file exists."""


def resolve_store_path(path: str | os.PathLike | None = None) -> Path:
    """Return the store path: the argument, else ``$OPTSTUDY_STORE``, else the default."""
    if path:
        return Path(path).expanduser().resolve()
    if os.environ.get(STORE_ENV):
        return Path(os.environ[STORE_ENV]).expanduser().resolve()
    return DEFAULT_STORE


def connect(path: str | os.PathLike | None = None, read_only: bool = False):
    """Open the store. Read-only opening never creates a file."""
    path = resolve_store_path(path)
    if read_only:
        if not path.is_file():
            raise StoreNotFoundError(
                f"results store not found: {path}. Run the study first "
                f"(python scripts/run_study.py) or set ${STORE_ENV}."
            )
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        connection.row_factory = sqlite3.Row
        return connection

    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=30)
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.executescript(SCHEMA)
    return connection


def save_run(connection, run_id: str, profile: str, phase: str, config: dict,
             status: str, record: dict | None = None, error: str | None = None,
             notebook_path: str | None = None, seconds_wall: float | None = None):
    """Write one finished run, its epochs, checks and loss samples in one transaction.

    A run stored earlier with the same id (a failed attempt) is replaced.
    """
    if status not in STATUSES:
        raise ValueError(f"invalid run status {status!r}: expected one of {STATUSES}")
    record = record or {}
    divergence = record.get("divergence") or {}
    row = {
        "run_id": run_id,
        "profile": profile,
        "phase": phase,
        "dataset": config["dataset"],
        "optimizer": config["optimizer"],
        "optimizer_class": record.get("optimizer_class", config["optimizer_class"]),
        "optimizer_version": record.get("optimizer_version"),
        "lr": config["hyperparameters"]["lr"],
        "seed": config["seed"],
        "status": status,
        "error": error,
        "final_train_loss": record.get("final_train_loss"),
        "final_valid_loss": record.get("final_valid_loss"),
        "final_valid_accuracy": record.get("final_valid_accuracy"),
        "final_test_loss": record.get("final_test_loss"),
        "final_test_accuracy": record.get("final_test_accuracy"),
        "diverged_step": divergence.get("step"),
        "steps": record.get("steps"),
        "gradient_evaluations": record.get("gradient_evaluations"),
        "optimizer_state_bytes": record.get("optimizer_state_bytes"),
        "seconds_total": record.get("seconds_total"),
        "seconds_train": record.get("seconds_train"),
        "seconds_eval": record.get("seconds_eval"),
        "seconds_wall": seconds_wall,
        "config_json": json.dumps(config, sort_keys=True),
        "record_json": json.dumps(record, sort_keys=True, allow_nan=False) if record
        else None,
        "notebook_path": notebook_path,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    columns = ", ".join(row)
    marks = ", ".join(f":{key}" for key in row)
    with connection:
        connection.execute("DELETE FROM claims WHERE run_id = ?", (run_id,))
        connection.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
        connection.execute(f"INSERT INTO runs ({columns}) VALUES ({marks})", row)
        connection.executemany(
            "INSERT INTO epochs VALUES (:run_id, :epoch, :step, :train_loss, "
            ":valid_loss, :valid_accuracy, :test_loss, :test_accuracy, :seconds)",
            [{"run_id": run_id, **epoch} for epoch in record.get("history", [])],
        )
        connection.executemany(
            "INSERT INTO loss_samples VALUES (?, ?, ?)",
            [(run_id, s["step"], s["loss"]) for s in record.get("loss_samples", [])],
        )
        connection.executemany(
            "INSERT INTO checks VALUES (:run_id, :step, :epoch, :train_seconds, "
            ":valid_loss, :valid_accuracy)",
            [{"run_id": run_id, **check} for check in record.get("checks", [])],
        )


def load_statuses(connection) -> dict[str, dict]:
    """Return ``{run_id: {status, final_valid_accuracy, final_valid_loss}}`` per run."""
    rows = connection.execute(
        "SELECT run_id, status, final_valid_accuracy, final_valid_loss FROM runs"
    ).fetchall()
    return {row["run_id"]: dict(row) for row in rows}


# --- Claims: two runners on one store never execute the same run -----------

CLAIM_STALE_SECONDS = 120.0


def make_owner() -> str:
    """Return an owner id for this runner: host, process id and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owner_is_gone(owner: str, heartbeat: float) -> bool:
    """Tell whether a claim's runner is dead (same host) or silent for too long."""
    host, pid, _ = owner.split(":", 2)
    if host == socket.gethostname():
        import psutil

        if not psutil.pid_exists(int(pid)):
            return True
    return time.time() - heartbeat > CLAIM_STALE_SECONDS


def claim(connection, run_id: str, owner: str) -> bool:
    """Claim a run for ``owner``; return False if it is stored or claimed by a live runner."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        if connection.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
            connection.execute("ROLLBACK")
            return False
        row = connection.execute(
            "SELECT owner, heartbeat FROM claims WHERE run_id = ?", (run_id,)
        ).fetchone()
        if row and row["owner"] != owner and not _owner_is_gone(*row):
            connection.execute("ROLLBACK")
            return False
        connection.execute(
            "INSERT OR REPLACE INTO claims VALUES (?, ?, ?)", (run_id, owner, time.time())
        )
        connection.execute("COMMIT")
        return True
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def claimed_by_others(connection, owner: str) -> set[str]:
    """Return the run ids that live runners other than ``owner`` are executing."""
    rows = connection.execute("SELECT run_id, owner, heartbeat FROM claims").fetchall()
    return {
        row["run_id"] for row in rows
        if row["owner"] != owner and not _owner_is_gone(row["owner"], row["heartbeat"])
    }


def heartbeat(connection, owner: str) -> None:
    with connection:
        connection.execute("UPDATE claims SET heartbeat = ? WHERE owner = ?",
                           (time.time(), owner))


def release(connection, owner: str) -> None:
    with connection:
        connection.execute("DELETE FROM claims WHERE owner = ?", (owner,))
