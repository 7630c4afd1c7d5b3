"""The optimizer adapter contract and the conformance check, on a tiny MLP."""

from __future__ import annotations

import json

import pytest
import torch

from optstudy import adapters
from optstudy.adapters import (
    CombinedOptimizer, UnsupportedOptimizerError, build_adapted, infer_needs,
)
from optstudy.conformance import (
    CANNOT_RUN, FAIL, PASS, check_isolated, check_optimizer, tiny_problem,
)
from optstudy.optimizers import resolve_class
from optstudy.study import StudyError, load_study
from optstudy.train import RunConfig, train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class BrokenSGD(torch.optim.SGD):
    """SGD whose step adds NaN to every parameter: conformance must catch it."""

    @torch.no_grad()
    def step(self, closure=None):
        super().step(closure)
        for group in self.param_groups:
            for parameter in group["params"]:
                parameter.add_(float("nan"))


class ForgetfulSGD(torch.optim.SGD):
    """SGD with momentum whose state_dict drops the momentum buffers."""

    def state_dict(self):
        state = super().state_dict()
        state["state"] = {}
        return state


class NeedsExtraPackage(torch.optim.SGD):
    """SGD whose constructor imports a package that is not installed, as an
    optimizer with an optional dependency does."""

    def __init__(self, params, lr=0.1):
        import optstudy_missing_extra  # noqa: F401 - this import fails on purpose

        super().__init__(params, lr=lr)


def assert_passes(result):
    assert result.status == PASS, f"{result.check}: {result.reason}"


def test_lbfgs_needs_closure_and_counts_calls():
    result = check_optimizer("torch.optim.LBFGS", {"lr": 0.5, "max_iter": 4})
    assert_passes(result)
    assert "closure" in result.needs
    assert result.steps == 10
    assert result.gradient_evaluations > result.steps


@pytest.mark.parametrize("reference", ["pytorch_optimizer.sophiah",
                                       "pytorch_optimizer.adahessian"])
def test_second_order_optimizer_passes(reference):
    assert infer_needs(resolve_class(reference).cls).create_graph
    assert_passes(check_optimizer(reference))


def test_second_order_step_releases_graph():
    model, inputs, labels = tiny_problem()
    adapted = build_adapted(resolve_class("pytorch_optimizer.adahessian"), model, {})

    def closure():
        adapted.optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        adapted.backward(loss)
        return loss

    adapted.step(closure)
    assert all(parameter.grad is None for parameter in model.parameters())


def test_schedule_free_switches_modes():
    model, _, _ = tiny_problem()
    adapted = build_adapted(resolve_class("pytorch_optimizer.schedulefreeadamw"), model, {})
    assert adapted.needs.train_eval
    adapted.eval()
    assert not adapted.optimizer.param_groups[0]["train_mode"]
    adapted.train()
    assert adapted.optimizer.param_groups[0]["train_mode"]
    assert_passes(check_optimizer("pytorch_optimizer.schedulefreeadamw"))


def test_muon_pairs_with_adamw_for_other_shapes():
    model, _, _ = tiny_problem()
    adapted = build_adapted(resolve_class("torch.optim.Muon"), model, {"lr": 0.02})
    assert adapted.needs.split == "partner"
    assert isinstance(adapted.optimizer, CombinedOptimizer)
    muon, partner = adapted.optimizer.optimizers
    assert all(p.ndim == 2 for group in muon.param_groups for p in group["params"])
    assert all(p.ndim == 1 for group in partner.param_groups for p in group["params"])
    assert isinstance(partner, torch.optim.AdamW)
    assert adapted.hyperparameters_used["partner"]["class"] == "torch.optim.AdamW"
    assert_passes(check_optimizer("torch.optim.Muon"))


def test_muon_partner_can_be_declared():
    model, _, _ = tiny_problem()
    spec = {"partner": {"class": "torch.optim.SGD", "hyperparameters": {"lr": 0.1}}}
    adapted = build_adapted(resolve_class("torch.optim.Muon"), model, {}, spec)
    assert isinstance(adapted.optimizer.optimizers[1], torch.optim.SGD)


def test_lookahead_wraps_an_entry():
    spec = {"wrapper": {"class": "pytorch_optimizer:Lookahead",
                        "hyperparameters": {"k": 3, "alpha": 0.5}}}
    model, _, _ = tiny_problem()
    adapted = build_adapted(resolve_class("torch.optim.Adam"), model, {"lr": 0.01}, spec)
    assert type(adapted.optimizer).__name__ == "Lookahead"
    assert adapted.hyperparameters_used["wrapper"]["class"] == "pytorch_optimizer:Lookahead"
    assert_passes(check_optimizer("torch.optim.Adam", {"lr": 0.01}, spec))


def test_prodigy_is_learning_rate_free():
    assert infer_needs(resolve_class("pytorch_optimizer.prodigy").cls).lr_free
    result = check_optimizer("pytorch_optimizer.prodigy")
    assert_passes(result)
    assert "lr_free" in result.needs


