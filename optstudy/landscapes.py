"""Two-dimensional test functions, and the paths that optimizers take on them.

Each landscape is a loss of two parameters with known local minima. An
optimizer of the study (any entry of ``study.yml``) is run on a single
two-element parameter from a fixed start through the same adapter contract
as the training loop (:mod:`optstudy.adapters`), and every point it visits is
recorded. The end point is assigned to the nearest known minimum within a
tolerance, and the first step at which the path comes within that tolerance
of the minimum is reported.

These pictures build intuition about how an update rule moves. They are no
evidence about how the rule behaves on a network with millions of parameters.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .adapters import UnsupportedOptimizerError, build_adapted
from .optimizers import resolve_class
from .study import OptimizerEntry, load_study

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "results" / "landscapes"
# Learning rates tried per optimizer: its study-file grid centre times these,
# half a decade apart, because the scale that suits a network's weights is
# not the scale of these functions.
LR_FACTORS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
# A path whose parameters leave this radius, or whose loss is not finite, has diverged.
DIVERGENCE_RADIUS = 1e3


def _backend(value):
    """Return the array module (torch or numpy) that ``value`` belongs to."""
    return torch if isinstance(value, torch.Tensor) else np


def himmelblau(x, y):
    """Himmelblau's function: four minima of equal value 0."""
    return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2


def rosenbrock(x, y):
    """Rosenbrock's function: one minimum at (1, 1) at the end of a curved valley."""
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def rastrigin(x, y):
    """Rastrigin's function: a bowl covered in ripples, with a local minimum near
    every integer point and the global one at the origin."""
    xp = _backend(x)
    return 20 + x**2 - 10 * xp.cos(2 * math.pi * x) + y**2 - 10 * xp.cos(2 * math.pi * y)


# Gaussian wells of the multi-minimum landscape: (centre x, centre y, depth, width).
WELLS = (
    (2.0, 1.5, 2.0, 1.0),    # the global minimum: deepest and widest
    (-1.5, -1.0, 1.2, 0.7),
    (1.5, -2.0, 1.0, 0.6),
)
# A gentle bowl keeps the far field bounded below and pointing back to the wells.
WELLS_BOWL = 0.02


def gaussian_wells(x, y):
    """A sum of Gaussian wells of different depth on a shallow quadratic bowl."""
    xp = _backend(x)
    value = WELLS_BOWL * (x**2 + y**2)
    for centre_x, centre_y, depth, width in WELLS:
        distance = (x - centre_x) ** 2 + (y - centre_y) ** 2
        value = value - depth * xp.exp(-distance / (2 * width**2))
    return value


@dataclass(frozen=True)
class Minimum:
    """A known local minimum of a landscape."""

    name: str
    point: tuple[float, float]
    value: float


@dataclass(frozen=True)
class Landscape:
    """A two-parameter loss with its known minima, a start point and a plot extent."""

    key: str
    label: str
    function: Callable
    start: tuple[float, float]
    extent: tuple[float, float, float, float]  # x min, x max, y min, y max
    steps: int
    tolerance: float  # distance in parameter space that counts as "at a minimum"
    minimum_guesses: tuple[tuple[str, tuple[float, float]], ...]
    log_contours: bool = False
    _minima: list = field(default_factory=list, compare=False, repr=False)

    @property
    def minima(self) -> list[Minimum]:
        """Return the minima, located to float64 precision from the guesses, lowest first."""
        if not self._minima:
            found = [Minimum(name, *refine_minimum(self.function, guess))
                     for name, guess in self.minimum_guesses]
            self._minima.extend(sorted(found, key=lambda minimum: minimum.value))
        return list(self._minima)

    def value(self, point) -> float:
        return float(self.function(float(point[0]), float(point[1])))


def refine_minimum(function, guess, steps: int = 200) -> tuple[tuple[float, float], float]:
    """Locate the minimum of ``function`` near ``guess`` with Newton steps (float64).

    Returns the point and the value there. The guesses must lie in the
    minimum's basin where the Hessian is positive definite.
    """
    point = torch.tensor(guess, dtype=torch.float64)

    def loss(vector):
        return function(vector[0], vector[1])

    for _ in range(steps):
        gradient = torch.autograd.functional.jacobian(loss, point)
        if float(gradient.norm()) < 1e-12:
            break
        hessian = torch.autograd.functional.hessian(loss, point)
        point = point - torch.linalg.solve(hessian, gradient)
    x, y = (float(v) for v in point)
    return (x, y), float(function(x, y))


