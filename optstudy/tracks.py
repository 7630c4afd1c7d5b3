"""The two tracks of the study and the verdicts drawn from them.

- *out of the box*: every seed at the library's default learning rate;
- *tuned*: every seed at the learning rate the search chose on validation.

A run can belong to both tracks (the default rate is usually a grid point and
can be the chosen one); it is then counted once in each. Every aggregate here
is over seeds, with a 95% bootstrap interval (:mod:`optstudy.stats`), and a
cell with fewer completed seeds than the profile asks for is flagged as
incomplete instead of being averaged as if it were whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import stats
from .analysis import (
    DATASET_NAMES, FAILED_STATUSES, SUPERSEDED_PHASE, Context, choose_lr,
    count_text, markdown_table, same_lr,
)

TRACKS = ("out_of_box", "tuned")
TRACK_NAMES = {"out_of_box": "out of the box", "tuned": "tuned"}
REFERENCE = "adam"  # paired differences are taken against this entry
TAUS = np.round(np.logspace(0, math.log10(8), 31), 4)  # performance-profile factors

TRACK_COLUMNS = [
    "run_id", "dataset", "optimizer", "track", "lr", "seed", "status",
    "final_valid_accuracy", "final_test_accuracy", "steps", "gradient_evaluations",
    "optimizer_state_bytes", "seconds_train", "target_step", "target_seconds",
]


def expected_seeds(context: Context) -> list[int]:
    """Return the seeds the store's profile requests.

    When the store's profile is not in the study file, return the stored seeds.
    """
    profiles = context.study.profiles
    if context.profile in profiles:
        return list(profiles[context.profile].seeds)
    return sorted(int(s) for s in context.runs["seed"].unique())


def load_checks(connection, run_ids) -> pd.DataFrame:
    """Return the validation checks (step, training seconds, accuracy) of the runs."""
    try:
        frame = pd.read_sql_query("SELECT * FROM checks ORDER BY run_id, step",
                                  connection)
    except pd.errors.DatabaseError:
        # A store written before runs recorded checks: no time-to-target.
        return pd.DataFrame(columns=["run_id", "step", "epoch", "train_seconds",
                                     "valid_loss", "valid_accuracy"])
    return frame[frame["run_id"].isin(set(run_ids))].reset_index(drop=True)


def track_runs(context: Context, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Return one row per (track, run) with time-to-target filled in.

    ``target_step`` and ``target_seconds`` are the step and training seconds
    at the first validation check at or above the dataset's target; NaN when
    the run never reached it (a diverged run never does).
    """
    runs = context.runs if runs is None else runs
    live = runs[runs["phase"] != SUPERSEDED_PHASE]
    seeds = expected_seeds(context)
    parts = []
    for (dataset, optimizer), cell in live.groupby(["dataset", "optimizer"],
                                                   sort=False):
        cell = cell[cell["seed"].isin(seeds)]
        tuned_lr = choose_lr(cell)
        if tuned_lr is not None:
            parts.append(cell[same_lr(cell["lr"], tuned_lr)].assign(track="tuned"))
        entry = context.study.optimizers.get(optimizer)
        if entry is not None:
            at_default = cell[same_lr(cell["lr"], entry.lr_default)]
            parts.append(at_default.assign(track="out_of_box"))
    if not parts:
        return pd.DataFrame(columns=TRACK_COLUMNS)
    frame = pd.concat(parts, ignore_index=True)
    checks = load_checks(context.connection, frame["run_id"])
    grouped = dict(tuple(checks.groupby("run_id")))
    steps, seconds = [], []
    for _, row in frame.iterrows():
        target = context.study.targets.get(row["dataset"])
        mine = grouped.get(row["run_id"])
        if target is None or mine is None or row["status"] != "completed":
            steps.append(math.nan)
            seconds.append(math.nan)
            continue
        step, second = stats.first_reach(mine, target)
        steps.append(step)
        seconds.append(second)
    frame["target_step"] = steps
    frame["target_seconds"] = seconds
    return frame[TRACK_COLUMNS]


def _median(values) -> float:
    values = [v for v in values if not pd.isna(v)]
    return float(np.median(values)) if values else math.nan


