import math
import textwrap

import pytest

from optstudy.optimizers import OptimizerNotFoundError, resolve_class
from optstudy.study import (
    DEFAULT_STUDY, StudyError, load_study, load_yaml, make_run, plan, run_id,
)

BASE = """
optimizers:
  adam: {class: torch.optim.Adam}
  sgd: {class: torch.optim.SGD, hyperparameters: {lr: 0.1, momentum: 0.9}}
profiles:
  tiny:
    datasets: [mnist]
    epochs: 1
    batch_size: 32
    valid_size: 100
    lr_grid: {points: 3, step_decades: 1}
    max_extensions: 1
    seeds: [0, 1]
"""


def write_study(tmp_path, text=BASE):
    path = tmp_path / "study.yml"
    path.write_text(textwrap.dedent(text))
    return path


def test_yaml_reads_exponent_floats():
    values = load_yaml("lr: [1e-4, 1e-3, 1.0e-2, 3E+1]")["lr"]
    assert values == [0.0001, 0.001, 0.01, 30.0]
    assert all(isinstance(value, float) for value in values)


def test_repository_study_file_loads():
    study = load_study(DEFAULT_STUDY)
    assert len(study.optimizers) == 13
    assert {"smoke", "default", "full"} <= set(study.profiles)


def test_full_profile_uses_deepobs_grid():
    grid = load_study(DEFAULT_STUDY).profiles["full"].lr_values
    assert len(grid) == 36
    assert math.isclose(grid[0], 1e-5)
    assert math.isclose(grid[-1], 1e2)


@pytest.mark.parametrize("value", [".nan", "0", "-0.01", ".inf"])
def test_invalid_lr_is_rejected_with_entry_and_value(tmp_path, value):
    text = BASE.replace("lr: 0.1", f"lr: {value}")
    with pytest.raises(StudyError) as caught:
        load_study(write_study(tmp_path, text))
    assert "optimizer 'sgd'" in str(caught.value)
    assert "lr=" in str(caught.value)


def test_infinite_momentum_is_rejected(tmp_path):
    text = BASE.replace("momentum: 0.9", "momentum: .inf")
    with pytest.raises(StudyError, match="momentum=inf must be finite"):
        load_study(write_study(tmp_path, text))


def test_grid_is_centred_on_library_default(tmp_path):
    study = load_study(write_study(tmp_path))
    assert study.optimizers["adam"].lr_source == "library default"
    assert study.grid(study.profiles["tiny"], study.optimizers["adam"]) == [
        0.0001, 0.001, 0.01,
    ]


def test_grid_is_centred_on_study_lr(tmp_path):
    study = load_study(write_study(tmp_path))
    assert study.grid(study.profiles["tiny"], study.optimizers["sgd"]) == [
        0.01, 0.1, 1.0,
    ]


def test_unknown_dataset_is_rejected(tmp_path):
    with pytest.raises(StudyError, match="unknown dataset 'imagenet'"):
        load_study(write_study(tmp_path, BASE.replace("[mnist]", "[imagenet]")))


@pytest.mark.parametrize("reference, expected", [
    ("torch.optim.adamw", "torch.optim.AdamW"),
    ("torch.optim.AdamW", "torch.optim.AdamW"),
    ("torch.optim.NAdam", "torch.optim.NAdam"),
    ("pytorch_optimizer.lion", "pytorch_optimizer.lion"),
    ("pytorch_optimizer.Lion", "pytorch_optimizer.lion"),
])
def test_names_resolve_case_insensitively(reference, expected):
    assert resolve_class(reference).reference == expected


def test_misspelled_name_suggests_closest():
    with pytest.raises(OptimizerNotFoundError) as caught:
        resolve_class("pytorch_optimizer.schedulefreeadamm")
    assert "schedulefreeadamw" in str(caught.value)
    assert "pytorch_optimizer" in str(caught.value)


def test_name_without_namespace_is_rejected():
    with pytest.raises(OptimizerNotFoundError, match="has no namespace"):
        resolve_class("Adam")


