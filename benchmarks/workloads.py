"""The work every benchmark measurement does, and the command-line form it travels in.

A workload fixes the dataset (and so the model), the image counts of the three
splits, the epochs and the batch size. The orchestrator (``run_all.py``) hands
one to each measurement script as command-line flags, so that every approach
trains the same model on the same images for the same number of steps.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BATCH_SIZE = 128
LR = 1e-3  # Adam's default learning rate, used by every approach


def use_this_checkout() -> None:
    """Put this checkout's repository root first on ``sys.path``.

    An editable install of ``optstudy`` may point at another checkout. Call this
    before importing ``optstudy`` so the benchmark measures the code beside it.
    """
    root = str(REPO_ROOT)
    if sys.path[:1] != [root]:
        sys.path.insert(0, root)


def check_package_location(module) -> None:
    """Raise when ``optstudy`` was imported from outside this checkout."""
    location = Path(module.__file__).resolve()
    if REPO_ROOT not in location.parents:
        raise RuntimeError(
            f"optstudy was imported from {location}, not from {REPO_ROOT}: "
            "call use_this_checkout() before the first import of optstudy"
        )


def child_environment() -> dict:
    """Return the environment for child processes, with this checkout on PYTHONPATH."""
    paths = [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}


@dataclass(frozen=True)
class Workload:
    """One dataset's training job: the same for every approach that runs it."""

    dataset: str  # mnist (model 2c2d) or cifar10 (model 3c3d)
    train_size: int | None  # None: every training image not in validation
    valid_size: int
    test_size: int | None  # None: the whole test set
    epochs: int
    batch_size: int = BATCH_SIZE

    @property
    def model(self) -> str:
        return {"mnist": "2c2d", "fashion_mnist": "2c2d", "cifar10": "3c3d"}[
            self.dataset
        ]

    def train_images(self) -> int:
        """Return the training images per epoch (the split rule of ``load_dataset``)."""
        total = {"mnist": 60_000, "fashion_mnist": 60_000, "cifar10": 50_000}[
            self.dataset
        ]
        available = total - self.valid_size
        return available if self.train_size is None else self.train_size

    def steps(self) -> int:
        return self.epochs * math.ceil(self.train_images() / self.batch_size)

    def trained_images(self) -> int:
        """Return the images passed through a training step over the whole run."""
        return self.epochs * self.train_images()

    def describe(self) -> str:
        test = "all" if self.test_size is None else f"{self.test_size:,}"
        return (
            f"{self.model} on {self.dataset}: {self.steps()} steps of "
            f"{self.batch_size} images ({self.epochs} epoch(s) of "
            f"{self.train_images():,} images); validation {self.valid_size:,} "
            f"and test {test} images evaluated before training and after each epoch"
        )

    def run_config(self):
        """Return the project's ``RunConfig`` (Adam, lr 1e-3, seed 0) for this work."""
        from optstudy.train import RunConfig

        return RunConfig(
            dataset=self.dataset,
            optimizer="adam",
            optimizer_class="torch.optim.Adam",
            hyperparameters={"lr": LR},
            seed=0,
            epochs=self.epochs,
            batch_size=self.batch_size,
            train_size=self.train_size,
            valid_size=self.valid_size,
            test_size=self.test_size,
        )

    def to_arguments(self) -> list[str]:
        """Return the flags that ``add_workload_arguments`` parses back into this."""
        arguments = [
            "--dataset", self.dataset,
            "--valid-size", str(self.valid_size),
            "--epochs", str(self.epochs),
            "--batch-size", str(self.batch_size),
        ]
        if self.train_size is not None:
            arguments += ["--train-size", str(self.train_size)]
        if self.test_size is not None:
            arguments += ["--test-size", str(self.test_size)]
        return arguments

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "model": self.model,
            "steps": self.steps(),
            "trained_images": self.trained_images(),
        }


# Full mode: one epoch over every training image, at the RunConfig defaults for
# the validation and test splits. The papermill overhead target applies to runs
# of 60 s or more, and these runs are estimated at 2 to 4 minutes on 2 cores.
FULL_WORKLOADS = {
    "mnist": Workload("mnist", train_size=None, valid_size=5000, test_size=None,
                      epochs=1),
    "cifar10": Workload("cifar10", train_size=None, valid_size=5000, test_size=None,
                        epochs=1),
}
# Quick mode: the same code paths with 5 steps and small evaluation splits.
QUICK_WORKLOADS = {
    name: Workload(name, train_size=5 * BATCH_SIZE, valid_size=256, test_size=256,
                   epochs=1)
    for name in FULL_WORKLOADS
}


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of one workload, the thread count and the data root."""
    parser.add_argument("--dataset", required=True, choices=["mnist", "cifar10"])
    parser.add_argument("--train-size", type=int, default=None,
                        help="training images per epoch (default: all not in "
                        "validation)")
    parser.add_argument("--valid-size", type=int, default=5000,
                        help="validation images carved from the training set")
    parser.add_argument("--test-size", type=int, default=None,
                        help="test images (default: the whole test set)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--threads", type=int, required=True,
                        help="torch CPU threads (torch.set_num_threads)")
    parser.add_argument("--data-dir", required=True,
                        help="the project's data root (MNIST/raw, "
                        "cifar-10-batches-bin)")
    parser.add_argument("--launched-at", type=float, default=None,
                        help="wall-clock time (time.time(), seconds) at which the "
                        "caller launched this process; default: when it starts")
    parser.add_argument("--output", required=True,
                        help="JSON file to write the measurement to")


def workload_from_arguments(arguments: argparse.Namespace) -> Workload:
    return Workload(
        dataset=arguments.dataset,
        train_size=arguments.train_size,
        valid_size=arguments.valid_size,
        test_size=arguments.test_size,
        epochs=arguments.epochs,
        batch_size=arguments.batch_size,
    )
