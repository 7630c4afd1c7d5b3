"""Read the results store into pandas and derive every number the book reports.

The book's pages only glue and draw what these functions return, so each
number in the article comes from one function here. Conventions:

- A (dataset, optimizer) pair is a *cell*. Its *tuning runs* are the ``grid``
  and ``extension`` phases at the first seed; its *tuned runs* are the
  ``seed`` phase runs plus the first-seed tuning run at the same learning rate.
- Tuning picks the learning rate by final validation accuracy
  (:func:`optstudy.study.score`); test accuracy is only reported.
- Accuracies are fractions in [0, 1]; the pages format them as percentages.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import store
from .optimizers import class_default_lr, resolve_class
from .study import Study, load_study, score
from .train import DIVERGENCE_FACTOR

DATASET_NAMES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}
TUNING_PHASES = ("grid", "extension")
SEED_PHASE = "seed"
BUDGET_KEYS = ("epochs", "batch_size", "train_size", "valid_size", "test_size")
FAILED_STATUSES = ("failed", "crashed")

# The CIFAR-10 copy whose README is marked LOSSY (see optstudy.data.is_lossy_cifar)
# was decoded from JPEG files written at this quality and chroma subsampling.
CIFAR_JPEG_QUALITY = 75
CIFAR_JPEG_CHROMA = "4:2:0"


# --- Opening the store ------------------------------------------------------


def store_path() -> Path:
    """Return the absolute store path: ``$OPTSTUDY_STORE``, else the default store.

    A relative ``$OPTSTUDY_STORE`` is taken from the repository root, not from
    the working directory, because the book's notebooks execute in ``book/``.
    """
    value = os.environ.get(store.STORE_ENV)
    if not value:
        return store.DEFAULT_STORE
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = store.REPO_ROOT / path
    return path.resolve()


def open_store(path: str | os.PathLike | None = None):
    """Open the store read-only; raise StoreNotFoundError when the file is missing."""
    return store.connect(path or store_path(), read_only=True)


# --- Loading runs into DataFrames ------------------------------------------


def load_runs(connection, profile: str | None = None) -> pd.DataFrame:
    """Return one row per stored run, with the budget and environment unpacked.

    A store normally holds one profile. When it holds several and ``profile``
    is None, a ValueError names them, because mixing budgets would make every
    table wrong.
    """
    frame = pd.read_sql_query(
        "SELECT * FROM runs ORDER BY finished_at, run_id", connection
    )
    profiles = sorted(frame["profile"].unique())
    if profile is not None:
        frame = frame[frame["profile"] == profile].reset_index(drop=True)
    elif len(profiles) > 1:
        raise ValueError(
            f"the store contains runs of several profiles ({', '.join(profiles)}); "
            "pass profile= or keep one store per profile, as scripts/run_study.py "
            "does by default"
        )
    return _unpack_json(frame)


def _unpack_json(frame: pd.DataFrame) -> pd.DataFrame:
    configs = [json.loads(text) for text in frame["config_json"]]
    records = [json.loads(text) if text else {} for text in frame["record_json"]]
    environments = [record.get("environment") or {} for record in records]

    # Object columns keep None (a train_size of None means "all images").
    for key in BUDGET_KEYS:
        frame[key] = pd.Series([c.get(key) for c in configs], index=frame.index,
                               dtype=object)
    frame["cifar_lossy"] = [bool(r.get("cifar_lossy")) for r in records]
    frame["model"] = pd.Series([r.get("model") for r in records], index=frame.index,
                               dtype=object)
    frame["model_parameters"] = pd.Series(
        [r.get("model_parameters") for r in records], index=frame.index, dtype=object
    )
    for key in ("device", "device_name", "threads", "python", "platform"):
        frame[key] = pd.Series([e.get(key) for e in environments], index=frame.index,
                               dtype=object)
    frame["versions"] = pd.Series([e.get("versions") or {} for e in environments],
                                  index=frame.index, dtype=object)
    frame["finished_at"] = pd.to_datetime(frame["finished_at"], utc=True)
    return frame.drop(columns=["config_json", "record_json"])


def load_epochs(connection, run_ids) -> pd.DataFrame:
    """Return the per-epoch rows (epoch 0 is before training) of the given runs."""
    frame = pd.read_sql_query("SELECT * FROM epochs ORDER BY run_id, epoch", connection)
    return frame[frame["run_id"].isin(set(run_ids))].reset_index(drop=True)


def load_loss_samples(connection, run_ids) -> pd.DataFrame:
    """Return the sampled mini-batch training losses of the given runs."""
    frame = pd.read_sql_query(
        "SELECT * FROM loss_samples ORDER BY run_id, step", connection
    )
    return frame[frame["run_id"].isin(set(run_ids))].reset_index(drop=True)


# --- Optimizer order, labels and colours -----------------------------------


def optimizer_order(study: Study, runs: pd.DataFrame) -> list[str]:
    """Return study-file order, then stored optimizers the study file no longer lists."""
    order = list(study.optimizers)
    extra = sorted(set(runs["optimizer"]) - set(order))
    return order + extra


def optimizer_labels(study: Study, names) -> dict[str, str]:
    return {
        name: study.optimizers[name].label if name in study.optimizers else name
        for name in names
    }


# --- Choosing the tuned learning rate --------------------------------------


def _as_result(row: pd.Series) -> dict:
    """Convert a run row to the dict that ``optstudy.study.score`` reads (NaN as None)."""

    def plain(value):
        return None if value is None or pd.isna(value) else float(value)

    return {
        "status": row["status"],
        "final_valid_accuracy": plain(row["final_valid_accuracy"]),
        "final_valid_loss": plain(row["final_valid_loss"]),
    }


def best_tuning_run(tuning: pd.DataFrame) -> pd.Series | None:
    """Return the tuning run the runner would pick, or None if none completed.

    The order is the runner's: highest final validation accuracy, then lowest
    final validation loss, then the lower learning rate.
    """
    best, best_key = None, None
    for _, row in tuning.iterrows():
        key = (score(_as_result(row)), -row["lr"])
        if best_key is None or key > best_key:
            best, best_key = row, key
    if best is None or best_key[0][0] == -math.inf:
        return None
    return best


def same_lr(values: pd.Series, lr: float) -> pd.Series:
    """Compare learning rates; the study rounds them to six significant digits."""
    return pd.Series(np.isclose(values.to_numpy(dtype=float), lr, rtol=1e-6, atol=0.0),
                     index=values.index)


def choose_lr(cell: pd.DataFrame) -> float | None:
    """Return the tuned learning rate of one cell, or None when no tuning run completed.

    The ``seed`` phase runs carry the rate the runner chose. Before they exist
    (tuning still running, or a profile with one seed) the best tuning run
    decides, by the runner's own rule.
    """
    seeded = cell[cell["phase"] == SEED_PHASE]
    tuning = cell[cell["phase"].isin(TUNING_PHASES)]
    rates = sorted(seeded["lr"].unique())
    if len(rates) == 1:
        return float(rates[0])
    if len(rates) > 1:
        # Seed runs at several rates mean the plan changed mid-study (a retried
        # grid run won, say): the tuning scores decide among those rates.
        candidates = tuning[tuning["lr"].isin(rates)]
        best = best_tuning_run(candidates)
        if best is not None:
            return float(best["lr"])
        return float(seeded["lr"].mode().iloc[0])
    best = best_tuning_run(tuning)
    return None if best is None else float(best["lr"])


def tuned_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Return the tuned runs of every cell, whatever their status, with a ``tuned_lr``."""
    parts = []
    for _, cell in runs.groupby(["dataset", "optimizer"], sort=False):
        lr = choose_lr(cell)
        if lr is None:
            continue
        tuning = cell[cell["phase"].isin(TUNING_PHASES)]
        first_seed = tuning["seed"].min()
        at_lr = cell[same_lr(cell["lr"], lr)]
        is_seed_run = at_lr["phase"] == SEED_PHASE
        is_first_seed_run = at_lr["phase"].isin(TUNING_PHASES) & (
            at_lr["seed"] == first_seed
        )
        parts.append(at_lr[is_seed_run | is_first_seed_run].assign(tuned_lr=lr))
    if not parts:
        return runs.iloc[0:0].assign(tuned_lr=pd.Series(dtype=float))
    return pd.concat(parts, ignore_index=True)