def cell_summary(tracks: pd.DataFrame, seeds: list[int]) -> pd.DataFrame:
    """Return one row per (dataset, optimizer, track) with intervals and flags."""
    rows = []
    for (dataset, optimizer, track), cell in tracks.groupby(
            ["dataset", "optimizer", "track"], sort=False):
        completed = cell[cell["status"] == "completed"]
        mean, low, high = stats.bootstrap_mean(completed["final_test_accuracy"])
        reached = completed["target_step"].notna()
        rows.append({
            "dataset": dataset, "optimizer": optimizer, "track": track,
            "lr": float(cell["lr"].iloc[0]),
            "expected": len(seeds),
            "completed": len(completed),
            "diverged": int((cell["status"] == "diverged").sum()),
            "failed": int(cell["status"].isin(FAILED_STATUSES).sum()),
            "complete": len(completed) >= len(seeds),
            "test_mean": mean, "test_low": low, "test_high": high,
            "valid_mean": completed["final_valid_accuracy"].mean()
            if len(completed) else math.nan,
            "reached": int(reached.sum()),
            "target_step": _median(completed["target_step"]),
            "target_seconds": _median(completed["target_seconds"]),
            "gradient_evaluations": _median(completed["gradient_evaluations"]),
            "state_bytes": _median(cell["optimizer_state_bytes"]),
        })
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


CELL_COLUMNS = [
    "dataset", "optimizer", "track", "lr", "expected", "completed", "diverged",
    "failed", "complete", "test_mean", "test_low", "test_high", "valid_mean",
    "reached", "target_step", "target_seconds", "gradient_evaluations", "state_bytes",
]


def _values(tracks: pd.DataFrame, dataset: str, track: str) -> pd.DataFrame:
    mine = tracks[(tracks["dataset"] == dataset) & (tracks["track"] == track)
                  & (tracks["status"] == "completed")]
    return mine.rename(columns={"final_test_accuracy": "value"})[
        ["optimizer", "seed", "value"]]


def paired_table(tracks: pd.DataFrame, dataset: str, track: str) -> pd.DataFrame:
    """Test-accuracy differences against Adam on shared seeds, for one track."""
    return stats.paired_differences(_values(tracks, dataset, track), REFERENCE)


def rank_table(tracks: pd.DataFrame, dataset: str, track: str) -> pd.DataFrame:
    """Ranks by mean test accuracy with bootstrap intervals, for one track."""
    return stats.bootstrap_ranks(_values(tracks, dataset, track))


def all_ranks(tracks: pd.DataFrame) -> pd.DataFrame:
    """Ranks of every (dataset, track), one row per optimizer in each."""
    parts = []
    for dataset in [d for d in DATASET_NAMES if d in set(tracks["dataset"])]:
        for track in TRACKS:
            ranks = rank_table(tracks, dataset, track)
            if not ranks.empty:
                parts.append(ranks.assign(dataset=dataset, track=track))
    if not parts:
        return pd.DataFrame(columns=["optimizer", "rank", "rank_low", "rank_high",
                                     "p_first", "dataset", "track"])
    return pd.concat(parts, ignore_index=True)


def mean_ranks(ranks: pd.DataFrame, track: str) -> pd.Series:
    """Mean rank over datasets, for optimizers ranked on every dataset of the track."""
    mine = ranks[ranks["track"] == track]
    datasets = mine["dataset"].nunique()
    counts = mine.groupby("optimizer")["rank"].count()
    means = mine.groupby("optimizer")["rank"].mean()
    return means[counts == datasets].sort_values()


def profile_times(tracks: pd.DataFrame, track: str,
                  measure: str = "target_seconds") -> pd.DataFrame:
    """Return time-to-target with one row per (dataset, seed) problem, one column per optimizer.

    A run that did not reach the target, diverged, failed or is missing counts
    as not reached (infinity).
    """
    mine = tracks[tracks["track"] == track].copy()
    # Missed targets become infinite before pivoting, so a problem that no
    # optimizer solved keeps its row and counts against every profile.
    mine[measure] = mine[measure].astype(float).fillna(np.inf)
    table = mine.pivot_table(index=["dataset", "seed"], columns="optimizer",
                             values=measure, aggfunc="first")
    return table.reindex(columns=sorted(mine["optimizer"].unique())).fillna(np.inf)


def performance_profiles(tracks: pd.DataFrame,
                         measure: str = "target_seconds") -> pd.DataFrame:
    """Performance profiles of both tracks, stacked with a ``track`` column."""
    parts = []
    for track in TRACKS:
        times = profile_times(tracks, track, measure)
        if not times.empty:
            parts.append(stats.performance_profile(times, TAUS).assign(track=track))
    if not parts:
        return pd.DataFrame(columns=["optimizer", "tau", "share", "track"])
    return pd.concat(parts, ignore_index=True)


