"""Shared fixtures: tiny datasets written in the publishers' formats."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from optstudy import store  # noqa: E402
from optstudy.data import DataNotFoundError, load_arrays, resolve_data_root  # noqa: E402
from optstudy.study import load_study  # noqa: E402


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


# --- The book built from a results store, shared by the book and browser tests ---

TEST_STORE_ENV = "OPTSTUDY_TEST_STORE"
JUPYTER_BOOK = Path(sys.executable).with_name("jupyter-book")
# Seconds allowed for the smoke study and for one book build; both are
# estimates with a wide margin over what two busy cores needed.
STUDY_TIMEOUT = 1800
BUILD_TIMEOUT = 1800


def build_book(store_path: Path, output: Path) -> subprocess.CompletedProcess:
    """Run the documented build command with OPTSTUDY_STORE set, into ``output``."""
    environment = {**os.environ, store.STORE_ENV: str(store_path)}
    command = [
        str(JUPYTER_BOOK), "build", str(REPO_ROOT), "-W", "-n", "--keep-going",
        "--path-output", str(output),
    ]
    return subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True,
                          text=True, timeout=BUILD_TIMEOUT)


def missing_smoke_data() -> list[str]:
    """Return the smoke profile's datasets that are not on disk (never downloads)."""
    missing = []
    for dataset in load_study().profile("smoke").datasets:
        try:
            load_arrays(dataset, "test", download=False)
        except DataNotFoundError:
            missing.append(dataset)
    return missing


@pytest.fixture(scope="session")
def book_store(tmp_path_factory) -> Path:
    """Return a results store to build the book from.

    ``$OPTSTUDY_TEST_STORE`` names an existing store, which is only read.
    Without it, the smoke profile runs into a temporary store; the test is
    skipped when the data for that run are missing.
    """
    setting = os.environ.get(TEST_STORE_ENV)
    if setting:
        path = Path(setting).expanduser().resolve()
        if not path.is_file():
            pytest.fail(f"${TEST_STORE_ENV}={setting}: store file not found")
        return path

    missing = missing_smoke_data()
    if missing:
        pytest.skip(
            f"no data for the smoke study under {resolve_data_root()} (missing: "
            f"{', '.join(missing)}); set $OPTSTUDY_DATA to a data root or "
            f"${TEST_STORE_ENV} to an existing store"
        )
    folder = tmp_path_factory.mktemp("smoke_study")
    path = folder / "results.sqlite"
    command = [
        sys.executable, "scripts/run_study.py", "--profile", "smoke",
        "--store", str(path), "--runs-dir", str(folder / "runs"), "--jobs", "2",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=STUDY_TIMEOUT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return path


@pytest.fixture(scope="session")
def built_book(book_store, tmp_path_factory):
    """Build the book once for the test session; return the result and the HTML folder.

    The book tests and the browser tests share this one build.
    """
    # Matplotlib prints a one-time message to stderr while it builds its font
    # cache, and the book turns any stderr output into a build error.
    import matplotlib.font_manager  # noqa: F401

    output = tmp_path_factory.mktemp("book")
    result = build_book(book_store, output)
    return result, output / "_build" / "html"
