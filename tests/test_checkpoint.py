import pytest
import torch

from optstudy.checkpoint import CheckpointMismatchError
from optstudy.train import RunConfig, train


class Preempted(Exception):
    pass


def config(**overrides):
    values = dict(dataset="mnist", optimizer="adam", optimizer_class="torch.optim.Adam",
                  hyperparameters={"lr": 0.001}, seed=0, epochs=3, batch_size=32,
                  train_size=96, valid_size=64, test_size=64)
    values.update(overrides)
    return RunConfig(**values)


def preempt_after(epoch):
    def progress(row):
        if row["epoch"] == epoch:
            raise Preempted

    return progress


def comparable(record):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in record["history"]]


def test_resumed_run_reproduces_uninterrupted_run(tmp_path, tiny_data_root):
    whole = train(config(), data_root=tiny_data_root, device="cpu", threads=1)
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(Preempted):
        train(config(), data_root=tiny_data_root, device="cpu", threads=1,
              checkpoint_path=checkpoint, progress=preempt_after(1))
    assert checkpoint.is_file()
    resumed = train(config(), data_root=tiny_data_root, device="cpu", threads=1,
                    checkpoint_path=checkpoint)
    assert comparable(resumed) == comparable(whole)
    assert resumed["loss_samples"] == whole["loss_samples"]
    assert resumed["gradient_evaluations"] == whole["gradient_evaluations"]


def test_checkpoint_is_removed_when_run_ends(tmp_path, tiny_data_root):
    checkpoint = tmp_path / "checkpoint.pt"
    train(config(epochs=1), data_root=tiny_data_root, device="cpu",
          checkpoint_path=checkpoint)
    assert not checkpoint.exists()


def test_checkpoint_of_other_config_is_rejected(tmp_path, tiny_data_root):
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(Preempted):
        train(config(), data_root=tiny_data_root, device="cpu",
              checkpoint_path=checkpoint, progress=preempt_after(1))
    with pytest.raises(CheckpointMismatchError, match="another run configuration"):
        train(config(seed=1), data_root=tiny_data_root, device="cpu",
              checkpoint_path=checkpoint)


def test_reordered_parameters_refuse_resume(tmp_path, tiny_data_root):
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(Preempted):
        train(config(), data_root=tiny_data_root, device="cpu",
              checkpoint_path=checkpoint, progress=preempt_after(1))
    payload = torch.load(checkpoint, weights_only=False)
    names = payload["layout"]["parameters"]
    names[0], names[2] = names[2], names[0]
    torch.save(payload, checkpoint)
    with pytest.raises(CheckpointMismatchError) as caught:
        train(config(), data_root=tiny_data_root, device="cpu",
              checkpoint_path=checkpoint)
    assert "parameter 0 is conv1.weight" in str(caught.value)
    assert "conv2.weight" in str(caught.value)


def test_split_parameter_groups_refuse_resume(tmp_path, tiny_data_root):
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(Preempted):
        train(config(), data_root=tiny_data_root, device="cpu",
              checkpoint_path=checkpoint, progress=preempt_after(1))
    payload = torch.load(checkpoint, weights_only=False)
    groups = payload["layout"]["groups"]
    payload["layout"]["groups"] = [groups[0][:2], groups[0][2:]]
    torch.save(payload, checkpoint)
    with pytest.raises(CheckpointMismatchError, match="split differently"):
        train(config(), data_root=tiny_data_root, device="cpu",
              checkpoint_path=checkpoint)
