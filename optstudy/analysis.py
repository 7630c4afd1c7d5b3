"""Read the results store into pandas and derive every number the book reports.

The book's pages only glue and draw what these functions return, so each
number in the article comes from one function here. Conventions:

- A (dataset, optimizer) pair is a *cell*. Its *tuning runs* are the ``grid``
  and ``extension`` phases at the first seed. Its *tuned runs* are the
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
from .models import ThreeConvThreeDense
from .optimizers import (
    build_optimizer, class_default_lr, resolve_class, weight_decay_style,
)
from .study import Study, load_study, plan_cell, score
from .train import DIVERGENCE_FACTOR, DIVERGENCE_PATIENCE

DATASET_NAMES = {
    "mnist": "MNIST",
    "fashion_mnist": "Fashion-MNIST",
    "cifar10": "CIFAR-10",
}
TUNING_PHASES = ("grid", "extension")
SEED_PHASE = "seed"
OUT_OF_BOX_PHASE = "out_of_box"
SUPERSEDED_PHASE = "superseded"
BUDGET_KEYS = ("epochs", "batch_size", "train_size", "valid_size", "test_size")
FAILED_STATUSES = ("failed", "crashed")

# The CIFAR-10 copy whose README is marked LOSSY (see optstudy.data.is_lossy_cifar)
# was decoded from JPEG files written at this quality and chroma subsampling.
# NOTE: records store only the lossy flag, so another lossy copy made with other
# JPEG settings would still be described with these values.
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

    A store normally contains one profile. When it contains several and
    ``profile`` is None, a ValueError names them, because mixing budgets would
    make every table wrong.
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
    # Failed and crashed runs have no record: SQL NULL, which pandas reads as NaN.
    records = [
        json.loads(text) if isinstance(text, str) else {}
        for text in frame["record_json"]
    ]
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
    """Return study-file order, then stored optimizers that the study file lacks."""
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
    """Convert a run row to the dict that ``optstudy.study.score`` reads (NaN: None)."""

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
    """Return the tuned runs of every cell, of any status, with their ``tuned_lr``."""
    parts = []
    for _, cell in runs.groupby(["dataset", "optimizer"], sort=False):
        lr = choose_lr(cell)
        if lr is None:
            continue
        # Every live run at the tuned rate is a tuned run: the first-seed
        # tuning run, the seed runs, and out-of-the-box runs that share their
        # ids because the tuned rate is the library default.
        live = cell[cell["phase"] != SUPERSEDED_PHASE]
        parts.append(live[same_lr(live["lr"], lr)].assign(tuned_lr=lr))
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


def accuracy_table(summary: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Format one dataset's summary for the page, best mean test accuracy first.

    Spreads are over the completed tuned runs: the sample standard deviation
    (blank for one seed), and the lowest and highest seed.
    """
    rows = summary[summary["dataset"] == dataset].sort_values(
        ["rank", "label"], na_position="last"
    )

    def percent(value):
        return "" if pd.isna(value) else f"{100 * value:.2f}"

    def seeds(row):
        text = str(int(row["seeds"]))
        if row["seeds_diverged"]:
            text += f" (+{int(row['seeds_diverged'])} diverged)"
        if row["seeds_failed"]:
            text += f" (+{int(row['seeds_failed'])} failed)"
        return text

    return pd.DataFrame({
        "rank": ["" if pd.isna(r) else f"{r:.0f}" for r in rows["rank"]],
        "optimizer": rows["label"].tolist(),
        "tuned lr": ["none" if pd.isna(lr) else f"{lr:g}" for lr in rows["lr"]],
        "seeds": [seeds(row) for _, row in rows.iterrows()],
        "test accuracy, mean (%)": [percent(v) for v in rows["test_mean"]],
        "std (points)": [percent(v) for v in rows["test_std"]],
        "min (%)": [percent(v) for v in rows["test_min"]],
        "max (%)": [percent(v) for v in rows["test_max"]],
        "diverged in tuning": [
            f"{int(d)} of {int(n)}" for d, n in zip(rows["grid_diverged"],
                                                    rows["grid_runs"])
        ],
    })


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
    """Return mean, min and max sampled mini-batch loss per (optimizer, step).

    ``epoch`` is the step divided by the steps per epoch, so curves of runs
    with different budgets share an axis.
    """
    completed = tuned[tuned["status"] == "completed"].copy()
    epochs = completed["epochs"].astype(float)
    completed["steps_per_epoch"] = completed["steps"] / epochs
    merged = samples.dropna(subset=["loss"]).merge(
        completed[["run_id", "optimizer", "steps_per_epoch"]], on="run_id"
    )
    merged["epoch"] = merged["step"] / merged["steps_per_epoch"]
    grouped = merged.groupby(["optimizer", "step"])
    curves = grouped["loss"].agg(["mean", "min", "max", "count"])
    curves["epoch"] = grouped["epoch"].first()
    return curves.reset_index()


