"""Figures shared by the run notebook and the book, with one colour per optimizer."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np

# One fixed colour per optimizer entry, in study-file order, so an optimizer
# keeps its colour across every figure of the book. The first 13 cover the
# default study and stay distinct in a legend: black and plum follow the ten
# standard colours and navy, where two dark olives were hard to separate.
PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#000000", "#7b4173", "#843c39",
    "#b5cf6b", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363",
]


def optimizer_colours(names) -> dict[str, str]:
    """Map optimizer names, in the given order, to fixed colours."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def plot_run(record: dict):
    """Draw one run's learning curves: losses, then accuracies, against epochs.

    Validation values come from the checks within epochs, or from the epoch
    rows of a record without checks. Test values exist only after the last
    epoch, because the run evaluates the test split only there.
    """
    history = record["history"]
    samples = record["loss_samples"]
    steps_per_epoch = max(1, record["steps"] // max(1, len(history) - 1))
    checks = record.get("checks") or [
        {"epoch": h["epoch"], "valid_loss": h["valid_loss"],
         "valid_accuracy": h["valid_accuracy"]} for h in history
    ]
    tested = [h for h in history if h.get("test_accuracy") is not None]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 3.6))

    loss_axis.plot(
        [s["step"] / steps_per_epoch for s in samples],
        [s["loss"] for s in samples],
        color="0.6", lw=1, label="mini-batch (training)",
    )
    loss_axis.plot([c["epoch"] for c in checks],
                   [math.nan if c["valid_loss"] is None else c["valid_loss"]
                    for c in checks], marker="o", label="validation")
    loss_axis.plot([h["epoch"] for h in tested], [h["test_loss"] for h in tested],
                   marker="s", linestyle="none", label="test")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("cross-entropy loss (nats)")
    loss_axis.legend()

    accuracy_axis.plot([c["epoch"] for c in checks],
                       [100 * c["valid_accuracy"] for c in checks], marker="o",
                       label="validation")
    accuracy_axis.plot([h["epoch"] for h in tested],
                       [100 * h["test_accuracy"] for h in tested], marker="s",
                       linestyle="none", label="test")
    accuracy_axis.set_xlabel("epoch")
    accuracy_axis.set_ylabel("accuracy (%)")
    accuracy_axis.legend()

    config = record["config"]
    title = (f"{config['optimizer']} on {config['dataset']}, "
             f"lr={config['hyperparameters']['lr']:g}, seed {config['seed']}: "
             f"{record['status']}")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


# --- Figures of the book ------------------------------------------------------

# Shade and label of the strip under each sensitivity panel where runs without
# a final accuracy (diverged, failed, crashed) are drawn.
MISSING_STRIP = (-16.0, -3.0)
MISSING_MARKERS = {"diverged": "X", "failed": "s", "crashed": "s"}


def _whitegrid():
    # Imported here: the run notebook imports this module for plot_run, and
    # seaborn would add its import time to every run of the study.
    import seaborn as sns

    return sns.axes_style("whitegrid")


def glue_figure(name: str, figure) -> None:
    """Glue a figure for the ``{glue:figure}`` directive and close it.

    Closing keeps the inline backend from drawing the figure a second time
    under the code cell.
    """
    from myst_nb import glue

    glue(name, figure, display=False)
    plt.close(figure)


def empty_figure(message: str, figsize=(8, 2)):
    """Draw a figure that only states why there is nothing to show."""
    figure, axis = plt.subplots(figsize=figsize)
    axis.text(0.5, 0.5, message, ha="center", va="center", transform=axis.transAxes)
    axis.set_axis_off()
    return figure


def _band(axis, x, low, high, colour):
    axis.fill_between(x, low, high, color=colour, alpha=0.2, linewidth=0)


