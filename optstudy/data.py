"""Datasets held in memory as uint8 tensors, read from the publishers' formats.

Each dataset is loaded once into a ``(N, C, H, W)`` uint8 tensor plus an int64
label tensor. Mini-batches are converted to float and normalised on the fly, so
there are no per-sample transforms and no DataLoader worker processes: on two
cores that idiom is about twice as slow as indexing in-memory tensors.
"""

from __future__ import annotations

import gzip
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

DATA_ENV = "OPTSTUDY_DATA"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_ROOT = REPO_ROOT / "data"

# Per-channel mean and standard deviation of the training images in [0, 1],
# as published with each dataset (CIFAR-10: the usual values for the original
# release; the JPEG-decoded copy differs by less than 0.002).
NORMALISATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
CIFAR_BIN = "cifar-10-batches-bin"
CIFAR_PY = "cifar-10-batches-py"
CIFAR_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]

DATASETS = tuple(NORMALISATION)


class DataNotFoundError(FileNotFoundError):
    """Raised when a dataset is neither on disk nor downloadable."""


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """Return the data root: the argument, else ``$OPTSTUDY_DATA``, else ``./data``."""
    if data_root:
        return Path(data_root).expanduser().resolve()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser().resolve()
    return DEFAULT_DATA_ROOT


def check_dataset_name(name: str) -> str:
    if name not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}"
        )
    return name


# --- IDX (MNIST, Fashion-MNIST) -------------------------------------------

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file, gzip-compressed or not (detected from the magic bytes)."""
    path = Path(path)
    with open(path, "rb") as handle:
        raw = handle.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)

    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    type_code, ndim = raw[2], raw[3]
    if type_code not in IDX_DTYPES:
        raise ValueError(f"{path}: unsupported IDX element type 0x{type_code:02x}")

    header_end = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header_end], dtype=">u4"))
    dtype = np.dtype(IDX_DTYPES[type_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header_end != expected:
        raise ValueError(
            f"{path}: IDX header promises shape {shape} ({expected} bytes) "
            f"but the file holds {len(raw) - header_end} bytes"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header_end).reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _idx_split(root: Path, name: str, split: str):
    folder = root / IDX_FOLDERS[name] / "raw"
    images_stem, labels_stem = IDX_FILES[split]
    images_path = _find_idx(folder, images_stem)
    labels_path = _find_idx(folder, labels_stem)
    if images_path is None or labels_path is None:
        return None
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    return images[:, None, :, :], labels


def _idx_expected(root: Path, name: str) -> list[str]:
    folder = root / IDX_FOLDERS[name] / "raw"
    stems = [stem for pair in IDX_FILES.values() for stem in pair]
    return [str(folder / f"{stem}[.gz]") for stem in stems]


# --- CIFAR-10 ------------------------------------------------------------

CIFAR_RECORD = 1 + 3 * 32 * 32


def read_cifar_bin(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one file of CIFAR-10's binary version: records of 1 label + 3072 pixels."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % CIFAR_RECORD:
        raise ValueError(
            f"{path}: size {raw.size} is not a multiple of the "
            f"{CIFAR_RECORD}-byte CIFAR-10 record"
        )
    records = raw.reshape(-1, CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    images = records[:, 1:].reshape(-1, 3, 32, 32)
    return images, labels


def read_cifar_py(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled batch of CIFAR-10's python version."""
    with open(path, "rb") as handle:
        batch = pickle.load(handle, encoding="bytes")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path}: not a CIFAR-10 python batch (no data/labels keys)")
    images = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
    return images, np.asarray(labels, dtype=np.int64)


def _cifar_split(root: Path, split: str):
    stems = CIFAR_TRAIN_BATCHES if split == "train" else ["test_batch"]
    for folder, suffix, reader in (
        (root / CIFAR_BIN, ".bin", read_cifar_bin),
        (root / CIFAR_PY, "", read_cifar_py),
    ):
        paths = [folder / f"{stem}{suffix}" for stem in stems]
        if all(path.is_file() for path in paths):
            parts = [reader(path) for path in paths]
            images = np.concatenate([images for images, _ in parts])
            labels = np.concatenate([labels for _, labels in parts])
            return images, labels
    return None


def _cifar_expected(root: Path) -> list[str]:
    stems = CIFAR_TRAIN_BATCHES + ["test_batch"]
    return [str(root / CIFAR_BIN / f"{s}.bin") for s in stems] + [
        str(root / CIFAR_PY / s) for s in stems
    ]


# --- Loading and downloading ------------------------------------------------


def _read_split(root: Path, name: str, split: str):
    if name == "cifar10":
        return _cifar_split(root, split)
    return _idx_split(root, name, split)


def _download(root: Path, name: str) -> None:
    """Download with torchvision (mirrors and MD5 checks); imported only here.

    torchvision adds about two seconds to every import, so runs that find their
    data on disk never load it.
    """
    from torchvision import datasets

    root.mkdir(parents=True, exist_ok=True)
    builder = {
        "mnist": datasets.MNIST,
        "fashion_mnist": datasets.FashionMNIST,
        "cifar10": datasets.CIFAR10,
    }[name]
    builder(str(root), train=True, download=True)
    builder(str(root), train=False, download=True)