# --- Describing values in prose ----------------------------------------------


def describe_values(values, none_text: str = "all") -> str:
    """Describe the distinct values as text: "6,000", "2 to 3" or "128 or 256".

    None counts as ``none_text`` (a train_size of None means every image).
    Returns "none" for an empty input.
    """
    distinct = {none_text if v is None else _plain(v) for v in values}
    numbers = sorted(v for v in distinct if not isinstance(v, str))
    words = sorted(v for v in distinct if isinstance(v, str))
    if not numbers and not words:
        return "none"
    texts = [f"{v:,}" if isinstance(v, int) else f"{v:g}" for v in numbers] + words
    if len(texts) == 1:
        return texts[0]
    consecutive = all(isinstance(v, int) for v in numbers) and not words and (
        numbers[-1] - numbers[0] == len(numbers) - 1
    )
    if consecutive:
        return f"{texts[0]} to {texts[-1]}"
    return ", ".join(texts[:-1]) + f" or {texts[-1]}"


def count_text(values, noun: str) -> str:
    """Describe counts with their noun: "1 epoch", "2 epochs", "2 to 3 seeds"."""
    text = describe_values(values)
    return f"{text} {noun}" if text == "1" else f"{text} {noun}s"


def _plain(value):
    """Convert numpy scalars to Python numbers, so glue writes 3, not np.int64(3)."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def format_percent(fraction: float) -> str:
    return "n/a" if pd.isna(fraction) else f"{100 * fraction:.2f}%"


def format_points(fraction: float) -> str:
    """Format a difference of two accuracies in percentage points."""
    return f"{100 * fraction:.2f} percentage points"


def ranked_optimizers(summary: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Return the dataset's optimizers with a completed tuned run, best first."""
    ranked = summary[(summary["dataset"] == dataset) & (summary["seeds"] > 0)]
    return ranked.sort_values(["test_mean", "label"], ascending=[False, True])


def no_ranking_sentence(dataset: str) -> str:
    name = DATASET_NAMES.get(dataset, dataset)
    return f"No optimizer finished a tuned run on {name}, so there is no ranking."


def comparison_sentence(summary: pd.DataFrame, dataset: str) -> str:
    """Compare the first optimizer with the runner-up, worded from the numbers.

    The first two are called separated only when every seed of the first
    scored above every seed of the second. With a single seed behind either,
    or with overlapping seed ranges, the sentence states that the order is not
    settled. With more than two optimizers it also names the last.
    """
    ranked = ranked_optimizers(summary, dataset)
    if ranked.empty:
        return no_ranking_sentence(dataset)
    first = ranked.iloc[0]
    if len(ranked) == 1:
        return f"{first['label']} is the only optimizer with a finished tuned run."
    second, last = ranked.iloc[1], ranked.iloc[-1]
    gap = first["test_mean"] - second["test_mean"]
    opening = (
        f"{first['label']} leads {second['label']} "
        f"({format_percent(second['test_mean'])}) by {format_points(gap)}"
    )
    if min(first["seeds"], second["seeds"]) < 2:
        verdict = (
            ", but with a single seed behind at least one of them this order is "
            "no evidence of a difference."
        )
    elif first["test_min"] > second["test_max"]:
        verdict = (
            f", and every seed of {first['label']} scored above every seed of "
            f"{second['label']}."
        )
    else:
        verdict = (
            ", but their seed ranges overlap, so the gap is within seed-to-seed "
            "variation and the order is not settled."
        )
    closing = (
        f" {last['label']} ranked last with {format_percent(last['test_mean'])}."
        if len(ranked) > 2 else ""
    )
    return opening + verdict + closing


def ranking_sentence(summary: pd.DataFrame, dataset: str) -> str:
    """Name the optimizer that ranked first on a dataset, then compare the others."""
    ranked = ranked_optimizers(summary, dataset)
    if ranked.empty:
        return no_ranking_sentence(dataset)
    first = ranked.iloc[0]
    name = DATASET_NAMES.get(dataset, dataset)
    seeds = count_text([int(first["seeds"])], "seed")
    return (
        f"On {name}, {first['label']} ranked first with a mean test accuracy of "
        f"{format_percent(first['test_mean'])} over {seeds}. "
        + comparison_sentence(summary, dataset)
    )


# --- Per-page reports -----------------------------------------------------------


@dataclass
class Context:
    """The store's runs, the study file, labels and colours that every page uses."""

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


STUDY_ENV = "OPTSTUDY_STUDY"


def load_context(path: str | os.PathLike | None = None,
                 study_path: str | os.PathLike | None = None) -> Context:
    """Open the store read-only and load its runs with the study file's labels.

    The study file is ``study_path``, else ``$OPTSTUDY_STUDY``, else the
    repository's ``study.yml``: a store made from another study file needs
    that file for its labels, default learning rates and targets.
    """
    from .plots import optimizer_colours

    path = Path(path).resolve() if path else store_path()
    connection = open_store(path)
    runs = load_runs(connection)
    study = load_study(study_path or os.environ.get(STUDY_ENV) or None)
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
    tracks: object = None  # optstudy.tracks.TrackReport
    check_curves: pd.DataFrame | None = None