def plot_learning_curves(loss_curves, accuracy_curves, colours: dict, labels: dict):
    """Draw the tuned runs' mini-batch loss and validation accuracy against epochs.

    Lines are means over seeds; bands span the lowest to the highest seed.
    Takes the frames of ``analysis.loss_curves`` and ``analysis.accuracy_curves``.
    """
    if accuracy_curves.empty:
        return empty_figure("no completed tuned runs to draw")
    order = [name for name in colours if name in set(accuracy_curves["optimizer"])]
    with _whitegrid():
        figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for name in order:
        colour = colours[name]
        loss = loss_curves[loss_curves["optimizer"] == name]
        loss_axis.plot(loss["epoch"], loss["mean"], color=colour, lw=1.4,
                       label=labels.get(name, name))
        _band(loss_axis, loss["epoch"], loss["min"], loss["max"], colour)

        accuracy = accuracy_curves[accuracy_curves["optimizer"] == name]
        accuracy_axis.plot(accuracy["epoch"], 100 * accuracy["mean"], color=colour,
                           marker="o", lw=1.4, label=labels.get(name, name))
        _band(accuracy_axis, accuracy["epoch"], 100 * accuracy["min"],
              100 * accuracy["max"], colour)

    loss_axis.set_yscale("log")
    _plain_log_labels(loss_axis.yaxis)
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("mini-batch training loss (nats, log scale)")
    accuracy_axis.set_xlabel("epoch")
    accuracy_axis.set_ylabel("validation accuracy (%)")
    accuracy_axis.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    figure.tight_layout()
    return figure


def _plain_log_labels(axis) -> None:
    """Label a log axis with plain numbers (0.5, 2) instead of powers of ten.

    Minor ticks get labels only when the axis spans less than one decade,
    where there would otherwise be at most one label.
    """
    plain = mticker.FuncFormatter(lambda value, _: f"{value:g}")
    axis.set_major_formatter(plain)
    low, high = axis.get_view_interval()
    narrow = low > 0 and np.log10(high / low) < 1
    axis.set_minor_formatter(plain if narrow else mticker.NullFormatter())