# --- Aggregates ---------------------------------------------------------------


def summarise(runs: pd.DataFrame, study: Study) -> pd.DataFrame:
    """Return one row per cell: tuned lr, seeds, test accuracy over seeds, grid outcome.

    Means and spreads cover the completed tuned runs only. Tuned runs that
    diverged or failed are counted in ``seeds_diverged`` and ``seeds_failed``.
    ``rank`` orders optimizers within a dataset by mean test accuracy (1 is best).
    """
    tuned = tuned_runs(runs)
    labels = optimizer_labels(study, optimizer_order(study, runs))
    rows = []
    for dataset in _dataset_order(runs):
        for optimizer in optimizer_order(study, runs):
            cell = runs[(runs["dataset"] == dataset) & (runs["optimizer"] == optimizer)]
            if cell.empty:
                continue
            rows.append(_summarise_cell(dataset, optimizer, labels[optimizer], cell,
                                        tuned))
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    summary["rank"] = summary.groupby("dataset")["test_mean"].rank(
        ascending=False, method="min"
    )
    return summary


SUMMARY_COLUMNS = [
    "dataset", "optimizer", "label", "lr", "seeds", "seeds_diverged", "seeds_failed",
    "test_mean", "test_std", "test_min", "test_max", "valid_mean",
    "grid_runs", "grid_diverged", "grid_failed", "diverged_share",
]


