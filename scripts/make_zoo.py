#!/usr/bin/env python
"""Write the zoo's study file from a conformance table.

    python scripts/conformance.py --all          # results/conformance/conformance.json
    python scripts/make_zoo.py                   # writes zoo.yml
    python scripts/run_study.py --study zoo.yml --profile zoo

Every optimizer that passed the conformance check becomes one entry of
``zoo.yml``, at its library defaults. A class without a default learning rate
gets the one the conformance check used (1e-3); learning-rate-free classes get
their multiplier of 1. Optimizers that failed or could not run are left out;
the zoo chapter lists them with the reason from the conformance table.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from optstudy.adapters import infer_needs  # noqa: E402
from optstudy.conformance import PASS, default_hyperparameters  # noqa: E402
from optstudy.optimizers import resolve_class  # noqa: E402

DEFAULT_TABLE = REPO_ROOT / "results" / "conformance" / "conformance.json"
DEFAULT_OUTPUT = REPO_ROOT / "zoo.yml"
DEFAULT_LEFT_OUT = REPO_ROOT / "results" / "zoo" / "left_out.json"

# One cheap problem, defaults plus a one-decade sweep either side, one seed:
# about 3 runs per optimizer.
ZOO_PROFILE = {
    "description": "every optimizer that passes conformance, on a small MNIST "
                   "subset, at its defaults and one decade either side",
    "datasets": ["mnist"],
    "optimizers": "all",
    "epochs": 1,
    "batch_size": 64,
    "train_size": 1000,
    "valid_size": 500,
    "test_size": 1000,
    "lr_grid": {"points": 3, "step_decades": 1},
    "max_extensions": 0,
    "evals_per_epoch": 2,
    "seeds": [0],
}
ZOO_TARGET = {"mnist": 0.80}


def entry_name(reference: str) -> str:
    """Return the zoo key of a class reference: torch_adam, po_adabelief."""
    namespace, _, name = reference.rpartition(".")
    prefix = "torch" if namespace == "torch.optim" else "po"
    return f"{prefix}_{name.lower()}"


def entry(row: dict) -> dict:
    reference = row["reference"]
    resolved = resolve_class(reference)
    namespace, _, name = reference.rpartition(".")
    label = f"{resolved.cls.__name__} (torch)" if namespace == "torch.optim" \
        else resolved.cls.__name__
    values = {"class": reference, "label": label}
    hyperparameters = default_hyperparameters(resolved.cls,
                                              infer_needs(resolved.cls).lr_free)
    if hyperparameters:
        values["hyperparameters"] = hyperparameters
    return values


def left_out_reason(row: dict) -> str | None:
    """Return why a conformance row cannot enter the zoo, or None if it can."""
    if row["status"] != PASS:
        check = f" ({row['check']})" if row.get("check") else ""
        return f"conformance: {row['status']}{check}: {row.get('reason') or ''}".strip()
    cls = resolve_class(row["reference"]).cls
    if "lr" not in inspect.signature(cls.__init__).parameters:
        return ("its constructor takes no lr argument, and the zoo sweeps the "
                "learning rate")
    return None


def build_zoo(table: dict) -> tuple[dict, list[dict]]:
    """Return the zoo's study file and the optimizers left out, with reasons."""
    optimizers, left_out = {}, []
    for row in table["results"]:
        reason = left_out_reason(row)
        if reason:
            left_out.append({"reference": row["reference"], "reason": reason})
        else:
            optimizers[entry_name(row["reference"])] = entry(row)
    return {
        "title": "The optimizer zoo",
        "optimizers": optimizers,
        "targets": ZOO_TARGET,
        "profiles": {"zoo": ZOO_PROFILE},
    }, left_out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=DEFAULT_TABLE,
                        help="conformance.json written by scripts/conformance.py")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="study file to write (default: zoo.yml)")
    parser.add_argument("--left-out", type=Path, default=DEFAULT_LEFT_OUT,
                        help="where to list the optimizers left out, with reasons")
    arguments = parser.parse_args(argv)
    if not arguments.table.is_file():
        parser.error(f"no conformance table at {arguments.table}; run "
                     "scripts/conformance.py --all first")
    zoo, left_out = build_zoo(json.loads(arguments.table.read_text()))
    header = ("# Written by scripts/make_zoo.py from the conformance table; "
              "rerun it rather than editing by hand.\n")
    arguments.output.write_text(header + yaml.safe_dump(zoo, sort_keys=False))
    arguments.left_out.parent.mkdir(parents=True, exist_ok=True)
    arguments.left_out.write_text(json.dumps(left_out, indent=1) + "\n")
    print(f"{len(zoo['optimizers'])} optimizers written to {arguments.output}; "
          f"{len(left_out)} left out, listed in {arguments.left_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
