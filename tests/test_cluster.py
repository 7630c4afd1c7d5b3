"""The runner on a real Dask cluster: a scheduler and two workers on 127.0.0.1."""

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from conftest import REPO_ROOT

SLOW_MODULE = '''
import time

import torch


class KillsItsWorker(torch.optim.SGD):
    """Kills the Dask worker above it (kernel -> papermill -> worker) at every try."""

    def step(self, closure=None):
        import os
        import signal

        import psutil

        worker = psutil.Process().parent().parent()
        os.kill(worker.pid, signal.SIGKILL)
        time.sleep(60)
        return super().step(closure)


class Slow(torch.optim.SGD):
    """Sleeps in every step, so a test can kill a worker mid-run."""

    def step(self, closure=None):
        time.sleep(2)
        return super().step(closure)
'''

STUDY = """
optimizers:
  sgd: {class: torch.optim.SGD, hyperparameters: {lr: 0.1}}
  adam: {class: torch.optim.Adam}
  slow: {class: "cluster_optimizers:Slow", hyperparameters: {lr: 0.1}}
  killer: {class: "cluster_optimizers:KillsItsWorker", hyperparameters: {lr: 0.1}}
profiles:
  tiny:
    datasets: [mnist]
    optimizers: %s
    epochs: 1
    batch_size: 32
    train_size: 64
    valid_size: 64
    test_size: 64
    lr_grid: {points: 1}
    max_extensions: 0
    out_of_box: false  # exactly one run per optimizer and seed
    seeds: [0, 1]
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def environment(tmp_path):
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "cluster_optimizers.py").write_text(SLOW_MODULE)
    python_path = os.pathsep.join([str(modules), str(REPO_ROOT)])
    return {**os.environ, "PYTHONPATH": python_path}


@pytest.fixture
def scheduler(tmp_path, environment):
    """Start a scheduler and two single-thread workers; yield the address."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    processes = [subprocess.Popen(
        dask + ["--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )]
    for _ in range(2):
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", address,
             "--nthreads", "1", "--no-dashboard", "--memory-limit", "0",
             "--host", "127.0.0.1"],
            env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
    from distributed import Client

    with Client(address, timeout=60) as client:
        client.wait_for_workers(2, timeout=120)
    yield address
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def write_study(tmp_path, optimizers="[sgd, adam]"):
    path = tmp_path / "study.yml"
    path.write_text(textwrap.dedent(STUDY % optimizers))
    return path


def command(study, folder, data_root, *extra):
    return [
        sys.executable, str(REPO_ROOT / "scripts" / "run_study.py"),
        "--study", str(study), "--profile", "tiny",
        "--store", str(folder / "results.sqlite"), "--runs-dir", str(folder / "runs"),
        "--data-dir", str(data_root), "--device", "cpu", "--threads", "1", *extra,
    ]


def results(folder):
    connection = sqlite3.connect(folder / "results.sqlite")
    rows = connection.execute(
        "SELECT run_id, status, final_valid_loss, final_test_accuracy, finished_at "
        "FROM runs"
    ).fetchall()
    connection.close()
    return {row[0]: row[1:] for row in rows}


def completed_count(stdout: str) -> int:
    match = re.search(r"(\d+) completed", stdout)
    return int(match.group(1)) if match else 0


def smoke_command(folder, data_root, *extra):
    """Run the repository's smoke profile (three datasets, two optimizers)."""
    return [
        sys.executable, str(REPO_ROOT / "scripts" / "run_study.py"),
        "--profile", "smoke", "--store", str(folder / "results.sqlite"),
        "--runs-dir", str(folder / "runs"), "--device", "cpu", "--threads", "1",
        *(["--data-dir", str(data_root)] if data_root else []), *extra,
    ]


def test_smoke_study_on_cluster_equals_local(tmp_path, environment, scheduler):
    from optstudy.data import DataNotFoundError, load_arrays
    from optstudy.study import load_study

    for dataset in load_study().profile("smoke").datasets:
        try:
            load_arrays(dataset, "test", download=False)
        except DataNotFoundError:
            pytest.skip(f"no {dataset} under $OPTSTUDY_DATA for the smoke study")
    local, remote = tmp_path / "local", tmp_path / "remote"
    first = subprocess.run(smoke_command(local, None, "--jobs", "2"),
                           capture_output=True, text=True, timeout=1200, env=environment)
    assert first.returncode == 0, first.stderr[-2000:]
    second = subprocess.run(smoke_command(remote, None, "--scheduler", scheduler),
                            capture_output=True, text=True, timeout=1200, env=environment)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "dashboard" in second.stdout + second.stderr

    local_results, remote_results = results(local), results(remote)
    assert len(local_results) >= 24
    assert set(local_results) == set(remote_results)
    for run_id, row in local_results.items():
        assert remote_results[run_id][:3] == row[:3], run_id
    notebooks = list((remote / "runs").glob("*/train.ipynb"))
    assert len(notebooks) == len(remote_results)


