import gzip

import numpy as np
import pytest
import torch

from conftest import write_cifar_bin, write_cifar_py, write_idx, write_idx_dataset
from optstudy import data


def test_read_idx_plain_and_gzip_agree(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    plain = write_idx(tmp_path / "plain", array, compress=False)
    packed = write_idx(tmp_path / "packed", array, compress=True)
    assert packed.name.endswith(".gz")
    np.testing.assert_array_equal(data.read_idx(plain), array)
    np.testing.assert_array_equal(data.read_idx(packed), array)


def test_read_idx_rejects_truncated_file(tmp_path):
    path = write_idx(tmp_path / "images", np.zeros((4, 2, 2), np.uint8), False)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match="IDX header promises shape"):
        data.read_idx(path)


def test_read_idx_rejects_bad_magic(tmp_path):
    path = tmp_path / "not-idx"
    path.write_bytes(gzip.compress(b"\x01\x02\x08\x01rest"))
    with pytest.raises(ValueError, match="bad magic"):
        data.read_idx(path)


def test_mnist_layout_loads_from_torchvision_folders(tmp_path):
    write_idx_dataset(tmp_path, "MNIST", train=50, test=20, compress=True)
    images, labels = data.load_arrays("mnist", "train", tmp_path, download=False)
    assert images.shape == (50, 1, 28, 28)
    assert images.dtype == np.uint8
    assert labels.shape == (50,)


def test_cifar_binary_reader_matches_written_records(tmp_path):
    arrays = write_cifar_bin(tmp_path, per_batch=3, test=4)
    images, labels = data.load_arrays("cifar10", "train", tmp_path, download=False)
    expected = np.concatenate([arrays[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
    assert images.shape == (15, 3, 32, 32)
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_array_equal(labels[:3], arrays["data_batch_1.bin"][1])


def test_cifar_python_reader_matches_written_batches(tmp_path):
    arrays = write_cifar_py(tmp_path, per_batch=2, test=5)
    images, labels = data.load_arrays("cifar10", "test", tmp_path, download=False)
    np.testing.assert_array_equal(images, arrays["test_batch"][0])
    np.testing.assert_array_equal(labels, arrays["test_batch"][1])


def test_missing_dataset_error_names_files(tmp_path):
    with pytest.raises(data.DataNotFoundError) as caught:
        data.load_arrays("fashion_mnist", "train", tmp_path, download=False)
    message = str(caught.value)
    assert "fashion_mnist" in message
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message
    assert "OPTSTUDY_DATA" in message


def test_failed_download_error_names_dataset(tmp_path, monkeypatch):
    def fail_download(root, name):
        raise OSError("network unreachable")

    monkeypatch.setattr(data, "_download", fail_download)
    with pytest.raises(data.DataNotFoundError) as caught:
        data.load_arrays("cifar10", "train", tmp_path, download=True)
    assert "network unreachable" in str(caught.value)
    assert "cifar-10-batches-bin" in str(caught.value)


def test_data_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    assert data.resolve_data_root() == tmp_path.resolve()
    assert data.resolve_data_root(tmp_path / "other") == (tmp_path / "other").resolve()


def test_validation_split_is_fixed_and_disjoint(tiny_data_root):
    first = data.load_dataset("mnist", tiny_data_root, train_size=300, valid_size=100)
    second = data.load_dataset("mnist", tiny_data_root, train_size=200, valid_size=100)
    assert len(first.train) == 300
    assert len(first.valid) == 100
    assert torch.equal(first.valid.images, second.valid.images)
    train_rows = {bytes(image.numpy()) for image in first.train.images}
    valid_rows = {bytes(image.numpy()) for image in first.valid.images}
    assert not train_rows & valid_rows


def test_training_subset_is_a_prefix_of_larger_subset(tiny_data_root):
    small = data.load_dataset("mnist", tiny_data_root, train_size=100, valid_size=100)
    large = data.load_dataset("mnist", tiny_data_root, train_size=400, valid_size=100)
    small_rows = {bytes(image.numpy()) for image in small.train.images}
    large_rows = {bytes(image.numpy()) for image in large.train.images}
    assert small_rows <= large_rows


def test_invalid_train_size_is_rejected(tiny_data_root):
    with pytest.raises(ValueError, match="train_size=100000"):
        data.load_dataset("mnist", tiny_data_root, train_size=100000, valid_size=100)


def test_normalise_uses_dataset_statistics(tiny_data_root):
    dataset = data.load_dataset("cifar10", tiny_data_root, valid_size=100)
    batch = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    expected = (1.0 - dataset.mean) / dataset.std
    torch.testing.assert_close(dataset.normalise(batch), expected.expand(1, 3, 2, 2))