def test_model_argument_optimizers_pass():
    for reference in ("pytorch_optimizer.adammini", "pytorch_optimizer.lomo"):
        result = check_optimizer(reference)
        assert_passes(result)
        assert "model" in result.needs


def test_sparse_adam_is_rejected_with_reason():
    result = check_optimizer("torch.optim.SparseAdam")
    assert result.status == CANNOT_RUN
    assert "sparse gradients" in result.reason


def test_fused_without_implementation_is_rejected():
    result = check_optimizer("torch.optim.RMSprop", {"lr": 0.01, "fused": True})
    assert result.status == CANNOT_RUN
    assert "has no fused implementation" in result.reason


def test_fused_on_unsupported_device_is_rejected(monkeypatch):
    # torch 2.14 has fused CPU kernels for Adam; pretend a build without them.
    import torch.utils._foreach_utils as foreach_utils

    monkeypatch.setattr(foreach_utils, "_get_fused_kernels_supported_devices",
                        lambda: ["cuda"])
    model, _, _ = tiny_problem()
    with pytest.raises(UnsupportedOptimizerError, match="fused=True needs a device"):
        build_adapted(resolve_class("torch.optim.Adam"), model, {"fused": True},
                      device=torch.device("cpu"))


def test_distributed_optimizer_is_rejected():
    result = check_optimizer("pytorch_optimizer.distributedmuon")
    assert result.status == CANNOT_RUN
    assert "torch.distributed" in result.reason


def test_missing_required_argument_is_rejected(monkeypatch):
    monkeypatch.setattr(adapters, "PROBLEM_ARGUMENTS", ())
    result = check_optimizer("pytorch_optimizer.ranger21")
    assert result.status == CANNOT_RUN
    assert "'num_iterations'" in result.reason


def test_missing_optional_package_is_rejected():
    result = check_optimizer("tests.test_conformance:NeedsExtraPackage")
    assert result.status == CANNOT_RUN
    assert "optional package that is not installed" in result.reason
    assert "optstudy_missing_extra" in result.reason


def test_state_round_trip_of_momentum():
    assert_passes(check_optimizer("torch.optim.SGD", {"lr": 0.1, "momentum": 0.9}))


def test_lost_state_fails_round_trip():
    result = check_optimizer("tests.test_conformance:ForgetfulSGD",
                             {"lr": 0.1, "momentum": 0.9})
    assert result.status == FAIL
    assert result.check == "state round trip"


def test_broken_optimizer_fails_finite_check():
    result = check_optimizer("tests.test_conformance:BrokenSGD", {"lr": 0.1})
    assert result.status == FAIL
    assert result.check == "finite loss"


def test_isolated_check_reports_failure():
    result = check_isolated("tests.test_conformance:BrokenSGD", timeout=60)
    assert result.status == FAIL
    assert result.check == "finite loss"


def test_plain_run_keeps_run_id():
    from optstudy.study import run_id

    config = RunConfig("mnist", "adam", "torch.optim.Adam", {"lr": 0.001})
    assert run_id(config) == "93f839e1eeee1f79"
    wrapped = RunConfig("mnist", "adam", "torch.optim.Adam", {"lr": 0.001},
                        adapter={"wrapper": {"class": "pytorch_optimizer:Lookahead"}})
    assert run_id(wrapped) != "93f839e1eeee1f79"


def test_study_entry_declares_adapter(tmp_path):
    path = tmp_path / "study.yml"
    path.write_text(json.dumps({
        "optimizers": {
            "lookahead_adam": {
                "class": "torch.optim.Adam",
                "wrapper": {"class": "pytorch_optimizer:Lookahead"},
                "needs": {"train_eval": False},
            },
        },
        "profiles": {"tiny": {"datasets": ["mnist"], "epochs": 1, "batch_size": 8,
                              "valid_size": 8, "seeds": 1}},
    }))
    entry = load_study(path).optimizers["lookahead_adam"]
    assert entry.adapter["wrapper"] == {"class": "pytorch_optimizer:Lookahead"}


def test_study_rejects_unknown_need(tmp_path):
    path = tmp_path / "study.yml"
    path.write_text(json.dumps({
        "optimizers": {"adam": {"class": "torch.optim.Adam", "needs": {"hessian": True}}},
        "profiles": {"tiny": {"datasets": ["mnist"], "epochs": 1, "batch_size": 8,
                              "valid_size": 8, "seeds": 1}},
    }))
    with pytest.raises(StudyError, match="unknown needs"):
        load_study(path)


def test_train_runs_schedule_free_and_sophia(tiny_data_root):
    for reference, lr in (("pytorch_optimizer.schedulefreeadamw", 1e-3),
                          ("pytorch_optimizer.sophiah", 1e-3)):
        config = RunConfig("mnist", "entry", reference, {"lr": lr}, epochs=1,
                           batch_size=64, train_size=128, valid_size=64, test_size=64)
        record = train(config, data_root=tiny_data_root, device="cpu")
        assert record["status"] == "completed", reference
        assert record["gradient_evaluations"] == record["steps"]
