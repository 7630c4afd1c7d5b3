"""Benchmark the project's training paths side by side on the same work.

For 2c2d on MNIST and 3c3d on CIFAR-10, one invocation measures four things:

(1) a run of notebooks/train.ipynb under papermill, launched as the study's
    runner launches it,
(2) optstudy.train.train() called in a fresh process,
(3) the common torchvision + DataLoader idiom with the same model, optimizer
    and images,
(4) the float32 matmul ceiling and the models' FLOPs per step.

It prints a table and writes a JSON record. See benchmarks/README.md.

    python benchmarks/run_all.py --data-dir DATA [--quick] [--output FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe_machine, usable_cores
from measure_idiom import prepare_torchvision_root
from report import compute_ratios, format_report, judge_targets, summarise_approach
from workloads import (
    FULL_WORKLOADS,
    QUICK_WORKLOADS,
    REPO_ROOT,
    child_environment,
    use_this_checkout,
)

log = logging.getLogger("benchmarks")

BENCHMARKS = Path(__file__).resolve().parent
RESULTS = BENCHMARKS / "results"
# A load average above this multiple of the usable cores means other work is
# competing for the CPU, so the timings mean little about the code.
BUSY_LOAD_FACTOR = 0.5
# Imports timed in fresh interpreters. The notebook imports all but torchvision.
STARTUP_IMPORTS = {
    "python (no imports)": "pass",
    "import torch": "import torch",
    "import optstudy.train": "import optstudy.train",
    "import papermill": "import papermill",
    "import matplotlib.pyplot": "import matplotlib.pyplot",
    "import torchvision": "import torchvision.datasets, torchvision.transforms",
}


class MeasurementFailed(RuntimeError):
    """Raised when a measurement process exits with an error or writes no result."""


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true",
                        help="a few steps and small evaluation splits, to check that "
                        "the scripts work; the timings mean little")
    parser.add_argument("--output", default=None,
                        help="JSON record to write (default: "
                        "benchmarks/results/latest.json, or quick.json with --quick)")

    parser.add_argument("--data-dir", default=None,
                        help="data root with MNIST/raw and cifar-10-batches-bin "
                        "(default: $OPTSTUDY_DATA, then ./data)")
    parser.add_argument("--workloads", nargs="+", default=list(FULL_WORKLOADS),
                        choices=list(FULL_WORKLOADS),
                        help="workloads to run: mnist (2c2d), cifar10 (3c3d) "
                        "(default: both)")

    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for every measurement (default: the "
                        "cores this process may use)")
    parser.add_argument("--workers", type=int, default=1,
                        help="DataLoader num_workers for (3). The PyTorch MNIST "
                        "example uses 1 with CUDA and 0 on the CPU (default: 1)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="repeats of each run measurement, reduced to medians "
                        "in the table (default: 1)")

    parser.add_argument("--epochs", type=int, default=None,
                        help="override the epochs of every workload")
    parser.add_argument("--train-size", type=int, default=None,
                        help="override the training images per epoch")

    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds before one measurement process is stopped "
                        "(default: 1800)")
    return parser.parse_args(argv)


def resolve_data_dir(data_dir: str | None) -> Path:
    use_this_checkout()
    from optstudy.data import resolve_data_root

    root = resolve_data_root(data_dir)
    expected = [root / "MNIST" / "raw", root / "cifar-10-batches-bin"]
    missing = [str(path) for path in expected if not path.is_dir()]
    if missing:
        raise SystemExit(
            f"data root {root} lacks {', '.join(missing)}. Pass --data-dir or set "
            "OPTSTUDY_DATA to a folder with MNIST/raw/*-ubyte.gz and "
            "cifar-10-batches-bin/*.bin"
        )
    return root


def run_child(command: list[str], output: Path, log_path: Path,
              timeout: float) -> dict:
    """Run one measurement process and return its JSON result plus its wall time."""
    started = time.perf_counter()
    with open(log_path, "w") as log_file:
        try:
            completed = subprocess.run(command, stdout=log_file,
                                       stderr=subprocess.STDOUT,
                                       env=child_environment(), cwd=REPO_ROOT,
                                       timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise MeasurementFailed(f"timed out after {timeout:g} s, log: "
                                    f"{log_path}") from error
    wall_seconds = time.perf_counter() - started
    if not output.is_file():
        tail = log_path.read_text(errors="replace")[-2000:]
        raise MeasurementFailed(f"exit status {completed.returncode} and no result "
                                f"file; last output:\n{tail}")
    result = json.loads(output.read_text())
    result["process_wall_seconds"] = wall_seconds
    if completed.returncode != 0 and result.get("status") == "completed":
        result["status"] = "failed"
    return result


def measure_startup(python: str, repeats: int) -> dict:
    """Time a fresh interpreter that imports each of STARTUP_IMPORTS, launch to exit.

    Each process also prints its peak resident memory after the import.
    """
    report_rss = (f"; import sys; sys.path.insert(0, {str(BENCHMARKS)!r}); "
                  "from machine import peak_rss_bytes; print(peak_rss_bytes())")
    timings = {}
    for name, statement in STARTUP_IMPORTS.items():
        seconds = []
        rss = []
        for _ in range(repeats):
            started = time.perf_counter()
            completed = subprocess.run([python, "-c", statement + report_rss],
                                       check=True, capture_output=True, text=True,
                                       env=child_environment(), cwd=REPO_ROOT)
            seconds.append(time.perf_counter() - started)
            rss.append(int(completed.stdout.split()[-1]))
        timings[name] = {"seconds": statistics.median(seconds), "all": seconds,
                         "peak_rss_bytes": max(rss)}
    baseline = timings["python (no imports)"]["seconds"]
    for name, entry in timings.items():
        if name != "python (no imports)":
            entry["over_interpreter_seconds"] = entry["seconds"] - baseline
    return timings


def measure_workload(workload, approach: str, arguments, paths: dict,
                     repeat: int) -> dict:
    """Run one approach on one workload in a fresh process and return its result."""
    tag = f"{workload.dataset}-{approach}-{repeat}"
    output = paths["temp"] / f"{tag}.json"
    common = workload.to_arguments() + [
        "--threads", str(arguments.threads), "--data-dir", str(paths["data"]),
        "--output", str(output),
    ]
    python = sys.executable
    if approach == "notebook":
        command = [python, str(BENCHMARKS / "measure_notebook.py"), *common,
                   "--runs-dir", str(paths["temp"] / "runs" / tag),
                   "--timeout", str(arguments.timeout)]
    elif approach == "direct":
        command = [python, str(BENCHMARKS / "measure_direct.py"), *common]
    else:
        command = [python, str(BENCHMARKS / "measure_idiom.py"), *common,
                   "--torchvision-root", str(paths["torchvision"]),
                   "--workers", str(arguments.workers)]
    if approach != "notebook":
        command += ["--launched-at", repr(time.time())]

    log.info("measuring %s on %s (repeat %d)", approach, workload.dataset, repeat)
    try:
        # The notebook script stops papermill itself at --timeout.
        result = run_child(command, output, paths["temp"] / f"{tag}.log",
                           arguments.timeout + 120)
    except MeasurementFailed as error:
        log.error("%s on %s failed: %s", approach, workload.dataset, error)
        return {"approach": approach, "status": "failed", "error": str(error)}
    if approach != "notebook":
        result["wall_seconds"] = result["process_wall_seconds"]
    if result.get("status") != "completed":
        log.error("%s on %s ended with status %s: %s", approach, workload.dataset,
                  result.get("status"), result.get("error"))
    return result


def select_workloads(arguments) -> list:
    chosen = QUICK_WORKLOADS if arguments.quick else FULL_WORKLOADS
    workloads = []
    for name in arguments.workloads:
        workload = chosen[name]
        if arguments.epochs is not None:
            workload = dataclasses.replace(workload, epochs=arguments.epochs)
        if arguments.train_size is not None:
            workload = dataclasses.replace(workload, train_size=arguments.train_size)
        workloads.append(workload)
    return workloads


def busy_warnings(machine: dict) -> list[str]:
    load = machine["load_average_1_5_15_min"][0]
    cores = machine["usable_cores"]
    if load > BUSY_LOAD_FACTOR * cores:
        return [f"1-minute load average {load:.1f} on {cores} cores before the "
                "benchmark: other processes compete for the CPU, so the timings "
                "are not representative"]
    return []


def run_benchmark(arguments) -> dict:
    data_dir = resolve_data_dir(arguments.data_dir)
    arguments.threads = arguments.threads or usable_cores()
    workloads = select_workloads(arguments)
    machine = describe_machine()
    repeats = arguments.repeats
    record = {
        "benchmark": "optstudy training paths: papermill notebook, train(), "
                     "torchvision DataLoader idiom, fp32 ceiling",
        "mode": "quick" if arguments.quick else "full",
        "command": [sys.executable, *sys.argv],
        "machine": machine,
        "settings": {
            "threads": arguments.threads,
            "num_workers": arguments.workers,
            "repeats": repeats,
            "data_dir": str(data_dir),
            "device": "cpu",
            "optimizer": "torch.optim.Adam, lr 1e-3",
        },
        "warnings": busy_warnings(machine),
    }
    for warning in record["warnings"]:
        log.warning(warning)

    with tempfile.TemporaryDirectory(prefix="optstudy-benchmark-") as temp:
        paths = {"temp": Path(temp), "data": data_dir,
                 "torchvision": Path(temp) / "torchvision"}
        log.info("laying out the data for torchvision in %s", paths["torchvision"])
        prepare_torchvision_root(data_dir, paths["torchvision"])

        log.info("timing interpreter start-up and imports")
        record["startup"] = measure_startup(sys.executable,
                                            1 if arguments.quick else 3)

        log.info("measuring the fp32 matmul ceiling and the models' FLOPs")
        ceiling_output = paths["temp"] / "ceiling.json"
        ceiling_command = [
            sys.executable, str(BENCHMARKS / "measure_ceiling.py"),
            "--threads", str(arguments.threads),
            "--datasets", *[w.dataset for w in workloads],
            "--matmul-repeats", "3" if arguments.quick else "20",
            "--model-steps", "2" if arguments.quick else "30",
            "--warmup", "1" if arguments.quick else "3",
            "--output", str(ceiling_output),
        ]
        try:
            record["ceiling"] = run_child(ceiling_command, ceiling_output,
                                          paths["temp"] / "ceiling.log",
                                          arguments.timeout)
        except MeasurementFailed as error:
            log.error("the ceiling measurement failed: %s", error)
            record["ceiling"] = {"error": str(error), "models": {}}

        measurements = {w.dataset: {a: [] for a in ("notebook", "direct", "idiom")}
                        for w in workloads}
        # Repeats are the outer loop, so slow drift in machine load spreads
        # over all approaches instead of favouring one.
        for repeat in range(1, repeats + 1):
            for workload in workloads:
                for approach in ("notebook", "direct", "idiom"):
                    measurements[workload.dataset][approach].append(
                        measure_workload(workload, approach, arguments, paths, repeat)
                    )

    record["workloads"] = [
        summarise_workload(workload, measurements[workload.dataset],
                           record["ceiling"])
        for workload in workloads
    ]
    record["targets"] = judge_targets(record["workloads"])
    return record


def summarise_workload(workload, measurements: dict, ceiling: dict) -> dict:
    model = ceiling.get("models", {}).get(workload.dataset, {})
    flops_per_image = model.get("flops", {}).get("flops_per_image")
    ceiling_gflops = ceiling.get("matmul", {}).get("best_gflops")
    summaries = {
        approach: summarise_approach(runs, flops_per_image, ceiling_gflops)
        for approach, runs in measurements.items()
    }
    model_step = model.get("model_step")
    if model_step and ceiling_gflops:
        model_step = {**model_step,
                      "ceiling_percent": 100 * model_step["gflops"] / ceiling_gflops}
    return {
        "workload": workload.to_dict(),
        "description": workload.describe(),
        "flops": model.get("flops"),
        "model_step": model_step,
        "measurements": measurements,
        "summaries": summaries,
        "ratios": compute_ratios(summaries),
    }


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    arguments = parse_arguments(argv)
    output = Path(arguments.output) if arguments.output else (
        RESULTS / ("quick.json" if arguments.quick else "latest.json"))

    record = run_benchmark(arguments)
    print(format_report(record))

    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=1))
    log.info("wrote %s", output)

    failed = [
        (result["workload"]["dataset"], approach)
        for result in record["workloads"]
        for approach, summary in result["summaries"].items() if summary is None
    ]
    if failed or "error" in record["ceiling"]:
        log.error("failed measurements: %s", failed or "the ceiling")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
