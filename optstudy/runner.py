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
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import store
from .data import load_arrays
from .records import partial_record_path, read_record
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


def _tree_rss(process) -> int:
    """Return the resident memory of a process and all its descendants, in bytes."""
    import psutil

    total = 0
    try:
        members = [process] + process.children(recursive=True)
    except psutil.Error:
        return 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


# Papermill processes still running, so an interrupted runner can stop them.
_live_processes: set[subprocess.Popen] = set()
_live_lock = threading.Lock()


def _kill_group(process: subprocess.Popen) -> None:
    """Kill papermill and its kernel: they share the session started for them."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _supervise(process: subprocess.Popen, timeout: float | None,
               memory_limit: int | None) -> str | None:
    """Wait for papermill; kill it on timeout or memory excess and say why."""
    import psutil

    watched = psutil.Process(process.pid)
    deadline = time.monotonic() + timeout if timeout else None
    while process.poll() is None:
        if deadline and time.monotonic() > deadline:
            _kill_group(process)
            return f"timed out after {timeout:g} s"
        if memory_limit and _tree_rss(watched) > memory_limit:
            _kill_group(process)
            return (f"exceeded the memory cap of {memory_limit / 2**30:.2f} GiB "
                    "(resident memory of the kernel and papermill)")
        time.sleep(0.5)
    return None


def _partial(run_dir: Path) -> dict | None:
    path = partial_record_path(run_dir / "record.json")
    if not path.is_file():
        return None
    record = read_record(path)
    record["incomplete"] = True
    return record


def execute_run(run: PlannedRun, runs_dir: Path, data_dir: Path | None,
                device: str, threads: int | None, timeout: float | None = None,
                memory_limit: int | None = None, checkpoint: bool = False,
                notebook: Path = NOTEBOOK) -> Outcome:
    """Execute one run's notebook under papermill in a child process.

    Papermill and its kernel run in a session of their own, so a timeout or a
    memory excess kills both and leaves no orphaned kernel behind.
    """
    run_dir = (runs_dir / run.run_id).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    output = run_dir / "train.ipynb"
    record_path = run_dir / "record.json"
    record_path.unlink(missing_ok=True)
    partial_record_path(record_path).unlink(missing_ok=True)

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
        # Kept across runner restarts: the run dir is named by the run id.
        "checkpoint_path": str(run_dir / "checkpoint.pt") if checkpoint else "",
    }
    parameters_path = run_dir / "parameters.yml"
    parameters_path.write_text(yaml.safe_dump(parameters, sort_keys=False))

    command = [
        sys.executable, "-m", "papermill", str(notebook), str(output),
        "-f", str(parameters_path), "--cwd", str(run_dir), "-k", "python3",
        "--no-progress-bar", "--log-level", "WARNING",
    ]
    # The repository root goes first on the kernel's path, so the package of
    # this checkout and a user's optimizer modules at the root are importable
    # from the run's own working directory.
    python_path = os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
    )
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": python_path}
    log_path = run_dir / "papermill.log"
    started = time.perf_counter()
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=environment,
            cwd=run_dir, start_new_session=True,
        )
        with _live_lock:
            _live_processes.add(process)
        try:
            killed_because = _supervise(process, timeout, memory_limit)
        except BaseException:
            _kill_group(process)
            raise
        finally:
            with _live_lock:
                _live_processes.discard(process)
    seconds = time.perf_counter() - started
    stderr = log_path.read_text(errors="replace")

    if process.returncode == 0 and record_path.is_file():
        record = read_record(record_path)
        return Outcome(run, record["status"], record, None, output, seconds)

    partial = _partial(run_dir)
    if killed_because:
        return Outcome(run, "crashed", partial, killed_because, output, seconds)
    if "DeadKernelError" in stderr or "Kernel died" in stderr:
        return Outcome(run, "crashed", partial, "the kernel died (killed by a "
                       "signal or the out-of-memory killer)", output, seconds)
    error = notebook_error(output) or _last_lines(stderr)
    return Outcome(run, "failed", partial, error, output, seconds)


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
              memory_limit: int | None = None, only: list[str] | None = None,
              notebook: Path = NOTEBOOK, on_progress=None) -> dict:
    """Run every missing run of a profile; return counts by status.

    ``only`` restricts the call to the given run ids, which are run again
    even when stored (to rerun one failed or crashed run alone).
    ``on_progress(outcome, done, planned, final)`` is called after each run is
    stored, from the calling thread.
    """
    profile = study.profile(profile_name)
    runs_dir = Path(runs_dir or DEFAULT_RUNS_DIR / profile_name).resolve()
    data_dir = Path(data_dir).resolve() if data_dir else None
    connection = store.connect(store_path)
    prepare_data(profile.datasets, data_dir)

    if only:
        known = set(store.load_statuses(connection)) | {
            run.run_id for run in plan(study, profile, store.load_statuses(connection))[0]
        }
        unknown = [run_id for run_id in only if run_id not in known]
        if unknown:
            raise ValueError(
                f"run ids {unknown} are neither stored nor planned for profile "
                f"{profile_name!r}; list ids with: sqlite3 <store> 'SELECT run_id, "
                "status FROM runs'"
            )
        with connection:
            connection.executemany("DELETE FROM runs WHERE run_id = ?",
                                   [(run_id,) for run_id in only])
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

    pool = ThreadPoolExecutor(max_workers=jobs)
    in_flight = {}
    try:
        while True:
            results = store.load_statuses(connection)
            planned, final = plan(study, profile, results)
            pending = [
                run for run in planned
                if run.run_id not in results and run.run_id not in attempted
                and (not only or run.run_id in only)
            ]
            done = sum(1 for run in planned if run.run_id in results)
            if not pending and not in_flight:
                break
            for run in pending[: max(0, jobs - len(in_flight))]:
                attempted.add(run.run_id)
                future = pool.submit(
                    execute_run, run, runs_dir, data_dir, device, threads, timeout,
                    memory_limit, profile.checkpoint, notebook,
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
    except BaseException:
        # Ctrl-C or a kill of the runner: stop the runs in flight. Finished runs
        # are already stored; the next start runs the rest, these included.
        with _live_lock:
            for process in list(_live_processes):
                _kill_group(process)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
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
