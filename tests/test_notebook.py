import json
import subprocess
import sys

import nbformat

from conftest import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "train.ipynb"


def run_papermill(tmp_path, data_root, *extra):
    output = tmp_path / "out.ipynb"
    record = tmp_path / "record.json"
    command = [
        sys.executable, "-m", "papermill", str(NOTEBOOK), str(output),
        "-p", "data_dir", str(data_root), "-p", "record_path", str(record),
        "-p", "train_size", "96", "-p", "valid_size", "64", "-p", "test_size", "64",
        "-p", "batch_size", "32", "-p", "device", "cpu", "--cwd", str(tmp_path),
        "-k", "python3", *extra,
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    return completed, output, record


def test_notebook_runs_under_papermill_cli(tmp_path, tiny_data_root):
    completed, output, record_path = run_papermill(
        tmp_path, tiny_data_root, "-p", "lr", "1e-3", "-p", "optimizer_class",
        "torch.optim.adamw",
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    record = json.loads(record_path.read_text())
    assert record["status"] == "completed"
    assert record["config"]["hyperparameters"]["lr"] == 0.001
    assert isinstance(record["config"]["hyperparameters"]["lr"], float)
    assert record["optimizer_class"] == "torch.optim.AdamW"


def test_executed_notebook_contains_learning_curves(tmp_path, tiny_data_root):
    completed, output, _ = run_papermill(tmp_path, tiny_data_root)
    assert completed.returncode == 0, completed.stderr[-2000:]
    notebook = nbformat.read(output, as_version=4)
    nbformat.validate(notebook)
    images = [
        out for cell in notebook.cells for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    assert len(images) == 1


def test_help_notebook_documents_parameters():
    completed = subprocess.run(
        [sys.executable, "-m", "papermill", "--help-notebook", str(NOTEBOOK)],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0
    for name in ("dataset", "optimizer_class", "lr", "seed", "epochs", "train_size",
                 "device", "record_path"):
        assert f"  {name}:" in completed.stdout
    assert "learning rate" in completed.stdout


def test_notebook_has_no_shell_escapes():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            lines = cell.source.splitlines()
            assert not any(line.lstrip().startswith(("!", "%")) for line in lines)