def _summarise_cell(dataset, optimizer, label, cell, tuned) -> dict:
    mine = tuned[(tuned["dataset"] == dataset) & (tuned["optimizer"] == optimizer)]
    completed = mine[mine["status"] == "completed"]
    test = completed["final_test_accuracy"]
    tuning = cell[cell["phase"].isin(TUNING_PHASES)]
    finished = tuning[tuning["status"].isin(store.DONE_STATUSES)]
    grid_diverged = int((finished["status"] == "diverged").sum())
    return {
        "dataset": dataset,
        "optimizer": optimizer,
        "label": label,
        "lr": float(mine["tuned_lr"].iloc[0]) if not mine.empty else math.nan,
        "seeds": len(completed),
        "seeds_diverged": int((mine["status"] == "diverged").sum()),
        "seeds_failed": int(mine["status"].isin(FAILED_STATUSES).sum()),
        "test_mean": test.mean() if len(test) else math.nan,
        # The sample standard deviation; undefined (NaN) for a single seed.
        "test_std": test.std(ddof=1) if len(test) > 1 else math.nan,
        "test_min": test.min() if len(test) else math.nan,
        "test_max": test.max() if len(test) else math.nan,
        "valid_mean": completed["final_valid_accuracy"].mean() if len(test)
        else math.nan,
        "grid_runs": len(finished),
        "grid_diverged": grid_diverged,
        "grid_failed": int(tuning["status"].isin(FAILED_STATUSES).sum()),
        "diverged_share": grid_diverged / len(finished) if len(finished) else math.nan,
    }


def _dataset_order(runs: pd.DataFrame) -> list[str]:
    present = set(runs["dataset"])
    known = [name for name in DATASET_NAMES if name in present]
    return known + sorted(present - set(known))


