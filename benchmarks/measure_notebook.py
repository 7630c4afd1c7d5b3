"""Measurement (1): one run through ``notebooks/train.ipynb`` under papermill.

The run goes through ``execute_run`` (``optstudy.execution``, or
``optstudy.runner`` in older checkouts), exactly as the study's batch runner
starts it: papermill and its kernel in a child process with its
own working directory. A sampler thread reads the kernel's peak resident
memory (``VmHWM``) every 0.1 s while it runs, and the resident memory of the
whole process tree.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import threading
import time
from pathlib import Path

import psutil

from machine import peak_rss_bytes
from workloads import (
    add_workload_arguments,
    check_package_location,
    use_this_checkout,
    workload_from_arguments,
)

SAMPLE_INTERVAL_SECONDS = 0.1


class TreeMemorySampler(threading.Thread):
    """Sample the memory of this process's descendants until stopped.

    The kernel's ``VmHWM`` is its exact peak up to the last sample, so only
    growth in the kernel's final interval before exit goes unseen. The tree's
    total is a sum of current resident sizes, so it misses short peaks.
    """

    def __init__(self, interval: float = SAMPLE_INTERVAL_SECONDS):
        super().__init__(daemon=True)
        self.interval = interval
        self.stopped = threading.Event()
        self.kernel_peak_bytes = 0
        self.tree_peak_bytes = 0
        self._is_kernel: dict[int, bool] = {}

    def _kernel(self, process: psutil.Process) -> bool:
        # Only a match is cached: between fork and exec, the kernel's process
        # still shows papermill's command line.
        if self._is_kernel.get(process.pid):
            return True
        try:
            command = " ".join(process.cmdline())
        except psutil.Error:
            return False
        self._is_kernel[process.pid] = "ipykernel" in command
        return self._is_kernel[process.pid]

    def run(self) -> None:
        me = psutil.Process()
        while not self.stopped.wait(self.interval):
            tree_total = 0
            for child in me.children(recursive=True):
                try:
                    rss = child.memory_info().rss
                except psutil.Error:
                    continue
                tree_total += rss
                if self._kernel(child):
                    peak = peak_rss_bytes(child.pid) or rss
                    self.kernel_peak_bytes = max(self.kernel_peak_bytes, peak)
            self.tree_peak_bytes = max(self.tree_peak_bytes, tree_total)


def training_cell_end(notebook_path: Path) -> datetime.datetime:
    """Return the wall-clock end of the cell that calls ``train(``.

    Papermill stores each cell's start and end time (UTC, ISO 8601) in the
    cell's ``metadata.papermill``.
    """
    notebook = json.loads(notebook_path.read_text())
    for cell in notebook["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and "= train(" in source:
            end = datetime.datetime.fromisoformat(cell["metadata"]["papermill"]
                                                  ["end_time"])
            if end.tzinfo is None:
                end = end.replace(tzinfo=datetime.timezone.utc)
            return end
    raise ValueError(f"{notebook_path}: no code cell calls train(...)")


def measure(arguments: argparse.Namespace) -> dict:
    workload = workload_from_arguments(arguments)
    use_this_checkout()
    import optstudy
    from optstudy.study import PlannedRun, run_id

    try:
        from optstudy.execution import NOTEBOOK, execute_run
    except ImportError:  # checkouts where execute_run still lives in the runner
        from optstudy.runner import NOTEBOOK, execute_run

    check_package_location(optstudy)
    config = workload.run_config()
    run = PlannedRun(run_id(config), "benchmark", config)
    runs_dir = Path(arguments.runs_dir)

    sampler = TreeMemorySampler()
    sampler.start()
    launched_at = time.time()
    outcome = execute_run(run, runs_dir, Path(arguments.data_dir), device="cpu",
                          threads=arguments.threads, timeout=arguments.timeout)
    sampler.stopped.set()
    sampler.join()

    result = {
        "approach": "notebook",
        "status": outcome.status,
        "error": outcome.error,
        "notebook": str(NOTEBOOK),
        "executed_notebook": str(outcome.notebook_path),
        "optstudy_path": str(Path(optstudy.__file__).parent),
        # The runner's own clock: papermill's launch to its exit.
        "wall_seconds": outcome.seconds_wall,
        "peak_rss_bytes": sampler.kernel_peak_bytes or None,
        "tree_peak_rss_sampled_bytes": sampler.tree_peak_bytes,
        # An upper bound only: papermill, forked from this process after it
        # imported torch, carries this process's peak in its ru_maxrss.
        "children_maxrss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN)
        .ru_maxrss * 1024,
    }
    record = outcome.record
    if outcome.status != "completed" or record is None:
        return result

    # The record's times count from the start of train(), inside the training
    # cell. The cell ends just after train() returns, so train() started at
    # cell end - seconds_total, and the first step at that + history[0] seconds.
    train_started_at = (training_cell_end(outcome.notebook_path).timestamp()
                        - record["seconds_total"])
    first_step_at = train_started_at + record["history"][0]["seconds"]
    result.update({
        "threads": record["environment"]["threads"],
        "launch_to_call_seconds": train_started_at - launched_at,
        "call_seconds": record["seconds_total"],
        "launch_to_first_step_seconds": first_step_at - launched_at,
        "load_seconds": record["seconds_load"],
        "train_seconds": record["seconds_train"],
        "eval_seconds": record["seconds_eval"],
        "steps": record["steps"],
        "trained_images": record["train_images"] * len(record["history"][1:]),
        "final_train_loss": record["final_train_loss"],
        "final_valid_accuracy": record["final_valid_accuracy"],
    })
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_workload_arguments(parser)
    parser.add_argument("--runs-dir", required=True,
                        help="folder for the executed notebook and its record")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds before papermill and its kernel are killed "
                        "(default: no limit)")
    arguments = parser.parse_args(argv)
    result = measure(arguments)
    Path(arguments.output).write_text(json.dumps(result, indent=1))
    return 0 if result["status"] == "completed" else 1


if __name__ == "__main__":
    raise SystemExit(main())
