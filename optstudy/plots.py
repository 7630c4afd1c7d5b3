"""Figures shared by the run notebook and the book, with one colour per optimizer."""

from __future__ import annotations

import matplotlib.pyplot as plt

# One fixed colour per optimizer entry, in study-file order, so an optimizer
# keeps its colour across every figure of the book.
PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39",
    "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363",
]


def optimizer_colours(names) -> dict[str, str]:
    """Map optimizer names, in the given order, to fixed colours."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def plot_run(record: dict):
    """Draw one run's learning curves: mini-batch loss, then accuracy per epoch."""
    history = record["history"]
    samples = record["loss_samples"]
    steps_per_epoch = max(1, record["steps"] // max(1, len(history) - 1))
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 3.6))

    loss_axis.plot(
        [s["step"] / steps_per_epoch for s in samples],
        [s["loss"] for s in samples],
        color="0.6", lw=1, label="mini-batch (training)",
    )
    for key, label in (("valid_loss", "validation"), ("test_loss", "test")):
        loss_axis.plot([h["epoch"] for h in history], [h[key] for h in history],
                       marker="o", label=label)
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("cross-entropy loss (nats)")
    loss_axis.legend()

    for key, label in (("valid_accuracy", "validation"), ("test_accuracy", "test")):
        accuracy_axis.plot([h["epoch"] for h in history],
                           [100 * h[key] for h in history], marker="o", label=label)
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