def dataset_report(
    dataset: str, path: str | os.PathLike | None = None
) -> DatasetReport:
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
        accuracy_curves=accuracy_curves(
            tuned, load_epochs(context.connection, run_ids)
        ),
        loss_curves=loss_curves(tuned, load_loss_samples(context.connection, run_ids)),
        values={},
    )
    report.values = _dataset_values(report, runs, tuned)
    from . import tracks  # tracks builds on this module

    report.tracks = tracks.track_report(context)
    report.check_curves = tracks.check_curves(
        report.tracks.tracks,
        tracks.load_checks(context.connection, report.tracks.tracks["run_id"]),
        dataset,
    )
    report.values.update(tracks.dataset_track_values(report.tracks, context, dataset))
    return report


def _dataset_values(report: DatasetReport, runs: pd.DataFrame, tuned) -> dict:
    summary = report.summary
    tuning = runs[runs["phase"].isin(TUNING_PHASES)]
    finished_tuning = tuning[tuning["status"].isin(store.DONE_STATUSES)]
    ranked = ranked_optimizers(summary, report.dataset)
    best = ranked.iloc[0] if not ranked.empty else None
    values = {
        "name": report.name,
        "profile": report.context.profile,
        "n_runs": len(runs),
        "n_optimizers": runs["optimizer"].nunique(),
        "n_ranked": len(ranked),
        "seeds_text": count_text(ranked["seeds"].tolist(), "seed"),
        "first_seed": describe_values(tuning["seed"].tolist()),
        "n_tuning": len(finished_tuning),
        "n_tuning_diverged": int((finished_tuning["status"] == "diverged").sum()),
        "n_failed": int(runs["status"].isin(FAILED_STATUSES).sum()),
        "model": describe_values(runs["model"].dropna().tolist()),
        "model_parameters": describe_values(runs["model_parameters"].dropna().tolist()),
        "best_label": best["label"] if best is not None else "none",
        "best_test_mean": float(best["test_mean"]) if best is not None else math.nan,
        "best_lr": float(best["lr"]) if best is not None else math.nan,
        "best_seeds_text": count_text([int(best["seeds"])], "seed") if best is not None
        else "no seeds",
        "comparison": comparison_sentence(summary, report.dataset),
        "accuracy_table_md": markdown_table(accuracy_table(summary, report.dataset)),
        "limits": limits_sentence(runs),
        "notice_md": dataset_notice(
            report.dataset, runs, summary,
            [report.context.labels.get(o, o) for o in unfinished_optimizers(
                report.context, report.dataset)],
        ),
    }
    values.update(budget_values(runs))
    values["diverged_share"] = (
        values["n_tuning_diverged"] / values["n_tuning"] if values["n_tuning"]
        else math.nan
    )
    return values


def budget_values(runs: pd.DataFrame) -> dict:
    """Describe the stored budget: epochs, batch size and split sizes, as text."""
    values = {key: describe_values(runs[key].tolist()) for key in BUDGET_KEYS}
    values["epochs_text"] = count_text(runs["epochs"].tolist(), "epoch")
    return values


def hardware_text(runs: pd.DataFrame) -> str:
    """Describe devices and thread counts, such as "cpu (x86_64) with 1 thread"."""
    parts = []
    done = runs[runs["device"].notna()]
    for (device, name), group in done.groupby(["device", "device_name"], sort=True):
        threads = count_text(group["threads"].tolist(), "thread")
        parts.append(f"{device} ({name}) with {threads} per run")
    return "; ".join(parts) if parts else "no device recorded"


def limits_sentence(runs: pd.DataFrame) -> str:
    """Say what the evidence cannot show, with the budget, seed count and hardware."""
    if runs.empty:
        return "Without runs, this chapter shows no evidence at all."
    tuned = tuned_runs(runs)
    completed = tuned[tuned["status"] == "completed"].groupby(
        ["dataset", "optimizer"]
    ).size()
    seeds = (
        f"{count_text(completed.tolist(), 'seed')} per tuned optimizer"
        if len(completed) else "no completed tuned run"
    )
    epochs = count_text(runs["epochs"].tolist(), "epoch")
    train = describe_values(runs["train_size"].tolist())
    devices = set(runs["device"].dropna())
    hardware = (
        "on CPUs only, so its times say nothing about accelerators"
        if devices and all(str(d).startswith("cpu") for d in devices)
        else f"on {hardware_text(runs)}"
    )
    return (
        f"The evidence is {epochs} on {train} training images, with {seeds}, "
        f"{hardware}. It cannot show which optimizer is best after a full "
        "training budget, because an optimizer that leads early can fall behind "
        "later. With so few seeds, a gap smaller than the seed-to-seed spread is "
        "no evidence of a difference. And it covers one network per dataset, one "
        "batch size and the learning rate as the only tuned hyperparameter."
    )


