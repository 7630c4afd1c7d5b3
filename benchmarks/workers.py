"""Wall time of one study with 1 and with 2 Dask workers, on the same runs.

    python benchmarks/workers.py --data-dir ~/data [--profile smoke]

Each worker count runs the whole profile into a fresh store, through the
real runner (scripts/run_study.py) and its local Dask cluster, and the two
stores are checked to hold the same runs with the same results. Writes
benchmarks/results/workers.json.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe_machine
from workloads import REPO_ROOT


def run_profile(profile: str, jobs: int, folder: Path, data_dir: str | None) -> float:
    """Run the profile with ``jobs`` workers into ``folder``; return wall seconds."""
    command = [
        sys.executable, str(REPO_ROOT / "scripts" / "run_study.py"),
        "--profile", profile, "--jobs", str(jobs),
        "--store", str(folder / "results.sqlite"), "--runs-dir", str(folder / "runs"),
    ]
    if data_dir:
        command += ["--data-dir", data_dir]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"run_study.py failed with {jobs} workers:\n"
                           f"{completed.stderr[-3000:]}")
    return seconds


def stored_results(folder: Path) -> dict:
    connection = sqlite3.connect(folder / "results.sqlite")
    rows = connection.execute(
        "SELECT run_id, status, final_valid_loss, seconds_wall FROM runs"
    ).fetchall()
    connection.close()
    return {row[0]: row[1:] for row in rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="smoke", help="study profile to run")
    parser.add_argument("--data-dir", default=None,
                        help="data root (default: $OPTSTUDY_DATA, else ./data)")
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results"
                                                / "workers.json"))
    arguments = parser.parse_args(argv)

    measurements = {}
    with tempfile.TemporaryDirectory() as scratch:
        for jobs in (1, 2):
            folder = Path(scratch) / f"jobs{jobs}"
            seconds = run_profile(arguments.profile, jobs, folder, arguments.data_dir)
            results = stored_results(folder)
            measurements[jobs] = {
                "wall_seconds": seconds,
                "runs": len(results),
                "run_seconds_sum": sum(row[2] or 0.0 for row in results.values()),
                "results": results,
            }
            print(f"{jobs} worker(s): {len(results)} runs in {seconds:.1f} s")

    one, two = measurements[1], measurements[2]
    same_runs = set(one["results"]) == set(two["results"])
    # Threads per run differ (cores // workers), so losses may differ in the
    # last digits; the statuses must agree.
    same_status = same_runs and all(
        one["results"][key][0] == two["results"][key][0] for key in one["results"]
    )
    speedup = one["wall_seconds"] / two["wall_seconds"]
    print(f"speed-up with 2 workers: {speedup:.2f}x "
          f"(same runs: {same_runs}, same statuses: {same_status})")

    record = {
        "benchmark": "workers",
        "profile": arguments.profile,
        "machine": describe_machine(),
        "workers": {
            str(jobs): {key: value for key, value in entry.items() if key != "results"}
            for jobs, entry in measurements.items()
        },
        "speedup_2_over_1": speedup,
        "same_runs": same_runs,
        "same_statuses": same_status,
    }
    output = Path(arguments.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=1, sort_keys=True))
    print(f"wrote {output}")
    return 0 if same_runs else 1


if __name__ == "__main__":
    sys.exit(main())
