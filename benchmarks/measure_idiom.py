"""Measurement (3): the common idiom, a torchvision dataset behind a DataLoader.

Each sample is decoded to a PIL image and converted by ``transforms.ToTensor()``
and ``transforms.Normalize`` in ``__getitem__``, and a
``torch.utils.data.DataLoader`` collates batches, as in the PyTorch MNIST
example (pytorch/examples, ``mnist/main.py``). The model, its initial
weights, the optimizer (Adam, lr 1e-3), the batch size, the images and the
evaluation schedule are those of the project's runs, so only the input
pipeline and the loop differ. Run as a fresh process per measurement.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import time
from pathlib import Path

from machine import peak_rss_bytes
from workloads import (
    LR,
    add_workload_arguments,
    check_package_location,
    use_this_checkout,
    workload_from_arguments,
)

launched_at = time.time()  # replaced by --launched-at when the caller passes it

MNIST_FILES = [
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
]
CIFAR_BIN = "cifar-10-batches-bin"
CIFAR_RECORD_BYTES = 1 + 3 * 32 * 32  # one label byte, then R, G and B planes


def prepare_torchvision_root(data_dir: Path, root: Path) -> None:
    """Lay out the project's data files where torchvision's classes look for them.

    ``torchvision.datasets.MNIST`` reads uncompressed IDX files from
    ``<root>/MNIST/raw`` and, when they are present and pass its MD5 check,
    never tries to download. The gzip files are decompressed here, before any
    timing starts. CIFAR-10's binary folder is linked, not copied.
    """
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        target = raw / name
        if target.is_file():
            continue
        source = data_dir / "MNIST" / "raw" / f"{name}.gz"
        if not source.is_file():
            source = data_dir / "MNIST" / "raw" / name
        if not source.is_file():
            raise FileNotFoundError(f"MNIST file {name}[.gz] not found in "
                                    f"{data_dir / 'MNIST' / 'raw'}")
        opener = gzip.open if source.suffix == ".gz" else open
        with opener(source, "rb") as compressed, open(target, "wb") as plain:
            shutil.copyfileobj(compressed, plain)

    cifar_link = root / CIFAR_BIN
    if not cifar_link.exists():
        cifar_source = data_dir / CIFAR_BIN
        if not cifar_source.is_dir():
            raise FileNotFoundError(f"CIFAR-10 binary folder not found: {cifar_source}")
        os.symlink(cifar_source.resolve(), cifar_link)


def cifar10_binary_dataset(root: Path, train: bool, transform):
    """Build a map-style Dataset over CIFAR-10's binary files.

    torchvision's ``CIFAR10`` class reads only the python (pickle) version,
    so this class replaces it for the binary version. It keeps the images as
    a ``(N, 32, 32, 3)`` uint8 array and returns one PIL image per
    ``__getitem__``, passed through ``transform``.
    """
    import numpy as np
    import torch
    from PIL import Image

    class Cifar10Binary(torch.utils.data.Dataset):
        def __init__(self):
            names = ([f"data_batch_{i}.bin" for i in range(1, 6)] if train
                     else ["test_batch.bin"])
            parts = [np.fromfile(root / CIFAR_BIN / name, dtype=np.uint8)
                     for name in names]
            records = np.concatenate(parts).reshape(-1, CIFAR_RECORD_BYTES)
            self.targets = records[:, 0].astype(np.int64).tolist()
            planes = records[:, 1:].reshape(-1, 3, 32, 32)
            self.data = np.ascontiguousarray(planes.transpose(0, 2, 3, 1))

        def __len__(self) -> int:
            return len(self.targets)

        def __getitem__(self, index: int):
            image = Image.fromarray(self.data[index])
            return transform(image), self.targets[index]

    return Cifar10Binary()


def split_indices(workload, train_total: int, test_total: int):
    """Return the training, validation and test indices that ``load_dataset`` uses."""
    import numpy as np
    from optstudy.data import split_indices as package_split

    train, valid, test = package_split(
        train_total, test_total, workload.train_size, workload.valid_size,
        workload.test_size,
    )
    if test is None:
        test = np.arange(test_total)
    return train.tolist(), valid.tolist(), test.tolist()


def build_datasets(workload, root: Path, transforms):
    """Return the training and test datasets and a description of the class used."""
    from optstudy.data import NORMALISATION

    mean, std = NORMALISATION[workload.dataset]
    transform = transforms.Compose([
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])
    if workload.dataset == "mnist":
        from torchvision import datasets

        train = datasets.MNIST(str(root), train=True, download=False,
                               transform=transform)
        test = datasets.MNIST(str(root), train=False, download=False,
                              transform=transform)
        return train, test, "torchvision.datasets.MNIST"
    train = cifar10_binary_dataset(root, True, transform)
    test = cifar10_binary_dataset(root, False, transform)
    description = ("a Dataset over cifar-10-batches-bin written in this script "
                   "(per-sample PIL image, then ToTensor and Normalize), because "
                   "torchvision.datasets.CIFAR10 reads only the python version")
    return train, test, description


def measure(arguments: argparse.Namespace) -> dict:
    started_at = arguments.launched_at or launched_at
    workload = workload_from_arguments(arguments)

    use_this_checkout()
    import_start = time.perf_counter()
    import torch
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, RandomSampler, Subset
    from torchvision import transforms

    import optstudy
    from optstudy.models import build_model
    from optstudy.train import EVAL_BATCH_SIZE

    import_seconds = time.perf_counter() - import_start
    check_package_location(optstudy)
    torch.set_num_threads(arguments.threads)

    # The counterpart of one train() call starts here: data, model, loop.
    call_started_at = time.time()
    load_start = time.perf_counter()
    root = Path(arguments.torchvision_root)
    train_full, test_full, dataset_class = build_datasets(workload, root, transforms)
    train_index, valid_index, test_index = split_indices(
        workload, len(train_full), len(test_full)
    )
    train_set = Subset(train_full, train_index)
    valid_set = Subset(train_full, valid_index)
    test_set = Subset(test_full, test_index)
    load_seconds = time.perf_counter() - load_start

    # Same initial weights as the project's runs at seed 0. No channels-last
    # layout for 3c3d, because the common idiom does not use one.
    model = build_model(workload.dataset, seed=0)
    l2 = getattr(model, "l2_penalty", None)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    generator = torch.Generator()
    generator.manual_seed(0)
    # Equivalent to shuffle=True. The sampler gets the generator to itself,
    # because DataLoader(generator=...) would also draw each iterator's base
    # seed from it. So the order equals train()'s randperm at the same seed.
    sampler = RandomSampler(train_set, generator=generator)
    train_loader = DataLoader(train_set, batch_size=workload.batch_size,
                              sampler=sampler, num_workers=arguments.workers)

    def evaluate(split) -> dict:
        loader = DataLoader(split, batch_size=EVAL_BATCH_SIZE, shuffle=False,
                            num_workers=arguments.workers)
        total_loss = 0.0
        correct = 0
        model.eval()
        with torch.inference_mode():
            for images, labels in loader:
                logits = model(images)
                total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
                correct += (logits.argmax(1) == labels).sum().item()
        model.train()
        return {"loss": total_loss / len(split), "accuracy": correct / len(split)}

    history = []
    eval_seconds = 0.0
    train_seconds = 0.0
    data_wait_seconds = 0.0
    steps = 0
    trained_images = 0
    first_step_at = None

    def record_epoch(epoch: int, train_loss) -> None:
        nonlocal eval_seconds
        tick = time.perf_counter()
        valid = evaluate(valid_set)
        test = evaluate(test_set)
        eval_seconds += time.perf_counter() - tick
        history.append({"epoch": epoch, "train_loss": train_loss,
                        "valid_loss": valid["loss"],
                        "valid_accuracy": valid["accuracy"],
                        "test_loss": test["loss"], "test_accuracy": test["accuracy"]})

    record_epoch(0, None)
    for epoch in range(1, workload.epochs + 1):
        tick = time.perf_counter()
        loss_sum = 0.0
        epoch_steps = 0
        batches = iter(train_loader)
        while True:
            wait_start = time.perf_counter()
            try:
                images, labels = next(batches)
            except StopIteration:
                break
            data_wait_seconds += time.perf_counter() - wait_start
            if first_step_at is None:
                first_step_at = time.time()

            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(images), labels)
            if l2 is not None:
                loss = loss + l2()
            loss.backward()
            optimizer.step()

            loss_sum += loss.item()
            epoch_steps += 1
            trained_images += len(labels)
        steps += epoch_steps
        train_seconds += time.perf_counter() - tick
        record_epoch(epoch, loss_sum / max(1, epoch_steps))
    call_finished_at = time.time()

    return {
        "approach": "idiom",
        "status": "completed",
        "dataset_class": dataset_class,
        "num_workers": arguments.workers,
        "optstudy_path": str(Path(optstudy.__file__).parent),
        "threads": torch.get_num_threads(),
        "import_seconds": import_seconds,
        "launch_to_call_seconds": call_started_at - started_at,
        "call_seconds": call_finished_at - call_started_at,
        "launch_to_first_step_seconds": first_step_at - started_at,
        "load_seconds": load_seconds,
        "train_seconds": train_seconds,
        "data_wait_seconds": data_wait_seconds,
        "eval_seconds": eval_seconds,
        "steps": steps,
        "trained_images": trained_images,
        "final_train_loss": history[-1]["train_loss"],
        "final_valid_accuracy": history[-1]["valid_accuracy"],
        "history": history,
        # NOTE: the main process only. The DataLoader workers' memory is not
        # measured, and forked workers share pages with it anyway.
        "peak_rss_bytes": peak_rss_bytes(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_workload_arguments(parser)
    parser.add_argument("--torchvision-root", required=True,
                        help="folder laid out by prepare_torchvision_root()")
    parser.add_argument("--workers", type=int, default=1,
                        help="DataLoader num_workers (the PyTorch MNIST example "
                        "uses 1 with CUDA and 0 on the CPU)")
    arguments = parser.parse_args(argv)
    result = measure(arguments)
    Path(arguments.output).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