def dataset_notice(dataset: str, runs: pd.DataFrame, summary: pd.DataFrame,
                   unfinished: list[str]) -> str:
    """Return MyST admonitions for a results chapter.

    They cover a dataset without runs, the JPEG-decoded CIFAR-10 copy, failed
    runs, optimizers without a tuned run, and the labels in ``unfinished``
    (optimizers whose planned runs are not all stored yet).
    """
    name = DATASET_NAMES.get(dataset, dataset)
    labels = dict(zip(summary["optimizer"], summary["label"]))
    if runs.empty:
        return (
            "```{warning}\n"
            f"The results store contains no runs for {name}, so this chapter has "
            "no figures or numbers to show, and the values below read nan or none. "
            "Run the study on this dataset (`python scripts/run_study.py`) and "
            "rebuild.\n```\n"
        )
    notes = []
    if unfinished:
        notes.append(_admonition(
            "warning",
            f"The study had not finished on {name} when this book was built: runs "
            f"of {', '.join(unfinished)} are still missing from the store, so "
            "their tuned learning rates, seed counts and ranks may change.",
        ))
    if lossy_cifar(runs) and dataset == "cifar10":
        notes.append(_admonition("note", lossy_cifar_sentence()))
    failed = runs[runs["status"].isin(FAILED_STATUSES)]
    if not failed.empty:
        which = ", ".join(sorted({labels.get(o, o) for o in failed["optimizer"]}))
        notes.append(_admonition(
            "warning",
            f"Of the runs on {name}, {len(failed)} failed or crashed ({which}). "
            "They are left out of every aggregate, and "
            "`scripts/run_study.py --retry-failed` runs them again.",
        ))
    untuned = summary[summary["seeds"] == 0]["label"].tolist()
    if untuned:
        subject = "This optimizer appears" if len(untuned) == 1 else (
            "These optimizers appear"
        )
        notes.append(_admonition(
            "note",
            f"No tuned run finished on {name} for {', '.join(untuned)}. {subject} "
            "in the sensitivity plot but not in the ranking.",
        ))
    return "\n".join(notes)


def unfinished_optimizers(context: Context, dataset: str) -> list[str]:
    """Return the optimizers whose planned runs on a dataset are not all stored.

    The runner's own planner decides what each optimizer still needs, from
    the stored statuses. Failed runs count as stored, as they do for the
    runner. The list is empty when the dataset has no runs, and when study.yml
    no longer defines the store's profile, so that nothing can be planned.
    """
    profile = context.study.profiles.get(context.profile)
    has_runs = (context.runs["dataset"] == dataset).any()
    if profile is None or dataset not in profile.datasets or not has_runs:
        return []
    results = store.load_statuses(context.connection)
    unfinished = []
    for name in profile.optimizers:
        entry = context.study.optimizers[name]
        planned, final = plan_cell(context.study, profile, entry, dataset, results)
        if not final or any(run.run_id not in results for run in planned):
            unfinished.append(name)
    return unfinished


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
    """Return the rank frame (optimizer by dataset) and the conclusions' glue values."""
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
    values["limits"] = limits_sentence(context.runs)
    values["rank_table_md"] = markdown_table(rank_table(ranks, context.labels))
    values["progress_md"] = progress_notice(context)
    values.update(budget_values(context.runs))
    return ranks, values


def progress_notice(context: Context) -> str:
    """Return a MyST warning naming the datasets on which the study is unfinished."""
    profile = context.study.profiles.get(context.profile)
    if profile is None:
        return ""
    unfinished = []
    for dataset in profile.datasets:
        name = DATASET_NAMES.get(dataset, dataset)
        if not (context.runs["dataset"] == dataset).any():
            unfinished.append(f"{name} (no runs yet)")
        elif optimizers := unfinished_optimizers(context, dataset):
            labels = ", ".join(context.labels.get(o, o) for o in optimizers)
            unfinished.append(f"{name} ({labels})")
    if not unfinished:
        return ""
    return _admonition(
        "warning",
        f"The study had not finished when this book was built. Runs are still "
        f"missing on {'; '.join(unfinished)}, so the rankings below may change.",
    )


