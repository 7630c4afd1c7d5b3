"""The optimizer adapter contract: what an optimizer's step needs from the loop.

Most optimizers take ``model.parameters()`` and a bare ``step()`` after
``loss.backward()``. Some need more, and the single training loop provides it
through :class:`AdaptedOptimizer` instead of a second loop:

- ``closure``: ``step(closure)`` recomputes the loss itself (torch's LBFGS,
  pytorch-optimizer's AliG and BSAM); every closure call is one gradient
  evaluation;
- ``create_graph``: a second-order backward pass for Hessian estimates
  (AdaHessian, SophiaH); the gradients, and with them the graph, are released
  after each step;
- ``train_eval``: ``optimizer.train()`` before training steps and
  ``optimizer.eval()`` before evaluation (the schedule-free optimizers);
- ``model``: the constructor takes the model instead of its parameters
  (Adam-mini, LOMO, AdaLOMO);
- ``fused_backward``: the update happens inside the backward pass, through
  ``optimizer.fused_backward(loss, lr)`` (LOMO, AdaLOMO), and ``step()`` is
  not called;
- ``split``: parameters split by shape. ``"partner"`` gives the 2-D weight
  matrices to the optimizer and every other parameter to a partner optimizer
  (torch's Muon, paired with AdamW by default); ``"use_muon"`` passes two
  parameter groups flagged ``use_muon`` (pytorch-optimizer's Muon family,
  which runs its own AdamW on the second group);
- ``wraps``: the constructor takes a base optimizer (pytorch-optimizer's
  Magma); a ``wrapper`` declared on an entry wraps any entry the same way
  (pytorch-optimizer's Lookahead);
- ``lr_free``: learning-rate-free methods (Prodigy, D-Adaptation), whose lr is
  a multiplier near 1 on an estimated step size.

An entry may declare any of these under ``needs`` in the study file; the rest
are inferred from the class (:func:`infer_needs`). An optimizer that cannot run
on this problem raises :class:`UnsupportedOptimizerError` with the reason.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, fields, replace

import torch

from .optimizers import ResolvedClass, _plain, build_optimizer, resolve_class

# Inference tables, keyed by class name. Checked against torch 2.14 and
# pytorch-optimizer 4.1.0; a class added later is inferred from its signature only.
CLOSURE_CLASSES = {"LBFGS", "AliG", "BSAM"}
SECOND_ORDER_CLASSES = {"AdaHessian", "SophiaH"}
LR_FREE_PREFIXES = ("Prodigy", "DAdapt")
USE_MUON_CLASSES = {"Muon", "AdaGO", "AdaMuon", "NorMuon", "MuonClip", "DistributedMuon"}
DISTRIBUTED_CLASSES = {
    "DistributedMuon": "it shards its update across a torch.distributed process group",
    "DeMo": "it exchanges compressed momentum through torch.distributed all_gather",
}
UNSUPPORTED_CLASSES = {
    "SparseAdam": "SparseAdam needs sparse gradients (nn.Embedding(sparse=True)); "
    "the dense networks of this study produce none",
}
# Constructor arguments without a default that the problem can supply.
PROBLEM_ARGUMENTS = ("num_data", "num_iterations")
DEFAULT_PARTNER = {"class": "torch.optim.AdamW", "hyperparameters": {}}
DEFAULT_BASE = {"class": "torch.optim.AdamW", "hyperparameters": {}}
ADAPTER_KEYS = ("needs", "partner", "base", "wrapper")


class UnsupportedOptimizerError(RuntimeError):
    """Raised when an optimizer cannot run on this problem; the message gives the reason."""


@dataclass(frozen=True)
class Needs:
    """The requirements of one optimizer's step on the training loop (see the module doc)."""

    closure: bool = False
    create_graph: bool = False
    train_eval: bool = False
    model: bool = False
    fused_backward: bool = False
    split: str | None = None  # None, "partner" or "use_muon"
    wraps: bool = False
    lr_free: bool = False

    def names(self) -> list[str]:
        """Return the needs that are set, e.g. ["closure", "split=partner"]."""
        names = []
        for key, value in asdict(self).items():
            if value is True:
                names.append(key)
            elif isinstance(value, str):
                names.append(f"{key}={value}")
        return names


