import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO_ROOT
from optstudy import store
from optstudy.study import load_study, make_run, plan

TINY_STUDY = """
optimizers:
  sgd: {class: torch.optim.SGD, hyperparameters: {lr: 0.1}}
  adam: {class: torch.optim.Adam}
  broken: {class: torch.optim.Adam, hyperparameters: {momentom: 0.9}}
profiles:
  tiny:
    datasets: [mnist]
    optimizers: [sgd, adam, broken]
    epochs: 1
    batch_size: 32
    train_size: 64
    valid_size: 64
    test_size: 64
    lr_grid: {points: 3, step_decades: 1}
    max_extensions: 1
    seeds: [0, 1]
"""


@pytest.fixture
def tiny_study(tmp_path):
    path = tmp_path / "study.yml"
    path.write_text(textwrap.dedent(TINY_STUDY))
    return path


def runner_command(study_path, tmp_path, data_root):
    return [
        sys.executable, str(REPO_ROOT / "scripts" / "run_study.py"),
        "--study", str(study_path), "--profile", "tiny",
        "--store", str(tmp_path / "results.sqlite"),
        "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(data_root),
        "--device", "cpu", "--jobs", "2",
    ]


def stored_runs(tmp_path):
    connection = sqlite3.connect(tmp_path / "results.sqlite")
    rows = connection.execute(
        "SELECT run_id, status, finished_at, error FROM runs"
    ).fetchall()
    connection.close()
    return {row[0]: row[1:] for row in rows}


def test_runner_resumes_after_interruption(tiny_study, tmp_path, tiny_data_root):
    command = runner_command(tiny_study, tmp_path, tiny_data_root)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        time.sleep(1)
        if (tmp_path / "results.sqlite").exists() and len(stored_runs(tmp_path)) >= 3:
            break
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = stored_runs(tmp_path)
    assert len(before) >= 3

    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    after = stored_runs(tmp_path)

    study = load_study(tiny_study)
    statuses = {run_id: {"status": row[0]} for run_id, row in after.items()}
    connection = store.connect(tmp_path / "results.sqlite", read_only=True)
    planned, final = plan(study, study.profile("tiny"), store.load_statuses(connection))
    connection.close()
    assert final
    assert set(statuses) == {run.run_id for run in planned}
    for run_id, row in before.items():
        assert after[run_id][1] == row[1], "a finished run was executed again"


def test_failed_run_is_stored_and_batch_continues(tiny_study, tmp_path, tiny_data_root):
    command = runner_command(tiny_study, tmp_path, tiny_data_root)
    command += ["--export-records", str(tmp_path / "records")]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    connection = sqlite3.connect(tmp_path / "results.sqlite")
    rows = connection.execute(
        "SELECT optimizer, status, error, notebook_path FROM runs"
    ).fetchall()
    broken = [row for row in rows if row[0] == "broken"]
    others = [row for row in rows if row[0] != "broken"]
    assert broken
    assert all(row[1] == "failed" for row in broken)
    assert "momentom" in broken[0][2]
    assert "TypeError" in broken[0][2]
    assert os.path.isfile(broken[0][3])
    assert others
    assert all(row[1] in ("completed", "diverged") for row in others)

    exported = list((tmp_path / "records").glob("*.json"))
    assert len(exported) == len(rows)

    rerun = subprocess.run(runner_command(tiny_study, tmp_path, tiny_data_root),
                           capture_output=True, text=True, timeout=600)
    assert "nothing to run" in rerun.stdout


def test_invalid_study_stops_before_any_run(tmp_path, tiny_data_root):
    path = tmp_path / "study.yml"
    path.write_text(textwrap.dedent(TINY_STUDY).replace("torch.optim.SGD",
                                                        "torch.optim.SGDD"))
    completed = subprocess.run(runner_command(path, tmp_path, tiny_data_root),
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2
    assert "unknown optimizer 'SGDD'" in completed.stderr
    assert not (tmp_path / "results.sqlite").exists()


def test_runs_outside_the_plan_are_marked_superseded(tiny_study, tmp_path):
    from optstudy.runner import mark_superseded

    study = load_study(tiny_study)
    profile = study.profile("tiny")
    connection = store.connect(tmp_path / "results.sqlite")
    while True:  # complete the plan with hand-made results, phase by phase
        planned, final = plan(study, profile, store.load_statuses(connection))
        missing = [r for r in planned if r.run_id not in store.load_statuses(connection)]
        if final and not missing:
            break
        for run in missing:
            record = {"final_valid_accuracy": run.lr, "final_valid_loss": 1.0}
            store.save_run(connection, run.run_id, "tiny", run.phase,
                           run.config.to_dict(), "completed", record)
    seed_run = next(run for run in planned if run.phase == "seed")
    older = make_run(profile, study.optimizers[seed_run.config.optimizer], "mnist",
                     seed_run.lr, 7, "seed")  # as if an older protocol used seed 7
    store.save_run(connection, older.run_id, "tiny", "seed", older.config.to_dict(),
                   "completed", {"final_valid_accuracy": 0.5})

    assert mark_superseded(connection, "tiny", study, profile) == 1
    phases = dict(connection.execute("SELECT run_id, phase FROM runs").fetchall())
    connection.close()
    assert phases[older.run_id] == "superseded"
    assert phases[seed_run.run_id] == "seed"


def test_retry_diverged_forgets_only_diverged_runs(tiny_study, tmp_path):
    from optstudy.runner import _forget_runs

    study = load_study(tiny_study)
    profile = study.profile("tiny")
    connection = store.connect(tmp_path / "results.sqlite")
    planned, _ = plan(study, profile, {})
    statuses = ["completed", "diverged", "failed"]
    for run, status in zip(planned, statuses):
        store.save_run(connection, run.run_id, "tiny", run.phase,
                       run.config.to_dict(), status, {"final_valid_accuracy": 0.5})

    _forget_runs(connection, "tiny", study, profile, None, False, retry_diverged=True)
    remaining = dict(connection.execute("SELECT run_id, status FROM runs").fetchall())
    connection.close()
    assert remaining.get(planned[0].run_id) == "completed"
    assert planned[1].run_id not in remaining
    assert remaining.get(planned[2].run_id) == "failed"


def test_retry_failed_forgets_only_failed_runs(tiny_study, tmp_path):
    from optstudy.runner import _forget_runs

    study = load_study(tiny_study)
    profile = study.profile("tiny")
    connection = store.connect(tmp_path / "results.sqlite")
    planned, _ = plan(study, profile, {})
    statuses = ["completed", "diverged", "failed", "crashed"]
    for run, status in zip(planned, statuses):
        store.save_run(connection, run.run_id, "tiny", run.phase,
                       run.config.to_dict(), status, {"final_valid_accuracy": 0.5})

    _forget_runs(connection, "tiny", study, profile, None, True)
    remaining = dict(connection.execute("SELECT run_id, status FROM runs").fetchall())
    connection.close()
    assert remaining.get(planned[0].run_id) == "completed"
    assert remaining.get(planned[1].run_id) == "diverged"
    assert planned[2].run_id not in remaining
    assert planned[3].run_id not in remaining