def _rastrigin_guesses(radius: int = 4):
    return tuple(
        (f"({i}, {j})", (float(i), float(j)))
        for i in range(-radius, radius + 1) for j in range(-radius, radius + 1)
    )


LANDSCAPES = {
    "gaussian_wells": Landscape(
        key="gaussian_wells", label="Gaussian wells", function=gaussian_wells,
        start=(-0.2, -0.4), extent=(-4.0, 4.5, -4.0, 4.0), steps=300, tolerance=0.05,
        minimum_guesses=(("A", (2.0, 1.5)), ("B", (-1.5, -1.0)), ("C", (1.5, -2.0))),
    ),
    "himmelblau": Landscape(
        key="himmelblau", label="Himmelblau", function=himmelblau,
        start=(-0.3, -0.9), extent=(-5.0, 5.0, -5.0, 5.0), steps=300, tolerance=0.05,
        minimum_guesses=(("A", (3.0, 2.0)), ("B", (-2.8, 3.1)), ("C", (-3.8, -3.3)),
                         ("D", (3.6, -1.8))),
        log_contours=True,
    ),
    "rosenbrock": Landscape(
        key="rosenbrock", label="Rosenbrock", function=rosenbrock,
        start=(-1.2, 1.0), extent=(-2.0, 2.0, -1.0, 3.0), steps=1000, tolerance=0.05,
        minimum_guesses=(("A", (1.0, 1.0)),), log_contours=True,
    ),
    "rastrigin": Landscape(
        key="rastrigin", label="Rastrigin", function=rastrigin,
        start=(2.3, 1.7), extent=(-3.0, 3.5, -3.0, 3.0), steps=300, tolerance=0.05,
        minimum_guesses=_rastrigin_guesses(),
    ),
}


def get_landscape(key: str) -> Landscape:
    if key not in LANDSCAPES:
        raise KeyError(f"unknown landscape {key!r}: expected one of {', '.join(LANDSCAPES)}")
    return LANDSCAPES[key]


def classify_point(landscape: Landscape, point, tolerance: float | None = None) -> str | None:
    """Return the name of the known minimum within ``tolerance`` of ``point``, else None.

    When several are within reach (a tolerance wider than half their spacing),
    the nearest wins.
    """
    tolerance = landscape.tolerance if tolerance is None else tolerance
    best, best_distance = None, math.inf
    for minimum in landscape.minima:
        distance = math.dist(point, minimum.point)
        if distance <= tolerance and distance < best_distance:
            best, best_distance = minimum.name, distance
    return best


def first_arrival(landscape: Landscape, path, name: str | None,
                  tolerance: float | None = None) -> int | None:
    """Return the first step at which ``path`` is within ``tolerance`` of minimum ``name``.

    Step 0 is the start point. Returns None when ``name`` is None or never reached.
    """
    if name is None:
        return None
    tolerance = landscape.tolerance if tolerance is None else tolerance
    target = next(m.point for m in landscape.minima if m.name == name)
    for step, point in enumerate(path):
        if math.dist(point, target) <= tolerance:
            return step
    return None


class _Point(torch.nn.Module):
    """A model whose only parameter is the two-element point being optimized."""

    def __init__(self, start):
        super().__init__()
        self.point = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))


def run_path(landscape: Landscape, entry: OptimizerEntry, lr: float,
             steps: int | None = None) -> dict:
    """Run one optimizer entry at learning rate ``lr``; return the path and its outcome.

    ``status`` is "completed", "diverged" (a non-finite loss or a point beyond
    DIVERGENCE_RADIUS) or "unsupported" (the adapter contract rejects the
    optimizer on a single vector parameter, with the reason in ``error``).
    """
    steps = landscape.steps if steps is None else steps
    model = _Point(landscape.start)
    hyperparameters = {**entry.hyperparameters, "lr": lr}
    try:
        adapted = build_adapted(resolve_class(entry.reference), model, hyperparameters,
                                spec=entry.adapter, needs_closure=entry.needs_closure,
                                problem={"num_data": 1, "num_iterations": steps})
    except UnsupportedOptimizerError as error:
        return {"lr": lr, "status": "unsupported", "error": str(error), "path": [],
                "values": []}

    def closure():
        adapted.optimizer.zero_grad()
        loss = landscape.function(model.point[0], model.point[1])
        adapted.backward(loss)
        return loss

    path = [list(landscape.start)]
    values = [landscape.value(landscape.start)]
    status = "completed"
    adapted.train()
    for _ in range(steps):
        adapted.step(closure)
        point = [float(v) for v in model.point.detach()]
        value = landscape.value(point)
        if not (math.isfinite(value) and math.hypot(*point) < DIVERGENCE_RADIUS):
            status = "diverged"
            break
        path.append(point)
        values.append(value)
    return {"lr": lr, "status": status, "error": None, "path": path, "values": values}


