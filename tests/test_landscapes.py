"""Tests of the two-dimensional test functions, the path runner and the landscape notebook."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import matplotlib
import pytest

from conftest import REPO_ROOT
from optstudy import landscapes
from optstudy.study import OptimizerEntry

matplotlib.use("Agg")

HIMMELBLAU_MINIMA = {
    "A": (3.0, 2.0),
    "B": (-2.805118, 3.131312),
    "C": (-3.779310, -3.283186),
    "D": (3.584428, -1.848126),
}


def plain_sgd(lr: float = 0.01) -> OptimizerEntry:
    return OptimizerEntry(name="sgd", label="SGD", reference="torch.optim.SGD",
                          hyperparameters={"lr": lr}, lr_centre=lr)


@pytest.mark.parametrize("name,point", sorted(HIMMELBLAU_MINIMA.items()))
def test_himmelblau_minima_located(name, point):
    minima = {m.name: m for m in landscapes.get_landscape("himmelblau").minima}
    assert math.dist(minima[name].point, point) < 1e-5
    assert minima[name].value == pytest.approx(0.0, abs=1e-9)


def test_gaussian_wells_global_is_deepest():
    minima = landscapes.get_landscape("gaussian_wells").minima
    assert minima[0].name == "A"
    assert minima[0].value < minima[1].value < minima[2].value


def test_rastrigin_global_at_origin():
    minima = landscapes.get_landscape("rastrigin").minima
    assert minima[0].point == pytest.approx((0.0, 0.0), abs=1e-9)
    assert minima[0].value == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("landscape,start,expected", [
    ("himmelblau", (2.5, 1.5), "A"),
    ("himmelblau", (-2.5, 2.5), "B"),
    ("himmelblau", (-3.0, -3.0), "C"),
    ("gaussian_wells", (1.5, 1.0), "A"),
    ("gaussian_wells", (-1.0, -0.5), "B"),
    ("rastrigin", (0.2, -0.2), "(0, 0)"),
    ("rastrigin", (1.1, 2.1), "(1, 2)"),
    ("rosenbrock", (0.95, 0.9), "A"),
])
def test_gradient_descent_finds_known_minimum(landscape, start, expected):
    surface = landscapes.get_landscape(landscape)
    moved = landscapes.Landscape(**{**surface.__dict__, "start": start, "_minima": []})
    result = landscapes.summarise_path(
        moved, landscapes.run_path(moved, plain_sgd(1e-3), lr=1e-3, steps=3000))
    assert result["status"] == "completed"
    assert result["ends_in"] == expected
    assert result["steps_to_minimum"] is not None


@pytest.mark.parametrize("point,expected", [
    ((3.0, 2.0), "A"),
    ((3.03, 1.97), "A"),
    ((-2.8, 3.13), "B"),
    ((0.0, 0.0), None),
    ((3.2, 2.0), None),
])
def test_classify_point_by_tolerance(point, expected):
    surface = landscapes.get_landscape("himmelblau")
    assert landscapes.classify_point(surface, point, tolerance=0.05) == expected


def test_classify_point_prefers_nearest():
    surface = landscapes.get_landscape("rastrigin")
    assert landscapes.classify_point(surface, (0.45, 0.0), tolerance=0.8) == "(0, 0)"
    assert landscapes.classify_point(surface, (0.55, 0.0), tolerance=0.8) == "(1, 0)"


def test_first_arrival_counts_from_start():
    surface = landscapes.get_landscape("himmelblau")
    path = [(0.0, 0.0), (2.0, 2.0), (2.99, 2.0), (3.0, 2.0)]
    assert landscapes.first_arrival(surface, path, "A") == 2
    assert landscapes.first_arrival(surface, path, None) is None


def test_large_lr_diverges():
    surface = landscapes.get_landscape("rosenbrock")
    result = landscapes.run_path(surface, plain_sgd(), lr=1.0, steps=50)
    assert result["status"] == "diverged"
    assert len(result["path"]) < 51


def test_run_optimizer_record_shape():
    record = landscapes.run_optimizer("gaussian_wells", "adam", steps=30)
    assert record["optimizer"] == "adam"
    assert len(record["tried"]) == len(landscapes.LR_FACTORS)
    assert len(record["chosen"]["path"]) == 31
    assert record["chosen"]["lr"] in [t["lr"] for t in record["tried"]]


def test_run_optimizer_unknown_name():
    with pytest.raises(KeyError, match="unknown optimizer 'adamm'"):
        landscapes.run_optimizer("himmelblau", "adamm", steps=5)


def test_landscape_notebook_under_papermill(tmp_path):
    record_file = tmp_path / "record.json"
    command = [
        sys.executable, "-m", "papermill", str(REPO_ROOT / "notebooks" / "landscape.ipynb"),
        str(tmp_path / "out.ipynb"), "-p", "landscape", "himmelblau",
        "-p", "optimizer", "momentum", "-p", "steps", "10",
        "-p", "record_path", str(record_file),
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(record_file.read_text())
    assert record["landscape"] == "himmelblau"
    assert record["optimizer"] == "momentum"
    assert record["steps"] == 10
    assert len(record["chosen"]["path"]) <= 11


def test_runner_script_writes_records(tmp_path):
    command = [
        sys.executable, "scripts/run_landscapes.py", "--landscapes", "rastrigin",
        "--optimizers", "sgd", "--steps", "5", "--results-dir", str(tmp_path / "results"),
        "--runs-dir", str(tmp_path / "runs"),
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "results" / "rastrigin" / "sgd.json").read_text())
    assert record["seconds_wall"] > 0
    assert (tmp_path / "runs" / "rastrigin" / "sgd.ipynb").is_file()


def test_paths_figure_and_animation(tmp_path):
    from optstudy import landscape_plots

    records = {name: landscapes.run_optimizer("himmelblau", name, steps=12)
               for name in ("sgd", "adam")}
    figure = landscape_plots.plot_paths("himmelblau", records)
    assert len(figure.axes[0].get_legend().get_texts()) == 2
    gif = landscape_plots.save_animation("himmelblau", records, tmp_path / "paths.gif",
                                         frames=5)
    assert gif.read_bytes()[:6] in (b"GIF87a", b"GIF89a")