def _missing_message(root: Path, name: str, reason: str) -> str:
    expected = _cifar_expected(root) if name == "cifar10" else _idx_expected(root, name)
    listing = "\n  ".join(expected)
    return (
        f"dataset {name!r} not found under data root {root} and the download "
        f"failed ({reason}).\nExpected these files (either layout):\n  {listing}\n"
        f"Copy the files there, or point --data-dir / ${DATA_ENV} at a folder that "
        "holds them."
    )


def load_arrays(name: str, split: str, data_root=None, download: bool = True):
    """Return ``(images, labels)`` numpy arrays for one split of one dataset."""
    check_dataset_name(name)
    root = resolve_data_root(data_root)
    arrays = _read_split(root, name, split)
    if arrays is not None:
        return arrays

    if not download:
        raise DataNotFoundError(_missing_message(root, name, "download disabled"))
    log.info("dataset %s not found under %s: downloading", name, root)
    try:
        _download(root, name)
    except Exception as error:  # noqa: BLE001 - any download failure gets one message
        raise DataNotFoundError(
            _missing_message(root, name, f"{type(error).__name__}: {error}")
        ) from error

    arrays = _read_split(root, name, split)
    if arrays is None:
        raise DataNotFoundError(_missing_message(root, name, "no files after download"))
    return arrays


def is_lossy_cifar(data_root=None) -> bool:
    """Tell whether the CIFAR-10 copy is the JPEG-decoded one (its README marks it LOSSY)."""
    root = resolve_data_root(data_root)
    readme = root / "README.md"
    return readme.is_file() and "LOSSY" in readme.read_text(errors="replace")


@dataclass
class Split:
    """Images as uint8 ``(N, C, H, W)`` and labels as int64 ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]


@dataclass
class Dataset:
    """Training, validation and test splits of one dataset, in memory."""

    name: str
    train: Split
    valid: Split
    test: Split
    mean: torch.Tensor
    std: torch.Tensor

    def to(self, device) -> "Dataset":
        def move(split: Split) -> Split:
            return Split(split.images.to(device), split.labels.to(device))

        return Dataset(
            self.name,
            move(self.train),
            move(self.valid),
            move(self.test),
            self.mean.to(device),
            self.std.to(device),
        )

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Convert a uint8 batch to float in [0, 1], then standardise per channel."""
        return (images.float().div_(255.0) - self.mean) / self.std


SPLIT_SEED = 20_190_101  # fixed: the validation split never changes with the run seed


def split_indices(train_total: int, test_total: int, train_size: int | None,
                  valid_size: int, test_size: int | None, name: str = "dataset"):
    """Return the sorted training, validation and test indices of the fixed split.

    Validation takes the first ``valid_size`` images of a permutation drawn
    from SPLIT_SEED, and training the next ``train_size``. The test index is
    None when the whole test set is used. Invalid sizes raise ValueError.
    """
    if not 0 < valid_size < train_total:
        raise ValueError(
            f"valid_size={valid_size} must be between 1 and {train_total - 1} "
            f"for {name}"
        )
    order = np.random.default_rng(SPLIT_SEED).permutation(train_total)
    valid_index = np.sort(order[:valid_size])
    train_index = order[valid_size:]
    if train_size is not None:
        if not 0 < train_size <= len(train_index):
            raise ValueError(
                f"train_size={train_size} must be between 1 and {len(train_index)} "
                f"for {name} with valid_size={valid_size}"
            )
        train_index = train_index[:train_size]
    train_index = np.sort(train_index)

    test_index = None
    if test_size is not None:
        if not 0 < test_size <= test_total:
            raise ValueError(
                f"test_size={test_size} must be between 1 and {test_total}"
            )
        test_order = np.random.default_rng(SPLIT_SEED).permutation(test_total)
        test_index = np.sort(test_order[:test_size])
    return train_index, valid_index, test_index


def load_dataset(
    name: str,
    data_root=None,
    train_size: int | None = None,
    valid_size: int = 5000,
    test_size: int | None = None,
    download: bool = True,
) -> Dataset:
    """Load a dataset and carve a validation split from its training set.

    The validation images are drawn from the training set by a fixed seed, so
    they never overlap the test set and are the same for every run. The
    training subset (``train_size``) is taken from the remaining images, also
    in a fixed order, so every optimizer trains on the same subset.
    """
    train_images, train_labels = load_arrays(name, "train", data_root, download)
    test_images, test_labels = load_arrays(name, "test", data_root, download)

    train_index, valid_index, test_index = split_indices(
        len(train_labels), len(test_labels), train_size, valid_size, test_size,
        name=name,
    )
    if test_index is not None:
        test_images, test_labels = test_images[test_index], test_labels[test_index]

    def split(images, labels) -> Split:
        # np.frombuffer arrays are read-only; torch wants writable memory.
        images = np.require(images, requirements=["C_CONTIGUOUS", "WRITEABLE"])
        return Split(
            torch.from_numpy(images),
            torch.from_numpy(np.asarray(labels, dtype=np.int64)),
        )

    mean, std = NORMALISATION[name]
    channels = train_images.shape[1]
    return Dataset(
        name=name,
        train=split(train_images[train_index], train_labels[train_index]),
        valid=split(train_images[valid_index], train_labels[valid_index]),
        test=split(test_images, test_labels),
        mean=torch.tensor(mean).view(1, channels, 1, 1),
        std=torch.tensor(std).view(1, channels, 1, 1),
    )