def summarise_path(landscape: Landscape, result: dict) -> dict:
    """Add the minimum the path ends in and its first arrival step to a ``run_path`` result."""
    ends_in = None
    if result["status"] == "completed":
        ends_in = classify_point(landscape, result["path"][-1])
    return {
        **result,
        "ends_in": ends_in,
        "steps_to_minimum": first_arrival(landscape, result["path"], ends_in),
        "final_value": result["values"][-1] if result["values"] else None,
    }


def _selection_key(summary: dict):
    """Order paths: ends at a known minimum, then fewest steps to reach it, then the
    lowest final value, then the lower learning rate."""
    steps = summary["steps_to_minimum"]
    value = summary["final_value"] if summary["status"] == "completed" else None
    return (summary["ends_in"] is None, steps if steps is not None else math.inf,
            value if value is not None else math.inf, summary["lr"])


def run_optimizer(landscape_key: str, optimizer: str, steps: int | None = None,
                  study_path: str | Path | None = None,
                  lr_factors=LR_FACTORS) -> dict:
    """Run one study optimizer on one landscape at several learning rates; return a record.

    The learning rates are the entry's grid centre times ``lr_factors``. The
    record keeps the summary of every rate and the full path of the chosen
    one: among the rates whose path ends at a known minimum, the one that
    reaches it in the fewest steps; when no path ends at a minimum, the
    lowest final loss. The lower rate breaks ties.
    """
    landscape = get_landscape(landscape_key)
    study = load_study(study_path)
    if optimizer not in study.optimizers:
        raise KeyError(f"unknown optimizer {optimizer!r}: the study file lists "
                       f"{', '.join(study.optimizers)}")
    entry = study.optimizers[optimizer]
    started = time.perf_counter()
    summaries = []
    for factor in lr_factors:
        lr = float(f"{entry.lr_centre * factor:.6g}")
        summaries.append(summarise_path(landscape, run_path(landscape, entry, lr, steps)))
    chosen = min(summaries, key=_selection_key)
    return {
        "landscape": landscape.key,
        "optimizer": optimizer,
        "optimizer_class": entry.reference,
        "label": entry.label,
        "start": list(landscape.start),
        "steps": landscape.steps if steps is None else steps,
        "tolerance": landscape.tolerance,
        "chosen": chosen,
        "tried": [{k: v for k, v in s.items() if k not in ("path", "values")}
                  for s in summaries],
        "seconds": time.perf_counter() - started,
    }


