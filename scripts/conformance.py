#!/usr/bin/env python
"""Check optimizers against the adapter contract on a tiny model; write a table.

    python scripts/conformance.py --all
    python scripts/conformance.py torch.optim.LBFGS pytorch_optimizer.sophiah

Each optimizer runs in a forked process with a timeout. With --all, the table
goes to results/conformance/conformance.csv and .json, which the book and
scripts/make_zoo.py read. A check of named optimizers prints its results and
writes a table only to the folder --output sets, so it never replaces the
committed table with a partial one.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from optstudy.conformance import (  # noqa: E402
    COLUMNS, STEPS, every_reference, run_conformance, summarise,
)

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "results" / "conformance"


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("references", nargs="*",
                        help="class references such as torch.optim.Adam or "
                        "pytorch_optimizer.lion")
    parser.add_argument("--all", action="store_true",
                        help="check every torch.optim class and every pytorch-optimizer name")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds per optimizer before it is stopped (default 60)")
    parser.add_argument("--steps", type=int, default=STEPS,
                        help=f"optimizer steps before the checks (default {STEPS})")
    parser.add_argument("--output", type=Path, default=None,
                        help="folder for conformance.csv and conformance.json "
                        "(default with --all: results/conformance; otherwise no files)")
    arguments = parser.parse_args(argv)
    if not arguments.all and not arguments.references:
        parser.error("give class references or --all")
    if arguments.all and arguments.references:
        parser.error("give either class references or --all, not both")
    if arguments.output is None and arguments.all:
        arguments.output = DEFAULT_OUTPUT
    return arguments


def write_table(results, folder: Path, seconds: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "conformance.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for result in results:
            writer.writerow(result.row())
    payload = {
        "summary": summarise(results),
        "seconds": round(seconds, 1),
        "torch": torch.__version__,
        "results": [result.row() for result in results],
    }
    (folder / "conformance.json").write_text(json.dumps(payload, indent=1) + "\n")


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    references = every_reference() if arguments.all else arguments.references
    started = time.perf_counter()

    finished = []

    def progress(result):
        # Rewritten after every optimizer, so a stopped run leaves its table.
        finished.append(result)
        if arguments.output:
            write_table(finished, arguments.output, time.perf_counter() - started)
        detail = f" [{result.check}] {result.reason}" if result.check or result.reason else ""
        print(f"{result.reference}: {result.status} ({result.seconds:.1f} s){detail}",
              flush=True)

    results = run_conformance(references, arguments.timeout, arguments.steps, progress)
    seconds = time.perf_counter() - started
    print(json.dumps(summarise(results), indent=1))
    if arguments.output:
        write_table(results, arguments.output, seconds)
        print(f"{len(results)} optimizers in {seconds:.0f} s; table in {arguments.output}")
    else:
        print(f"{len(results)} optimizers in {seconds:.0f} s; no table written "
              "(--output FOLDER writes one)")
    return 0 if all(result.status != "fail" for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
