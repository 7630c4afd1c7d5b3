"""The study file: optimizers as data, profiles, and the expansion into runs.

A study is tuned per (dataset, optimizer) cell in phases that depend on
earlier results, so the plan is recomputed from the results store each time:

1. ``grid``: the learning-rate grid at the first seed;
2. ``extension``: when the best grid point (by final validation accuracy) is
   at an edge of the grid, one more point beyond that edge, repeated up to
   ``max_extensions`` times, so no optimizer is judged at a boundary;
3. ``seed``: the best learning rate rerun with the remaining seeds.

Beside this *tuned* track runs the *out-of-the-box* track (phase
``out_of_box``): every seed at the library's default learning rate, as a
practitioner would first try the optimizer. It depends on no result, so it
runs alongside the grid. A run that both tracks need (the default learning
rate is usually a grid point) has one run id and runs once; it keeps the phase
of the track that planned it first, so the analysis separates the tracks
by learning rate and seed, not by phase.

Because the plan is a pure function of the study and the stored results,
an interrupted study resumes with exactly the missing runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .adapters import ADAPTER_KEYS, check_adapter_spec, infer_needs
from .data import DATASETS
from .optimizers import class_default_lr, resolve_class
from .train import RunConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STUDY = REPO_ROOT / "study.yml"

# DeepOBS tunes the learning rate on 36 log-spaced points from 1e-5 to 1e2.
DEEPOBS_GRID = [10 ** (-5 + 7 * i / 35) for i in range(36)]


class StudyError(ValueError):
    """Raised for an invalid study file; the message names the entry and key."""


class _Loader(yaml.SafeLoader):
    """A YAML loader that reads 1e-3 as a float.

    PyYAML follows YAML 1.1, where a float needs a dot (1.0e-3), so it reads
    1e-3 as the string '1e-3'. This resolver accepts both spellings, plus
    .inf and .nan, which validation then rejects where they make no sense.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


@dataclass
class OptimizerEntry:
    """One optimizer of the study: a class, fixed hyperparameters, a grid centre."""

    name: str
    label: str
    reference: str
    hyperparameters: dict
    needs_closure: bool = False
    lr_centre: float | None = None  # grid centre; the library default when unset
    lr_source: str = "library default"
    # The out-of-the-box learning rate: the library default, else the centre.
    lr_default: float | None = None
    adapter: dict = field(default_factory=dict)  # needs, partner, base, wrapper

    def lr_grid(self, points: int, step_decades: float) -> list[float]:
        """Return ``points`` learning rates spaced ``step_decades`` apart around the centre."""
        half = (points - 1) / 2
        return [
            _round_lr(self.lr_centre * 10 ** ((i - half) * step_decades))
            for i in range(points)
        ]


def _round_lr(lr: float) -> float:
    # Six significant digits keep run ids stable across float noise.
    return float(f"{lr:.6g}")


@dataclass
class Profile:
    """A budget and protocol: which datasets, how long, which grid and seeds."""

    name: str
    datasets: list[str]
    optimizers: list[str]
    epochs: int
    batch_size: int
    train_size: int | None
    valid_size: int
    test_size: int | None
    seeds: list[int]
    lr_points: int = 3
    lr_step_decades: float = 1.0
    lr_values: list[float] | None = None  # a fixed grid for every optimizer
    max_extensions: int = 2
    checkpoint: bool = False  # save every epoch, so preempted runs continue
    precision: str = "fp32"  # bf16 makes a separate track: its numerics differ
    evals_per_epoch: int = 1  # validation checks per epoch, for time-to-target
    out_of_box: bool = True  # also run every seed at the library default lr
    description: str = ""


@dataclass
class Study:
    """The parsed study file."""

    title: str
    optimizers: dict[str, OptimizerEntry]
    profiles: dict[str, Profile]
    path: Path | None = None
    targets: dict[str, float] = field(default_factory=dict)

    def profile(self, name: str) -> Profile:
        if name not in self.profiles:
            raise StudyError(
                f"unknown profile {name!r}: the study defines "
                f"{', '.join(self.profiles)}"
            )
        return self.profiles[name]

    def grid(self, profile: Profile, entry: OptimizerEntry) -> list[float]:
        if profile.lr_values:
            return [_round_lr(v) for v in profile.lr_values]
        return entry.lr_grid(profile.lr_points, profile.lr_step_decades)


