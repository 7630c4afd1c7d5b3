"""The single training loop that every optimizer in the study runs through."""

from __future__ import annotations

import logging
import math
import platform
import time
from pathlib import Path
from dataclasses import asdict, dataclass, field

import torch
from torch.nn import functional as F

from .checkpoint import load_checkpoint, save_checkpoint
from .data import Dataset, is_lossy_cifar, load_dataset
from .models import DATASET_MODEL, build_model, count_parameters
from .adapters import build_adapted
from .optimizers import optimizer_state_bytes, resolve_class
from .records import write_record

log = logging.getLogger(__name__)

# A run counts as diverged at the first non-finite mini-batch loss, or when the
# loss stays above this multiple of the first mini-batch loss for
# DIVERGENCE_PATIENCE steps in a row, or is still above it at the last step.
# The first loss is about 2.3 for ten classes, so the threshold is about 23, the
# loss of a network that confidently predicts wrong classes. A single spike is
# not enough. Adagrad at its default lr of 0.01 on 2c2d jumps to a loss of
# about 58 after its first step, then trains to 85% validation accuracy on the
# default profile's budget.
DIVERGENCE_FACTOR = 10.0
DIVERGENCE_PATIENCE = 10
DIVERGENCE_RULE = (f"non-finite, or > {DIVERGENCE_FACTOR:g} x first loss for "
                   f"{DIVERGENCE_PATIENCE} steps in a row or at the last step")
# Measured on 2 cores: 128 evaluates 2c2d at 5,000 images/s and 3c3d at 3,300,
# against 3,100 and 1,450 for batches of 1,000 (larger batches fall out of cache).
EVAL_BATCH_SIZE = 128


@dataclass
class RunConfig:
    """Everything that defines one run; its hash is the run id."""

    dataset: str
    optimizer: str  # the entry name in the study file, e.g. "adam"
    optimizer_class: str  # the class reference, e.g. "torch.optim.Adam"
    hyperparameters: dict = field(default_factory=dict)  # includes lr
    seed: int = 0
    epochs: int = 1
    batch_size: int = 128
    train_size: int | None = None  # None: every training image not in validation
    valid_size: int = 5000
    test_size: int | None = None  # None: the whole test set
    needs_closure: bool = False
    loss_samples_per_epoch: int = 20
    # Fields added after results were published: left out of the run id while
    # they keep their default (see OPTIONAL_FIELDS), so old ids stay valid.
    precision: str = "fp32"  # fp32, or bf16 autocast (a separate track: other numerics)
    # The entry's adapter settings (declared needs, partner, base, wrapper);
    # see optstudy.adapters. Empty for plain optimizers.
    adapter: dict = field(default_factory=dict)
    # Validation checks per epoch. Time-to-target is read off these checks, so
    # more of them give it a finer resolution at the cost of evaluation time.
    evals_per_epoch: int = 1

    OPTIONAL_FIELDS = {"precision": "fp32", "adapter": {}, "evals_per_epoch": 1}

    def to_dict(self) -> dict:
        return asdict(self)

    def identity(self) -> dict:
        """Return the fields that define the run id: optional ones only when set."""
        values = self.to_dict()
        for key, default in self.OPTIONAL_FIELDS.items():
            if values.get(key) == default:
                del values[key]
        return values


def pick_device(requested: str = "auto") -> torch.device:
    """Return CUDA when present and ``requested`` is "auto", else the requested device."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} requested but CUDA is not available")
    return device


def finite_or_none(value):
    """Map NaN and infinities to None so records stay valid JSON and SQL NULL."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


PRECISIONS = ("fp32", "bf16")


def _loss(model, data: Dataset, images, labels, reduction="mean", precision="fp32"):
    # bf16 autocast runs the convolutions and matrix products in bfloat16; the
    # loss is computed in float32 either way.
    with torch.autocast(images.device.type, dtype=torch.bfloat16,
                        enabled=precision == "bf16"):
        logits = model(data.normalise(images))
    loss = F.cross_entropy(logits.float(), labels, reduction=reduction)
    return loss, logits


