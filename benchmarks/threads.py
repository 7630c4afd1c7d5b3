"""Measure how the torch thread count changes a run's results.

Runs the same short training run (MNIST, 2c2d, Adam lr 1e-3, 2 epochs on 1,000
training images, seed 0) through ``optstudy.train.train`` with two thread
counts, and once more with the second count. Each run is a fresh process. It
reports whether the final losses are bit-identical and the largest absolute
differences of the per-epoch validation and test loss and accuracy.

    python benchmarks/threads.py --data-dir DATA [--threads 1 2] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe_machine
from workloads import REPO_ROOT, Workload, child_environment, use_this_checkout

log = logging.getLogger("benchmarks.threads")

BENCHMARKS = Path(__file__).resolve().parent
WORKLOAD = Workload("mnist", train_size=1000, valid_size=5000, test_size=None,
                    epochs=2)
FINAL_KEYS = ("final_train_loss", "final_valid_loss", "final_test_loss",
              "final_valid_accuracy", "final_test_accuracy")
HISTORY_KEYS = ("train_loss", "valid_loss", "valid_accuracy", "test_loss",
                "test_accuracy")


def run_once(threads: int, data_dir: Path, folder: Path, label: str) -> dict:
    """Train the workload with ``threads`` threads in a fresh process and return it."""
    output = folder / f"{label}.json"
    command = [
        sys.executable, str(BENCHMARKS / "measure_direct.py"),
        *WORKLOAD.to_arguments(), "--threads", str(threads),
        "--data-dir", str(data_dir), "--output", str(output), "--keep-record",
    ]
    log.info("run %s: %d thread(s)", label, threads)
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True,
                               env=child_environment(), cwd=REPO_ROOT)
    if completed.returncode != 0 or not output.is_file():
        raise RuntimeError(f"run {label} with {threads} thread(s) failed "
                           f"(exit status {completed.returncode}):\n"
                           f"{completed.stderr[-2000:]}")
    result = json.loads(output.read_text())
    record = result["record"]
    if record["environment"]["threads"] != threads:
        raise RuntimeError(f"run {label} asked for {threads} thread(s) but torch "
                           f"used {record['environment']['threads']}")
    return {"label": label, "threads": threads,
            "seconds": time.perf_counter() - started, "record": record}


def compare(first: dict, second: dict) -> dict:
    """Compare two records: bit-identity of final values, largest per-epoch gaps."""
    a, b = first["record"], second["record"]
    identical = {key: a[key] == b[key] for key in FINAL_KEYS}
    largest = {}
    for key in HISTORY_KEYS:
        gaps = [abs(x[key] - y[key]) for x, y in zip(a["history"], b["history"])
                if x[key] is not None and y[key] is not None]
        largest[key] = max(gaps) if gaps else None
    samples_a = [s["loss"] for s in a["loss_samples"]]
    samples_b = [s["loss"] for s in b["loss_samples"]]
    return {
        "runs": [first["label"], second["label"]],
        "threads": [first["threads"], second["threads"]],
        "final_values_identical": identical,
        "final_losses_bit_identical": all(
            identical[key] for key in FINAL_KEYS if "loss" in key
        ),
        "loss_samples_identical": samples_a == samples_b,
        "max_abs_difference_per_epoch": largest,
        "valid_images": a["valid_images"],
    }


def format_report(result: dict) -> str:
    lines = [
        f"Thread-count check: {WORKLOAD.describe()}",
        f"CPU: {result['machine']['cpu_model']}, torch {result['machine']['torch']}",
        "",
        f"  {'run':<6}{'threads':>8}  {'final train loss':<22}"
        f"{'final valid loss':<22}{'valid acc':>10}{'seconds':>9}",
    ]
    for run in result["runs"]:
        record = run["record"]
        lines.append(
            f"  {run['label']:<6}{run['threads']:>8}  "
            f"{record['final_train_loss']!r:<22}{record['final_valid_loss']!r:<22}"
            f"{record['final_valid_accuracy']:>10.4f}{run['seconds']:>9.1f}"
        )
    lines += ["", "  comparison                final losses   max |d valid loss|  "
              "max |d valid acc|  max |d test loss|"]
    for comparison in result["comparisons"]:
        largest = comparison["max_abs_difference_per_epoch"]
        verdict = ("bit-identical" if comparison["final_losses_bit_identical"]
                   else "differ")
        name = (f"{comparison['runs'][0]} ({comparison['threads'][0]}) vs "
                f"{comparison['runs'][1]} ({comparison['threads'][1]})")
        valid_acc = largest["valid_accuracy"]
        images = round(valid_acc * comparison["valid_images"])
        lines.append(
            f"  {name:<26}{verdict:<15}{largest['valid_loss']:>18.3g}"
            f"{valid_acc:>13.3g} ({images} img){largest['test_loss']:>13.3g}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=None,
                        help="data root with MNIST/raw (default: $OPTSTUDY_DATA, "
                        "then ./data)")
    parser.add_argument("--threads", type=int, nargs=2, default=[1, 2],
                        metavar=("A", "B"),
                        help="the two thread counts to compare; B is also run "
                        "twice (default: 1 2)")
    parser.add_argument("--output", default=str(BENCHMARKS / "results" /
                                                "threads.json"),
                        help="JSON file to write (default: "
                        "benchmarks/results/threads.json)")
    arguments = parser.parse_args(argv)

    use_this_checkout()
    from optstudy.data import resolve_data_root

    data_dir = resolve_data_root(arguments.data_dir)
    first_count, second_count = arguments.threads
    with tempfile.TemporaryDirectory(prefix="optstudy-threads-") as temp:
        folder = Path(temp)
        runs = [
            run_once(first_count, data_dir, folder, "A"),
            run_once(second_count, data_dir, folder, "B"),
            run_once(second_count, data_dir, folder, "B2"),
        ]
    result = {
        "machine": describe_machine(),
        "workload": WORKLOAD.to_dict(),
        "runs": runs,
        "comparisons": [compare(runs[0], runs[1]), compare(runs[1], runs[2])],
    }
    print(format_report(result))
    output = Path(arguments.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1))
    log.info("wrote %s", output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