def sensitivity(runs: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Return the tuning runs of one dataset with final validation accuracy and status.

    ``chosen`` marks the run at the tuned learning rate. Diverged and failed
    runs stay in the frame with a NaN accuracy, so a plot can show them.
    """
    tuning = runs[(runs["dataset"] == dataset) & runs["phase"].isin(TUNING_PHASES)]
    frame = tuning[["optimizer", "lr", "seed", "phase", "status",
                    "final_valid_accuracy"]].copy()
    frame["chosen"] = False
    for optimizer, cell in runs[runs["dataset"] == dataset].groupby("optimizer"):
        lr = choose_lr(cell)
        if lr is not None:
            mask = (frame["optimizer"] == optimizer) & same_lr(frame["lr"], lr)
            frame.loc[mask, "chosen"] = True
    return frame.sort_values(["optimizer", "lr"]).reset_index(drop=True)


def accuracy_curves(tuned: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """Return mean, min and max validation accuracy per (optimizer, epoch) over seeds.

    Only completed tuned runs count, so every point averages whole runs.
    """
    completed = tuned[tuned["status"] == "completed"][["run_id", "optimizer"]]
    merged = epochs.merge(completed, on="run_id")
    grouped = merged.groupby(["optimizer", "epoch"])["valid_accuracy"]
    return grouped.agg(["mean", "min", "max", "count"]).reset_index()


def loss_curves(tuned: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """Return mean, min and max sampled mini-batch loss per (optimizer, step) over seeds.

    ``epoch`` is the step divided by the steps per epoch, so curves of runs
    with different budgets share an axis.
    """
    completed = tuned[tuned["status"] == "completed"].copy()
    completed["steps_per_epoch"] = completed["steps"] / completed["epochs"].astype(float)
    merged = samples.dropna(subset=["loss"]).merge(
        completed[["run_id", "optimizer", "steps_per_epoch"]], on="run_id"
    )
    merged["epoch"] = merged["step"] / merged["steps_per_epoch"]
    grouped = merged.groupby(["optimizer", "step"])
    curves = grouped["loss"].agg(["mean", "min", "max", "count"])
    curves["epoch"] = grouped["epoch"].first()
    return curves.reset_index()


# --- Describing values in prose ----------------------------------------------


def describe_values(values, none_text: str = "all") -> int | float | str:
    """Return the single distinct value, or a text such as "2 to 3" or "128 or 256".

    None counts as ``none_text`` (a train_size of None means every image).
    Returns "none" for an empty input.
    """
    distinct = sorted({none_text if v is None else v for v in values}, key=str)
    numbers = sorted(v for v in distinct if not isinstance(v, str))
    words = [v for v in distinct if isinstance(v, str)]
    items = [_plain(v) for v in numbers] + words
    if not items:
        return "none"
    if len(items) == 1:
        return items[0]
    if not words and all(isinstance(v, int) for v in items) and (
        items[-1] - items[0] == len(items) - 1
    ):
        return f"{items[0]} to {items[-1]}"
    return ", ".join(str(v) for v in items[:-1]) + f" or {items[-1]}"


def _plain(value):
    """Convert numpy scalars to Python numbers, so glue writes ``3`` and not ``np.int64(3)``."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def format_percent(fraction: float) -> str:
    return "n/a" if pd.isna(fraction) else f"{100 * fraction:.2f}%"


def format_points(fraction: float) -> str:
    """Format a difference of two accuracies in percentage points."""
    return f"{100 * fraction:.2f} percentage points"


def ranking_sentence(summary: pd.DataFrame, dataset: str) -> str:
    """Return a sentence on which optimizer ranked first, worded from the numbers.

    The first two optimizers are called separated only when every seed of the
    first scored above every seed of the second. With one seed each, or with
    overlapping seed ranges, the sentence says the order is not settled.
    """
    name = DATASET_NAMES.get(dataset, dataset)
    ranked = summary[(summary["dataset"] == dataset) & (summary["seeds"] > 0)]
    ranked = ranked.sort_values(["test_mean", "label"], ascending=[False, True])
    if ranked.empty:
        return f"No optimizer finished a tuned run on {name}, so there is no ranking."
    first = ranked.iloc[0]
    if len(ranked) == 1:
        return (
            f"{first['label']} is the only optimizer with a finished tuned run on "
            f"{name}: {format_percent(first['test_mean'])} mean test accuracy over "
            f"{_seeds_text(first['seeds'])}."
        )
    second, last = ranked.iloc[1], ranked.iloc[-1]
    gap = first["test_mean"] - second["test_mean"]
    opening = (
        f"On {name}, {first['label']} ranked first with a mean test accuracy of "
        f"{format_percent(first['test_mean'])} over {_seeds_text(first['seeds'])}, "
        f"{format_points(gap)} ahead of {second['label']} "
        f"({format_percent(second['test_mean'])})"
    )
    if min(first["seeds"], second["seeds"]) < 2:
        verdict = (
            "; with a single seed behind at least one of them, this order is not "
            "evidence of a difference."
        )
    elif first["test_min"] > second["test_max"]:
        verdict = (
            f"; every seed of {first['label']} scored above every seed of "
            f"{second['label']}."
        )
    else:
        verdict = (
            "; their seed ranges overlap, so the gap is within seed-to-seed "
            "variation and the order is not settled."
        )
    closing = (
        f" {last['label']} ranked last with {format_percent(last['test_mean'])}."
        if len(ranked) > 2 else ""
    )
    return opening + verdict + closing


def _seeds_text(count: int) -> str:
    return f"{int(count)} seed" if int(count) == 1 else f"{int(count)} seeds"


# --- Per-page reports -----------------------------------------------------------


@dataclass
class Context:
    """What every page needs: the store's runs, the study file and the colours."""

    path: Path
    runs: pd.DataFrame
    study: Study
    order: list[str]
    labels: dict[str, str]
    colours: dict[str, str]
    connection: object = field(repr=False, default=None)

    @property
    def profile(self) -> str:
        profiles = sorted(self.runs["profile"].unique())
        return profiles[0] if profiles else "none"


def load_context(path: str | os.PathLike | None = None) -> Context:
    """Open the store read-only and load its runs with the study file's labels."""
    from .plots import optimizer_colours

    path = Path(path).resolve() if path else store_path()
    connection = open_store(path)
    runs = load_runs(connection)
    study = load_study()
    order = optimizer_order(study, runs)
    return Context(path, runs, study, order, optimizer_labels(study, order),
                   optimizer_colours(order), connection)


@dataclass
class DatasetReport:
    """Everything a results chapter shows for one dataset."""

    dataset: str
    name: str
    context: Context
    summary: pd.DataFrame
    sensitivity: pd.DataFrame
    accuracy_curves: pd.DataFrame
    loss_curves: pd.DataFrame
    values: dict


def dataset_report(dataset: str, path: str | os.PathLike | None = None) -> DatasetReport:
    """Build the tables, figure data and glue values of one results chapter."""
    context = load_context(path)
    runs = context.runs[context.runs["dataset"] == dataset]
    summary = summarise(runs, context.study)
    tuned = tuned_runs(runs)
    run_ids = tuned["run_id"]
    report = DatasetReport(
        dataset=dataset,
        name=DATASET_NAMES.get(dataset, dataset),
        context=context,
        summary=summary,
        sensitivity=sensitivity(runs, dataset),
        accuracy_curves=accuracy_curves(tuned, load_epochs(context.connection, run_ids)),
        loss_curves=loss_curves(tuned, load_loss_samples(context.connection, run_ids)),
        values={},
    )
    report.values = _dataset_values(report, runs, tuned)
    return report


def _dataset_values(report: DatasetReport, runs: pd.DataFrame, tuned) -> dict:
    summary = report.summary
    tuning = runs[runs["phase"].isin(TUNING_PHASES)]
    finished_tuning = tuning[tuning["status"].isin(store.DONE_STATUSES)]
    ranked = summary[summary["seeds"] > 0].sort_values("test_mean", ascending=False)
    best = ranked.iloc[0] if not ranked.empty else None
    values = {
        "name": report.name,
        "profile": report.context.profile,
        "n_runs": len(runs),
        "n_optimizers": runs["optimizer"].nunique(),
        "n_ranked": len(ranked),
        "seeds": describe_values(summary["seeds"].tolist()),
        "first_seed": describe_values(tuning["seed"].tolist()),
        "n_tuning": len(finished_tuning),
        "n_tuning_diverged": int((finished_tuning["status"] == "diverged").sum()),
        "n_failed": int(runs["status"].isin(FAILED_STATUSES).sum()),
        "model": describe_values(runs["model"].dropna().tolist()),
        "model_parameters": describe_values(runs["model_parameters"].dropna().tolist()),
        "best_label": best["label"] if best is not None else "none",
        "best_test_mean": float(best["test_mean"]) if best is not None else math.nan,
        "best_lr": float(best["lr"]) if best is not None else math.nan,
        "ranking": ranking_sentence(summary, report.dataset),
        "limits": limits_sentence(runs),
        "notice_md": dataset_notice(report.dataset, runs, summary),
    }
    values.update(budget_values(runs))
    values["diverged_share"] = (
        values["n_tuning_diverged"] / values["n_tuning"] if values["n_tuning"]
        else math.nan
    )
    return values


def budget_values(runs: pd.DataFrame) -> dict:
    """Describe the stored budget: epochs, batch size and split sizes."""
    return {key: describe_values(runs[key].tolist()) for key in BUDGET_KEYS}


def hardware_text(runs: pd.DataFrame) -> str:
    """Describe devices and thread counts, such as "cpu (x86_64) with 1 thread"."""
    parts = []
    done = runs[runs["device"].notna()]
    for (device, name), group in done.groupby(["device", "device_name"], sort=True):
        threads = describe_values(group["threads"].tolist())
        noun = "thread" if threads == 1 else "threads"
        parts.append(f"{device} ({name}) with {threads} {noun} per run")
    return "; ".join(parts) if parts else "no device recorded"


def limits_sentence(runs: pd.DataFrame) -> str:
    """Say what the evidence cannot show, with the budget, seed count and hardware."""
    if runs.empty:
        return "Without runs this chapter shows no evidence at all."
    tuned = tuned_runs(runs)
    seeds = describe_values(
        tuned[tuned["status"] == "completed"].groupby("optimizer").size().tolist()
    )
    epochs = describe_values(runs["epochs"].tolist())
    train = describe_values(runs["train_size"].tolist())
    epoch_word = "epoch" if epochs == 1 else "epochs"
    devices = set(runs["device"].dropna())
    hardware = (
        "on CPUs only, so wall-clock times say nothing about accelerators"
        if devices and all(str(d).startswith("cpu") for d in devices)
        else f"on {hardware_text(runs)}"
    )
    return (
        f"The evidence is {epochs} {epoch_word} on {train} training images, with "
        f"{seeds} seeds per tuned optimizer, {hardware}. It cannot show which "
        "optimizer is best after a full training budget, because the ranking of "
        "optimizers often changes as training goes on, and with so few seeds a "
        "difference smaller than the seed-to-seed spread is not a difference."
    )


def dataset_notice(dataset: str, runs: pd.DataFrame, summary: pd.DataFrame) -> str:
    """Return MyST admonitions for a results chapter: no runs, lossy data, failures."""
    name = DATASET_NAMES.get(dataset, dataset)
    if runs.empty:
        return (
            "```{warning}\n"
            f"The results store contains no runs for {name}, so this chapter has no "
            "figures or numbers to show: the values below read n/a or none. Run the "
            "study on this dataset (`python scripts/run_study.py`) and rebuild.\n```\n"
        )
    notes = []
    if lossy_cifar(runs) and dataset == "cifar10":
        notes.append(_admonition("note", lossy_cifar_sentence()))
    failed = runs[runs["status"].isin(FAILED_STATUSES)]
    if not failed.empty:
        which = ", ".join(sorted(set(failed["optimizer"])))
        notes.append(_admonition(
            "warning",
            f"{len(failed)} runs on {name} failed or crashed ({which}) and are "
            "left out of every aggregate; `scripts/run_study.py --retry-failed` "
            "runs them again.",
        ))
    untuned = summary[summary["seeds"] == 0]["label"].tolist()
    if untuned:
        notes.append(_admonition(
            "note",
            f"No tuned run finished on {name} for: {', '.join(untuned)}. These "
            "optimizers appear in the sensitivity plot but not in the ranking.",
        ))
    return "\n".join(notes)


def _admonition(kind: str, text: str) -> str:
    return f"```{{{kind}}}\n{text}\n```\n"


def lossy_cifar(runs: pd.DataFrame) -> bool:
    """Tell whether any stored CIFAR-10 run used the JPEG-decoded copy."""
    cifar = runs[runs["dataset"] == "cifar10"]
    return bool(cifar["cifar_lossy"].any())


def lossy_cifar_sentence() -> str:
    return (
        "The CIFAR-10 copy used here was decoded from JPEG files (quality "
        f"{CIFAR_JPEG_QUALITY}, {CIFAR_JPEG_CHROMA} chroma subsampling), not the "
        "original lossless images, so accuracies may be somewhat lower than on the "
        "original data."
    )


# --- Conclusions ------------------------------------------------------------------


def conclusions(context: Context) -> tuple[pd.DataFrame, dict]:
    """Return the rank table (optimizer by dataset) and the glue values of the conclusions."""
    summary = summarise(context.runs, context.study)
    ranked = summary[summary["seeds"] > 0]
    datasets = _dataset_order(context.runs)
    ranks = ranked.pivot(index="optimizer", columns="dataset", values="rank")
    ranks = ranks.reindex(index=[o for o in context.order if o in ranks.index],
                          columns=datasets)
    values = {"n_datasets": len(datasets)}
    for dataset in DATASET_NAMES:
        values[f"ranking_{dataset}"] = ranking_sentence(summary, dataset)
    values["overall"] = overall_sentence(ranks, context.labels)
    values["settled"] = settled_sentence(summary, datasets)
    return ranks, values


def overall_sentence(ranks: pd.DataFrame, labels: dict[str, str]) -> str:
    """Name the optimizer with the best mean rank over the datasets it was ranked on all of."""
    names = [DATASET_NAMES.get(d, d) for d in ranks.columns]
    if len(ranks.columns) < 2:
        return ("Results exist for fewer than two datasets, so there is no "
                "ranking across datasets.")
    complete = ranks.dropna()
    if complete.empty:
        return "No optimizer was ranked on every dataset, so there is no overall order."
    mean_rank = complete.mean(axis=1).sort_values()
    best = mean_rank[mean_rank == mean_rank.iloc[0]].index.tolist()
    who = " and ".join(labels.get(b, b) for b in best)
    verb = "share" if len(best) > 1 else "has"
    return (
        f"Over {', '.join(names[:-1])} and {names[-1]}, {who} {verb} the best mean "
        f"rank ({mean_rank.iloc[0]:.1f} among {len(complete)} optimizers ranked on "
        "every dataset)."
    )


def settled_sentence(summary: pd.DataFrame, datasets: list[str]) -> str:
    """Count the datasets on which the seed ranges of the first two optimizers overlap."""
    overlapping = []
    separated = []
    for dataset in datasets:
        ranked = summary[(summary["dataset"] == dataset) & (summary["seeds"] > 1)]
        ranked = ranked.sort_values("test_mean", ascending=False)
        if len(ranked) < 2:
            continue
        first, second = ranked.iloc[0], ranked.iloc[1]
        name = DATASET_NAMES.get(dataset, dataset)
        (separated if first["test_min"] > second["test_max"] else overlapping).append(
            name
        )
    total = len(overlapping) + len(separated)
    if total == 0:
        return ("No dataset has two optimizers with several seeds each, so no "
                "first place is backed by a seed-to-seed comparison.")
    if not overlapping:
        return (f"On all {total} datasets with several seeds, every seed of the "
                "winner scored above every seed of the runner-up.")
    return (
        f"On {len(overlapping)} of {total} datasets with several seeds "
        f"({', '.join(overlapping)}), the seed ranges of the first two optimizers "
        "overlap, so first place there is not settled."
    )


# --- The method, optimizers and reproducibility chapters ---------------------------


def optimizer_table(study: Study) -> pd.DataFrame:
    """Describe every optimizer of the study file: class, fixed values, grid centre."""
    rows = []
    for entry in study.optimizers.values():
        default = class_default_lr(resolve_class(entry.reference).cls)
        fixed = ", ".join(f"{key}={value}" for key, value in entry.hyperparameters.items())
        rows.append({
            "name": entry.name,
            "label": entry.label,
            "class": entry.reference,
            "fixed hyperparameters": fixed or "none",
            "grid centre (lr)": f"{entry.lr_centre:g}",
            "library default lr": "none" if default is None else f"{default:g}",
            "centre is the library default": (
                "yes" if entry.lr_source == "library default" else "no"
            ),
        })
    return pd.DataFrame(rows)


def method_values(context: Context) -> dict:
    """Return the glue values of the method chapter: protocol, budget, models, hardware."""
    runs = context.runs
    profile = context.study.profile(context.profile) if not runs.empty else None
    models = {}
    for model, group in runs.dropna(subset=["model"]).groupby("model"):
        models[model] = describe_values(group["model_parameters"].dropna().tolist())
    values = {
        "profile": context.profile,
        "n_runs": len(runs),
        "n_optimizers": runs["optimizer"].nunique(),
        "n_datasets": runs["dataset"].nunique(),
        "divergence_factor": float(DIVERGENCE_FACTOR),
        "hardware": hardware_text(runs),
        "n_failed": int(runs["status"].isin(FAILED_STATUSES).sum()),
        "parameters_2c2d": models.get("2c2d", "none"),
        "parameters_3c3d": models.get("3c3d", "none"),
        "cifar_note_md": _admonition("note", lossy_cifar_sentence())
        if lossy_cifar(runs) else "",
    }
    values.update(budget_values(runs))
    values.update(protocol_values(profile))
    return values


def protocol_values(profile) -> dict:
    """Describe the tuning protocol of a study-file profile (None: no runs)."""
    if profile is None:
        return {"grid_points": "none", "grid_step": "none", "max_extensions": "none",
                "n_seeds": "none", "seed_list": "none"}
    return {
        "grid_points": len(profile.lr_values) if profile.lr_values
        else profile.lr_points,
        "grid_step": "a fixed list" if profile.lr_values else profile.lr_step_decades,
        "max_extensions": 0 if profile.lr_values else profile.max_extensions,
        "n_seeds": len(profile.seeds),
        "seed_list": ", ".join(str(s) for s in profile.seeds),
    }


def versions_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Return each recorded package with the distinct versions the runs used."""
    found: dict[str, set] = {}
    for versions in runs["versions"]:
        for package, version in versions.items():
            found.setdefault(package, set()).add(version or "not installed")
    for python in runs["python"].dropna():
        found.setdefault("python", set()).add(python)
    rows = [
        {"package": package, "versions": ", ".join(sorted(found[package]))}
        for package in sorted(found)
    ]
    return pd.DataFrame(rows, columns=["package", "versions"])


def timing_values(runs: pd.DataFrame) -> dict:
    """Return the summed wall time of the runs and the span of their finish times, in hours."""
    wall = runs["seconds_wall"].dropna()
    finished = runs["finished_at"].dropna()
    span = (finished.max() - finished.min()).total_seconds() if len(finished) else math.nan
    return {
        "wall_hours": float(wall.sum()) / 3600 if len(wall) else math.nan,
        "span_hours": span / 3600,
        "first_finished": finished.min().isoformat() if len(finished) else "none",
        "last_finished": finished.max().isoformat() if len(finished) else "none",
        "n_timed": len(wall),
    }


def reproducibility_values(context: Context) -> dict:
    """Return the glue values of the reproducibility chapter."""
    runs = context.runs
    values = {
        "store": str(context.path),
        "profile": context.profile,
        "n_runs": len(runs),
        "hardware": hardware_text(runs),
        "platform": describe_values(runs["platform"].dropna().tolist()),
    }
    values.update(timing_values(runs))
    return values


# --- The introduction's one-dimensional example -------------------------------------

# A quartic with a shallow basin near x = 1.5 and a deeper one near x = -1.7,
# chosen so that four learning rates show four behaviours from one start point.
ILLUSTRATION_START = 2.6
ILLUSTRATION_STEPS = 30
ILLUSTRATION_LRS = (0.02, 0.3, 0.9, 1.2)
# A path whose |x| passes this bound is stopped and reported as diverged.
ILLUSTRATION_BOUND = 1e3


def toy_loss(x):
    return 0.1 * x**4 - 0.5 * x**2 + 0.2 * x + 1


def toy_gradient(x):
    return 0.4 * x**3 - x + 0.2


def gradient_descent_path(lr: float, start: float = ILLUSTRATION_START,
                          steps: int = ILLUSTRATION_STEPS) -> list[float]:
    """Return the points that gradient descent on ``toy_loss`` visits, start included."""
    points = [start]
    for _ in range(steps):
        x = points[-1] - lr * toy_gradient(points[-1])
        points.append(x)
        if abs(x) > ILLUSTRATION_BOUND:
            break
    return points


def illustration() -> tuple[dict, dict]:
    """Return the example's paths by learning rate and the glue values that describe them."""
    paths = {lr: gradient_descent_path(lr) for lr in ILLUSTRATION_LRS}
    grid = np.linspace(-3, 3, 6001)
    losses = toy_loss(grid)
    interior = (losses[1:-1] < losses[:-2]) & (losses[1:-1] < losses[2:])
    minima = sorted(grid[1:-1][interior], key=toy_loss)
    values = {
        "start": ILLUSTRATION_START,
        "steps": ILLUSTRATION_STEPS,
        "global_minimum": float(minima[0]),
        "local_minimum": float(minima[1]),
    }
    for index, (lr, points) in enumerate(paths.items()):
        values[f"lr_{index}"] = lr
        values[f"end_{index}"] = float(points[-1])
        values[f"steps_{index}"] = len(points) - 1
    return paths, values


def glue_values(values: dict) -> None:
    """Glue every value under its key, hidden, with numpy scalars made plain.

    Keys ending in ``_md`` are glued as Markdown, for the ``{glue:md}`` directive.
    """
    from IPython.display import Markdown
    from myst_nb import glue

    for key, value in values.items():
        value = _plain(value)
        if key.endswith("_md"):
            value = Markdown(value)
        glue(key, value, display=False)