def evaluate(model, data: Dataset, split_name: str, channels_last: bool,
             precision: str = "fp32") -> dict:
    """Return loss and accuracy over one whole split, in inference mode."""
    split = getattr(data, split_name)
    total_loss = 0.0
    correct = 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(split), EVAL_BATCH_SIZE):
            images = split.images[start:start + EVAL_BATCH_SIZE]
            labels = split.labels[start:start + EVAL_BATCH_SIZE]
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            loss, logits = _loss(model, data, images, labels, reduction="sum",
                                 precision=precision)
            total_loss += loss.item()
            correct += (logits.argmax(1) == labels).sum().item()
    model.train()
    return {"loss": total_loss / len(split), "accuracy": correct / len(split)}


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    """Describe the software and hardware a run used."""
    import os
    from importlib import metadata

    versions = {}
    for package in ("torch", "pytorch_optimizer", "numpy", "papermill"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "device": str(device),
        "device_name": (
            torch.cuda.get_device_name(device) if device.type == "cuda"
            else cpu_model()
        ),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def train(
    config: RunConfig,
    data: Dataset | None = None,
    data_root=None,
    device: str = "auto",
    threads: int | None = None,
    progress=None,
    partial_path=None,
    checkpoint_path=None,
) -> dict:
    """Train one run and return its result record (a JSON-friendly dict).

    A diverged run returns normally with ``status == "diverged"``; exceptions
    (a bad hyperparameter, a missing dataset) propagate to the caller, which
    records them as failures. With ``partial_path``, a record of the epochs
    finished so far (status "incomplete") is rewritten after every epoch, so a
    run that fails or crashes later still leaves its finished epochs behind.
    With ``checkpoint_path``, the full training state is saved after every
    epoch and a run started again with the same path continues from it.
    """
    if config.precision not in PRECISIONS:
        raise ValueError(
            f"invalid precision {config.precision!r}: expected one of {PRECISIONS}"
        )
    started = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    torch_device = pick_device(device)

    if data is None:
        data = load_dataset(
            config.dataset, data_root, config.train_size, config.valid_size,
            config.test_size,
        )
    data = data.to(torch_device)
    loaded = time.perf_counter()

    generator = _seed_everything(config.seed)
    model = build_model(config.dataset, config.seed).to(torch_device)
    # channels-last helps the CPU convolutions of 3c3d (64 to 128 channels);
    # for 2c2d's single input channel it makes no difference worth the copy.
    channels_last = DATASET_MODEL[config.dataset] == "3c3d"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    l2 = getattr(model, "l2_penalty", None)

    steps_per_epoch = math.ceil(len(data.train) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    resolved = resolve_class(config.optimizer_class)
    adapted = build_adapted(
        resolved, model, config.hyperparameters, config.adapter,
        needs_closure=config.needs_closure, device=torch_device,
        problem={"num_data": len(data.train),
                 "num_iterations": steps_per_epoch * config.epochs},
    )
    optimizer, used_hyperparameters = adapted.optimizer, adapted.hyperparameters_used
    sample_every = max(1, steps_per_epoch // max(1, config.loss_samples_per_epoch))
    if not isinstance(config.evals_per_epoch, int) or config.evals_per_epoch < 1:
        raise ValueError(
            f"invalid evals_per_epoch {config.evals_per_epoch!r}: expected an "
            "integer of at least 1 (validation checks per epoch)"
        )
    check_every = max(1, steps_per_epoch // config.evals_per_epoch)
    # Everything the loop accumulates; saved in checkpoints as one dictionary.
    loop = {
        "history": [],
        "loss_samples": [],
        "step": 0,
        "gradient_evaluations": 0,
        "train_seconds": 0.0,
        "eval_seconds": 0.0,
        "initial_loss": None,
        "last_finite_loss": None,
        "above_since": None,  # first step of the current run of losses above the threshold
        "checks": [],
    }
    history = loop["history"]
    loss_samples = loop["loss_samples"]
    status = "completed"
    divergence = None

    def check(valid: dict) -> None:
        # One point of the validation curve that time-to-target is read from;
        # train_seconds counts training steps only, never evaluation.
        loop["checks"].append({
            "step": loop["step"],
            "epoch": loop["step"] / steps_per_epoch,
            "train_seconds": loop["train_seconds"],
            "valid_loss": finite_or_none(valid["loss"]),
            "valid_accuracy": valid["accuracy"],
        })

    def check_within_epoch() -> float:
        """Evaluate the validation split mid-epoch; return the seconds it took."""
        tick = time.perf_counter()
        adapted.eval()
        valid = evaluate(model, data, "valid", channels_last, config.precision)
        adapted.train()
        check(valid)
        spent = time.perf_counter() - tick
        loop["eval_seconds"] += spent
        return spent

    def record_epoch(epoch: int, train_loss):
        tick = time.perf_counter()
        adapted.eval()
        valid = evaluate(model, data, "valid", channels_last, config.precision)
        # The test split is only reported at the end (tuning never reads it),
        # so it is evaluated after the last epoch only.
        test = (evaluate(model, data, "test", channels_last, config.precision)
                if epoch == config.epochs else {"loss": None, "accuracy": None})
        adapted.train()
        loop["eval_seconds"] += time.perf_counter() - tick
        check(valid)
        row = {
            "epoch": epoch,
            "step": loop["step"],
            "train_loss": finite_or_none(train_loss),
            "valid_loss": finite_or_none(valid["loss"]),
            "valid_accuracy": valid["accuracy"],
            "test_loss": finite_or_none(test["loss"]),
            "test_accuracy": test["accuracy"],
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        log.info("epoch %d: %s", epoch, row)
        if checkpoint_path:
            save_checkpoint(checkpoint_path, config.to_dict(), epoch, model,
                            optimizer, generator, loop)
        if progress:
            progress(row)
        if partial_path:
            write_record({
                "config": config.to_dict(), "status": "incomplete",
                "history": history, "loss_samples": loss_samples,
                "steps": loop["step"],
                "gradient_evaluations": loop["gradient_evaluations"],
            }, partial_path)

    first_epoch = 1
    restored = (
        load_checkpoint(checkpoint_path, config.to_dict(), model, optimizer, generator)
        if checkpoint_path else None
    )
    if restored:
        last_epoch, saved_loop = restored
        loop.update(saved_loop)
        history, loss_samples = loop["history"], loop["loss_samples"]
        loop.setdefault("checks", [])
        first_epoch = last_epoch + 1
        log.info("resumed from %s after epoch %d", checkpoint_path, last_epoch)
    else:
        record_epoch(0, None)
    adapted.train()

    for epoch in range(first_epoch, config.epochs + 1):
        tick = time.perf_counter()
        order = torch.randperm(len(data.train), generator=generator).to(torch_device)
        loss_sum = 0.0
        epoch_start_seconds = loop["train_seconds"]
        for start in range(0, len(order), config.batch_size):
            index = order[start:start + config.batch_size]
            images = data.train.images[index]
            labels = data.train.labels[index]
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)

            def closure():
                optimizer.zero_grad(set_to_none=True)
                loss, _ = _loss(model, data, images, labels,
                                precision=config.precision)
                if l2 is not None:
                    loss = loss + l2()
                adapted.backward(loss)
                loop["gradient_evaluations"] += 1
                return loss

            loss = adapted.step(closure)
            loop["step"] += 1
            step = loop["step"]

            value = loss.item()
            if loop["initial_loss"] is None:
                loop["initial_loss"] = value
            if step % sample_every == 0 or step == 1:
                loss_samples.append({"step": step, "loss": finite_or_none(value)})
            if not math.isfinite(value):
                loop["above_since"] = None
            elif value > DIVERGENCE_FACTOR * loop["initial_loss"]:
                loop["above_since"] = loop.get("above_since") or step
            else:
                loop["above_since"] = None
            above_since = loop.get("above_since")
            if (not math.isfinite(value) or (above_since is not None and (
                    step - above_since + 1 >= DIVERGENCE_PATIENCE
                    or step == total_steps))):
                status = "diverged"
                divergence = {
                    "step": step,
                    "loss": finite_or_none(value),
                    "last_finite_loss": loop["last_finite_loss"],
                    "above_since": above_since,
                    "rule": DIVERGENCE_RULE,
                }
                break
            loss_sum += value
            loop["last_finite_loss"] = value
            step_in_epoch = step - (epoch - 1) * steps_per_epoch
            if step_in_epoch % check_every == 0 and step_in_epoch < steps_per_epoch:
                loop["train_seconds"] = (
                    epoch_start_seconds + time.perf_counter() - tick
                )
                tick += check_within_epoch()

        loop["train_seconds"] = epoch_start_seconds + time.perf_counter() - tick
        if status == "diverged":
            break
        record_epoch(epoch, loss_sum / steps_per_epoch)

    if checkpoint_path:
        # The run is over; its record carries everything worth keeping.
        Path(checkpoint_path).unlink(missing_ok=True)
    final = history[-1] if status == "completed" else {}
    return {
        "config": config.to_dict(),
        "status": status,
        "divergence": divergence,
        "optimizer_class": resolved.reference,
        "optimizer_package": resolved.package,
        "optimizer_version": resolved.version,
        "hyperparameters_used": used_hyperparameters,
        "model": DATASET_MODEL[config.dataset],
        "model_parameters": count_parameters(model),
        "train_images": len(data.train),
        "valid_images": len(data.valid),
        "test_images": len(data.test),
        "cifar_lossy": config.dataset == "cifar10" and is_lossy_cifar(data_root),
        "history": history,
        "loss_samples": loss_samples,
        "checks": loop["checks"],
        "steps": loop["step"],
        "gradient_evaluations": loop["gradient_evaluations"],
        "optimizer_state_bytes": optimizer_state_bytes(optimizer),
        "final_train_loss": final.get("train_loss"),
        "final_valid_loss": final.get("valid_loss"),
        "final_valid_accuracy": final.get("valid_accuracy"),
        "final_test_loss": final.get("test_loss"),
        "final_test_accuracy": final.get("test_accuracy"),
        "seconds_total": time.perf_counter() - started,
        "seconds_load": loaded - started,
        "seconds_train": loop["train_seconds"],
        "seconds_eval": loop["eval_seconds"],
        "environment": environment(torch_device),
    }
