"""Shared fixtures: tiny datasets written in the publishers' formats."""

from __future__ import annotations

import gzip
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    """Write a uint8 array as an IDX file (magic 0x0008, big-endian sizes)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def make_images(count: int, shape, seed: int):
    """Return random images whose brightness encodes the label, so they are learnable."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=count).astype(np.uint8)
    images = rng.integers(0, 60, size=(count, *shape)).astype(np.uint8)
    images += (labels * 19).astype(np.uint8).reshape(-1, *([1] * len(shape)))
    return images, labels


def write_idx_dataset(root: Path, folder: str, train: int, test: int, compress=True):
    raw = root / folder / "raw"
    for split, count, seed in (("train", train, 1), ("t10k", test, 2)):
        images, labels = make_images(count, (28, 28), seed)
        write_idx(raw / f"{split}-images-idx3-ubyte", images, compress)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels, compress)


def write_cifar_bin(root: Path, per_batch: int, test: int):
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    arrays = {}
    for index, name in enumerate(names):
        count = test if name == "test_batch.bin" else per_batch
        images, labels = make_images(count, (3, 32, 32), 10 + index)
        records = np.concatenate(
            [labels[:, None], images.reshape(count, -1)], axis=1
        ).astype(np.uint8)
        (folder / name).write_bytes(records.tobytes())
        arrays[name] = (images, labels)
    return arrays


def write_cifar_py(root: Path, per_batch: int, test: int):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    arrays = {}
    for index, name in enumerate(names):
        count = test if name == "test_batch" else per_batch
        images, labels = make_images(count, (3, 32, 32), 20 + index)
        batch = {b"data": images.reshape(count, -1), b"labels": labels.tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
        arrays[name] = (images, labels)
    return arrays


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory) -> Path:
    """A data root with all three datasets, small enough for runs of seconds."""
    root = tmp_path_factory.mktemp("data")
    write_idx_dataset(root, "MNIST", train=700, test=200, compress=True)
    write_idx_dataset(root, "FashionMNIST", train=700, test=200, compress=False)
    write_cifar_bin(root, per_batch=140, test=200)
    return root
