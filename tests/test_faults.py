"""Runs that raise, crash or exceed their budget: stored as such, the batch goes on."""

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time

import nbformat
import psutil
import pytest

from conftest import REPO_ROOT

OPTIMIZERS_MODULE = '''
import time

import torch


class FailsInEpochTwo(torch.optim.SGD):
    """Raises at the first step of the second epoch (two steps per epoch)."""

    def step(self, closure=None):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 3:
            raise RuntimeError("injected failure in epoch 2")
        return super().step(closure)


class Slow(torch.optim.SGD):
    """Sleeps in every step, so a test has time to kill the kernel."""

    def step(self, closure=None):
        time.sleep(3)
        return super().step(closure)


class Hungry(torch.optim.SGD):
    """Holds on to 3 GiB at its first step."""

    def step(self, closure=None):
        self.ballast = torch.ones(3 * 2**30 // 4)
        return super().step(closure)
'''

STUDY = """
optimizers:
  fails: {{class: "fault_optimizers:FailsInEpochTwo", hyperparameters: {{lr: 0.01}}}}
  slow: {{class: "fault_optimizers:Slow", hyperparameters: {{lr: 0.01}}}}
  hungry: {{class: "fault_optimizers:Hungry", hyperparameters: {{lr: 0.01}}}}
  sgd: {{class: torch.optim.SGD, hyperparameters: {{lr: 0.01}}}}
profiles:
  tiny:
    datasets: [mnist]
    optimizers: {optimizers}
    epochs: {epochs}
    batch_size: 32
    train_size: 64
    valid_size: 64
    test_size: 64
    lr_grid: {{points: 1}}
    max_extensions: 0
    out_of_box: false  # one run per optimizer: these tests are about faults
    seeds: [0]
"""


def setup_study(tmp_path, optimizers, epochs):
    module_dir = tmp_path / "modules"
    module_dir.mkdir()
    (module_dir / "fault_optimizers.py").write_text(OPTIMIZERS_MODULE)
    study = tmp_path / "study.yml"
    study.write_text(textwrap.dedent(STUDY.format(optimizers=optimizers, epochs=epochs)))
    environment = {**os.environ, "PYTHONPATH": str(module_dir)}
    return study, environment


def command(study, tmp_path, data_root, *extra):
    return [
        sys.executable, str(REPO_ROOT / "scripts" / "run_study.py"),
        "--study", str(study), "--profile", "tiny",
        "--store", str(tmp_path / "results.sqlite"), "--runs-dir", str(tmp_path / "runs"),
        "--data-dir", str(data_root), "--device", "cpu", *extra,
    ]


def stored(tmp_path):
    connection = sqlite3.connect(tmp_path / "results.sqlite")
    connection.row_factory = sqlite3.Row
    rows = {row["optimizer"]: dict(row) for row in connection.execute("SELECT * FROM runs")}
    epochs = {
        row["run_id"]: row["n"] for row in connection.execute(
            "SELECT run_id, COUNT(*) AS n FROM epochs GROUP BY run_id")
    }
    connection.close()
    return rows, epochs


def test_run_failing_in_epoch_two_keeps_finished_epochs(tmp_path, tiny_data_root):
    study, environment = setup_study(tmp_path, "[fails, sgd]", epochs=5)
    completed = subprocess.run(command(study, tmp_path, tiny_data_root),
                               capture_output=True, text=True, timeout=300,
                               env=environment)
    assert completed.returncode == 0, completed.stderr[-2000:]
    rows, epochs = stored(tmp_path)
    failed = rows["fails"]
    assert failed["status"] == "failed"
    assert "RuntimeError: injected failure in epoch 2" in failed["error"]
    assert failed["error"].startswith("cell ")
    assert os.path.isfile(failed["notebook_path"])
    assert epochs[failed["run_id"]] == 2  # epoch 0 (before training) and epoch 1
    assert json.loads(failed["record_json"])["incomplete"] is True
    assert failed["final_test_accuracy"] is None
    assert rows["sgd"]["status"] == "completed"


def test_executed_notebooks_reopen_with_nbformat(tmp_path, tiny_data_root):
    study, environment = setup_study(tmp_path, "[fails, sgd]", epochs=2)
    subprocess.run(command(study, tmp_path, tiny_data_root), capture_output=True,
                   timeout=300, env=environment)
    notebooks = list((tmp_path / "runs").glob("*/train.ipynb"))
    assert len(notebooks) == 2
    for path in notebooks:
        nbformat.validate(nbformat.read(path, as_version=4))


def _kernels_below(pid):
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [child for child in children
            if "ipykernel_launcher" in " ".join(child.cmdline())]


def test_killed_kernel_is_stored_as_crashed(tmp_path, tiny_data_root):
    study, environment = setup_study(tmp_path, "[slow, sgd]", epochs=1)
    process = subprocess.Popen(command(study, tmp_path, tiny_data_root),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=environment)
    kernels = []
    deadline = time.monotonic() + 120
    while not kernels and time.monotonic() < deadline:
        time.sleep(0.5)
        kernels = _kernels_below(process.pid)
    assert kernels, "no kernel started within 120 s"
    time.sleep(8)  # inside the slow optimizer's first steps
    kernels[0].kill()
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-2000:]

    rows, _ = stored(tmp_path)
    assert rows["slow"]["status"] == "crashed"
    assert "kernel died" in rows["slow"]["error"]
    assert rows["sgd"]["status"] == "completed"
    assert not _kernels_below(process.pid)

    rerun = subprocess.run(
        command(study, tmp_path, tiny_data_root, "--only", rows["slow"]["run_id"]),
        capture_output=True, text=True, timeout=300, env=environment,
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "1 completed" in rerun.stdout
    rows_after, _ = stored(tmp_path)
    assert rows_after["slow"]["status"] == "completed"
    assert rows_after["sgd"]["finished_at"] == rows["sgd"]["finished_at"]


def test_run_over_memory_cap_is_stored_as_crashed(tmp_path, tiny_data_root):
    study, environment = setup_study(tmp_path, "[hungry, sgd]", epochs=1)
    completed = subprocess.run(
        command(study, tmp_path, tiny_data_root, "--memory-limit-gb", "2"),
        capture_output=True, text=True, timeout=300, env=environment,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    rows, _ = stored(tmp_path)
    assert rows["hungry"]["status"] == "crashed"
    assert "memory cap" in rows["hungry"]["error"]
    assert rows["sgd"]["status"] == "completed"


def test_timeout_is_stored_as_crashed(tmp_path, tiny_data_root):
    study, environment = setup_study(tmp_path, "[slow]", epochs=1)
    completed = subprocess.run(
        command(study, tmp_path, tiny_data_root, "--timeout", "5"),
        capture_output=True, text=True, timeout=300, env=environment,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    rows, _ = stored(tmp_path)
    assert rows["slow"]["status"] == "crashed"
    assert "timed out after 5 s" in rows["slow"]["error"]


def test_unknown_only_id_is_rejected(tmp_path, tiny_data_root):
    study, environment = setup_study(tmp_path, "[sgd]", epochs=1)
    completed = subprocess.run(
        command(study, tmp_path, tiny_data_root, "--only", "0123456789abcdef"),
        capture_output=True, text=True, timeout=120, env=environment,
    )
    assert completed.returncode == 2
    assert "0123456789abcdef" in completed.stderr
