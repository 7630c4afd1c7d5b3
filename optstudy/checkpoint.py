"""Per-epoch checkpoints, so a preempted long run continues where it stopped.

A checkpoint contains the model and optimizer states, the loop's counters and
every random state the loop draws from (torch, numpy, Python and the
mini-batch generator), so a resumed run reproduces the uninterrupted one.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


class CheckpointMismatchError(RuntimeError):
    """Raised when a checkpoint does not fit the run that tries to resume from it."""


def parameter_layout(model, optimizer) -> dict:
    """Describe parameters by name and shape, and how the optimizer groups them."""
    index = {id(p): name for name, p in model.named_parameters()}
    return {
        "parameters": [[name, list(p.shape)] for name, p in model.named_parameters()],
        "groups": [[index.get(id(p), "?") for p in group["params"]]
                   for group in optimizer.param_groups],
    }


def save_checkpoint(path, config: dict, epoch: int, model, optimizer,
                    generator: torch.Generator, loop_state: dict) -> None:
    """Write the checkpoint atomically (a preemption mid-write keeps the old one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": config,
        "epoch": epoch,
        "layout": parameter_layout(model, optimizer),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "random": {
            "torch": torch.random.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
            "batches": generator.get_state(),
        },
        "loop": loop_state,
    }
    partial = path.with_name(path.name + ".partial")
    torch.save(payload, partial)
    os.replace(partial, path)


def _check_layout(saved: dict, current: dict) -> None:
    for position, (saved_entry, current_entry) in enumerate(
        zip(saved["parameters"], current["parameters"])
    ):
        if saved_entry != current_entry:
            raise CheckpointMismatchError(
                f"cannot resume: parameter {position} is {current_entry[0]} with shape "
                f"{current_entry[1]} but the checkpoint has {saved_entry[0]} with "
                f"shape {saved_entry[1]}; delete the checkpoint to start over"
            )
    if len(saved["parameters"]) != len(current["parameters"]):
        raise CheckpointMismatchError(
            f"cannot resume: the model has {len(current['parameters'])} parameters "
            f"but the checkpoint has {len(saved['parameters'])}"
        )
    if saved["groups"] != current["groups"]:
        raise CheckpointMismatchError(
            "cannot resume: the optimizer's parameter groups are split differently "
            f"(checkpoint {saved['groups']}, now {current['groups']})"
        )


def load_checkpoint(path, config: dict, model, optimizer,
                    generator: torch.Generator) -> tuple[int, dict] | None:
    """Restore a checkpoint into model, optimizer and random states.

    Returns ``(epoch, loop_state)``, or None when there is no checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        return None
    payload = torch.load(path, weights_only=False)
    if payload["config"] != config:
        raise CheckpointMismatchError(
            f"cannot resume from {path}: it belongs to another run configuration"
        )
    _check_layout(payload["layout"], parameter_layout(model, optimizer))
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    torch.random.set_rng_state(payload["random"]["torch"])
    np.random.set_state(payload["random"]["numpy"])
    random.setstate(payload["random"]["python"])
    generator.set_state(payload["random"]["batches"])
    return payload["epoch"], payload["loop"]
