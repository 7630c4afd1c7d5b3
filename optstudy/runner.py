"""The batch runner: expand a study into runs, execute each with papermill, store results.

Every run is one papermill execution of ``notebooks/train.ipynb`` in a child
process with its own working directory and kernel, so a kernel that dies, or
a run that exhausts memory, takes down only that run. The executed notebook
and its JSON record are kept under the runs folder; the result goes into
SQLite in one transaction as soon as the run ends.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import store
from .data import load_arrays
from .records import read_record
from .study import PlannedRun, Study, plan

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO_ROOT / "notebooks" / "train.ipynb"
DEFAULT_RUNS_DIR = REPO_ROOT / "runs"


@dataclass
class Outcome:
    """What one execution produced."""

    run: PlannedRun
    status: str
    record: dict | None
    error: str | None
    notebook_path: Path
    seconds_wall: float


def notebook_error(path: Path) -> str | None:
    """Return 'cell N: Type: message' for the first cell whose output is an error."""
    try:
        import nbformat

        notebook = nbformat.read(path, as_version=4)
    except Exception:  # noqa: BLE001 - a partial notebook may not parse
        return None
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return f"cell {index}: {output.get('ename')}: {output.get('evalue')}"
    return None


def execute_run(run: PlannedRun, runs_dir: Path, data_dir: Path | None,
                device: str, threads: int | None, timeout: float | None = None,
                notebook: Path = NOTEBOOK) -> Outcome:
    """Execute one run's notebook under papermill in a child process."""
    run_dir = (runs_dir / run.run_id).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    output = run_dir / "train.ipynb"
    record_path = run_dir / "record.json"
    record_path.unlink(missing_ok=True)

    config = run.config
    parameters = {
        "dataset": config.dataset,
        "optimizer": config.optimizer,
        "optimizer_class": config.optimizer_class,
        "lr": float(config.hyperparameters["lr"]),
        "hyperparameters": {
            k: v for k, v in config.hyperparameters.items() if k != "lr"
        },
        "needs_closure": config.needs_closure,
        "seed": config.seed,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "train_size": config.train_size or 0,
        "valid_size": config.valid_size,
        "test_size": config.test_size or 0,
        "data_dir": str(data_dir) if data_dir else "",
        "device": device,
        "threads": threads or 0,
        "record_path": str(record_path),
    }
    parameters_path = run_dir / "parameters.yml"
    parameters_path.write_text(yaml.safe_dump(parameters, sort_keys=False))

    command = [
        sys.executable, "-m", "papermill", str(notebook), str(output),
        "-f", str(parameters_path), "--cwd", str(run_dir), "-k", "python3",
        "--no-progress-bar", "--log-level", "WARNING",
    ]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout,
            env=environment, cwd=run_dir,
        )
        returncode, stderr = completed.returncode, completed.stderr
    except subprocess.TimeoutExpired as error:
        returncode, stderr = None, f"timed out after {error.timeout} s"
    seconds = time.perf_counter() - started
    (run_dir / "papermill.log").write_text(stderr or "")

    if returncode == 0 and record_path.is_file():
        record = read_record(record_path)
        return Outcome(run, record["status"], record, None, output, seconds)

    if returncode is None:
        return Outcome(run, "crashed", None, stderr, output, seconds)
    if "DeadKernelError" in stderr or "Kernel died" in stderr:
        return Outcome(run, "crashed", None, "the kernel died (killed or out of "
                       "memory)", output, seconds)
    error = notebook_error(output) or _last_lines(stderr)
    return Outcome(run, "failed", None, error, output, seconds)


def _last_lines(text: str, count: int = 5) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return "\n".join(lines[-count:]) or "papermill exited without a record"


def prepare_data(study_datasets, data_dir) -> None:
    """Read (and if needed download) every dataset once, before any run starts.

    Runs then only read the data, so parallel runs never race on a download.
    """
    for dataset in study_datasets:
        for split in ("train", "test"):
            load_arrays(dataset, split, data_dir)


def run_study(study: Study, profile_name: str, store_path=None, runs_dir=None,
              data_dir=None, device: str = "auto", jobs: int = 1,
              retry_failed: bool = False, timeout: float | None = None,
              on_progress=None) -> dict:
    """Run every missing run of a profile; return counts by status.

    ``on_progress(outcome, done, expected)`` is called after each run is
    stored, from the calling thread.
    """
    profile = study.profile(profile_name)
    runs_dir = Path(runs_dir or DEFAULT_RUNS_DIR / profile_name).resolve()
    data_dir = Path(data_dir).resolve() if data_dir else None
    connection = store.connect(store_path)
    prepare_data(profile.datasets, data_dir)

    if retry_failed:
        with connection:
            connection.execute(
                "DELETE FROM runs WHERE status IN ('failed', 'crashed') AND profile = ?",
                (profile_name,),
            )
    cores = os.cpu_count() or 1
    threads = max(1, cores // max(1, jobs))
    counts: dict[str, int] = {}
    attempted: set[str] = set()

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        in_flight = {}
        while True:
            results = store.load_statuses(connection)
            planned, final = plan(study, profile, results)
            pending = [
                run for run in planned
                if run.run_id not in results and run.run_id not in attempted
            ]
            done = sum(1 for run in planned if run.run_id in results)
            if not pending and not in_flight:
                break
            for run in pending[: max(0, jobs - len(in_flight))]:
                attempted.add(run.run_id)
                future = pool.submit(
                    execute_run, run, runs_dir, data_dir, device, threads, timeout
                )
                in_flight[future] = run
            if not in_flight:
                break
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in finished:
                del in_flight[future]
                outcome = future.result()
                _store_outcome(connection, profile_name, outcome)
                counts[outcome.status] = counts.get(outcome.status, 0) + 1
                done += 1
                if on_progress:
                    on_progress(outcome, done, len(planned), final)
    connection.close()
    return counts


def _store_outcome(connection, profile_name: str, outcome: Outcome) -> None:
    run = outcome.run
    store.save_run(
        connection, run.run_id, profile_name, run.phase, run.config.to_dict(),
        outcome.status, outcome.record, outcome.error,
        str(outcome.notebook_path), outcome.seconds_wall,
    )
    level = logging.INFO if outcome.status in store.DONE_STATUSES else logging.WARNING
    log.log(level, "run %s (%s, %s, lr=%g, seed %d): %s%s", run.run_id,
            run.config.dataset, run.config.optimizer, run.lr, run.config.seed,
            outcome.status, f": {outcome.error}" if outcome.error else "")


def export_records(store_path, folder) -> int:
    """Write every stored record as ``<run_id>.json`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    connection = store.connect(store_path, read_only=True)
    count = 0
    for row in connection.execute("SELECT run_id, record_json, status, error, "
                                  "config_json FROM runs"):
        record = json.loads(row["record_json"]) if row["record_json"] else {
            "config": json.loads(row["config_json"]), "status": row["status"],
            "error": row["error"],
        }
        (folder / f"{row['run_id']}.json").write_text(
            json.dumps(record, indent=1, sort_keys=True)
        )
        count += 1
    connection.close()
    return count