def write_record(record: dict, path: str | Path) -> Path:
    """Write a landscape record as strict JSON (a non-finite number raises ValueError)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, allow_nan=False, indent=1) + "\n")
    return path


def record_path(landscape_key: str, optimizer: str, folder: str | Path = RESULTS_DIR) -> Path:
    return Path(folder) / landscape_key / f"{optimizer}.json"


def load_records(folder: str | Path = RESULTS_DIR) -> dict[str, dict[str, dict]]:
    """Return the stored records as ``{landscape: {optimizer: record}}``."""
    records: dict[str, dict[str, dict]] = {}
    for path in sorted(Path(folder).glob("*/*.json")):
        record = json.loads(path.read_text())
        records.setdefault(record["landscape"], {})[record["optimizer"]] = record
    return records


def describe_record(record: dict) -> str:
    """Summarise a record in one line: optimizer, chosen rate and where its path ended."""
    chosen = record["chosen"]
    if chosen["status"] != "completed":
        outcome = chosen["status"]
    elif chosen["ends_in"] is None:
        outcome = f"no known minimum after {record['steps']} steps"
    else:
        outcome = (f"minimum {chosen['ends_in']}, first within {record['tolerance']:g} "
                   f"at step {chosen['steps_to_minimum']}")
    return (f"{record['label']} on {record['landscape']}, lr={chosen['lr']:g}: {outcome} "
            f"(final loss {chosen['final_value']:.4g})")


def summary_table(landscape_key: str, records: dict[str, dict], order=None):
    """Tabulate where each optimizer's chosen path ended, fewest steps to a minimum first.

    Ties keep ``order`` (default: the study file's order of optimizers). Returns a pandas DataFrame with one row per optimizer. Paths that ended at
    no known minimum, or diverged, come last, ordered by final loss.
    """
    import pandas as pd

    landscape = get_landscape(landscape_key)
    values = {minimum.name: minimum.value for minimum in landscape.minima}
    global_name = landscape.minima[0].name
    order = list(order or load_study().optimizers) + sorted(records)
    names = list(dict.fromkeys(name for name in order if name in records))
    rows = []
    for name in names:
        record = records[name]
        chosen = record["chosen"]
        ends_in = chosen["ends_in"]
        if ends_in is None:
            where = chosen["status"] if chosen["status"] != "completed" else "none"
        else:
            where = f"{ends_in} (global)" if ends_in == global_name else ends_in
        rows.append({
            "optimizer": record["label"],
            "lr": chosen["lr"],
            "ends in minimum": where,
            "loss at that minimum": values.get(ends_in),
            "steps to reach it": chosen["steps_to_minimum"],
            "final loss": chosen["final_value"],
        })
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame = frame.sort_values(["steps to reach it", "final loss"], na_position="last",
                              kind="stable")
    return frame.reset_index(drop=True)


def format_summary_table(frame):
    """Format a :func:`summary_table` frame as text for the book, keeping its numeric row order."""
    formatted = frame.copy()
    formatted["lr"] = [f"{value:g}" for value in frame["lr"]]
    formatted["loss at that minimum"] = [
        "" if value is None or value != value else f"{value:.3f}"
        for value in frame["loss at that minimum"]
    ]
    formatted["steps to reach it"] = [
        "" if value is None or value != value else f"{int(value)}"
        for value in frame["steps to reach it"]
    ]
    formatted["final loss"] = [
        "" if value is None or value != value else f"{value:.3g}"
        for value in frame["final loss"]
    ]
    return formatted


def outcome_sentence(landscape_key: str, records: dict[str, dict]) -> str:
    """Describe in words how many optimizers ended in each minimum and which was fastest."""
    landscape = get_landscape(landscape_key)
    global_name = landscape.minima[0].name
    counts: dict[str, int] = {}
    for record in records.values():
        ends_in = record["chosen"]["ends_in"]
        counts[ends_in or "none"] = counts.get(ends_in or "none", 0) + 1
    parts = []
    for name, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        if name == "none":
            parts.append(f"{count} at no known minimum")
        else:
            suffix = " (the global one)" if name == global_name else ""
            parts.append(f"{count} in minimum {name}{suffix}")
    arrived = [r for r in records.values() if r["chosen"]["steps_to_minimum"] is not None]
    sentence = f"Of {len(records)} optimizers, the paths ended " + ", ".join(parts) + "."
    if arrived:
        fastest = min(arrived, key=lambda r: r["chosen"]["steps_to_minimum"])
        sentence += (f" {fastest['label']} arrived first, at step "
                     f"{fastest['chosen']['steps_to_minimum']}.")
    return sentence


def chapter_values(records: dict[str, dict[str, dict]]) -> dict:
    """Return the glue values of the landscapes chapter: tolerance, steps and sentences.

    Raises FileNotFoundError naming the runner script when a landscape has no records.
    """
    missing = [key for key in LANDSCAPES if not records.get(key)]
    if missing:
        raise FileNotFoundError(
            f"no landscape records for {', '.join(missing)} under {RESULTS_DIR}: run "
            "python scripts/run_landscapes.py"
        )
    tolerances = {record["tolerance"] for runs in records.values() for record in runs.values()}
    values = {"tolerance": max(tolerances)}
    for key, runs in records.items():
        values[f"steps_{key}"] = max(record["steps"] for record in runs.values())
        values[f"sentence_{key}"] = outcome_sentence(key, runs)
    return values
