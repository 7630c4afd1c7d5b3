"""Measurement (4): the machine's float32 ceiling and each model's FLOPs per step.

The ceiling is the best rate of a square float32 matrix multiply (``torch.mm``
into a preallocated output) at the given thread count. FLOPs per training step
come from ``torch.utils.flop_counter.FlopCounterMode`` over one forward and
backward pass of a full batch. The counter counts matrix multiplies and
convolutions only, the usual basis of model FLOP utilisation. A third number
is the rate of the model's training step alone, on one synthetic batch that
stays in memory. It separates the model's own speed from the cost of any
input pipeline.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from workloads import BATCH_SIZE, LR, check_package_location, use_this_checkout

INPUT_SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def matmul_rate(torch, size: int, repeats: int, warmup: int) -> dict:
    """Time ``repeats`` products of two ``size`` x ``size`` float32 matrices."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    out = torch.empty(size, size)
    for _ in range(warmup):  # thread pool start, page faults, caches
        torch.mm(a, b, out=out)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        seconds.append(time.perf_counter() - start)
    flops = 2 * size**3
    return {
        "size": size,
        "repeats": repeats,
        "flops_per_product": flops,
        "best_gflops": flops / min(seconds) / 1e9,
        "median_gflops": flops / statistics.median(seconds) / 1e9,
    }


def model_and_batch(torch, dataset: str):
    """Build the model as train() does (channels-last for 3c3d) and a random batch."""
    from optstudy.models import DATASET_MODEL, build_model

    model = build_model(dataset, seed=0)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH_SIZE, *INPUT_SHAPES[dataset], generator=generator)
    labels = torch.randint(0, 10, (BATCH_SIZE,), generator=generator)
    if DATASET_MODEL[dataset] == "3c3d":
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    return model, images, labels


def training_loss(model, images, labels):
    from torch.nn import functional as F

    loss = F.cross_entropy(model(images), labels)
    l2 = getattr(model, "l2_penalty", None)
    return loss + l2() if l2 is not None else loss


def count_step_flops(torch, dataset: str) -> dict:
    """Count the forward and backward FLOPs of one training step on a full batch."""
    from torch.utils.flop_counter import FlopCounterMode

    model, images, labels = model_and_batch(torch, dataset)
    with FlopCounterMode(display=False) as forward_counter:
        loss = training_loss(model, images, labels)
    with FlopCounterMode(display=False) as backward_counter:
        loss.backward()
    forward = forward_counter.get_total_flops()
    backward = backward_counter.get_total_flops()
    return {
        "batch_size": BATCH_SIZE,
        "forward_flops": forward,
        "backward_flops": backward,
        "flops_per_step": forward + backward,
        "flops_per_image": (forward + backward) / BATCH_SIZE,
    }


def model_step_rate(torch, dataset: str, steps: int, warmup: int,
                    flops_per_step: int) -> dict:
    """Time Adam training steps on one in-memory batch: no data pipeline at all."""
    model, images, labels = model_and_batch(torch, dataset)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = training_loss(model, images, labels)
        loss.backward()
        optimizer.step()
        return loss.item()

    for _ in range(warmup):  # oneDNN primitive creation, optimizer state
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    return {
        "steps": steps,
        "seconds": seconds,
        "images_per_second": steps * BATCH_SIZE / seconds,
        "gflops": steps * flops_per_step / seconds / 1e9,
    }


def measure(arguments: argparse.Namespace) -> dict:
    use_this_checkout()
    import torch

    import optstudy

    check_package_location(optstudy)
    torch.set_num_threads(arguments.threads)
    result = {
        "threads": torch.get_num_threads(),
        "matmul": matmul_rate(torch, arguments.matmul_size, arguments.matmul_repeats,
                              arguments.warmup),
        "models": {},
    }
    for dataset in arguments.datasets:
        flops = count_step_flops(torch, dataset)
        step_rate = model_step_rate(torch, dataset, arguments.model_steps,
                                    arguments.warmup, flops["flops_per_step"])
        result["models"][dataset] = {"flops": flops, "model_step": step_rate}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, required=True,
                        help="torch CPU threads (torch.set_num_threads)")
    parser.add_argument("--datasets", nargs="+", default=["mnist", "cifar10"],
                        choices=sorted(INPUT_SHAPES))
    parser.add_argument("--matmul-size", type=int, default=2048,
                        help="side of the square float32 matrices")
    parser.add_argument("--matmul-repeats", type=int, default=20,
                        help="timed matrix products")
    parser.add_argument("--model-steps", type=int, default=30,
                        help="timed training steps per model")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed products and steps before each timing")
    parser.add_argument("--output", required=True,
                        help="JSON file to write the measurement to")
    arguments = parser.parse_args(argv)
    result = measure(arguments)
    Path(arguments.output).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
