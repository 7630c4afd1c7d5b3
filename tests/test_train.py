import json

import pytest

from optstudy.data import load_dataset
from optstudy.train import DIVERGENCE_FACTOR, DIVERGENCE_PATIENCE, RunConfig, train


def tiny_config(**overrides):
    values = dict(dataset="mnist", optimizer="adam", optimizer_class="torch.optim.Adam",
                  hyperparameters={"lr": 0.001}, seed=0, epochs=2, batch_size=32,
                  train_size=128, valid_size=64, test_size=64)
    values.update(overrides)
    return RunConfig(**values)


def test_run_records_every_epoch(tiny_data_root):
    record = train(tiny_config(), data_root=tiny_data_root, device="cpu")
    assert record["status"] == "completed"
    assert [row["epoch"] for row in record["history"]] == [0, 1, 2]
    assert record["steps"] == 8
    assert record["gradient_evaluations"] == 8
    assert record["optimizer_state_bytes"] > 0


def test_record_is_strict_json(tiny_data_root):
    record = train(tiny_config(), data_root=tiny_data_root, device="cpu")
    json.dumps(record, allow_nan=False)


def test_record_stores_defaults_actually_used(tiny_data_root):
    record = train(tiny_config(), data_root=tiny_data_root, device="cpu")
    assert record["hyperparameters_used"]["betas"] == [0.9, 0.999]
    assert record["hyperparameters_used"]["eps"] == 1e-08
    assert record["optimizer_version"]


def test_same_seed_gives_identical_results(tiny_data_root):
    first = train(tiny_config(), data_root=tiny_data_root, device="cpu", threads=1)
    second = train(tiny_config(), data_root=tiny_data_root, device="cpu", threads=1)
    assert first["history"][-1]["valid_loss"] == second["history"][-1]["valid_loss"]
    assert first["loss_samples"] == second["loss_samples"]


def test_same_seed_gives_same_start_for_every_optimizer(tiny_data_root):
    adam = train(tiny_config(epochs=1), data_root=tiny_data_root, device="cpu")
    sgd = train(tiny_config(epochs=1, optimizer="sgd",
                            optimizer_class="torch.optim.SGD"),
                data_root=tiny_data_root, device="cpu")
    assert adam["history"][0] == {**sgd["history"][0],
                                  "seconds": adam["history"][0]["seconds"]}
    assert adam["loss_samples"][0] == sgd["loss_samples"][0]


def test_huge_lr_is_stored_as_diverged(tiny_data_root):
    config = tiny_config(optimizer="sgd", optimizer_class="torch.optim.SGD",
                         hyperparameters={"lr": 1e4})
    record = train(config, data_root=tiny_data_root, device="cpu")
    assert record["status"] == "diverged"
    assert record["divergence"]["step"] >= 1
    assert record["final_test_accuracy"] is None
    json.dumps(record, allow_nan=False)


def test_closure_optimizer_counts_every_call(tiny_data_root):
    config = tiny_config(optimizer="lbfgs", optimizer_class="torch.optim.LBFGS",
                         hyperparameters={"lr": 0.1, "max_iter": 3},
                         needs_closure=True, epochs=1)
    record = train(config, data_root=tiny_data_root, device="cpu")
    assert record["steps"] == 4
    assert record["gradient_evaluations"] > record["steps"]


def test_pytorch_optimizer_entry_trains(tiny_data_root):
    config = tiny_config(optimizer="lion", optimizer_class="pytorch_optimizer.lion",
                         hyperparameters={"lr": 1e-4}, epochs=1)
    record = train(config, data_root=tiny_data_root, device="cpu")
    assert record["status"] == "completed"
    assert record["optimizer_package"] == "pytorch_optimizer"


def test_cifar_run_uses_3c3d(tiny_data_root):
    record = train(tiny_config(dataset="cifar10", epochs=1),
                   data_root=tiny_data_root, device="cpu")
    assert record["model"] == "3c3d"
    assert record["model_parameters"] == 895_210


def test_bad_hyperparameter_raises_naming_class(tiny_data_root):
    config = tiny_config(hyperparameters={"lr": 0.001, "momentom": 0.9})
    with pytest.raises(TypeError, match="torch.optim.Adam"):
        train(config, data_root=tiny_data_root, device="cpu")


def test_preloaded_dataset_is_used(tiny_data_root):
    data = load_dataset("mnist", tiny_data_root, train_size=64, valid_size=64,
                        test_size=64)
    record = train(tiny_config(epochs=1), data=data, device="cpu")
    assert record["train_images"] == 64


def test_bf16_run_completes_with_other_numbers(tiny_data_root):
    fp32 = train(tiny_config(epochs=1), data_root=tiny_data_root, device="cpu")
    bf16 = train(tiny_config(epochs=1, precision="bf16"), data_root=tiny_data_root,
                 device="cpu")
    assert bf16["status"] == "completed"
    assert bf16["history"][-1]["valid_loss"] != fp32["history"][-1]["valid_loss"]


def test_invalid_precision_is_rejected(tiny_data_root):
    with pytest.raises(ValueError, match="invalid precision 'fp16'"):
        train(tiny_config(precision="fp16"), data_root=tiny_data_root, device="cpu")


def shock_config(**hyperparameters):
    # 128 images in batches of 8: 16 steps per epoch, 32 in the run.
    return tiny_config(optimizer="shock",
                       optimizer_class="divergence_probe_optimizer:BiasShock",
                       hyperparameters={"lr": 0.0, **hyperparameters}, batch_size=8)


def test_one_loss_spike_is_not_a_divergence(tiny_data_root):
    record = train(shock_config(shock_at=1, hold=3), data_root=tiny_data_root,
                   device="cpu")
    assert record["status"] == "completed"


def test_spike_reaches_the_threshold(tiny_data_root):
    record = train(shock_config(shock_at=1, hold=3), data_root=tiny_data_root,
                   device="cpu")
    losses = [sample["loss"] for sample in record["loss_samples"]]
    assert max(losses) > DIVERGENCE_FACTOR * losses[0]


def test_loss_held_high_diverges_after_patience(tiny_data_root):
    record = train(shock_config(shock_at=2, hold=None), data_root=tiny_data_root,
                   device="cpu")
    assert record["status"] == "diverged"
    assert record["divergence"]["above_since"] == 3
    assert record["divergence"]["step"] == 3 + DIVERGENCE_PATIENCE - 1


def test_loss_high_at_the_last_step_diverges(tiny_data_root):
    record = train(shock_config(shock_at=29, hold=None), data_root=tiny_data_root,
                   device="cpu")
    assert record["status"] == "diverged"
    assert record["divergence"]["step"] == 32


def test_diverged_run_has_no_final_metrics(tiny_data_root):
    record = train(shock_config(shock_at=29, hold=None), data_root=tiny_data_root,
                   device="cpu")
    assert record["final_valid_accuracy"] is None


def test_state_bytes_count_nested_tensors():
    import torch

    from optstudy.optimizers import optimizer_state_bytes

    parameter = torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    block = torch.zeros(3)
    optimizer.state[parameter] = {"blocks": [{"m": block}, {"m": block}],
                                  "shape": (4,), "v": torch.zeros(2, dtype=torch.float64)}
    assert optimizer_state_bytes(optimizer) == 3 * 4 + 2 * 8
