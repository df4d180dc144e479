"""Tests of the IDX readers and image data sets (sequences/images.py; the MNIST IDX format of
LeCun, Cortes & Burges). Expected arrays are written by the tests themselves, byte by byte.
"""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from conftest import shared_path
from sequences import images
from sequences.errors import DataError


def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    """An IDX file written from the format's definition (independent of the reader under test)."""
    codes = {np.dtype("uint8"): 0x08, np.dtype("int16"): 0x0B, np.dtype("float32"): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def write_rows_problem(folder, n_train: int = 240, n_test: int = 60) -> None:
    """A 3-class problem of 6x6 images in IDX files: the class sets one row of pixels bright over
    dim noise (the tiny classification set of the command tests)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 3).astype(np.uint8)
        imgs = rng.integers(0, 60, size=(n, 6, 6)).astype(np.uint8)
        imgs[np.arange(n), labels * 2, :] = 255
        write_idx(folder / f"{split}-images-idx3-ubyte", imgs)
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels)


def write_set(folder, split, n, seed=0, compress=True):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, size=(n, 4, 4), dtype=np.uint8)
    labels = (np.arange(n) % 3).astype(np.uint8)
    suffix = ".gz" if compress else ""
    write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", imgs, compress)
    write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels, compress)
    return imgs, labels


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_plain_and_gzip(tmp_path, compress):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", a, compress)
    out = images.read_idx(tmp_path / "a")
    assert out.shape == (2, 3, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, a)


def test_read_idx_big_endian_types(tmp_path):
    a = np.array([[1, -2, 300]], dtype=np.int16)
    write_idx(tmp_path / "s", a)
    np.testing.assert_array_equal(images.read_idx(tmp_path / "s"), a)
    f = np.array([0.5, -1.25], dtype=np.float32)
    write_idx(tmp_path / "f", f)
    np.testing.assert_array_equal(images.read_idx(tmp_path / "f"), f)


def test_read_idx_rejects_bad_magic_and_truncation(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="not an IDX file"):
        images.read_idx(tmp_path / "bad")
    a = np.zeros((3, 2), dtype=np.uint8)
    write_idx(tmp_path / "t", a)
    (tmp_path / "t").write_bytes((tmp_path / "t").read_bytes()[:-1])
    with pytest.raises(DataError, match="need .* bytes"):
        images.read_idx(tmp_path / "t")
    with pytest.raises(DataError, match="cannot read"):
        images.read_idx(tmp_path / "missing")


def test_load_folder_split_is_seeded_and_disjoint(tmp_path):
    train_imgs, train_labels = write_set(tmp_path, "train", 50, seed=1)
    write_set(tmp_path, "t10k", 10, seed=2, compress=False)
    a = images.load(str(tmp_path), valid=8, seed=3)
    b = images.load(str(tmp_path), valid=8, seed=3)
    c = images.load(str(tmp_path), valid=8, seed=4)
    assert a.sizes() == {"train": 42, "valid": 8, "test": 10}
    assert a.shape == (4, 4) and a.n_classes == 3
    torch.testing.assert_close(a.valid[0], b.valid[0])
    assert not torch.equal(a.valid[0], c.valid[0])
    # every training image appears exactly once across train and valid, scaled to [0, 1]
    together = torch.cat([a.train[0], a.valid[0]]) * 255
    rows = sorted(map(tuple, together.round().to(torch.uint8).tolist()))
    assert rows == sorted(map(tuple, train_imgs.reshape(50, -1).tolist()))
    assert a.train[0].dtype == torch.float32 and float(a.train[0].max()) <= 1.0
    assert images.load(str(tmp_path), valid=8, seed=3, limit=5).sizes()["train"] == 5


def test_folder_with_only_t10k_is_split_three_ways(tmp_path):
    write_set(tmp_path, "t10k", 50)
    data = images.load_folder(tmp_path, valid=100)
    assert data.sizes() == {"train": 30, "valid": 10, "test": 10}


def test_load_glyphs_prefers_train_and_checks_shapes(tmp_path):
    imgs, labels = write_set(tmp_path, "t10k", 6)
    got, got_labels = images.load_glyphs(tmp_path)
    np.testing.assert_array_equal(got, imgs)
    np.testing.assert_array_equal(got_labels, labels)
    with pytest.raises(DataError, match="has no train-images"):
        images.load_glyphs(tmp_path, "train")
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 4, 4), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(DataError, match="expected images"):
        images.load_glyphs(tmp_path)


def test_bad_specs_are_user_errors(tmp_path):
    with pytest.raises(DataError, match="unknown data"):
        images.load("no-such-thing")
    with pytest.raises(DataError, match="holds no IDX image set"):
        images.load(str(tmp_path))


def test_the_data_root_and_what_a_missing_set_says(tmp_path, monkeypatch):
    """The root given, else $TNCN_DATA, else ~/.cache/tncn; a missing set names its files and,
    where the hub has a copy, the hf: source."""
    monkeypatch.delenv("TNCN_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert images.data_root() == tmp_path / "home" / ".cache" / "tncn"
    monkeypatch.setenv("TNCN_DATA", str(tmp_path / "env"))
    assert images.data_root() == tmp_path / "env"
    assert images.data_root(tmp_path / "given") == tmp_path / "given"
    with pytest.raises(DataError) as err:
        images.load("fashion-mnist")
    message = str(err.value)
    assert f"{tmp_path / 'env' / 'fashion_mnist'}, which does not exist" in message
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        assert name in message
    assert "hf:zalando-datasets/fashion_mnist" in message and "$TNCN_DATA" in message
    with pytest.raises(DataError, match="notmnist is expected in") as err:
        images.load("notmnist", root=tmp_path)
    assert "hf:" not in str(err.value)  # the hub has no copy to offer
    (tmp_path / "env" / "mnist").mkdir(parents=True)
    write_idx(tmp_path / "env" / "mnist" / "t10k-images-idx3-ubyte", np.zeros((50, 4, 4), np.uint8))
    write_idx(tmp_path / "env" / "mnist" / "t10k-labels-idx1-ubyte", np.arange(50, dtype=np.uint8) % 3)
    assert images.load("mnist", valid=5).sizes() == {"train": 40, "valid": 5, "test": 5}


def test_hf_offline_is_a_clear_user_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="Hugging Face dataset 'tncn-no-such/dataset'"):
        images.load("hf:tncn-no-such/dataset")


def test_from_hf_converts_an_in_memory_dataset():
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, size=(12, 5, 5), dtype=np.uint8)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=4)})
    split = lambda a, lab: datasets.Dataset.from_dict(  # noqa: E731
        {"image": [Image.fromarray(x) for x in a], "label": lab}, features=features)
    dd = datasets.DatasetDict(train=split(arrays[:10], [i % 4 for i in range(10)]),
                              test=split(arrays[10:], [3, 1]))
    data = images.from_hf(dd, "toy", valid=2, seed=0)
    assert data.sizes() == {"train": 8, "valid": 2, "test": 2}
    assert data.shape == (5, 5) and data.n_classes == 4
    torch.testing.assert_close(data.test[0] * 255, torch.from_numpy(arrays[10:].reshape(2, -1)).float())
    assert data.test[1].tolist() == [3, 1]


def test_shared_mnist_and_notmnist_files():
    mnist = shared_path("data", "mnist")
    imgs, labels = images.load_glyphs(mnist, "t10k")
    assert imgs.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert set(np.unique(labels)) == set(range(10))
    notmnist = images.load("notmnist", root=shared_path("data"))
    assert notmnist.sizes() == {"train": 6000, "valid": 2000, "test": 2000}


def test_centered_subtracts_the_training_mean_everywhere(tmp_path):
    write_set(tmp_path, "train", 30, seed=1)
    write_set(tmp_path, "t10k", 10, seed=2)
    data = images.load(str(tmp_path), valid=5)
    c = data.centered()
    mean = data.train[0].mean(0)
    torch.testing.assert_close(c.train[0].mean(0), torch.zeros_like(mean), atol=1e-6, rtol=0)
    torch.testing.assert_close(c.test[0], data.test[0] - mean)
    torch.testing.assert_close(c.valid[0], data.valid[0] - mean)
    assert torch.equal(c.train[1], data.train[1])
