"""Execute one run: ``notebooks/train.ipynb`` under papermill in a child process.

Every run has its own working directory and kernel, so a kernel that dies, or
a run that exhausts memory, takes down only that run. This module runs on
Dask workers as well as locally, and never touches the results store.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .records import partial_record_path, read_record
from .study import PlannedRun

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO_ROOT / "notebooks" / "train.ipynb"


@dataclass
class Outcome:
    """The result of one execution: status, record, error and where the notebook is."""

    run: PlannedRun
    status: str
    record: dict | None
    error: str | None
    notebook_path: Path
    seconds_wall: float
    notebook_bytes: bytes | None = None  # filled in by Dask tasks for the client
    host: str | None = None


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


def _die_with_parent() -> None:
    """Ask Linux to kill papermill when the process that started it dies.

    A Dask worker killed mid-run thus takes its papermill with it, and the
    kernel exits on its own when its parent goes (ipykernel polls its parent).
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: an orphaned run then finishes on its own


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
    """Wait for papermill; kill it on timeout or memory excess and return the reason."""
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
        "precision": config.precision,
        "adapter": dict(config.adapter),
        "evals_per_epoch": config.evals_per_epoch,
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
        # papermill waits 60 s for a kernel by default; on a loaded machine a
        # kernel can take longer to start, which is slowness, not a failure.
        "--start-timeout", str(KERNEL_START_TIMEOUT),
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
            cwd=run_dir, start_new_session=True, preexec_fn=_die_with_parent,
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
    if process.returncode < 0:
        name = signal.Signals(-process.returncode).name
        return Outcome(run, "crashed", partial, f"papermill was killed by {name}; "
                       f"last output: {_last_lines(stderr, 2)}", output, seconds)
    error = notebook_error(output) or _last_lines(stderr)
    return Outcome(run, "failed", partial, error, output, seconds)


KERNEL_START_TIMEOUT = 300  # seconds papermill waits for the kernel to start


def _last_lines(text: str, count: int = 5) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return "\n".join(lines[-count:]) or "papermill exited without a record"


def kill_live_runs() -> None:
    """Kill every papermill session this process started that is still running."""
    with _live_lock:
        for process in list(_live_processes):
            _kill_group(process)


def run_task(run: PlannedRun, work_root: str, data_dir: str | None, device: str,
             threads: int, timeout: float | None, memory_limit: int | None,
             checkpoint: bool, notebook: str) -> Outcome:
    """Execute one run on a Dask worker and return the outcome with the notebook bytes.

    The client writes the bytes into its own runs folder, so workers need no
    filesystem shared with the client.
    """
    import socket

    outcome = execute_run(
        run, Path(work_root), Path(data_dir) if data_dir else None, device, threads,
        timeout, memory_limit, checkpoint, Path(notebook),
    )
    if outcome.notebook_path.is_file():
        outcome.notebook_bytes = outcome.notebook_path.read_bytes()
    outcome.host = socket.gethostname()
    return outcome
