"""Conformance check: does each optimizer work through the adapter contract?

Every optimizer is built on a tiny MLP (8 inputs, 16 tanh units, 3 classes,
64 random examples of a random linear teacher, full batch) and stepped a few
times through :class:`optstudy.adapters.AdaptedOptimizer`, exactly as the
training loop would. The checks, in order; the first that fails is reported:

- ``build``: the optimizer can be constructed (an optimizer that cannot run
  on this problem is reported as "cannot run" with the reason instead);
- ``step``: the steps raise no error;
- ``finite loss`` and ``loss decreases``: the loss after the steps is finite
  and below the loss before them (schedule-free optimizers in eval mode);
- ``finite parameters`` and ``finite state``;
- ``step count``: the loop took the steps it asked for, and each step made
  exactly one gradient evaluation, or at least one where a closure is used;
- ``state round trip``: ``state_dict()`` loaded into a fresh optimizer on a
  copy of the model gives a bit-identical next step.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import multiprocessing
import time
import traceback
from dataclasses import asdict, dataclass, field

import torch
from torch.nn import functional as F

from .adapters import UnsupportedOptimizerError, build_adapted, infer_needs
from .optimizers import (
    PYTORCH_OPTIMIZER_PREFIX, TORCH_PREFIX, OptimizerNotFoundError, resolve_class,
)

log = logging.getLogger(__name__)

STEPS = 10
EXAMPLES = 64
DEFAULT_LR = 1e-3  # for classes whose constructor has no numeric lr default
PASS, FAIL, CANNOT_RUN, TIMED_OUT = "pass", "fail", "cannot run", "timed out"
COLUMNS = ("name", "reference", "needs", "status", "check", "reason", "seconds",
           "steps", "gradient_evaluations", "initial_loss", "final_loss")


class CheckFailed(AssertionError):
    """One conformance check failed; ``check`` names it."""

    def __init__(self, check: str, reason: str):
        super().__init__(f"{check}: {reason}")
        self.check = check
        self.reason = reason


@dataclass
class ConformanceResult:
    """One row of the conformance table."""

    name: str
    reference: str = ""
    needs: str = ""
    status: str = FAIL
    check: str = ""  # the failing check; empty when the status is pass
    reason: str = ""
    seconds: float = 0.0
    steps: int = 0
    gradient_evaluations: int = 0
    initial_loss: float | None = None
    final_loss: float | None = None
    hyperparameters: dict = field(default_factory=dict)

    def row(self) -> dict:
        values = asdict(self)
        return {key: values[key] for key in COLUMNS}


def tiny_problem(seed: int = 0):
    """Return a tiny MLP and a full batch of learnable random data."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(EXAMPLES, 8, generator=generator)
    teacher = torch.randn(8, 3, generator=generator)
    labels = (inputs @ teacher).argmax(1)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)
    )
    torch.random.set_rng_state(state)
    return model, inputs, labels


def default_hyperparameters(cls: type, lr_free: bool) -> dict:
    """Return the conformance hyperparameters: the class defaults, plus an lr if none."""
    parameter = inspect.signature(cls.__init__).parameters.get("lr")
    if parameter is None:
        return {}
    if parameter.default is inspect.Parameter.empty or parameter.default is None:
        return {"lr": 1.0 if lr_free else DEFAULT_LR}
    return {}


def _make_closure(adapted, model, inputs, labels, counter: dict):
    def closure():
        adapted.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(inputs), labels)
        adapted.backward(loss)
        counter["gradient_evaluations"] += 1
        return loss
    return closure


def _evaluate(adapted, model, inputs, labels) -> float:
    adapted.eval()
    with torch.no_grad():
        loss = F.cross_entropy(model(inputs), labels).item()
    adapted.train()
    return loss


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _all_finite(tensors) -> bool:
    for tensor in tensors:
        if tensor.is_floating_point() or tensor.is_complex():
            if not torch.isfinite(tensor).all():
                return False
    return True