def _check_number(where: str, key: str, value, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise StudyError(f"{where}: {key}={value!r} is not a number")
    if not math.isfinite(value):
        raise StudyError(f"{where}: {key}={value!r} must be finite")
    if positive and value <= 0:
        raise StudyError(f"{where}: {key}={value!r} must be greater than 0")
    return value


def _check_hyperparameters(where: str, values: dict) -> dict:
    if not isinstance(values, dict):
        raise StudyError(f"{where}: hyperparameters must be a mapping, got {values!r}")
    checked = {}
    for key, value in values.items():
        if isinstance(value, (list, tuple)):
            checked[key] = [
                _check_number(where, f"{key}[{i}]", v, positive=False)
                for i, v in enumerate(value)
            ]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            positive = key == "lr"
            checked[key] = _check_number(where, key, value, positive)
            if key != "lr" and value < 0:
                raise StudyError(f"{where}: {key}={value!r} must not be negative")
        else:
            checked[key] = value
    return checked


def _parse_optimizer(name: str, raw: dict) -> OptimizerEntry:
    where = f"optimizer {name!r}"
    if not isinstance(raw, dict) or "class" not in raw:
        raise StudyError(f"{where}: needs a 'class' key such as torch.optim.Adam")
    unknown = set(raw) - {"class", "label", "hyperparameters", "needs_closure",
                          *ADAPTER_KEYS}
    if unknown:
        raise StudyError(f"{where}: unknown keys {sorted(unknown)}")
    hyperparameters = _check_hyperparameters(where, raw.get("hyperparameters") or {})
    resolved = resolve_class(raw["class"])
    adapter = {key: raw[key] for key in ADAPTER_KEYS if raw.get(key)}
    try:
        check_adapter_spec(adapter)
    except (ValueError, LookupError) as error:
        raise StudyError(f"{where}: {error}") from error

    lr_centre = hyperparameters.pop("lr", None)
    library_lr = class_default_lr(resolved.cls)
    source = "study file"
    if lr_centre is None:
        lr_centre = class_default_lr(resolved.cls)
        source = "library default"
    if lr_centre is None and infer_needs(resolved.cls).lr_free:
        lr_centre = 1.0  # a multiplier on the step size the method estimates
        source = "learning-rate-free multiplier"
    if lr_centre is None:
        raise StudyError(
            f"{where}: {resolved.reference} has no default lr; set "
            "hyperparameters.lr in the study file"
        )
    return OptimizerEntry(
        name=name,
        label=str(raw.get("label", name)),
        reference=resolved.reference,
        hyperparameters=hyperparameters,
        needs_closure=bool(raw.get("needs_closure", False)),
        lr_centre=float(lr_centre),
        lr_source=source,
        lr_default=_round_lr(float(library_lr if library_lr is not None
                                   else lr_centre)),
        adapter=adapter,
    )


# Profile keys without a default: each one changes what a run computes.
REQUIRED_PROFILE_KEYS = ("datasets", "seeds", "epochs", "batch_size", "valid_size")


def _parse_profile(name: str, raw: dict, optimizers: dict) -> Profile:
    where = f"profile {name!r}"
    raw = dict(raw)
    missing = [key for key in REQUIRED_PROFILE_KEYS if key not in raw]
    if missing:
        raise StudyError(
            f"{where}: missing {', '.join(repr(key) for key in missing)}; every "
            f"profile sets {', '.join(REQUIRED_PROFILE_KEYS)} (see the profiles "
            "of study.yml)"
        )
    datasets = raw.pop("datasets")
    for dataset in datasets:
        if dataset not in DATASETS:
            raise StudyError(
                f"{where}: unknown dataset {dataset!r}; expected one of "
                f"{', '.join(DATASETS)}"
            )
    selected = raw.pop("optimizers", "all")
    selected = list(optimizers) if selected == "all" else list(selected)
    for optimizer in selected:
        if optimizer not in optimizers:
            raise StudyError(
                f"{where}: optimizer {optimizer!r} is not defined under 'optimizers'"
            )
    lr = raw.pop("lr_grid", {}) or {}
    values = lr.get("values")
    if values == "deepobs":
        values = DEEPOBS_GRID
    elif values is not None:
        values = [_check_number(where, "lr_grid.values", v, True) for v in values]
    seeds = raw.pop("seeds")
    if isinstance(seeds, int):
        seeds = list(range(seeds))
    profile = Profile(
        name=name,
        datasets=list(datasets),
        optimizers=selected,
        seeds=[int(s) for s in seeds],
        lr_points=int(lr.get("points", 3)),
        lr_step_decades=float(lr.get("step_decades", 1.0)),
        lr_values=values,
        **{key: raw[key] for key in ("epochs", "batch_size", "valid_size")},
        train_size=raw.get("train_size"),
        test_size=raw.get("test_size"),
        max_extensions=int(raw.get("max_extensions", 2)),
        checkpoint=bool(raw.get("checkpoint", False)),
        precision=str(raw.get("precision", "fp32")),
        evals_per_epoch=raw.get("evals_per_epoch", 1),
        out_of_box=bool(raw.get("out_of_box", True)),
        description=str(raw.get("description", "")),
    )
    for key in ("epochs", "batch_size", "valid_size", "lr_points", "evals_per_epoch"):
        value = getattr(profile, key)
        if not isinstance(value, int) or value < 1:
            raise StudyError(f"{where}: {key}={value!r} must be a positive integer")
    if not profile.seeds:
        raise StudyError(f"{where}: seeds must list at least one seed")
    if profile.precision not in ("fp32", "bf16"):
        raise StudyError(
            f"{where}: precision={profile.precision!r} must be fp32 or bf16"
        )
    return profile


def _warn_about_far_grids(profile: Profile, optimizers: dict) -> None:
    """Warn when a shared grid misses an optimizer's conventional learning rate.

    One grid for every optimizer suits none of them equally: Prodigy's lr is a
    multiplier near 1, Lion's is several times below AdamW's. The convention
    is the entry's grid centre (its study-file lr or the library default).
    """
    if not profile.lr_values:
        return
    low, high = min(profile.lr_values), max(profile.lr_values)
    for name in profile.optimizers:
        centre = optimizers[name].lr_centre
        if not low <= centre <= high:
            warnings.warn(
                f"profile {profile.name!r}: the learning-rate grid [{low:g}, {high:g}] "
                f"does not contain {centre:g}, the conventional lr of optimizer "
                f"{name!r}; its results will say more about the grid than the "
                "optimizer. Widen lr_grid.values or use points/step_decades, which "
                "centre each optimizer's grid on its own lr.",
                StudyWarning,
                stacklevel=3,
            )


class StudyWarning(UserWarning):
    """A study file that is valid but probably not what its author meant."""


def load_study(path: str | Path | None = None) -> Study:
    """Parse and validate a study file; every error names the entry and key."""
    path = Path(path or DEFAULT_STUDY).resolve()
    if not path.is_file():
        raise StudyError(f"study file not found: {path}")
    raw = load_yaml(path.read_text())
    if not isinstance(raw, dict) or "optimizers" not in raw or "profiles" not in raw:
        raise StudyError(f"{path}: needs top-level 'optimizers' and 'profiles' keys")

    optimizers = {
        name: _parse_optimizer(name, entry) for name, entry in raw["optimizers"].items()
    }
    profiles = {
        name: _parse_profile(name, entry, optimizers)
        for name, entry in raw["profiles"].items()
    }
    for profile in profiles.values():
        _warn_about_far_grids(profile, optimizers)
    targets = {
        key: _check_number("targets", key, value, True)
        for key, value in (raw.get("targets") or {}).items()
    }
    return Study(
        title=str(raw.get("title", "")),
        optimizers=optimizers,
        profiles=profiles,
        path=path,
        targets=targets,
    )


# --- Expansion into runs --------------------------------------------------


@dataclass
class PlannedRun:
    """A run with its place in the protocol."""

    run_id: str
    phase: str  # grid, extension or seed
    config: RunConfig

    @property
    def lr(self) -> float:
        return self.config.hyperparameters["lr"]


def run_id(config: RunConfig) -> str:
    """Hash the resolved parameters: equal configs give equal ids."""
    canonical = json.dumps(config.identity(), sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def make_run(profile: Profile, entry: OptimizerEntry, dataset: str, lr: float,
             seed: int, phase: str) -> PlannedRun:
    config = RunConfig(
        dataset=dataset,
        optimizer=entry.name,
        optimizer_class=entry.reference,
        hyperparameters={**entry.hyperparameters, "lr": _round_lr(lr)},
        seed=seed,
        epochs=profile.epochs,
        batch_size=profile.batch_size,
        train_size=profile.train_size,
        valid_size=profile.valid_size,
        test_size=profile.test_size,
        needs_closure=entry.needs_closure,
        precision=profile.precision,
        adapter=entry.adapter,
        evals_per_epoch=profile.evals_per_epoch,
    )
    return PlannedRun(run_id(config), phase, config)


def out_of_box_runs(profile: Profile, entry: OptimizerEntry,
                    dataset: str) -> list[PlannedRun]:
    """Return the out-of-the-box track of one cell: every seed at the default lr."""
    if not profile.out_of_box:
        return []
    return [
        make_run(profile, entry, dataset, entry.lr_default, seed, "out_of_box")
        for seed in profile.seeds
    ]


def score(result: dict | None) -> tuple[float, float]:
    """Return the tuning score of a finished run: final validation accuracy.

    Ties (for example every grid point at chance level) are broken by the
    lower final validation loss. Diverged and failed runs score minus
    infinity. The test set is never used.
    """
    if not result or result.get("status") != "completed":
        return (-math.inf, -math.inf)
    accuracy = result.get("final_valid_accuracy")
    loss = result.get("final_valid_loss")
    return (
        -math.inf if accuracy is None else accuracy,
        -math.inf if loss is None else -loss,
    )


def plan_cell(study: Study, profile: Profile, entry: OptimizerEntry, dataset: str,
              results: dict[str, dict]) -> tuple[list[PlannedRun], bool]:
    """Return the runs one cell needs now and whether the cell's plan is final.

    ``results`` maps run ids to stored results (at least status and
    final_valid_accuracy). Runs of later phases appear only once the runs
    they depend on have finished. Each run id appears once: a run both
    tracks need is listed with the tuned track's phase.
    """
    tuned, final = plan_tuned(study, profile, entry, dataset, results)
    seen = {run.run_id for run in tuned}
    extra = [run for run in out_of_box_runs(profile, entry, dataset)
             if run.run_id not in seen]
    return tuned + extra, final


def plan_tuned(study: Study, profile: Profile, entry: OptimizerEntry, dataset: str,
               results: dict[str, dict]) -> tuple[list[PlannedRun], bool]:
    """Return the tuned track's runs of one cell now, and whether they are final."""
    seed0 = profile.seeds[0]
    grid = study.grid(profile, entry)
    runs = [make_run(profile, entry, dataset, lr, seed0, "grid") for lr in grid]
    if any(run.run_id not in results for run in runs):
        return runs, False

    factor = 10 ** profile.lr_step_decades
    for _ in range(profile.max_extensions if not profile.lr_values else 0):
        best = max(runs, key=lambda run: (score(results[run.run_id]), -run.lr))
        lrs = sorted(run.lr for run in runs)
        if score(results[best.run_id])[0] == -math.inf:
            # Nothing finished. If every point diverged, the grid is too high,
            # so try below it. Failures and crashes tell nothing about lr.
            if any(results[run.run_id].get("status") != "diverged" for run in runs):
                break
            new_lr = lrs[0] / factor
        elif len(lrs) < 2 or lrs[0] < best.lr < lrs[-1]:
            break
        else:
            new_lr = best.lr * factor if best.lr == lrs[-1] else best.lr / factor
        extension = make_run(profile, entry, dataset, new_lr, seed0, "extension")
        runs.append(extension)
        if extension.run_id not in results:
            return runs, False

    best = max(runs, key=lambda run: (score(results[run.run_id]), -run.lr))
    if score(results[best.run_id])[0] == -math.inf:
        # Every learning rate diverged, failed or crashed: there is no tuned
        # setting to rerun, and the tables show the cell as having none.
        return runs, True
    seeds = [
        make_run(profile, entry, dataset, best.lr, seed, "seed")
        for seed in profile.seeds[1:]
    ]
    return runs + seeds, True


def plan(study: Study, profile: Profile, results: dict[str, dict]):
    """Return every run the profile needs now, and whether the plan is final."""
    runs = []
    final = True
    for dataset in profile.datasets:
        for name in profile.optimizers:
            cell_runs, cell_final = plan_cell(
                study, profile, study.optimizers[name], dataset, results
            )
            runs.extend(cell_runs)
            final = final and cell_final
    return runs, final


def expected_run_count(study: Study, profile: Profile) -> int:
    """Return the number of runs without extensions: an estimate for progress bars."""
    per_cell = 0
    for name in profile.optimizers:
        entry = study.optimizers[name]
        grid = study.grid(profile, entry)
        per_cell += len(grid) + len(profile.seeds) - 1
        if profile.out_of_box:
            # Seeds beyond the first coincide with the tuned ones only when
            # tuning picks the default; count them as extra.
            per_cell += len(profile.seeds) - 1 + (entry.lr_default not in grid)
    return per_cell * len(profile.datasets)