NEED_NAMES = tuple(item.name for item in fields(Needs))


def _init_parameters(cls: type) -> list[inspect.Parameter]:
    try:
        parameters = list(inspect.signature(cls.__init__).parameters.values())
    except (TypeError, ValueError):
        return []
    return parameters[1:]  # drop self


def infer_needs(cls: type) -> Needs:
    """Infer the needs of an optimizer class from its name and signatures."""
    name = cls.__name__
    first = _init_parameters(cls)[:1]
    first_name = first[0].name if first else "params"

    closure = name in CLOSURE_CLASSES
    step = inspect.signature(cls.step).parameters.get("closure")
    if step is not None and step.default is inspect.Parameter.empty:
        closure = True  # step(closure) has no default: the closure is mandatory

    is_pytorch_optimizer = cls.__module__.startswith("pytorch_optimizer")
    return Needs(
        closure=closure,
        create_graph=name in SECOND_ORDER_CLASSES,
        train_eval=callable(getattr(cls, "train", None))
        and callable(getattr(cls, "eval", None)),
        model=first_name == "model",
        fused_backward=callable(getattr(cls, "fused_backward", None)),
        split=(
            "partner" if cls is getattr(torch.optim, "Muon", None)
            else "use_muon" if is_pytorch_optimizer and name in USE_MUON_CLASSES
            else None
        ),
        wraps=first_name == "optimizer",
        lr_free=name.startswith(LR_FREE_PREFIXES),
    )


def resolve_needs(cls: type, declared: dict | None = None,
                  needs_closure: bool = False) -> Needs:
    """Combine the inferred needs with those an entry declares (declared win)."""
    needs = infer_needs(cls)
    declared = dict(declared or {})
    unknown = set(declared) - set(NEED_NAMES)
    if unknown:
        raise ValueError(
            f"unknown needs {sorted(unknown)} for {cls.__name__}: expected some of "
            f"{', '.join(NEED_NAMES)}"
        )
    if needs_closure:
        declared.setdefault("closure", True)
    return replace(needs, **declared)


def check_adapter_spec(spec: dict) -> dict:
    """Validate an entry's adapter mapping (needs, partner, base, wrapper)."""
    if not isinstance(spec, dict):
        raise ValueError(f"adapter settings must be a mapping, got {spec!r}")
    unknown = set(spec) - set(ADAPTER_KEYS)
    if unknown:
        raise ValueError(
            f"unknown adapter keys {sorted(unknown)}: expected {', '.join(ADAPTER_KEYS)}"
        )
    needs = spec.get("needs") or {}
    unknown = set(needs) - set(NEED_NAMES)
    if unknown:
        raise ValueError(
            f"unknown needs {sorted(unknown)}: expected some of {', '.join(NEED_NAMES)}"
        )
    for key in ("partner", "base", "wrapper"):
        value = spec.get(key)
        if value is None:
            continue
        if not isinstance(value, dict) or "class" not in value:
            raise ValueError(
                f"{key} needs a 'class' key, e.g. {{class: torch.optim.AdamW}}; "
                f"got {value!r}"
            )
        resolve_class(value["class"])
    return spec


def check_supported(resolved: ResolvedClass, hyperparameters: dict,
                    device: torch.device) -> None:
    """Raise UnsupportedOptimizerError when the optimizer cannot run here."""
    cls = resolved.cls
    name = cls.__name__
    if name in UNSUPPORTED_CLASSES:
        raise UnsupportedOptimizerError(f"{resolved.reference}: {UNSUPPORTED_CLASSES[name]}")
    if name in DISTRIBUTED_CLASSES and not (
        torch.distributed.is_available() and torch.distributed.is_initialized()
    ):
        raise UnsupportedOptimizerError(
            f"{resolved.reference} needs an initialised torch.distributed process "
            f"group because {DISTRIBUTED_CLASSES[name]}; the study trains in one process"
        )
    if hyperparameters.get("fused"):
        explicit = {parameter.name for parameter in _init_parameters(cls)}
        if "fused" not in explicit:
            raise UnsupportedOptimizerError(
                f"{resolved.reference} has no fused implementation: remove fused=True"
            )
        # NOTE: a private torch helper (checked in torch 2.14, which lists "cpu"
        # and has fused CPU kernels for Adam, AdamW, SGD and Adagrad).
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        supported = _get_fused_kernels_supported_devices()
        if device.type not in supported:
            raise UnsupportedOptimizerError(
                f"{resolved.reference} with fused=True needs a device of type "
                f"{', '.join(supported)}, not {device.type}: remove fused=True or "
                "choose another device"
            )