def _run_steps(adapted, model, inputs, labels, steps: int, counter: dict) -> None:
    closure = _make_closure(adapted, model, inputs, labels, counter)
    for _ in range(steps):
        adapted.step(closure)
        counter["steps"] += 1


def check_optimizer(reference: str, hyperparameters: dict | None = None,
                    adapter: dict | None = None, name: str | None = None,
                    steps: int = STEPS) -> ConformanceResult:
    """Run every conformance check on one optimizer and return its table row."""
    started = time.perf_counter()
    result = ConformanceResult(name=name or reference, reference=reference)
    try:
        _check(result, reference, hyperparameters, adapter or {}, steps)
        result.status = PASS
    except CheckFailed as failure:
        result.status, result.check, result.reason = FAIL, failure.check, failure.reason
    except (UnsupportedOptimizerError, OptimizerNotFoundError) as error:
        result.status, result.reason = CANNOT_RUN, str(error)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def _guard(check: str, function, *args):
    """Run one phase; an error becomes a failure of ``check``, a missing package
    or an unsupported setting makes the optimizer unable to run."""
    try:
        return function(*args)
    except UnsupportedOptimizerError:
        raise
    except ImportError as error:
        raise UnsupportedOptimizerError(
            f"needs an optional package that is not installed: {error}"
        ) from error
    except Exception as error:  # noqa: BLE001 - any error is the finding
        last = traceback.extract_tb(error.__traceback__)[-1]
        raise CheckFailed(
            check, f"{type(error).__name__}: {error} (at {last.filename}:{last.lineno})"
        ) from error


def _check(result: ConformanceResult, reference: str, hyperparameters: dict | None,
           adapter: dict, steps: int) -> None:
    resolved = resolve_class(reference)
    result.reference = resolved.reference
    model, inputs, labels = tiny_problem()
    problem = {"num_data": EXAMPLES, "num_iterations": steps + 1}

    def build(target_model):
        return build_adapted(resolved, target_model, hyperparameters_used, adapter,
                             device=torch.device("cpu"), problem=problem)

    lr_free = infer_needs(resolved.cls).lr_free
    hyperparameters_used = (
        dict(hyperparameters) if hyperparameters is not None
        else default_hyperparameters(resolved.cls, lr_free)
    )
    result.hyperparameters = hyperparameters_used
    adapted = _guard("build", build, model)
    result.needs = " ".join(adapted.needs.names())

    counter = {"steps": 0, "gradient_evaluations": 0}
    adapted.train()
    result.initial_loss = _evaluate(adapted, model, inputs, labels)
    torch.manual_seed(1)  # Hutchinson probes and other random draws in step()
    _guard("step", _run_steps, adapted, model, inputs, labels, steps, counter)
    result.steps = counter["steps"]
    result.gradient_evaluations = counter["gradient_evaluations"]
    result.final_loss = _evaluate(adapted, model, inputs, labels)

    if not math.isfinite(result.final_loss):
        raise CheckFailed("finite loss", f"loss after {steps} steps is {result.final_loss}")
    if not result.final_loss < result.initial_loss:
        raise CheckFailed(
            "loss decreases",
            f"loss went from {result.initial_loss:.6g} to {result.final_loss:.6g} "
            f"in {steps} steps",
        )
    if not _all_finite(model.parameters()):
        raise CheckFailed("finite parameters", "a parameter contains NaN or infinity")
    if not _all_finite(_tensors(adapted.optimizer.state_dict())):
        raise CheckFailed("finite state", "the optimizer state contains NaN or infinity")

    _check_counts(adapted.needs, counter, steps)
    _check_round_trip(adapted, model, inputs, labels, build)


def _check_counts(needs, counter: dict, steps: int) -> None:
    if counter["steps"] != steps:
        raise CheckFailed("step count", f"took {counter['steps']} steps, not {steps}")
    evaluations = counter["gradient_evaluations"]
    if needs.closure and evaluations < steps:
        raise CheckFailed(
            "step count",
            f"{evaluations} closure calls in {steps} steps: step(closure) must call "
            "the closure at least once per step",
        )
    if not needs.closure and evaluations != steps:
        raise CheckFailed(
            "step count", f"{evaluations} gradient evaluations in {steps} steps, "
            "expected one per step"
        )


