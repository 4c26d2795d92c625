"""Each reader parses a small file written in its real on-disk format; malformed files get clear errors."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import scipy.io
import torch

from unlearnkit.data import formats
from unlearnkit.data.datasets import load_cifar10, load_cifar100, load_fashion_mnist, load_mnist, load_svhn
from unlearnkit.errors import UnlearnKitError


def write_idx(path, array: np.ndarray, compress: bool) -> None:
    code = {np.uint8: 0x08, np.int32: 0x0C}[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    body = array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as handle:
        handle.write(header + body)


def write_mnist_dir(root, n_train=12, n_test=5, compress=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        write_idx(root / (name + (".gz" if compress else "")), array, compress)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_idx_reader_roundtrip(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    write_idx(path, array, compress)
    assert np.array_equal(formats.read_idx(path), array)
    ints = np.array([1, -2, 70000], dtype=np.int32)
    write_idx(tmp_path / "b", ints, False)
    assert formats.read_idx(tmp_path / "b").tolist() == [1, -2, 70000]


def test_idx_truncated_and_bad_magic(tmp_path):
    array = np.zeros((4, 5, 5), dtype=np.uint8)
    write_idx(tmp_path / "t", array, False)
    raw = (tmp_path / "t").read_bytes()
    (tmp_path / "t").write_bytes(raw[:-7])
    with pytest.raises(UnlearnKitError, match="truncated"):
        formats.read_idx(tmp_path / "t")
    (tmp_path / "m").write_bytes(b"\x01\x02\x03\x04" + raw[4:])
    with pytest.raises(UnlearnKitError, match="magic"):
        formats.read_idx(tmp_path / "m")


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_and_fashion_mnist_dirs(tmp_path, compress):
    arrays = write_mnist_dir(tmp_path, compress=compress)
    for loader in (load_mnist, load_fashion_mnist):
        data = loader(tmp_path)
        assert data.x_train.shape == (12, 1, 28, 28) and data.x_test.shape == (5, 1, 28, 28)
        assert torch.equal(data.y_train, torch.from_numpy(arrays["train-labels-idx1-ubyte"].astype(np.int64)))
        expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float() / 255
        assert torch.allclose(data.x_test[:, 0], expected)
        assert 0.0 <= float(data.x_train.min()) and float(data.x_train.max()) <= 1.0


def test_fingerprint_is_stable_and_content_based(tmp_path):
    (tmp_path / "gz").mkdir()
    (tmp_path / "raw").mkdir()
    write_mnist_dir(tmp_path / "gz", compress=True)
    write_mnist_dir(tmp_path / "raw", compress=False)
    a, b = load_mnist(tmp_path / "gz"), load_mnist(tmp_path / "raw")
    assert a.fingerprint == b.fingerprint  # compression does not matter, content does
    (tmp_path / "other").mkdir()
    write_mnist_dir(tmp_path / "other", seed=1)
    assert load_mnist(tmp_path / "other").fingerprint != a.fingerprint


def test_missing_files_name_what_to_install(tmp_path):
    with pytest.raises(UnlearnKitError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)
    with pytest.raises(UnlearnKitError, match="train-images-idx3-ubyte"):
        load_fashion_mnist(tmp_path)
    with pytest.raises(UnlearnKitError, match="does not exist"):
        load_fashion_mnist(tmp_path / "nowhere")


def _cifar_batch(n, label_key, classes, rng):
    # The official files are Python-2 pickles of dicts with byte-string keys; protocol 2 matches them.
    return {
        b"batch_label": b"testing batch",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, classes, n)],
        b"filenames": [b"x.png"] * n,
    }


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_reader(tmp_path, protocol):
    # Protocol 5 (numpy's _frombuffer) is what some writers produce by default; it must load too.
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = _cifar_batch(3, b"labels", 10, rng)
        with open(tmp_path / name, "wb") as handle:
            pickle.dump(batches[name], handle, protocol=protocol)
    data = load_cifar10(tmp_path)
    assert data.x_train.shape == (15, 3, 32, 32) and data.x_test.shape == (3, 3, 32, 32)
    first = batches["data_batch_1"][b"data"][0].reshape(3, 32, 32)
    assert torch.allclose(data.x_train[0], torch.from_numpy(first).float() / 255)
    assert data.y_train[:3].tolist() == batches["data_batch_1"][b"labels"]
    assert data.crop_padding == 4 and data.horizontal_flip


def test_cifar100_reader(tmp_path):
    rng = np.random.default_rng(1)
    for name, n in (("train", 6), ("test", 2)):
        batch = _cifar_batch(n, b"fine_labels", 100, rng)
        batch[b"coarse_labels"] = [0] * n
        with open(tmp_path / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)
    data = load_cifar100(tmp_path)
    assert data.num_classes == 100 and data.x_train.shape == (6, 3, 32, 32)


class _Evil:
    def __reduce__(self):
        return (print, ("owned",))


def test_cifar_reader_refuses_code_in_pickles(tmp_path):
    with open(tmp_path / "evil", "wb") as handle:
        pickle.dump({b"data": _Evil()}, handle, protocol=2)
    with pytest.raises(UnlearnKitError, match=r"refusing to load (__builtin__|builtins)\.print"):
        formats.read_cifar_batch(tmp_path / "evil")


def test_svhn_reader(tmp_path):
    rng = np.random.default_rng(2)
    for name, n in (("train_32x32.mat", 4), ("test_32x32.mat", 3)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = np.array([[10], [1], [9], [3]][:n], dtype=np.uint8)
        scipy.io.savemat(tmp_path / name, {"X": x, "y": y})
        if name.startswith("train"):
            train_x = x
    data = load_svhn(tmp_path)
    assert data.y_train.tolist() == [0, 1, 9, 3]  # label 10 is digit 0
    assert torch.allclose(data.x_train[1], torch.from_numpy(train_x[..., 1].transpose(2, 0, 1).copy()).float() / 255)
    assert not data.horizontal_flip


def test_digits(digits):
    assert digits.x_train.shape[1:] == (1, 8, 8)
    assert digits.n_train + digits.x_test.shape[0] == 1797
    assert float(digits.x_train.max()) <= 1.0


def test_cifar_protocol5_refuses_object_arrays(tmp_path):
    # the one global protocol 5 adds (_frombuffer) cannot rebuild objects
    with open(tmp_path / "objects", "wb") as handle:
        pickle.dump({b"data": np.array([_Evil()], dtype=object), b"labels": [0]}, handle, protocol=5)
    with pytest.raises(UnlearnKitError, match="refusing to load"):
        formats.read_cifar_batch(tmp_path / "objects")


def test_data_sets_without_training_images_or_with_two_shapes_are_refused(tmp_path):
    from unlearnkit.data import Dataset

    x, y = torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(UnlearnKitError, match="no training images"):
        Dataset("d", x[:0], y[:0], x, y, num_classes=2, class_names=("a", "b"))
    with pytest.raises(UnlearnKitError, match="both splits must have one shape"):
        Dataset("d", x, y, torch.zeros(4, 1, 9, 9), y, num_classes=2, class_names=("a", "b"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UnlearnKitError, match="is not a directory"):
        load_mnist(tmp_path / "file")