def plot_sensitivity(sensitivity, colours: dict, labels: dict):
    """Draw final validation accuracy against learning rate, one panel per optimizer.

    Completed runs are joined by a line. Runs without a final accuracy are
    drawn as markers in a shaded strip under the 0% line, never left out and
    never drawn as zero. A black ring marks the chosen learning rate.
    Takes the frame of ``analysis.sensitivity``.
    """
    if sensitivity.empty:
        return empty_figure("no tuning runs to draw")
    order = [name for name in colours if name in set(sensitivity["optimizer"])]
    columns = min(4, len(order))
    rows = -(-len(order) // columns)
    legend_columns = 4 if columns >= 3 else 2
    legend_height = 0.5 if columns >= 3 else 0.75  # inches below the panels
    with _whitegrid():
        figure, axes = plt.subplots(
            # At least 6.4 inches wide, so the legend fits under a single panel.
            rows, columns,
            figsize=(max(3.2 * columns, 6.4), 3.0 * rows + legend_height),
            sharey=True, squeeze=False,
        )
    missing_y = sum(MISSING_STRIP) / 2
    for axis, name in zip(axes.flat, order):
        colour = colours[name]
        runs = sensitivity[sensitivity["optimizer"] == name].sort_values("lr")
        completed = runs[runs["status"] == "completed"]
        axis.plot(completed["lr"], 100 * completed["final_valid_accuracy"],
                  color=colour, marker="o", lw=1.4)
        axis.axhspan(*MISSING_STRIP, color="0.92", zorder=0)
        for status, marker in MISSING_MARKERS.items():
            missing = runs[runs["status"] == status]
            axis.scatter(missing["lr"], [missing_y] * len(missing), marker=marker,
                         color=colour if status == "diverged" else "0.4", s=40,
                         zorder=3)
        chosen = runs[runs["chosen"]]
        axis.scatter(chosen["lr"], 100 * chosen["final_valid_accuracy"], s=160,
                     facecolors="none", edgecolors="black", linewidths=1.4, zorder=4)
        axis.set_xscale("log")
        axis.set_title(labels.get(name, name), color=colour, fontsize=10)
        axis.set_ylim(MISSING_STRIP[0], 102)
        axis.set_yticks([0, 25, 50, 75, 100])
        axis.set_xlabel("learning rate (log scale)")
    for axis in axes[:, 0]:
        axis.set_ylabel("final validation accuracy (%)")
    for axis in list(axes.flat)[len(order):]:
        axis.set_axis_off()
    figure.legend(
        handles=_sensitivity_legend(), loc="lower center", ncol=legend_columns,
        frameon=False,
    )
    figure.tight_layout(rect=(0, legend_height / figure.get_figheight(), 1, 1))
    return figure


def _sensitivity_legend():
    from matplotlib.lines import Line2D

    def handle(**style):
        return Line2D([], [], linestyle="none", **style)

    return [
        handle(marker="o", color="0.3", label="completed"),
        handle(marker="X", color="0.3", label="diverged (grey strip)"),
        handle(marker="s", color="0.4", label="failed or crashed (grey strip)"),
        handle(marker="o", markersize=12, markerfacecolor="none",
               markeredgecolor="black", label="chosen learning rate"),
    ]


def plot_final_accuracy(summary, colours: dict, datasets: dict):
    """Draw mean test accuracy of the tuned runs per optimizer, one panel per dataset.

    Dots are means over seeds; lines span the lowest to the highest seed.
    ``datasets`` maps dataset keys to display names, in panel order.
    Takes the frame of ``analysis.summarise``.
    """
    ranked = summary[summary["seeds"] > 0]
    panels = [key for key in datasets if key in set(ranked["dataset"])]
    if not panels:
        return empty_figure("no completed tuned runs to draw")
    order = [name for name in colours if name in set(ranked["optimizer"])]
    with _whitegrid():
        figure, axes = plt.subplots(
            1, len(panels), figsize=(3.6 * len(panels), 1.2 + 0.32 * len(order)),
            sharey=True, squeeze=False,
        )
    for axis, dataset in zip(axes[0], panels):
        rows = ranked[ranked["dataset"] == dataset].set_index("optimizer")
        for position, name in enumerate(order):
            if name not in rows.index:
                continue
            row = rows.loc[name]
            axis.plot([100 * row["test_min"], 100 * row["test_max"]],
                      [position, position], color=colours[name], lw=2)
            axis.plot(100 * row["test_mean"], position, "o", color=colours[name])
        axis.set_title(datasets[dataset], fontsize=10)
        axis.set_xlabel("test accuracy (%)")
    labels = summary.drop_duplicates("optimizer").set_index("optimizer")["label"]
    axes[0, 0].set_yticks(range(len(order)), [labels.get(n, n) for n in order])
    axes[0, 0].invert_yaxis()
    figure.tight_layout()
    return figure


def plot_learning_rate_illustration(paths: dict, loss, x_range=(-3.2, 3.2)):
    """Draw gradient descent on a one-dimensional loss for several learning rates.

    ``paths`` maps each learning rate to the visited points; ``loss`` is the
    function. Left: the paths on the loss curve, each drawn up to its first
    point outside ``x_range``, which is drawn at the edge. Right: loss against
    step.
    """
    import seaborn as sns

    # A sequential palette without its pale end: colour encodes the size of
    # the learning rate, and stays apart from the optimizer colours.
    palette = sns.color_palette("viridis", n_colors=len(paths) + 1)[:len(paths)]
    with _whitegrid():
        figure, (curve_axis, step_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
    grid = np.linspace(*x_range, 400)
    curve_axis.plot(grid, loss(grid), color="0.3", lw=1.2)
    top = 2 * float(loss(grid).max())
    for colour, (lr, points) in zip(palette, paths.items()):
        points = np.asarray(points, dtype=float)
        outside = np.flatnonzero((points < x_range[0]) | (points > x_range[1]))
        end = outside[0] + 1 if len(outside) else len(points)
        drawn = np.clip(points[:end], *x_range)
        curve_axis.plot(drawn, loss(drawn), marker="o", markersize=3, lw=0.8,
                        color=colour, label=f"lr = {lr:g}")
        step_axis.plot(range(len(points)), np.minimum(loss(points), top),
                       marker="o", markersize=3, lw=1, color=colour,
                       label=f"lr = {lr:g}")
    curve_axis.set_xlabel("parameter x")
    curve_axis.set_ylabel("loss f(x)")
    curve_axis.set_xlim(*x_range)
    step_axis.set_yscale("log")
    step_axis.set_xlabel("step")
    step_axis.set_ylabel("loss f(x) (log scale, clipped at the top)")
    step_axis.legend(frameon=False)
    figure.tight_layout()
    return figure


# --- Figures of the two tracks -------------------------------------------------

TRACK_TITLES = {"out_of_box": "out of the box (library default lr)",
                "tuned": "tuned lr"}


def plot_track_curves(curves, colours: dict, labels: dict, target: float | None = None):
    """Draw validation accuracy against epochs for both tracks, side by side.

    Lines are means over seeds; bands are 95% bootstrap intervals of the mean.
    A dashed line marks the time-to-target threshold. Takes the frame of
    ``tracks.check_curves``.
    """
    if curves.empty:
        return empty_figure("no completed runs to draw")
    order = [name for name in colours if name in set(curves["optimizer"])]
    with _whitegrid():
        figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for axis, track in zip(axes, ("out_of_box", "tuned")):
        mine = curves[curves["track"] == track]
        for name in order:
            rows = mine[mine["optimizer"] == name].sort_values("epoch")
            if rows.empty:
                continue
            axis.plot(rows["epoch"], 100 * rows["mean"], color=colours[name],
                      lw=1.4, marker=".", label=labels.get(name, name))
            _band(axis, rows["epoch"], 100 * rows["low"].fillna(rows["mean"]),
                  100 * rows["high"].fillna(rows["mean"]), colours[name])
        if target is not None:
            axis.axhline(100 * target, color="0.3", lw=1, linestyle="--")
        axis.set_title(TRACK_TITLES[track], fontsize=10)
        axis.set_xlabel("epoch")
    axes[0].set_ylabel("validation accuracy (%)")
    handles, names = axes[1].get_legend_handles_labels()
    if not handles:
        handles, names = axes[0].get_legend_handles_labels()
    figure.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5),
                  frameon=False)
    figure.tight_layout()
    return figure