def _missing_arguments(cls: type, given: dict) -> list[str]:
    return [
        parameter.name for parameter in _init_parameters(cls)[1:]
        if parameter.default is inspect.Parameter.empty
        and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
        and parameter.name not in given
    ]


def _build_one(resolved: ResolvedClass, first, hyperparameters: dict,
               problem: dict) -> tuple[torch.optim.Optimizer, dict]:
    """Build one optimizer, adding constructor arguments the problem supplies."""
    hyperparameters = dict(hyperparameters)
    for name in _missing_arguments(resolved.cls, hyperparameters):
        if name in PROBLEM_ARGUMENTS and name in problem:
            hyperparameters[name] = problem[name]
        else:
            raise UnsupportedOptimizerError(
                f"{resolved.reference} needs the constructor argument {name!r}, "
                "which has no default: set it under hyperparameters in the study file"
            )
    try:
        return build_optimizer(resolved, first, hyperparameters)
    except ImportError as error:
        raise UnsupportedOptimizerError(
            f"{resolved.reference} needs an optional package that is not installed: "
            f"{error}"
        ) from error


class CombinedOptimizer:
    """Two optimizers over disjoint parameters, stepped together (Muon with AdamW).

    It offers the parts of the torch.optim.Optimizer interface that the loop,
    the checkpoints and the conformance check use.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    @property
    def state(self) -> dict:
        merged = {}
        for optimizer in self.optimizers:
            merged.update(optimizer.state)
        return merged

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        if closure is not None:
            raise TypeError("CombinedOptimizer.step takes no closure")
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> dict:
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        for optimizer, state in zip(self.optimizers, state_dict["optimizers"]):
            optimizer.load_state_dict(state)


class AdaptedOptimizer:
    """An optimizer with the backward pass, step and mode switches its needs call for."""

    def __init__(self, optimizer, needs: Needs, hyperparameters_used: dict):
        self.optimizer = optimizer
        self.needs = needs
        self.hyperparameters_used = hyperparameters_used

    def backward(self, loss: torch.Tensor) -> None:
        """Compute the gradients of ``loss`` the way the optimizer expects."""
        if self.needs.fused_backward:
            # LOMO and AdaLOMO update each parameter inside this backward pass;
            # clipping by the global norm needs a first pass to measure it.
            if getattr(self.optimizer, "clip_grad_norm", None):
                self.optimizer.grad_norm(loss)
            self.optimizer.fused_backward(loss, self.optimizer.param_groups[0]["lr"])
        elif self.needs.create_graph:
            loss.backward(create_graph=True)
        else:
            loss.backward()

    def step(self, closure):
        """Take one step; ``closure`` zeroes the gradients, computes the loss and
        calls :meth:`backward`. Return the loss of the first closure call."""
        if self.needs.closure:
            losses = []

            def recording_closure():
                # Some steps (AliG's) run under torch.no_grad() and call the
                # closure without enabling gradients again.
                with torch.enable_grad():
                    loss = closure()
                losses.append(loss)
                return loss

            returned = self.optimizer.step(recording_closure)
            if isinstance(returned, torch.Tensor):
                return returned
            return losses[0] if losses else returned

        loss = closure()
        if not self.needs.fused_backward:
            self.optimizer.step()
        if self.needs.create_graph:
            # p.grad contains the graph of the second-order pass; dropping the
            # gradients frees it, so memory stays flat from step to step.
            self.optimizer.zero_grad(set_to_none=True)
        return loss

    def train(self) -> None:
        """Switch a schedule-free optimizer to its training weights."""
        if self.needs.train_eval and callable(getattr(self.optimizer, "train", None)):
            self.optimizer.train()

    def eval(self) -> None:
        """Switch a schedule-free optimizer to its evaluation (averaged) weights."""
        if self.needs.train_eval and callable(getattr(self.optimizer, "eval", None)):
            self.optimizer.eval()


def _split_by_shape(model: torch.nn.Module):
    matrices = [p for p in model.parameters() if p.requires_grad and p.ndim == 2]
    others = [p for p in model.parameters() if p.requires_grad and p.ndim != 2]
    return matrices, others


def _build_core(resolved: ResolvedClass, model: torch.nn.Module, hyperparameters: dict,
                needs: Needs, spec: dict, problem: dict):
    """Build the optimizer itself, before any wrapper."""
    if needs.model:
        return _build_one(resolved, model, hyperparameters, problem)

    if needs.split == "use_muon":
        matrices = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
        others = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
        groups = [{"params": matrices, "use_muon": True}]
        if others:
            groups.append({"params": others, "use_muon": False})
        return _build_one(resolved, groups, hyperparameters, problem)

    if needs.split == "partner":
        # NOTE: convolution kernels (4-D) go to the partner, because torch's
        # Muon accepts only 2-D parameters.
        matrices, others = _split_by_shape(model)
        if not matrices:
            raise UnsupportedOptimizerError(
                f"{resolved.reference} updates only 2-D weight matrices and the "
                "model has none"
            )
        main, used = _build_one(resolved, matrices, hyperparameters, problem)
        if not others:
            return main, used
        partner_spec = spec.get("partner") or DEFAULT_PARTNER
        partner_class = resolve_class(partner_spec["class"])
        partner, partner_used = _build_one(
            partner_class, others, partner_spec.get("hyperparameters") or {}, problem
        )
        used = {**used, "partner": {"class": partner_class.reference, **partner_used}}
        return CombinedOptimizer([main, partner]), used

    if needs.wraps:
        base_spec = spec.get("base") or DEFAULT_BASE
        base_class = resolve_class(base_spec["class"])
        base, base_used = _build_one(base_class, model.parameters(),
                                     base_spec.get("hyperparameters") or {}, problem)
        optimizer, used = _build_one(resolved, base, hyperparameters, problem)
        return optimizer, {**used, "base": {"class": base_class.reference, **base_used}}

    return _build_one(resolved, model.parameters(), hyperparameters, problem)


def build_adapted(resolved: ResolvedClass, model: torch.nn.Module,
                  hyperparameters: dict, spec: dict | None = None,
                  needs_closure: bool = False, device: torch.device | None = None,
                  problem: dict | None = None) -> AdaptedOptimizer:
    """Build an optimizer for ``model`` according to its needs, ready for the loop.

    ``spec`` is the entry's adapter mapping (declared ``needs``, ``partner``,
    ``base``, ``wrapper``); ``problem`` supplies constructor arguments that
    some optimizers require (``num_data``, ``num_iterations``). Raises
    UnsupportedOptimizerError with the reason when the optimizer cannot run.
    """
    spec = spec or {}
    problem = problem or {}
    device = device or next(model.parameters()).device
    needs = resolve_needs(resolved.cls, spec.get("needs"), needs_closure)
    check_supported(resolved, hyperparameters, device)
    optimizer, used = _build_core(resolved, model, hyperparameters, needs, spec, problem)

    wrapper_spec = spec.get("wrapper")
    if wrapper_spec:
        wrapper_class = resolve_class(wrapper_spec["class"])
        optimizer, wrapper_used = _build_one(
            wrapper_class, optimizer, wrapper_spec.get("hyperparameters") or {}, problem
        )
        used = {**used, "wrapper": {"class": wrapper_class.reference,
                                    **{k: _plain(v) for k, v in wrapper_used.items()}}}
    return AdaptedOptimizer(optimizer, needs, used)
