"""Run every optimizer of the study file on the two-dimensional test functions.

Each (function, optimizer) pair is one execution of notebooks/landscape.ipynb
under papermill, in its own kernel. The records go to
results/landscapes/<function>/<optimizer>.json, which the book's loss
landscapes chapter reads, and the executed notebooks to
runs/landscapes/<function>/<optimizer>.ipynb. A notebook that fails is
reported, the others still run, and the exit status is 1.

    python scripts/run_landscapes.py                      # everything, a few minutes
    python scripts/run_landscapes.py --landscapes himmelblau --optimizers sgd adam
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from optstudy import landscapes  # noqa: E402
from optstudy.study import load_study  # noqa: E402

NOTEBOOK = REPO_ROOT / "notebooks" / "landscape.ipynb"
log = logging.getLogger("run_landscapes")


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--landscapes", nargs="+", default=list(landscapes.LANDSCAPES),
                        choices=list(landscapes.LANDSCAPES), metavar="NAME",
                        help="test functions to run (default: all of "
                             f"{', '.join(landscapes.LANDSCAPES)})")
    parser.add_argument("--optimizers", nargs="+", default=None, metavar="NAME",
                        help="optimizer entries of the study file (default: all)")
    parser.add_argument("--steps", type=int, default=0,
                        help="optimizer steps per learning rate; 0 means each "
                             "function's default")
    parser.add_argument("--study", type=Path, default=None,
                        help="study file (default: study.yml at the repository root)")
    parser.add_argument("--results-dir", type=Path, default=landscapes.RESULTS_DIR,
                        help="folder of the JSON records (default: %(default)s)")
    parser.add_argument("--runs-dir", type=Path,
                        default=REPO_ROOT / "runs" / "landscapes",
                        help="folder of the executed notebooks (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=600,
                        help="seconds one notebook cell may run (default: %(default)s)")
    return parser.parse_args(argv)


def run_one(landscape: str, optimizer: str, arguments) -> dict:
    """Execute the notebook for one pair, add its wall time to the record, return it."""
    import papermill

    record_file = landscapes.record_path(landscape, optimizer, arguments.results_dir)
    output = arguments.runs_dir / landscape / f"{optimizer}.ipynb"
    output.parent.mkdir(parents=True, exist_ok=True)
    parameters = {
        "landscape": landscape,
        "optimizer": optimizer,
        "steps": arguments.steps,
        "study_path": str(arguments.study.resolve()) if arguments.study else "",
        "record_path": str(record_file.resolve()),
    }
    started = time.perf_counter()
    papermill.execute_notebook(
        str(NOTEBOOK), str(output), parameters=parameters, kernel_name="python3",
        cwd=str(output.parent), progress_bar=False, execution_timeout=arguments.timeout,
    )
    record = json.loads(record_file.read_text())
    record["seconds_wall"] = time.perf_counter() - started
    landscapes.write_record(record, record_file)
    return record


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    arguments = parse_arguments(argv)
    study = load_study(arguments.study)
    optimizers = arguments.optimizers or list(study.optimizers)
    unknown = [name for name in optimizers if name not in study.optimizers]
    if unknown:
        log.error("unknown optimizer entries %s: the study file lists %s",
                  ", ".join(unknown), ", ".join(study.optimizers))
        return 2

    failures = []
    for landscape in arguments.landscapes:
        for optimizer in optimizers:
            try:
                record = run_one(landscape, optimizer, arguments)
            except Exception as error:  # noqa: BLE001 - report it and run the rest
                log.error("%s on %s failed: %s", optimizer, landscape, error)
                failures.append((landscape, optimizer))
                continue
            log.info("%s (%.1f s)", landscapes.describe_record(record),
                     record["seconds_wall"])
    if failures:
        log.error("%d of %d notebooks failed", len(failures),
                  len(arguments.landscapes) * len(optimizers))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
