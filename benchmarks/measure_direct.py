"""Measurement (2): call the project's training loop, ``optstudy.train.train``.

Run as a fresh process per measurement, so that the import time and the peak
resident memory (``VmHWM``) belong to this one run. Writes one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from machine import peak_rss_bytes
from workloads import (
    add_workload_arguments,
    check_package_location,
    use_this_checkout,
    workload_from_arguments,
)

launched_at = time.time()  # replaced by --launched-at when the caller passes it


def measure(arguments: argparse.Namespace) -> dict:
    started_at = arguments.launched_at or launched_at
    workload = workload_from_arguments(arguments)

    use_this_checkout()
    import_start = time.perf_counter()
    import optstudy
    from optstudy.train import train

    import_seconds = time.perf_counter() - import_start
    check_package_location(optstudy)

    config = workload.run_config()
    call_started_at = time.time()
    record = train(config, data_root=arguments.data_dir, device="cpu",
                   threads=arguments.threads)
    call_finished_at = time.time()

    # train() evaluates the validation and test splits (epoch 0) before its
    # first step, and history[0]["seconds"] is taken right after that.
    first_step_at = call_started_at + record["history"][0]["seconds"]
    result = {
        "approach": "direct",
        "status": record["status"],
        "optstudy_path": str(Path(optstudy.__file__).parent),
        "threads": record["environment"]["threads"],
        "import_seconds": import_seconds,
        "launch_to_call_seconds": call_started_at - started_at,
        "call_seconds": call_finished_at - call_started_at,
        "launch_to_first_step_seconds": first_step_at - started_at,
        "load_seconds": record["seconds_load"],
        "train_seconds": record["seconds_train"],
        "eval_seconds": record["seconds_eval"],
        "steps": record["steps"],
        "trained_images": record["train_images"] * len(record["history"][1:]),
        "final_train_loss": record["final_train_loss"],
        "final_valid_accuracy": record["final_valid_accuracy"],
        "peak_rss_bytes": peak_rss_bytes(),
    }
    if arguments.keep_record:
        result["record"] = record
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_workload_arguments(parser)
    parser.add_argument("--keep-record", action="store_true",
                        help="include train()'s whole result record in the output")
    arguments = parser.parse_args(argv)
    result = measure(arguments)
    Path(arguments.output).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
