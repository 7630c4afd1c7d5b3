#!/usr/bin/env python
"""Measure the options that might make a run faster: bf16 autocast and torch.compile.

    python benchmarks/options.py [--data-dir DIR] [--steps 40] [--repeats 3]

For each model (2c2d on MNIST, 3c3d on CIFAR-10) the same training steps, on
the same images, run in this process in three variants, interleaved round by
round so that a change in machine load hits all of them alike:

- ``fp32``: the study's default, eager float32;
- ``bf16``: the same loop under bfloat16 autocast (the study's ``precision:
  bf16`` option; a separate track, because the numerics differ);
- ``compile``: float32 with the model wrapped in ``torch.compile``.

For torch.compile the first steps include compilation. The script reports
that one-off cost and the steady-state speed separately. It also reports how
many steps a run needs before compiling pays off, beside the number of steps
in one run of the ``default`` profile. Results go to
``benchmarks/results/options.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from benchmarks.machine import describe_machine  # noqa: E402
from optstudy.data import load_dataset  # noqa: E402
from optstudy.models import DATASET_MODEL, build_model  # noqa: E402
from optstudy.study import load_study  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "options.json"
BATCH_SIZE = 128


def make_step(model, data, precision: str, channels_last: bool):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    l2 = getattr(model, "l2_penalty", None)

    def step(images, labels):
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(data.normalise(images))
        loss = F.cross_entropy(logits.float(), labels)
        if l2 is not None:
            loss = loss + l2()
        loss.backward()
        optimizer.step()
        return loss

    return step


def build(dataset: str, variant: str, data):
    model = build_model(dataset, 0)
    channels_last = DATASET_MODEL[dataset] == "3c3d"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if variant == "compile" else model
    if variant == "compile":
        # The L2 penalty is a method of the original module, so keep it reachable.
        forward.l2_penalty = getattr(model, "l2_penalty", None)
    precision = "bf16" if variant == "bf16" else "fp32"
    return make_step(forward, data, precision, channels_last)


def time_steps(step, data, steps: int, offset: int = 0) -> float:
    images, labels = data.train.images, data.train.labels
    count = len(labels)
    started = time.perf_counter()
    for index in range(steps):
        start = ((offset + index) * BATCH_SIZE) % max(1, count - BATCH_SIZE)
        step(images[start:start + BATCH_SIZE], labels[start:start + BATCH_SIZE]).item()
    return time.perf_counter() - started


def measure_dataset(dataset: str, data_dir, steps: int, repeats: int) -> dict:
    data = load_dataset(dataset, data_dir, train_size=4096, valid_size=128,
                        test_size=128)
    variants = ("fp32", "bf16", "compile")
    steppers = {}
    first_seconds = {}
    for variant in variants:
        steppers[variant] = build(dataset, variant, data)
        # The first steps: warm-up for eager, compilation for torch.compile.
        first_seconds[variant] = time_steps(steppers[variant], data, 3)
    rounds = {variant: [] for variant in variants}
    for repeat in range(repeats):
        for variant in variants:
            seconds = time_steps(steppers[variant], data, steps, offset=repeat * steps)
            rounds[variant].append(steps * BATCH_SIZE / seconds)
    rates = {variant: statistics.median(values) for variant, values in rounds.items()}
    eager_step = BATCH_SIZE / rates["fp32"]
    compiled_step = BATCH_SIZE / rates["compile"]
    overhead = first_seconds["compile"] - first_seconds["fp32"]
    saving = eager_step - compiled_step
    return {
        "dataset": dataset,
        "model": DATASET_MODEL[dataset],
        "images_per_second": rates,
        "rounds": rounds,
        "bf16_speedup": rates["bf16"] / rates["fp32"],
        "compile_speedup": rates["compile"] / rates["fp32"],
        "compile_seconds": overhead,
        "compile_break_even_steps": overhead / saving if saving > 0 else None,
    }


def default_run_steps() -> int:
    profile = load_study().profile("default")
    per_epoch = -(-profile.train_size // profile.batch_size)
    return per_epoch * profile.epochs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None,
                        help="data root (default: $OPTSTUDY_DATA, else ./data)")
    parser.add_argument("--steps", type=int, default=40, help="steps per round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per variant")
    parser.add_argument("--output", type=Path, default=RESULTS)
    arguments = parser.parse_args(argv)

    run_steps = default_run_steps()
    results = []
    for dataset in ("mnist", "cifar10"):
        result = measure_dataset(dataset, arguments.data_dir, arguments.steps,
                                 arguments.repeats)
        results.append(result)
        rates = result["images_per_second"]
        even = result["compile_break_even_steps"]
        print(f"{dataset} ({result['model']}): fp32 {rates['fp32']:,.0f} img/s, "
              f"bf16 {rates['bf16']:,.0f} ({result['bf16_speedup']:.2f}x), "
              f"compile {rates['compile']:,.0f} ({result['compile_speedup']:.2f}x) "
              f"after {result['compile_seconds']:.1f} s of compiling; break-even "
              f"{'never' if even is None else f'{even:,.0f} steps'} "
              f"(a default run has {run_steps})")
    record = {
        "machine": describe_machine(),
        "threads": torch.get_num_threads(),
        "steps_per_round": arguments.steps,
        "repeats": arguments.repeats,
        "default_run_steps": run_steps,
        "results": results,
    }
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(record, indent=1) + "\n")
    print(f"record written to {arguments.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
