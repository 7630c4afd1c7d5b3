"""Tests of the zoo table on hand-made runs."""

from __future__ import annotations

import math
import textwrap

import pandas as pd
import pytest

from optstudy.study import load_study
from optstudy.zoo import never_ran, zoo_table

STUDY = """
optimizers:
  adam: {class: torch.optim.Adam, label: Adam}
  sgd: {class: torch.optim.SGD, label: SGD, hyperparameters: {lr: 0.01}}
  kron: {class: pytorch_optimizer.kron, label: Kron}
profiles:
  zoo:
    datasets: [mnist]
    optimizers: all
    lr_grid: {points: 3, step_decades: 1}
    max_extensions: 0
    seeds: [0]
    epochs: 1
    batch_size: 64
    valid_size: 500
"""


@pytest.fixture
def study(tmp_path):
    path = tmp_path / "zoo.yml"
    path.write_text(textwrap.dedent(STUDY))
    return load_study(path)


def run(optimizer, lr, status, valid=None, test=None, error=None):
    return {
        "optimizer": optimizer, "lr": lr, "status": status,
        "final_valid_accuracy": valid, "final_valid_loss": 1.0 if valid else None,
        "final_test_accuracy": test, "gradient_evaluations": 16,
        "optimizer_state_bytes": 2048, "target_step": 8 if valid else math.nan,
        "error": error,
    }


@pytest.fixture
def runs():
    return pd.DataFrame([
        run("adam", 1e-4, "completed", 0.80, 0.79),
        run("adam", 1e-3, "completed", 0.90, 0.88),
        run("adam", 1e-2, "diverged"),
        run("sgd", 1e-3, "completed", 0.50, 0.52),
        run("sgd", 1e-2, "completed", 0.70, 0.69),
        run("sgd", 1e-1, "completed", 0.60, 0.61),
        run("kron", 1e-4, "crashed", error="the kernel died"),
        run("kron", 1e-3, "crashed", error="the kernel died"),
    ])


def test_zoo_table_sorts_best_first(runs, study):
    table = zoo_table(runs, study, 0.85)
    assert list(table["optimizer"]) == ["Adam", "SGD"]


def test_zoo_table_picks_best_lr_on_validation(runs, study):
    table = zoo_table(runs, study, 0.85).set_index("optimizer")
    assert table.loc["Adam", "best lr"] == pytest.approx(1e-3)
    assert table.loc["SGD", "best lr"] == pytest.approx(1e-2)


def test_zoo_table_reports_default_lr_run(runs, study):
    table = zoo_table(runs, study, 0.85).set_index("optimizer")
    assert table.loc["Adam", "test acc. at default (%)"] == pytest.approx(88.0)
    # The library default (torch's SGD: 1e-3), not the study file's 0.01.
    assert table.loc["SGD", "test acc. at default (%)"] == pytest.approx(52.0)


def test_zoo_table_counts_divergence(runs, study):
    table = zoo_table(runs, study, 0.85).set_index("optimizer")
    assert table.loc["Adam", "diverged"] == "1 of 3"
    assert table.loc["Adam", "failed"] == 0


def test_never_ran_lists_only_all_failed_entries(runs, study):
    rows = never_ran(runs, study)
    assert [row["optimizer"] for row in rows] == ["pytorch_optimizer.kron"]
    assert rows[0]["reason"].startswith("every run crashed")
    assert "the kernel died" in rows[0]["reason"]