def plot_rank_heatmap(ranks, labels: dict, datasets: dict):
    """Draw each optimizer's rank per dataset and track as a heatmap.

    Cells show the rank of the mean test accuracy (1 is best) and, below it,
    its 95% bootstrap interval. Rows are sorted by the mean tuned rank.
    Takes the frame of ``tracks.all_ranks``.
    """
    if ranks.empty:
        return empty_figure("no ranks to draw")
    import seaborn as sns

    columns = [(track, dataset) for track in ("out_of_box", "tuned")
               for dataset in datasets if dataset in set(ranks["dataset"])]
    tuned = ranks[ranks["track"] == "tuned"].groupby("optimizer")["rank"].mean()
    order = list(tuned.sort_values().index) + sorted(
        set(ranks["optimizer"]) - set(tuned.index))
    values = np.full((len(order), len(columns)), np.nan)
    notes = np.full((len(order), len(columns)), "", dtype=object)
    indexed = ranks.set_index(["optimizer", "track", "dataset"])
    for i, name in enumerate(order):
        for j, (track, dataset) in enumerate(columns):
            if (name, track, dataset) in indexed.index:
                row = indexed.loc[(name, track, dataset)]
                values[i, j] = row["rank"]
                notes[i, j] = (f"{row['rank']:.0f}\n[{row['rank_low']:.0f}-"
                               f"{row['rank_high']:.0f}]")
    figure, axis = plt.subplots(figsize=(1.3 * len(columns) + 2.5,
                                         0.45 * len(order) + 1.6))
    sns.heatmap(values, annot=notes, fmt="", cmap="viridis_r", ax=axis,
                cbar_kws={"label": "rank (1 is best)"}, annot_kws={"fontsize": 7},
                linewidths=0.5, linecolor="white")
    axis.set_yticks(np.arange(len(order)) + 0.5,
                    [labels.get(name, name) for name in order], rotation=0)
    axis.set_xticks(np.arange(len(columns)) + 0.5,
                    [f"{datasets[d]}\n{'default' if t == 'out_of_box' else 'tuned'}"
                     for t, d in columns], rotation=0, fontsize=8)
    axis.set_xlabel("dataset and track")
    figure.tight_layout()
    return figure


def plot_performance_profiles(profiles, colours: dict, labels: dict,
                              unit: str = "training seconds"):
    """Draw performance profiles of time-to-target for both tracks.

    Each line is the share of (dataset, seed) problems on which the optimizer
    reached the target within a factor tau of the fastest optimizer.
    Takes the frame of ``tracks.performance_profiles``.
    """
    if profiles.empty:
        return empty_figure("no time-to-target values to draw")
    order = [name for name in colours if name in set(profiles["optimizer"])]
    with _whitegrid():
        figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for axis, track in zip(axes, ("out_of_box", "tuned")):
        mine = profiles[profiles["track"] == track]
        for name in order:
            rows = mine[mine["optimizer"] == name].sort_values("tau")
            if rows.empty:
                continue
            axis.step(rows["tau"], 100 * rows["share"], where="post",
                      color=colours[name], lw=1.4, label=labels.get(name, name))
        axis.set_xscale("log")
        _plain_log_labels(axis.xaxis)
        axis.set_title(TRACK_TITLES[track], fontsize=10)
        axis.set_xlabel(f"tau: factor over the fastest ({unit}, log scale)")
        axis.set_ylim(-2, 102)
    axes[0].set_ylabel("problems within tau of the fastest (%)")
    handles, names = axes[1].get_legend_handles_labels()
    figure.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5),
                  frameon=False)
    figure.tight_layout()
    return figure
