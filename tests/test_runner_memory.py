"""The runner's own memory stays flat over many runs.

The training notebook is replaced by a minimal one that only writes a record,
because the property under test is the runner's, and 50 real trainings would
take many minutes.
"""

import gc
import textwrap

import nbformat
import psutil
from nbformat.v4 import new_code_cell, new_notebook

from optstudy.runner import run_study
from optstudy.study import load_study

STUDY = """
optimizers:
  sgd: {class: torch.optim.SGD, hyperparameters: {lr: 0.1}}
profiles:
  many:
    datasets: [mnist]
    epochs: 1
    batch_size: 32
    valid_size: 64
    lr_grid: {values: [%s]}
    out_of_box: false
    seeds: [0]
"""

RECORD_CELL = """
import json
json.dump({"status": "completed", "final_valid_accuracy": 0.5,
           "final_valid_loss": 1.0, "history": [], "loss_samples": []},
          open(record_path, "w"))
"""


def test_runner_memory_is_flat_over_50_runs(tmp_path, tiny_data_root):
    notebook = new_notebook(cells=[
        new_code_cell('record_path = "record.json"', metadata={"tags": ["parameters"]}),
        new_code_cell(RECORD_CELL),
    ])
    notebook.metadata["kernelspec"] = {"name": "python3", "language": "python",
                                       "display_name": "Python 3"}
    notebook_path = tmp_path / "minimal.ipynb"
    nbformat.write(notebook, notebook_path)
    grid = ", ".join(f"{0.001 * (i + 1):.3f}" for i in range(50))
    study_path = tmp_path / "study.yml"
    study_path.write_text(textwrap.dedent(STUDY % grid))
    study = load_study(study_path)

    process = psutil.Process()
    samples = {}

    def on_progress(outcome, done, planned, final):
        assert outcome.status == "completed", outcome.error
        if done in (10, 50):
            gc.collect()
            samples[done] = process.memory_info().rss

    counts = run_study(study, "many", store_path=tmp_path / "results.sqlite",
                       runs_dir=tmp_path / "runs", data_dir=tiny_data_root,
                       device="cpu", jobs=2, notebook=notebook_path,
                       on_progress=on_progress)
    assert counts == {"completed": 50}
    growth = samples[50] - samples[10]
    assert growth < 20 * 2**20, f"runner grew by {growth / 2**20:.1f} MiB over 40 runs"