def _worker_running_a_kernel(scheduler_pid_excluded):
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "ipykernel_launcher" not in cmdline:
            continue
        for parent in process.parents():
            parent_cmdline = " ".join(parent.cmdline())
            if "spawn_main" in parent_cmdline or "dask_worker" in parent_cmdline:
                if parent.pid not in scheduler_pid_excluded:
                    return parent
    return None


def test_killed_worker_run_is_retried_and_stored_once(tmp_path, tiny_data_root,
                                                      environment, scheduler):
    study = write_study(tmp_path, "[slow]")
    runner = subprocess.Popen(command(study, tmp_path, tiny_data_root, "--scheduler",
                                      scheduler),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=environment)
    worker = None
    deadline = time.monotonic() + 120
    while worker is None and time.monotonic() < deadline:
        time.sleep(0.5)
        worker = _worker_running_a_kernel({runner.pid})
    assert worker is not None, "no worker started a kernel within 120 s"
    time.sleep(3)
    worker.kill()

    stdout, stderr = runner.communicate(timeout=600)
    assert runner.returncode == 0, stderr[-2000:]
    stored = results(tmp_path)
    assert len(stored) == 2
    assert all(row[0] == "completed" for row in stored.values())
    assert completed_count(stdout) == 2


def test_restarted_client_runs_only_missing(tmp_path, tiny_data_root, environment,
                                            scheduler):
    study = write_study(tmp_path, "[sgd, adam, slow]")
    arguments = command(study, tmp_path, tiny_data_root, "--scheduler", scheduler)
    runner = subprocess.Popen(arguments, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=environment, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if (tmp_path / "results.sqlite").exists() and len(results(tmp_path)) >= 2:
            break
    os.killpg(runner.pid, signal.SIGKILL)
    runner.wait()
    before = results(tmp_path)
    assert 2 <= len(before) < 6

    again = subprocess.run(arguments, capture_output=True, text=True, timeout=600,
                           env=environment)
    assert again.returncode == 0, again.stderr[-2000:]
    after = results(tmp_path)
    assert len(after) == 6
    assert completed_count(again.stdout) == 6 - len(before)
    for run_id, row in before.items():
        assert after[run_id][3] == row[3], "a stored run was executed again"


def test_two_runners_share_one_store(tmp_path, tiny_data_root, environment):
    study = write_study(tmp_path, "[sgd, adam, slow]")
    arguments = command(study, tmp_path, tiny_data_root, "--jobs", "1")
    runners = [subprocess.Popen(arguments, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=environment) for _ in range(2)]
    outputs = [runner.communicate(timeout=600) for runner in runners]
    for runner, (stdout, stderr) in zip(runners, outputs):
        assert runner.returncode == 0, stderr[-2000:]
    stored = results(tmp_path)
    assert len(stored) == 6
    assert sum(completed_count(stdout) for stdout, _ in outputs) == 6
    connection = sqlite3.connect(tmp_path / "results.sqlite")
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert connection.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0


def test_run_killing_its_worker_ends_crashed(tmp_path, tiny_data_root, environment,
                                             scheduler):
    study = write_study(tmp_path, "[killer, sgd]")
    completed = subprocess.run(
        command(study, tmp_path, tiny_data_root, "--scheduler", scheduler),
        capture_output=True, text=True, timeout=900, env=environment,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    connection = sqlite3.connect(tmp_path / "results.sqlite")
    rows = dict(connection.execute(
        "SELECT optimizer || ' seed ' || seed, status FROM runs").fetchall())
    errors = [row[0] for row in connection.execute(
        "SELECT error FROM runs WHERE optimizer = 'killer'")]
    connection.close()
    assert rows["killer seed 0"] == "crashed"
    assert "killed its Dask worker 3 times" in errors[0]
    assert rows["sgd seed 0"] == "completed"
    assert rows["sgd seed 1"] == "completed"