def test_user_class_resolves(tmp_path, monkeypatch):
    (tmp_path / "my_optimizers.py").write_text(
        "import torch\n\nclass PlainSGD(torch.optim.SGD):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    resolved = resolve_class("my_optimizers:PlainSGD")
    assert resolved.reference == "my_optimizers:PlainSGD"


def test_run_id_depends_on_every_parameter(tmp_path):
    study = load_study(write_study(tmp_path))
    profile, adam = study.profiles["tiny"], study.optimizers["adam"]
    first = make_run(profile, adam, "mnist", 0.001, 0, "grid")
    assert first.run_id == make_run(profile, adam, "mnist", 0.001, 0, "seed").run_id
    assert first.run_id != make_run(profile, adam, "mnist", 0.001, 1, "grid").run_id
    assert first.run_id != make_run(profile, adam, "mnist", 0.002, 0, "grid").run_id
    assert run_id(first.config) == first.run_id


def fake_results(runs, accuracy_by_lr):
    return {
        run.run_id: {"status": "completed", "final_valid_accuracy": accuracy_by_lr(run.lr),
                     "final_valid_loss": 1.0}
        for run in runs
    }


def test_plan_starts_with_grid_and_out_of_box_runs(tmp_path):
    study = load_study(write_study(tmp_path))
    runs, final = plan(study, study.profiles["tiny"], {})
    assert not final
    assert {run.phase for run in runs} == {"grid", "out_of_box"}
    assert len([run for run in runs if run.phase == "grid"]) == 6


def test_plan_lists_each_run_id_once(tmp_path):
    study = load_study(write_study(tmp_path))
    runs, _ = plan(study, study.profiles["tiny"], {})
    ids = [run.run_id for run in runs]
    assert len(ids) == len(set(ids))


def test_out_of_box_run_on_the_grid_keeps_the_grid_phase(tmp_path):
    # Adam's library default (1e-3) is its grid centre: seed 0 runs once.
    study = load_study(write_study(tmp_path))
    runs, _ = plan(study, study.profiles["tiny"], {})
    adam = {(run.lr, run.config.seed): run.phase for run in runs
            if run.config.optimizer == "adam" and run.lr == 0.001}
    assert adam == {(0.001, 0): "grid", (0.001, 1): "out_of_box"}


def test_out_of_box_uses_library_lr_and_keeps_other_settings(tmp_path):
    study = load_study(write_study(tmp_path))
    runs, _ = plan(study, study.profiles["tiny"], {})
    sgd = [run for run in runs if run.config.optimizer == "sgd"
           and run.phase == "out_of_box"]
    assert [run.config.seed for run in sgd] == [0, 1]
    assert {run.lr for run in sgd} == {0.001}
    assert {run.config.hyperparameters["momentum"] for run in sgd} == {0.9}


def test_profile_can_leave_out_the_out_of_box_track(tmp_path):
    text = BASE.replace("    seeds: [0, 1]", "    seeds: [0, 1]\n    out_of_box: false")
    study = load_study(write_study(tmp_path, text))
    runs, _ = plan(study, study.profiles["tiny"], {})
    assert {run.phase for run in runs} == {"grid"}


def test_default_profile_grid_spans_two_decades_in_five_points():
    study = load_study()
    profile = study.profile("default")
    grid = study.grid(profile, study.optimizers["adam"])
    assert len(grid) >= 5
    assert math.log10(max(grid) / min(grid)) >= 2 - 1e-9
    assert len(profile.seeds) >= 3


def test_evals_per_epoch_must_be_positive(tmp_path):
    text = BASE.replace("    seeds: [0, 1]", "    seeds: [0, 1]\n    evals_per_epoch: 0")
    with pytest.raises(StudyError, match="evals_per_epoch=0"):
        load_study(write_study(tmp_path, text))


def test_plan_adds_seeds_at_interior_best(tmp_path):
    study = load_study(write_study(tmp_path))
    profile = study.profiles["tiny"]
    grid, _ = plan(study, profile, {})
    results = fake_results(grid, lambda lr: 1.0 - abs(math.log10(lr) + 2 - 1))
    adam_grid = [run for run in grid if run.config.optimizer == "adam"]
    results.update(fake_results(adam_grid, lambda lr: {0.001: 0.9}.get(lr, 0.5)))
    runs, _ = plan(study, profile, results)
    adam_seeds = [r for r in runs if r.config.optimizer == "adam" and r.phase == "seed"]
    assert [(r.lr, r.config.seed) for r in adam_seeds] == [(0.001, 1)]


def test_plan_extends_grid_at_edge(tmp_path):
    study = load_study(write_study(tmp_path))
    profile = study.profiles["tiny"]
    grid, _ = plan(study, profile, {})
    results = fake_results(grid, lambda lr: lr)  # the largest lr is always best
    runs, final = plan(study, profile, results)
    extensions = [r for r in runs if r.phase == "extension"]
    assert sorted(r.lr for r in extensions) == [0.1, 10.0]
    assert not final


def test_plan_never_selects_by_test_accuracy(tmp_path):
    study = load_study(write_study(tmp_path))
    profile = study.profiles["tiny"]
    grid, _ = plan(study, profile, {})
    results = {
        run.run_id: {"status": "completed", "final_valid_loss": 1.0,
                     "final_valid_accuracy": 0.9 if run.lr in (0.001, 0.1) else 0.1,
                     "final_test_accuracy": 0.99 if run.lr not in (0.001, 0.1) else 0.0}
        for run in grid
    }
    runs, _ = plan(study, profile, results)
    chosen = {r.config.optimizer: r.lr for r in runs if r.phase == "seed"}
    assert chosen == {"adam": 0.001, "sgd": 0.1}


def test_diverged_runs_never_win(tmp_path):
    study = load_study(write_study(tmp_path))
    profile = study.profiles["tiny"]
    grid, _ = plan(study, profile, {})
    results = {
        run.run_id: ({"status": "diverged", "final_valid_accuracy": None,
                      "final_valid_loss": None} if run.lr != 0.001 and
                     run.config.optimizer == "adam" else
                     {"status": "completed", "final_valid_accuracy": 0.5,
                      "final_valid_loss": 1.0 + run.lr})
        for run in grid
    }
    runs, _ = plan(study, profile, results)
    chosen = {r.config.optimizer: r.lr for r in runs if r.phase == "seed"}
    assert chosen["adam"] == 0.001


def test_shared_grid_far_from_convention_warns(tmp_path):
    text = BASE + """
  shared:
    datasets: [mnist]
    epochs: 1
    batch_size: 32
    valid_size: 100
    lr_grid: {values: [1.0e-2, 1.0e-1, 1.0]}
    seeds: [0]
"""
    with pytest.warns(UserWarning, match="does not contain 0.001, the conventional lr of optimizer 'adam'"):
        load_study(write_study(tmp_path, text))


def test_repository_study_loads_without_warnings(recwarn):
    load_study(DEFAULT_STUDY)
    assert not [w for w in recwarn if "learning-rate grid" in str(w.message)]


def test_weight_decay_styles_differ_for_adam_and_adamw():
    import torch

    from optstudy.optimizers import build_optimizer, weight_decay_style

    parameters = [torch.nn.Parameter(torch.zeros(2))]
    styles = {}
    for reference in ("torch.optim.Adam", "torch.optim.AdamW",
                      "pytorch_optimizer.adabelief", "torch.optim.SGD"):
        resolved = resolve_class(reference)
        _, used = build_optimizer(resolved, parameters, {"weight_decay": 0.01})
        styles[reference] = weight_decay_style(resolved.reference, used)
    assert styles["torch.optim.Adam"] == "coupled (L2)"
    assert styles["torch.optim.AdamW"] == "decoupled"
    assert styles["pytorch_optimizer.adabelief"] == "decoupled"
    assert styles["torch.optim.SGD"] == "coupled (L2)"


def test_adabelief_records_its_eps_default():
    import torch

    from optstudy.optimizers import build_optimizer

    resolved = resolve_class("pytorch_optimizer.adabelief")
    _, used = build_optimizer(resolved, [torch.nn.Parameter(torch.zeros(2))], {})
    assert used["eps"] == 1e-16


def test_run_id_of_published_config_is_stable():
    from optstudy.train import RunConfig

    config = RunConfig("mnist", "adam", "torch.optim.Adam", {"lr": 0.001})
    assert run_id(config) == "93f839e1eeee1f79"
    assert run_id(RunConfig("mnist", "adam", "torch.optim.Adam", {"lr": 0.001},
                            precision="bf16")) != "93f839e1eeee1f79"


def test_no_seed_runs_when_every_lr_diverged(tmp_path):
    study = load_study(write_study(tmp_path))
    profile = study.profiles["tiny"]
    grid, _ = plan(study, profile, {})
    diverged = {"status": "diverged", "final_valid_accuracy": None,
                "final_valid_loss": None}
    results = {run.run_id: diverged for run in grid}
    with_extensions, _ = plan(study, profile, results)
    results.update({run.run_id: diverged for run in with_extensions})
    runs, final = plan(study, profile, results)
    assert final
    assert not [run for run in runs if run.phase == "seed"]


def test_all_diverged_grid_extends_downwards(tmp_path):
    study = load_study(write_study(tmp_path))
    profile = study.profiles["tiny"]
    grid, _ = plan(study, profile, {})
    results = {run.run_id: {"status": "diverged", "final_valid_accuracy": None,
                            "final_valid_loss": None} for run in grid}
    runs, final = plan(study, profile, results)
    extensions = {r.config.optimizer: r.lr for r in runs if r.phase == "extension"}
    assert extensions == {"adam": 1e-05, "sgd": 0.001}
    assert not final


def test_profile_missing_epochs_is_rejected(tmp_path):
    path = tmp_path / "study.yml"
    path.write_text(
        "optimizers:\n  adam: {class: torch.optim.Adam}\n"
        "profiles:\n  tiny: {datasets: [mnist], seeds: [0], batch_size: 32, valid_size: 64}\n"
    )
    with pytest.raises(StudyError, match="profile 'tiny': missing 'epochs'"):
        load_study(path)