def check_curves(tracks: pd.DataFrame, checks: pd.DataFrame,
                 dataset: str) -> pd.DataFrame:
    """Mean validation accuracy per (track, optimizer, epoch) with a bootstrap band."""
    mine = tracks[(tracks["dataset"] == dataset) & (tracks["status"] == "completed")]
    merged = checks.merge(mine[["run_id", "optimizer", "track"]], on="run_id")
    rows = []
    for (track, optimizer, epoch), group in merged.groupby(
            ["track", "optimizer", "epoch"]):
        mean, low, high = stats.bootstrap_mean(group["valid_accuracy"],
                                               resamples=1_000)
        rows.append([track, optimizer, epoch, mean, low, high, len(group)])
    return pd.DataFrame(rows, columns=["track", "optimizer", "epoch", "mean", "low",
                                       "high", "count"])


# --- Tables and sentences for the pages ------------------------------------


def _interval(mean, low, high, scale=100.0, digits=1, signed=False) -> str:
    if pd.isna(mean):
        return ""
    sign = "+" if signed else ""
    text = f"{scale * mean:{sign}.{digits}f}"
    if not pd.isna(low):
        text += f" [{scale * low:{sign}.{digits}f}, {scale * high:{sign}.{digits}f}]"
    return text


def _seeds_text(row) -> str:
    text = f"{int(row['completed'])} of {int(row['expected'])}"
    extra = []
    if row["diverged"]:
        extra.append(f"{int(row['diverged'])} diverged")
    if row["failed"]:
        extra.append(f"{int(row['failed'])} failed")
    if not row["complete"]:
        extra.append("incomplete")
    return text + (f" ({', '.join(extra)})" if extra else "")


def accuracy_table(summary: pd.DataFrame, tracks: pd.DataFrame, dataset: str,
                   labels: dict[str, str]) -> pd.DataFrame:
    """Both tracks side by side: test accuracy with intervals, Adam gap, rank, gain."""
    mine = summary[summary["dataset"] == dataset]
    tuned = mine[mine["track"] == "tuned"].set_index("optimizer")
    box = mine[mine["track"] == "out_of_box"].set_index("optimizer")
    paired = paired_table(tracks, dataset, "tuned").set_index("optimizer")
    ranks = rank_table(tracks, dataset, "tuned").set_index("optimizer")
    names = list(dict.fromkeys(list(ranks.index) + list(tuned.index) + list(box.index)))
    rows = []
    for name in names:
        t = tuned.loc[name] if name in tuned.index else None
        b = box.loc[name] if name in box.index else None
        rank = ranks.loc[name] if name in ranks.index else None
        pair = paired.loc[name] if name in paired.index else None
        gain = (t["test_mean"] - b["test_mean"]) if t is not None and b is not None \
            else math.nan
        rows.append({
            "rank [95% CI]": "" if rank is None else
            f"{rank['rank']:.0f} [{rank['rank_low']:.0f}, {rank['rank_high']:.0f}]",
            "optimizer": labels.get(name, name),
            "tuned lr": "none" if t is None else f"{t['lr']:g}",
            "tuned seeds": "" if t is None else _seeds_text(t),
            "tuned test acc. (%) [95% CI]": "" if t is None else
            _interval(t["test_mean"], t["test_low"], t["test_high"]),
            "vs Adam (points) [95% CI]": "reference" if name == REFERENCE else
            ("" if pair is None else
             _interval(pair["mean"], pair["low"], pair["high"], signed=True)),
            "default lr": "" if b is None else f"{b['lr']:g}",
            "default seeds": "" if b is None else _seeds_text(b),
            "out-of-the-box test acc. (%) [95% CI]": "" if b is None else
            _interval(b["test_mean"], b["test_low"], b["test_high"]),
            "tuning gain (points)": "" if pd.isna(gain) else f"{100 * gain:+.1f}",
            "tuned runs": _run_links(tracks, dataset, name),
        })
    return pd.DataFrame(rows)


def _run_links(tracks: pd.DataFrame, dataset: str, optimizer: str) -> str:
    """Link each seed of a tuned cell to its page in the run gallery."""
    from .gallery import run_page_link

    mine = tracks[(tracks["dataset"] == dataset) & (tracks["optimizer"] == optimizer)
                  & (tracks["track"] == "tuned")]
    seeds = sorted(int(seed) for seed in mine["seed"].unique())
    return " ".join(f"[seed {seed}]({run_page_link(dataset, optimizer, seed)})"
                    for seed in seeds)