def rank_table(ranks: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """Format the rank frame of ``conclusions``, blank where it ranks no optimizer."""
    names = [labels.get(name, name) for name in ranks.index]
    table = pd.DataFrame({"optimizer": names})
    for dataset in ranks.columns:
        table[DATASET_NAMES.get(dataset, dataset)] = [
            "" if pd.isna(rank) else f"{rank:.0f}" for rank in ranks[dataset]
        ]
    complete = ranks.notna().all(axis=1)
    table["mean rank"] = [
        f"{mean:.1f}" if full else ""
        for mean, full in zip(ranks.mean(axis=1), complete)
    ]
    return table


def overall_sentence(ranks: pd.DataFrame, labels: dict[str, str]) -> str:
    """Name the best mean rank among the optimizers ranked on every dataset."""
    names = [DATASET_NAMES.get(d, d) for d in ranks.columns]
    if len(ranks.columns) < 2:
        return ("Results exist for fewer than two datasets, so there is no "
                "ranking across datasets.")
    complete = ranks.dropna()
    if complete.empty:
        return "No optimizer was ranked on every dataset, so there is no overall order."
    mean_rank = complete.mean(axis=1).sort_values()
    datasets = f"{', '.join(names[:-1])} and {names[-1]}"
    if len(complete) == 1:
        only = labels.get(complete.index[0], complete.index[0])
        return (
            f"Only {only} was ranked on all of {datasets} (mean rank "
            f"{mean_rank.iloc[0]:.1f}), so there is no order across datasets yet."
        )
    best = mean_rank[mean_rank == mean_rank.iloc[0]].index.tolist()
    who = " and ".join(labels.get(b, b) for b in best)
    verb = "share" if len(best) > 1 else "has"
    return (
        f"Over {datasets}, {who} {verb} the best mean rank "
        f"({mean_rank.iloc[0]:.1f}, among {len(complete)} optimizers ranked on "
        "every dataset)."
    )


def settled_sentence(summary: pd.DataFrame, datasets: list[str]) -> str:
    """Count the datasets where the seed ranges of the first two optimizers overlap."""
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
        fixed = ", ".join(
            f"{key}={value}" for key, value in entry.hyperparameters.items()
        )
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


# Constructor flags that choose a kernel or tracing mode; left at their defaults
# (maximize=False included) they do not change the update rule.
IMPLEMENTATION_FLAGS = {"capturable", "differentiable", "foreach", "fused", "maximize"}


def optimizer_defaults_table(study: Study) -> pd.DataFrame:
    """List every constructor setting in effect per optimizer, defaults included.

    Each optimizer is built on a one-element tensor with the study file's
    fixed hyperparameters, and its ``defaults`` dictionary is read back, the
    same way the training loop records them. Settings that are None, and the
    flags in IMPLEMENTATION_FLAGS, are left out.
    """
    import torch

    rows = []
    for entry in study.optimizers.values():
        parameter = torch.zeros(1, requires_grad=True)
        _, used = build_optimizer(resolve_class(entry.reference), [parameter],
                                  entry.hyperparameters)
        used.pop("lr", None)
        settings = ", ".join(
            f"{key}={_format_setting(value)}" for key, value in used.items()
            if value is not None and key not in IMPLEMENTATION_FLAGS
        )
        rows.append({
            "optimizer": entry.label,
            "weight decay": weight_decay_style(entry.reference, used),
            "settings besides lr": settings,
        })
    return pd.DataFrame(rows)


def _format_setting(value) -> str:
    if isinstance(value, list):
        return "(" + ", ".join(_format_setting(v) for v in value) + ")"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    """Render a frame as a Markdown table, for ``{glue:md}`` inside a ``{table}``.

    Cells are written as given (no number parsing, so "1.10" keeps its zero),
    columns whose cells all read as numbers are right-aligned, and pipes are
    escaped so that a label cannot split a column.
    """
    text = frame.astype(str).apply(lambda column: column.str.replace("|", "\\|"))
    alignment = [
        "right" if all(_is_number(cell) for cell in text[column] if cell) else "left"
        for column in text.columns
    ]
    return text.to_markdown(index=False, disable_numparse=True, colalign=alignment)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def method_values(context: Context) -> dict:
    """Return the method chapter's glue values: protocol, budget, models, hardware."""
    runs = context.runs
    # None when the store is empty, or when its profile came from another study file.
    profile = context.study.profiles.get(context.profile)
    models = {}
    for model, group in runs.dropna(subset=["model"]).groupby("model"):
        models[model] = describe_values(group["model_parameters"].dropna().tolist())
    values = {
        "profile": context.profile,
        "n_runs": len(runs),
        "n_optimizers": runs["optimizer"].nunique(),
        "n_datasets": runs["dataset"].nunique(),
        "divergence_factor": float(DIVERGENCE_FACTOR),
        "divergence_patience": int(DIVERGENCE_PATIENCE),
        "hardware": hardware_text(runs),
        "n_failed": int(runs["status"].isin(FAILED_STATUSES).sum()),
        "parameters_2c2d": models.get("2c2d", "none"),
        "parameters_3c3d": models.get("3c3d", "none"),
        "l2_3c3d": ThreeConvThreeDense.weight_decay,
        "cifar_note_md": _admonition("note", lossy_cifar_sentence())
        if lossy_cifar(runs) else "",
    }
    values.update(budget_values(runs))
    values.update(protocol_values(profile))
    values["targets_text"] = targets_text(context.study.targets)
    return values


def targets_text(targets: dict[str, float]) -> str:
    """List the time-to-target thresholds, e.g. "MNIST 88%, CIFAR-10 25%"."""
    parts = [f"{DATASET_NAMES.get(name, name)} {100 * value:g}%"
             for name, value in targets.items()]
    return ", ".join(parts) if parts else "none set in the study file"


def protocol_values(profile) -> dict:
    """Describe the tuning protocol of a study-file profile as text.

    ``profile`` None (no runs, or a profile that study.yml does not define)
    gives "unknown" for every value.
    """
    if profile is None:
        return {"grid_points": "unknown", "grid_spacing": "unknown",
                "max_extensions": "unknown", "n_seeds": "unknown",
                "seed_list": "unknown", "checks_text": "unknown"}
    if profile.lr_values:
        points = len(profile.lr_values)
        spacing = "from a fixed list"
        extensions = "0 times"
    else:
        points = profile.lr_points
        spacing = f"spaced {count_text([profile.lr_step_decades], 'decade')} apart"
        extensions = count_text([profile.max_extensions], "time")
    return {
        "grid_points": str(points),
        "grid_spacing": spacing,
        "max_extensions": extensions,
        "n_seeds": str(len(profile.seeds)),
        "seed_list": ", ".join(str(s) for s in profile.seeds),
        "checks_text": count_text([profile.evals_per_epoch], "time"),
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
    """Return the summed wall time of the runs and the span of their finish times.

    ``wall_hours`` and ``span_hours`` are numbers; the ``_text`` values state
    the same durations in a readable unit for the prose. ``active_hours`` is
    the elapsed time during which at least one run was executing
    (:func:`busy_seconds`), the study's duration with pauses between sittings
    left out.
    """
    wall = runs["seconds_wall"].dropna()
    finished = runs["finished_at"].dropna()
    wall_seconds = float(wall.sum()) if len(wall) else math.nan
    span_seconds = (
        (finished.max() - finished.min()).total_seconds() if len(finished) else math.nan
    )
    timed = runs[runs["seconds_wall"].notna()]
    active_seconds = busy_seconds(timed)
    train = float(timed["seconds_train"].fillna(0).sum())
    evaluation = float(timed["seconds_eval"].fillna(0).sum())
    share = (lambda part: part / wall_seconds) if wall_seconds else (lambda _: math.nan)
    return {
        "train_share": share(train),
        "eval_share": share(evaluation),
        "other_share": share(wall_seconds - train - evaluation) if wall_seconds
        else math.nan,
        "wall_hours": wall_seconds / 3600,
        "span_hours": span_seconds / 3600,
        "wall_text": format_duration(wall_seconds),
        "span_text": format_duration(span_seconds),
        "active_hours": active_seconds / 3600,
        "active_text": format_duration(active_seconds),
        "first_finished": _format_time(finished.min()) if len(finished) else "none",
        "last_finished": _format_time(finished.max()) if len(finished) else "none",
        "n_timed": len(wall),
    }


def busy_seconds(runs: pd.DataFrame) -> float:
    """Return the length of the union of the runs' execution intervals.

    A run executed from ``finished_at - seconds_wall`` to ``finished_at``.
    Overlapping runs (several workers) count once, and a gap with no run
    executing (the study was stopped and resumed later) does not count.
    """
    timed = runs.dropna(subset=["seconds_wall", "finished_at"])
    if timed.empty:
        return math.nan
    ends = [end.timestamp() for end in timed["finished_at"]]
    intervals = sorted(
        (end - float(wall), end) for end, wall in zip(ends, timed["seconds_wall"])
    )
    total = 0.0
    start, stop = intervals[0]
    for begin, end in intervals[1:]:
        if begin > stop:
            total += stop - start
            start, stop = begin, end
        else:
            stop = max(stop, end)
    return total + stop - start


def format_duration(seconds: float) -> str:
    """Format a duration in seconds, minutes or hours, whichever reads best."""
    if pd.isna(seconds):
        return "unknown"
    if seconds < 120:
        return f"{seconds:.0f} seconds"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} minutes"
    return f"{seconds / 3600:.2f} hours"


def _format_time(timestamp: pd.Timestamp) -> str:
    return timestamp.strftime("%Y-%m-%d %H:%M:%S UTC")


def reproducibility_values(context: Context) -> dict:
    """Return the glue values of the reproducibility chapter."""
    runs = context.runs
    values = {
        "store": str(context.path),
        "profile": context.profile,
        "n_runs": len(runs),
        "hardware": hardware_text(runs),
        "platform": describe_values(runs["platform"].dropna().tolist()),
        "versions_table_md": markdown_table(versions_table(runs)),
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
    """Return the points gradient descent on ``toy_loss`` visits, start included."""
    points = [start]
    for _ in range(steps):
        x = points[-1] - lr * toy_gradient(points[-1])
        points.append(x)
        if abs(x) > ILLUSTRATION_BOUND:
            break
    return points


def illustration() -> tuple[dict, dict]:
    """Return the example's paths by learning rate, and glue values describing them."""
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


# --- Benchmarks (benchmarks/results/*.json) ----------------------------------

BENCHMARK_RESULTS = store.REPO_ROOT / "benchmarks" / "results"


def _read_benchmark(folder: Path, name: str) -> dict | None:
    path = Path(folder) / name
    return json.loads(path.read_text()) if path.is_file() else None


def _machine_text(machine: dict) -> str:
    return (f"{machine.get('cpu_model', 'unknown CPU')}, "
            f"{machine.get('usable_cores', '?')} usable cores, torch "
            f"{machine.get('torch', '?')}, measured {machine.get('date', '?')}")


def benchmark_values(folder: Path = BENCHMARK_RESULTS) -> dict:
    """Return Markdown paragraphs and tables from the committed benchmark records.

    Each record is optional: a missing one yields a sentence naming the
    command that produces it, so the page builds before any benchmark ran.
    """
    values = {}

    threads = _read_benchmark(folder, "threads.json")
    if threads:
        different, same = threads["comparisons"]
        gaps = different["max_abs_difference_per_epoch"]
        workload = threads["workload"]
        values["threads_md"] = (
            f"The same run ({workload['model']} on {workload['dataset']}, "
            f"{workload['epochs']} epochs on {workload['train_size']} images) "
            f"executed with {different['threads'][0]} and "
            f"with {different['threads'][1]} torch threads gave final losses that are "
            f"{'bit-identical' if different['final_losses_bit_identical'] else 'not bit-identical'}: "
            f"the per-epoch validation loss differed by at most "
            f"{gaps['valid_loss']:.2e} and the test loss by at most "
            f"{gaps['test_loss']:.2e}, while validation accuracy differed by at most "
            f"{gaps['valid_accuracy']:.4f}. Executed twice with "
            f"{same['threads'][0]} threads, it gave "
            f"{'bit-identical' if same['final_losses_bit_identical'] else 'different'} "
            f"results. Machine: {_machine_text(threads['machine'])}."
        )
    else:
        values["threads_md"] = ("The thread-count check has not been run on this "
                                "checkout: `python benchmarks/threads.py`.")

    workers = _read_benchmark(folder, "workers.json")
    if workers:
        one, two = workers["workers"]["1"], workers["workers"]["2"]
        values["workers_md"] = (
            f"The `{workers['profile']}` profile ({one['runs']} runs) took "
            f"{one['wall_seconds']:.0f} s with one Dask worker and "
            f"{two['wall_seconds']:.0f} s with two, a speed-up of "
            f"{workers['speedup_2_over_1']:.2f}x; both stores held the same runs "
            f"({'with the same statuses' if workers['same_statuses'] else 'but statuses differed'}). "
            f"Machine: {_machine_text(workers['machine'])}."
        )
    else:
        values["workers_md"] = ("The worker-count benchmark has not been run on this "
                                "checkout: `python benchmarks/workers.py`.")

    speed = _read_benchmark(folder, "latest.json")
    if speed:
        rows = []
        for workload in speed["workloads"]:
            for approach, summary in workload["summaries"].items():
                rows.append({
                    "workload": workload["workload"],
                    "approach": approach,
                    "training images/s": f"{summary['train_images_per_second']:.0f}",
                    "end-to-end images/s": (
                        f"{summary['end_to_end_images_per_second']:.0f}"),
                    "% of fp32 ceiling": (
                        f"{summary['ceiling_percent']:.0f}"
                        if summary.get("ceiling_percent") is not None else ""),
                    "peak RSS (MiB)": (
                        f"{summary['peak_rss_bytes'] / 2**20:.0f}"
                        if summary.get("peak_rss_bytes") else ""),
                })
        values["speed_table_md"] = markdown_table(pd.DataFrame(rows))
        values["targets_table_md"] = markdown_table(pd.DataFrame([
            {"target": t["target"], "requirement": t["requirement"],
             "result": t["detail"]}
            for t in speed["targets"]
        ]))
        values["speed_md"] = (
            f"Measured in `{speed['mode']}` mode on {_machine_text(speed['machine'])}.")
        values["speed_why_md"] = speed_explanation(
            speed, _read_benchmark(folder, "one_thread.json"))
    else:
        values["speed_table_md"] = ""
        values["targets_table_md"] = ""
        values["speed_why_md"] = ""
        values["speed_md"] = ("The speed benchmark has not been run on this checkout: "
                              "`python benchmarks/run_all.py`.")

    options = _read_benchmark(folder, "options.json")
    if options:
        values["options_md"] = _options_text(options)
    else:
        values["options_md"] = ("The options benchmark has not been run on this "
                                "checkout: `python benchmarks/options.py`.")
    return values


def _train_gap(record: dict | None, dataset: str) -> float | None:
    """Return the notebook's training seconds over the direct call's, minus 1."""
    for workload in (record or {}).get("workloads", []):
        summaries = workload["summaries"]
        if (workload["workload"]["dataset"] == dataset
                and "notebook" in summaries and "direct" in summaries):
            return (summaries["notebook"]["train_seconds"]
                    / summaries["direct"]["train_seconds"] - 1)
    return None


def speed_explanation(speed: dict, one_thread: dict | None = None) -> str:
    """Explain the speed targets from a run_all.py record: how far a faster input
    pipeline alone could go, and where the notebook's extra time went.

    ``one_thread`` is an optional record of the same benchmark with one torch
    thread, which leaves a core free for papermill and the kernel's own threads.
    """
    parts = []
    ceiling = speed["ceiling"]
    for workload in speed["workloads"]:
        info = workload["workload"]
        name = f"{info['model']}/{info['dataset']}"
        summaries = workload["summaries"]
        model_step = ceiling["models"].get(info["dataset"], {}).get("model_step")
        idiom, notebook, direct = (summaries.get(key) for key in
                                   ("idiom", "notebook", "direct"))
        if model_step and idiom:
            bound = model_step["images_per_second"] / idiom["train_images_per_second"]
            parts.append(
                f"On {name}, the training step alone, on one batch held in memory, "
                f"runs at {model_step['images_per_second']:.0f} images/s and the idiom "
                f"trains at {idiom['train_images_per_second']:.0f} images/s, so no input "
                f"pipeline can make float32 training steps more than {bound:.2f}x faster "
                "than the idiom: the data path is not where the time goes. A 2x "
                "speed-up needs a faster step (bfloat16, measured below, or an "
                "accelerator), which changes the numerics or the hardware."
            )
        if notebook and direct:
            gap = notebook["wall_seconds"] - direct["wall_seconds"]
            train_gap = notebook["train_seconds"] - direct["train_seconds"]
            start_gap = (notebook["launch_to_call_seconds"]
                         - direct["launch_to_call_seconds"])
            parts.append(
                f"The notebook took {gap:.1f} s longer than the direct call on {name}: "
                f"{start_gap:.1f} s before the training call (papermill and the kernel starting), and "
                f"{train_gap:.1f} s in the training steps themselves, which run the "
                "same code in both; the record holds one measurement of each, so "
                "that second part is not separated from noise."
            )
            default_gap = _train_gap(speed, info["dataset"])
            spare_core_gap = _train_gap(one_thread, info["dataset"])
            if spare_core_gap is not None and default_gap is not None:
                verdict = (
                    "With a core to spare the notebook's steps are no slower, which "
                    "points at papermill's process and the kernel's own threads "
                    "competing with torch's threads for the cores"
                    if spare_core_gap < default_gap / 2 else
                    "The gap stays with a core to spare, so competition for cores "
                    "does not explain it"
                )
                parts[-1] += (
                    f" With one torch thread per run "
                    f"(`benchmarks/results/one_thread.json`), the notebook's training "
                    f"steps took {100 * spare_core_gap:+.1f}% against the direct call's, "
                    f"compared with {100 * default_gap:+.1f}% with "
                    f"{speed['settings']['threads']} threads. {verdict}; single "
                    "measurements differ by several percent either way, so this is "
                    "an indication, not a proof."
                )
    return "\n\n".join(parts)


def _options_text(options: dict) -> str:
    """Describe the bf16 and torch.compile measurements and the decision they support."""
    parts = []
    for result in options["results"]:
        rates = result["images_per_second"]
        even = result["compile_break_even_steps"]
        parts.append(
            f"{result['model']} on {result['dataset']}: float32 {rates['fp32']:,.0f} "
            f"images/s, bf16 autocast {rates['bf16']:,.0f} "
            f"({result['bf16_speedup']:.2f}x), torch.compile {rates['compile']:,.0f} "
            f"({result['compile_speedup']:.2f}x) after {result['compile_seconds']:.0f} s "
            f"of compiling, which pays off after "
            f"{'no number of steps' if even is None else f'{even:,.0f} steps'}")
    steps = options["default_run_steps"]
    pays = any(r["compile_break_even_steps"] is not None
               and r["compile_break_even_steps"] <= steps for r in options["results"])
    decision = (
        "torch.compile pays off within one run of the `default` profile"
        if pays else
        f"a run of the `default` profile has {steps} steps, so torch.compile does "
        "not pay off there and the study runs eagerly")
    machine = options["machine"]
    load = (machine.get("load_average_1_5_15_min") or [None])[0]
    busy = ""
    if load is not None and load > machine.get("usable_cores", 1):
        busy = (f" The machine was busy (1-minute load average {load:.1f} on "
                f"{machine.get('usable_cores')} cores), so the absolute speeds are low; "
                "the ratios compare rounds interleaved under the same load.")
    return (f"{'; '.join(parts)}. Hence {decision}; bf16 stays an option of its own "
            f"track (`precision: bf16`), never mixed with float32 results.{busy} "
            f"Machine: {_machine_text(machine)}.")
