"""Optimizer registry: resolve a class reference from the study file and build it.

A class reference names its namespace explicitly, so a name never silently
resolves to a different package:

- ``torch.optim.Adam``: a class of ``torch.optim``; the class name is matched
  case-insensitively (``torch.optim.adamw`` is ``torch.optim.AdamW``);
- ``pytorch_optimizer.lion``: a name registered by the pytorch-optimizer
  package, also case-insensitive;
- ``package.module:Class``: any importable class, such as a user's own.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
from dataclasses import dataclass
from importlib import metadata

import torch

TORCH_PREFIX = "torch.optim."
PYTORCH_OPTIMIZER_PREFIX = "pytorch_optimizer."


class OptimizerNotFoundError(LookupError):
    """Raised when a class reference resolves to no optimizer class."""


@dataclass(frozen=True)
class ResolvedClass:
    """An optimizer class with where it was found and the package version."""

    cls: type
    reference: str  # canonical form, e.g. "torch.optim.AdamW"
    package: str
    version: str


def _torch_optim_classes() -> dict[str, type]:
    return {
        name: obj
        for name, obj in vars(torch.optim).items()
        if inspect.isclass(obj)
        and issubclass(obj, torch.optim.Optimizer)
        and obj is not torch.optim.Optimizer
    }


def _pick(name: str, candidates: dict[str, type], namespace: str) -> str:
    """Return the candidate key equal to ``name`` ignoring case, or raise."""
    by_lower = {key.lower(): key for key in candidates}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)
    hint = (
        f"did you mean {', '.join(repr(by_lower[c]) for c in close)}?"
        if close
        else f"valid names: {', '.join(sorted(candidates))}"
    )
    raise OptimizerNotFoundError(
        f"unknown optimizer {name!r} in {namespace}: {hint} "
        "(names are matched case-insensitively; see the study file)"
    )


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def resolve_class(reference: str) -> ResolvedClass:
    """Resolve a class reference from the study file to an optimizer class."""
    if not isinstance(reference, str) or not reference.strip():
        raise OptimizerNotFoundError(
            f"invalid optimizer class reference {reference!r}: expected "
            "'torch.optim.Name', 'pytorch_optimizer.name' or 'package.module:Class'"
        )
    reference = reference.strip()

    if ":" in reference:
        module_name, _, class_name = reference.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise OptimizerNotFoundError(
                f"cannot import module {module_name!r} for optimizer {reference!r}: "
                f"{error}. Make sure the module is on PYTHONPATH (the repository "
                "root is added automatically)."
            ) from error
        classes = {
            name: obj for name, obj in vars(module).items() if inspect.isclass(obj)
        }
        key = _pick(class_name, classes, f"module {module_name}")
        cls = classes[key]
        if not issubclass(cls, torch.optim.Optimizer):
            raise OptimizerNotFoundError(
                f"{reference!r} is not a torch.optim.Optimizer subclass"
            )
        top = module_name.split(".")[0]
        return ResolvedClass(cls, f"{module_name}:{key}", top, _version(top))

    if reference.lower().startswith(TORCH_PREFIX):
        name = reference[len(TORCH_PREFIX):]
        classes = _torch_optim_classes()
        key = _pick(name, classes, "torch.optim")
        return ResolvedClass(classes[key], TORCH_PREFIX + key, "torch", torch.__version__)

    if reference.lower().startswith(PYTORCH_OPTIMIZER_PREFIX):
        name = reference[len(PYTORCH_OPTIMIZER_PREFIX):]
        try:
            import pytorch_optimizer
        except ImportError as error:
            raise OptimizerNotFoundError(
                f"optimizer {reference!r} needs the pytorch-optimizer package: "
                "pip install pytorch-optimizer"
            ) from error
        names = {n: None for n in pytorch_optimizer.get_supported_optimizers()}
        key = _pick(name, names, "pytorch_optimizer (get_supported_optimizers)")
        cls = pytorch_optimizer.load_optimizer(key)
        return ResolvedClass(
            cls, PYTORCH_OPTIMIZER_PREFIX + key, "pytorch_optimizer",
            _version("pytorch_optimizer"),
        )

    raise OptimizerNotFoundError(
        f"optimizer class reference {reference!r} has no namespace: write "
        f"'torch.optim.{reference}', 'pytorch_optimizer.{reference.lower()}' or "
        "'package.module:Class'"
    )


def class_default_lr(cls: type) -> float | None:
    """Return the ``lr`` default of the class constructor, if it has a numeric one."""
    parameter = inspect.signature(cls.__init__).parameters.get("lr")
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return None
    default = parameter.default
    if isinstance(default, torch.Tensor):
        default = default.item()
    return float(default) if isinstance(default, (int, float)) else None


def _plain(value):
    """Convert optimizer defaults into JSON-friendly values."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return repr(value)


def build_optimizer(
    resolved: ResolvedClass, params, hyperparameters: dict
) -> tuple[torch.optim.Optimizer, dict]:
    """Build the optimizer; return it with every hyperparameter actually in use.

    The second value is the optimizer's ``defaults`` dictionary after
    construction, so library defaults that the study file left unset are
    recorded too (for example AdaBelief's ``eps``).
    """
    try:
        optimizer = resolved.cls(params, **hyperparameters)
    except TypeError as error:
        raise TypeError(
            f"cannot build {resolved.reference} with {hyperparameters}: {error}"
        ) from error
    used = {key: _plain(value) for key, value in optimizer.defaults.items()}
    return optimizer, used


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Return the bytes held in tensors of the optimizer state.

    Tensors nested in lists, tuples or dicts count too (pytorch-optimizer's
    DASH keeps a list of per-block dicts); a tensor reached twice counts once.
    """
    seen: set[int] = set()

    def walk(value) -> int:
        if isinstance(value, torch.Tensor):
            if id(value) in seen:
                return 0
            seen.add(id(value))
            return value.numel() * value.element_size()
        if isinstance(value, dict):
            return sum(walk(item) for item in value.values())
        if isinstance(value, (list, tuple)):
            return sum(walk(item) for item in value)
        return 0

    return sum(walk(state) for state in optimizer.state.values())


def weight_decay_style(reference: str, hyperparameters_used: dict) -> str:
    """Name the kind of weight decay a configured optimizer applies.

    "coupled (L2)" adds the decay to the gradient, so adaptive methods rescale
    it (torch's Adam, SGD); "decoupled" shrinks the weights directly, as in
    AdamW (Loshchilov and Hutter, 2019). The same ``weight_decay: 0.01``
    therefore means different things for Adam and AdamW.
    """
    decay = hyperparameters_used.get("weight_decay") or 0
    if isinstance(decay, (int, float)) and decay == 0:
        return "none"
    if hyperparameters_used.get("decoupled_weight_decay"):
        return "decoupled"
    if "weight_decouple" in hyperparameters_used:
        return "decoupled" if hyperparameters_used["weight_decouple"] else "coupled (L2)"
    if reference.lower().endswith("adamw"):
        return "decoupled"
    return "coupled (L2)"