def cost_table(summary: pd.DataFrame, dataset: str,
               labels: dict[str, str]) -> pd.DataFrame:
    """Time-to-target and cost per optimizer and track, in the book's optimizer order."""
    mine = summary[summary["dataset"] == dataset].set_index(["optimizer", "track"])
    rows = []
    for name in labels:
        for track in TRACKS:
            if (name, track) not in mine.index:
                continue
            row = mine.loc[(name, track)]
            rows.append({
                "optimizer": labels[name],
                "track": TRACK_NAMES[track],
                "reached target": f"{int(row['reached'])} of {int(row['expected'])}",
                "median steps to target": "" if pd.isna(row["target_step"])
                else f"{row['target_step']:.0f}",
                "median seconds to target": "" if pd.isna(row["target_seconds"])
                else f"{row['target_seconds']:.1f}",
                "gradient evaluations per run": ""
                if pd.isna(row["gradient_evaluations"])
                else f"{row['gradient_evaluations']:.0f}",
                "optimizer state (KiB)": "" if pd.isna(row["state_bytes"])
                else f"{row['state_bytes'] / 1024:,.0f}",
            })
    return pd.DataFrame(rows)


def rank_overview(ranks: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """Rank [interval] per dataset for both tracks, and the mean rank per track."""
    datasets = [d for d in DATASET_NAMES if d in set(ranks["dataset"])]
    rows = []
    means = {track: mean_ranks(ranks, track) for track in TRACKS}
    order = list(means["tuned"].index) + sorted(
        set(ranks["optimizer"]) - set(means["tuned"].index))
    for name in order:
        row = {"optimizer": labels.get(name, name)}
        for track in TRACKS:
            for dataset in datasets:
                hit = ranks[(ranks["optimizer"] == name) & (ranks["dataset"] == dataset)
                            & (ranks["track"] == track)]
                key = f"{DATASET_NAMES[dataset]}, {TRACK_NAMES[track]}"
                row[key] = "" if hit.empty else (
                    f"{hit['rank'].iloc[0]:.0f} [{hit['rank_low'].iloc[0]:.0f}, "
                    f"{hit['rank_high'].iloc[0]:.0f}]")
            mean = means[track].get(name)
            row[f"mean rank, {TRACK_NAMES[track]}"] = "" if mean is None \
                else f"{mean:.1f}"
        rows.append(row)
    return pd.DataFrame(rows)


def _list(names: list[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def first_choice_sentence(ranks: pd.DataFrame, labels: dict[str, str]) -> str:
    """Say which optimizer to try first: the best mean rank out of the box."""
    means = mean_ranks(ranks, "out_of_box")
    if means.empty:
        return ("No optimizer has completed out-of-the-box runs on every dataset "
                "yet, so this study cannot yet say which one to try first.")
    best = means.index[0]
    tied = [name for name in means.index if means[name] == means[best]]
    mine = ranks[(ranks["track"] == "out_of_box")]
    datasets = mine["dataset"].nunique()
    # Optimizers whose rank interval reaches the leader's rank on every dataset
    # cannot be distinguished from it with these seeds.
    close = []
    for name in means.index[len(tied):]:
        overlap = True
        for dataset in mine["dataset"].unique():
            a = mine[(mine["optimizer"] == best) & (mine["dataset"] == dataset)]
            b = mine[(mine["optimizer"] == name) & (mine["dataset"] == dataset)]
            if b["rank_low"].iloc[0] > a["rank_high"].iloc[0]:
                overlap = False
        if overlap:
            close.append(labels.get(name, name))
    leaders = _list([labels.get(name, name) for name in tied])
    text = (f"At its library defaults, {leaders} had the best mean rank "
            f"({means[best]:.1f}) over {count_text([datasets], 'dataset')}, so "
            f"{'it is' if len(tied) == 1 else 'they are'} the one to try first.")
    if close:
        text += (f" With these seeds, {_list(close)} cannot be told apart from it: "
                 "their rank intervals overlap its own on every dataset.")
    else:
        text += " No other optimizer's rank interval overlaps it on every dataset."
    return text


def tuning_gain_sentence(summary: pd.DataFrame, labels: dict[str, str]) -> str:
    """Say how much tuning the learning rate bought, from both tracks' means."""
    tuned = summary[summary["track"] == "tuned"].set_index(["dataset", "optimizer"])
    box = summary[summary["track"] == "out_of_box"].set_index(["dataset", "optimizer"])
    shared = tuned.index.intersection(box.index)
    gains = (tuned.loc[shared, "test_mean"] - box.loc[shared, "test_mean"]).dropna()
    if gains.empty:
        return ("How much tuning buys cannot be told yet: no optimizer has both "
                "tracks on any dataset.")
    dataset, optimizer = gains.idxmax()
    unchanged = int((gains.abs() < 1e-12).sum())
    text = (f"Tuning the learning rate raised mean test accuracy by a median of "
            f"{100 * gains.median():.1f} percentage points over the "
            f"{len(gains)} (dataset, optimizer) pairs, and by most for "
            f"{labels.get(optimizer, optimizer)} on {DATASET_NAMES.get(dataset, dataset)} "
            f"({100 * gains.max():+.1f} points).")
    if unchanged:
        text += (f" In {unchanged} of them the search chose the default learning "
                 "rate, so tuning changed nothing.")
    return text


def best_default_sentence(summary: pd.DataFrame, labels: dict[str, str]) -> str:
    """Compare the best optimizer at its defaults with Adam tuned, per dataset.

    This is the Crowded Valley benchmark's question: does trying several
    optimizers at their defaults do as well as tuning one?
    """
    parts = []
    wins = 0
    for dataset in [d for d in DATASET_NAMES if d in set(summary["dataset"])]:
        mine = summary[summary["dataset"] == dataset]
        box = mine[(mine["track"] == "out_of_box")].dropna(subset=["test_mean"])
        adam = mine[(mine["track"] == "tuned") & (mine["optimizer"] == REFERENCE)]
        if box.empty or adam.empty or pd.isna(adam["test_mean"].iloc[0]):
            continue
        best = box.loc[box["test_mean"].idxmax()]
        tuned = adam["test_mean"].iloc[0]
        wins += best["test_mean"] >= tuned
        parts.append(
            f"{DATASET_NAMES[dataset]}: {labels.get(best['optimizer'], best['optimizer'])}"
            f" at its defaults {100 * best['test_mean']:.1f}%, tuned Adam "
            f"{100 * tuned:.1f}%")
    if not parts:
        return ""
    verdict = ("did at least as well as tuning Adam on every dataset"
               if wins == len(parts) else
               f"did at least as well as tuning Adam on {wins} of {len(parts)} datasets")
    return (f"Picking the best of all optimizers at their defaults {verdict} "
            f"({'; '.join(parts)}).")


@dataclass
class TrackReport:
    """The two tracks of one store: runs, per-cell summary and ranks."""

    tracks: pd.DataFrame
    summary: pd.DataFrame
    ranks: pd.DataFrame
    seeds: list[int]


def track_report(context: Context) -> TrackReport:
    tracks = track_runs(context)
    seeds = expected_seeds(context)
    return TrackReport(tracks, cell_summary(tracks, seeds), all_ranks(tracks), seeds)


def _table_md(frame: pd.DataFrame, empty: str) -> str:
    """Render a table, or a one-cell table that gives the reason it has no rows.

    A ``{table}`` directive needs exactly one table, so an empty frame still
    renders as one.
    """
    if frame.empty:
        frame = pd.DataFrame({"result": [empty]})
    return markdown_table(frame)


def dataset_track_values(report: TrackReport, context: Context,
                         dataset: str) -> dict:
    """Glue values of one results chapter's two-track section."""
    summary = report.summary
    mine = summary[summary["dataset"] == dataset]
    incomplete = mine[~mine["complete"]]
    profile = context.study.profiles.get(context.profile)
    return {
        "track_seeds": count_text([len(report.seeds)], "seed"),
        "checks_text": count_text([profile.evals_per_epoch], "time") if profile
        else "unknown",
        "target": context.study.targets.get(dataset, math.nan),
        "n_incomplete": len(incomplete),
        "track_table_md": _table_md(
            accuracy_table(summary, report.tracks, dataset, context.labels),
            "no completed runs on this dataset yet"),
        "cost_table_md": _table_md(cost_table(summary, dataset, context.labels),
                                   "no completed runs on this dataset yet"),
    }


def cross_dataset_values(report: TrackReport, context: Context) -> dict:
    """Glue values of the cross-dataset chapter."""
    return {
        "first_choice": first_choice_sentence(report.ranks, context.labels),
        "tuning_gain": tuning_gain_sentence(report.summary, context.labels),
        "best_default": best_default_sentence(report.summary, context.labels),
        "rank_overview_md": _table_md(rank_overview(report.ranks, context.labels),
                                      "no ranked optimizers yet"),
        "track_seeds": count_text([len(report.seeds)], "seed"),
    }