def _check_round_trip(adapted, model, inputs, labels, build) -> None:
    state = _guard("state round trip", lambda: copy.deepcopy(adapted.optimizer.state_dict()))
    twin_model = copy.deepcopy(model)
    twin = _guard("state round trip", build, twin_model)
    _guard("state round trip", twin.optimizer.load_state_dict, state)
    twin.train()

    for target, target_model in ((adapted, model), (twin, twin_model)):
        counter = {"steps": 0, "gradient_evaluations": 0}
        torch.manual_seed(2)
        _guard("state round trip", _run_steps, target, target_model, inputs, labels,
               1, counter)
    for (name, original), copied in zip(model.named_parameters(), twin_model.parameters()):
        if not torch.equal(original, copied):
            difference = (original - copied).abs().max().item()
            raise CheckFailed(
                "state round trip",
                f"the step after load_state_dict differs on {name} (max abs "
                f"difference {difference:.3g})",
            )


# --- Running many optimizers, each with a timeout ------------------------


def every_reference() -> list[str]:
    """Return every torch.optim class and every pytorch-optimizer name."""
    from .optimizers import _torch_optim_classes

    references = [TORCH_PREFIX + name for name in sorted(_torch_optim_classes())]
    try:
        import pytorch_optimizer
    except ImportError:
        log.warning("pytorch-optimizer is not installed; checking torch.optim only")
        return references
    names = pytorch_optimizer.get_supported_optimizers()
    return references + [PYTORCH_OPTIMIZER_PREFIX + name for name in sorted(names)]


def _child(connection, reference: str, steps: int) -> None:
    torch.set_num_threads(1)
    try:
        result = check_optimizer(reference, steps=steps)
        connection.send(asdict(result))
    except BaseException as error:  # noqa: BLE001 - the parent records it
        connection.send({"name": reference, "status": FAIL, "check": "crash",
                         "reason": f"{type(error).__name__}: {error}"})
    finally:
        connection.close()


def check_isolated(reference: str, timeout: float, steps: int = STEPS) -> ConformanceResult:
    """Run :func:`check_optimizer` in a forked process, stopped after ``timeout`` seconds."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    started = time.perf_counter()
    process = context.Process(target=_child, args=(sender, reference, steps))
    process.start()
    sender.close()
    values = None
    if receiver.poll(timeout):
        try:
            values = receiver.recv()
        except EOFError:
            values = None
    process.join(5)
    if process.is_alive():
        process.kill()
        process.join()
    seconds = round(time.perf_counter() - started, 3)
    if values is None:
        if seconds >= timeout:
            return ConformanceResult(name=reference, reference=reference,
                                     status=TIMED_OUT, check="timeout",
                                     reason=f"no result within {timeout:g} s",
                                     seconds=seconds)
        return ConformanceResult(name=reference, reference=reference, status=FAIL,
                                 check="crash", seconds=seconds,
                                 reason=f"the process exited with code {process.exitcode}")
    return ConformanceResult(**{"reference": reference, **values})


def run_conformance(references: list[str], timeout: float | None = 60.0,
                    steps: int = STEPS, progress=None) -> list[ConformanceResult]:
    """Check each reference, in a forked process with a timeout unless timeout is None."""
    results = []
    for reference in references:
        if timeout is None:
            result = check_optimizer(reference, steps=steps)
        else:
            result = check_isolated(reference, timeout, steps)
        log.info("%s: %s %s %s", reference, result.status, result.check, result.reason)
        results.append(result)
        if progress:
            progress(result)
    return results


def summarise(results: list[ConformanceResult]) -> dict:
    """Count results by status, and failures and cannot-runs by check or reason."""
    summary = {"total": len(results)}
    for result in results:
        summary[result.status] = summary.get(result.status, 0) + 1
    summary["failed checks"] = {}
    for result in results:
        if result.status == FAIL:
            counts = summary["failed checks"]
            counts[result.check] = counts.get(result.check, 0) + 1
    return summary
