import torch

from optstudy.models import build_model, count_parameters


def test_2c2d_parameter_count():
    assert count_parameters(build_model("mnist", seed=0)) == 3_274_634


def test_3c3d_parameter_count():
    assert count_parameters(build_model("cifar10", seed=0)) == 895_210


def test_2c2d_output_shape():
    logits = build_model("fashion_mnist", seed=0)(torch.zeros(5, 1, 28, 28))
    assert logits.shape == (5, 10)


def test_3c3d_output_shape():
    logits = build_model("cifar10", seed=0)(torch.zeros(5, 3, 32, 32))
    assert logits.shape == (5, 10)


def test_same_seed_gives_same_weights():
    first = build_model("mnist", seed=3).state_dict()
    second = build_model("mnist", seed=3).state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_different_seed_gives_different_weights():
    first = build_model("mnist", seed=3).state_dict()
    second = build_model("mnist", seed=4).state_dict()
    assert not torch.equal(first["conv1.weight"], second["conv1.weight"])


def test_building_a_model_leaves_global_generator_alone():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    build_model("cifar10", seed=9)
    assert torch.equal(torch.rand(1), expected)


def test_3c3d_l2_penalty_skips_biases():
    model = build_model("cifar10", seed=0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.fill_(0.0 if name.endswith("weight") else 5.0)
    assert model.l2_penalty().item() == 0.0
