"""Figures of the loss-landscapes chapter: contours, paths and an animation.

Optimizers keep the colours of every other figure of the book
(:func:`optstudy.plots.optimizer_colours`, in study-file order).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors as mcolors

from .landscapes import Landscape, get_landscape
from .plots import optimizer_colours
from .study import load_study

GRID_POINTS = 300
FIGURE_SIZE = (9.5, 6)  # inches
# The axes keep the left part of the figure, and the legend the rest.
LEGEND_RECT = (0.02, 0, 0.74, 1)


def study_colours(names=None) -> dict[str, str]:
    """Return the book's colour of each optimizer: study-file order, then ``names``."""
    order = list(load_study().optimizers)
    order += [name for name in names or [] if name not in order]
    return optimizer_colours(order)


def draw_contours(axis, landscape: Landscape) -> None:
    """Fill the axis with the landscape's contours and mark its minima and start."""
    x_min, x_max, y_min, y_max = landscape.extent
    x, y = np.meshgrid(np.linspace(x_min, x_max, GRID_POINTS),
                       np.linspace(y_min, y_max, GRID_POINTS))
    z = landscape.function(x, y)
    if landscape.log_contours:
        # A log scale shows the floor of a valley as well as its steep walls.
        levels = np.geomspace(max(z.min(), 1e-3), z.max(), 25)
        axis.contourf(x, y, np.maximum(z, levels[0]), levels=levels, cmap="Greys_r",
                      norm=mcolors.LogNorm(), alpha=0.7)
    else:
        axis.contourf(x, y, z, levels=25, cmap="Greys_r", alpha=0.7)
    for minimum in landscape.minima:
        mx, my = minimum.point
        if x_min <= mx <= x_max and y_min <= my <= y_max:
            axis.plot(mx, my, marker="*", color="black", markersize=9, linestyle="none")
            if len(landscape.minima) <= 6:
                axis.annotate(minimum.name, (mx, my), textcoords="offset points",
                              xytext=(6, 6), fontsize=9, weight="bold")
    axis.plot(*landscape.start, marker="o", color="white", markeredgecolor="black",
              markersize=8, linestyle="none")
    axis.set_xlim(x_min, x_max)
    axis.set_ylim(y_min, y_max)
    axis.set_xlabel("parameter x (unitless)")
    axis.set_ylabel("parameter y (unitless)")
    axis.set_aspect("equal")


def plot_paths(landscape_key: str, records: dict[str, dict], axis=None):
    """Draw each optimizer's chosen path on the landscape's contours.

    ``records`` maps optimizer names to records of
    :func:`optstudy.landscapes.run_optimizer`. The white dot is the start, the
    black stars are the known minima.
    """
    landscape = get_landscape(landscape_key)
    colours = study_colours(records)
    if axis is None:
        figure, axis = plt.subplots(figsize=FIGURE_SIZE)
    else:
        figure = axis.figure
    draw_contours(axis, landscape)
    for name in colours:
        if name not in records:
            continue
        record = records[name]
        path = np.asarray(record["chosen"]["path"])
        if len(path) == 0:
            continue
        axis.plot(path[:, 0], path[:, 1], color=colours[name], lw=1.4,
                  label=f"{record['label']} (lr {record['chosen']['lr']:g})")
        axis.plot(path[-1, 0], path[-1, 1], marker="o", color=colours[name], markersize=5)
    axis.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, fontsize=8)
    axis.set_title(landscape.label)
    figure.tight_layout(rect=LEGEND_RECT)
    return figure


def save_animation(landscape_key: str, records: dict[str, dict], target: str | Path,
                   frames: int = 60, fps: int = 10) -> Path:
    """Write a GIF of all chosen paths growing step by step, with Pillow.

    Paths are sampled at ``frames`` evenly spaced steps, and a path that ended
    earlier (diverged) stays at its last point.
    """
    from matplotlib.animation import FuncAnimation, PillowWriter

    landscape = get_landscape(landscape_key)
    colours = study_colours(records)
    paths = {name: np.asarray(records[name]["chosen"]["path"]) for name in colours
             if name in records and records[name]["chosen"]["path"]}
    longest = max(len(points) for points in paths.values())
    steps = np.unique(np.linspace(0, longest - 1, frames).astype(int))

    figure, axis = plt.subplots(figsize=FIGURE_SIZE)
    draw_contours(axis, landscape)
    lines, heads = {}, {}
    for name in paths:
        label = records[name]["label"]
        (lines[name],) = axis.plot([], [], color=colours[name], lw=1.4, label=label)
        (heads[name],) = axis.plot([], [], marker="o", color=colours[name], markersize=6)
    axis.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, fontsize=8)
    title = axis.set_title("")
    figure.tight_layout(rect=LEGEND_RECT)

    def draw(step):
        for name, points in paths.items():
            shown = points[: min(step, len(points) - 1) + 1]
            lines[name].set_data(shown[:, 0], shown[:, 1])
            heads[name].set_data([shown[-1, 0]], [shown[-1, 1]])
        title.set_text(f"{landscape.label}: step {step}")
        return [*lines.values(), *heads.values(), title]

    animation = FuncAnimation(figure, draw, frames=steps, blit=False)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # At 72 dpi the chapter's GIF (13 paths, 60 frames) is about 0.4 MB.
    animation.save(target, writer=PillowWriter(fps=fps), dpi=72)
    plt.close(figure)
    return target
