"""Labelled image data for the classifiers: MNIST-format IDX files or a Hugging Face dataset.

The IDX format (LeCun, Cortes & Burges, the MNIST database): a 4-byte magic number
0x00 0x00 <type> <ndim>, then ndim big-endian uint32 sizes, then the values in row-major order
(type 0x08 unsigned byte, 0x09 signed byte, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64).
Files may be gzip-compressed (recognised by their first bytes, whatever their name).

- ``read_idx(path)``: one IDX file as a numpy array.
- ``load_glyphs(folder, split)``: the uint8 images [N, rows, cols] and labels [N] of a folder of
  ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` files (also used to draw bouncing digits).
- ``load(spec, ...)``: a named set (``mnist``, ``fashion-mnist``, ``notmnist`` in their folders
  under the data root, ``data_root``), a folder path, or ``hf:NAME`` (Hugging Face ``datasets``;
  needs the network or a cache),
  as ``ImageData`` with a seeded train/validation split and pixels scaled to [0, 1]
  (``ImageData.centered()`` subtracts the mean training image).
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from sequences.errors import DataError

ROOT_VARIABLE = "TNCN_DATA"
NAMED = {"mnist": "mnist", "fashion-mnist": "fashion_mnist", "notmnist": "notmnist"}
"""Data set names and their folders under the data root."""
HUB = {"mnist": "ylecun/mnist", "fashion-mnist": "zalando-datasets/fashion_mnist"}
"""The Hugging Face hub copies of the named sets (``hf:NAME``), where one exists."""
SPLIT_FILES = {"train": "train", "test": "t10k"}


def data_root(root=None) -> Path:
    """The folder that holds the named image sets: ``root`` when given, else the environment
    variable ``TNCN_DATA``, else ``~/.cache/tncn``."""
    if root is not None:
        return Path(root).expanduser()
    return Path(os.environ.get(ROOT_VARIABLE) or Path.home() / ".cache" / "tncn").expanduser()


def missing(name: str, folder: Path, hub: Optional[str] = None) -> DataError:
    """The error for the named set ``name`` whose folder is absent: which files to put where (and
    the ``hf:`` source ``hub``, where one exists)."""
    files = ", ".join(f"{SPLIT_FILES[s]}-{k}-ubyte[.gz]" for s in ("train", "test") for k in ("images-idx3", "labels-idx1"))
    offer = f"; with a network, the data hf:{hub} loads it from the Hugging Face hub" if hub else ""
    return DataError(f"{name} is expected in {folder}, which does not exist: put the IDX files {files} there, "
                     f"or point the data root elsewhere (the data_root option, or ${ROOT_VARIABLE}){offer}")

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """The array stored in the IDX file ``path`` (plain or gzip); a ``DataError`` if it is not one."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(s) for s in np.frombuffer(raw[4:header], dtype=">u4"))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path}: IDX sizes {shape} need {expected} bytes, the file has {len(raw)}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_file(folder: Path, split: str, kind: str) -> Optional[Path]:
    stem = f"{split}-{kind}-ubyte"
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def splits(folder) -> list[str]:
    """The splits (``train``, ``t10k``) whose images and labels are both present in ``folder``."""
    folder = Path(folder)
    return [s for s in ("train", "t10k")
            if _idx_file(folder, s, "images-idx3") and _idx_file(folder, s, "labels-idx1")]


def load_glyphs(folder, split: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, rows, cols] and int64 labels [N] of one split of an IDX folder.

    ``split``: ``train`` or ``t10k``; ``None`` takes ``train`` when present, else ``t10k``
    (notMNIST here has only its t10k sample).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"no image folder at {folder}")
    present = splits(folder)
    if split is None:
        if not present:
            raise DataError(
                f"{folder} holds no IDX image set: expected train- or t10k-images-idx3-ubyte[.gz] "
                f"with the matching labels-idx1 file"
            )
        split = present[0]
    elif split not in present:
        raise DataError(f"{folder} has no {split}-images-idx3-ubyte[.gz] and {split}-labels-idx1-ubyte[.gz]")
    images = read_idx(_idx_file(folder, split, "images-idx3"))
    labels = read_idx(_idx_file(folder, split, "labels-idx1"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"{folder}/{split}: expected images [N, rows, cols] and labels [N], got {images.shape} and {labels.shape}"
        )
    return images.astype(np.uint8, copy=False), labels.astype(np.int64)


@dataclass
class ImageData:
    """Flattened float32 images in [0, 1] and int64 labels for train, validation and test."""

    name: str
    shape: tuple[int, int]
    n_classes: int
    train: tuple[torch.Tensor, torch.Tensor]
    valid: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]

    def to(self, device) -> "ImageData":
        move = lambda pair: tuple(t.to(device) for t in pair)  # noqa: E731
        return ImageData(self.name, self.shape, self.n_classes, move(self.train), move(self.valid), move(self.test))

    def sizes(self) -> dict:
        return {"train": len(self.train[0]), "valid": len(self.valid[0]), "test": len(self.test[0])}

    def centered(self) -> "ImageData":
        """The same data minus the mean training image (all three splits, the training mean)."""
        mean = self.train[0].mean(0)
        shift = lambda pair: (pair[0] - mean, pair[1])  # noqa: E731
        return ImageData(self.name, self.shape, self.n_classes, shift(self.train), shift(self.valid), shift(self.test))


def _tensors(images: np.ndarray, labels: np.ndarray):
    x = torch.from_numpy(images.reshape(len(images), int(np.prod(images.shape[1:]))).astype(np.float32) / 255.0)
    return x, torch.from_numpy(labels.astype(np.int64))


def _assemble(name, train, test, valid: int, seed: int, limit: Optional[int]) -> ImageData:
    """Split ``valid`` examples off ``train`` with a seeded permutation; ``test=None`` also splits a test set."""
    images, labels = train
    gen = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(images), generator=gen).numpy()
    if test is None:
        valid = min(valid, len(images) // 5)
    n_held = valid * (2 if test is None else 1)
    if valid < 0 or n_held >= len(images):
        raise DataError(f"{name}: cannot hold out {n_held} of {len(images)} examples for validation/test")
    held, rest = order[:n_held], order[n_held:]
    if limit is not None:
        if limit <= 0:
            raise DataError(f"limit must be positive, got {limit}")
        rest = rest[:limit]
    if test is None:
        test = (images[held[valid:]], labels[held[valid:]])
    held = held[:valid]
    n_classes = int(max(labels.max(), test[1].max())) + 1
    return ImageData(
        name=name, shape=tuple(images.shape[1:3]), n_classes=n_classes,
        train=_tensors(images[rest], labels[rest]),
        valid=_tensors(images[held], labels[held]),
        test=_tensors(*test),
    )


def load_folder(folder, valid: int = 5000, seed: int = 0, limit: Optional[int] = None, name=None) -> ImageData:
    """An IDX folder: ``valid`` training examples (seeded) become the validation set.

    With only the t10k files (notMNIST's sample) that set of N is split three ways: min(valid, N/5)
    examples for validation, as many for test, the rest for training. ``limit`` keeps only the first
    ``limit`` training examples of the shuffled remainder (quick runs, tests).
    """
    folder = Path(folder)
    name = name or folder.name
    present = splits(folder) if folder.is_dir() else []
    if "train" in present:
        test = load_glyphs(folder, "t10k") if "t10k" in present else None
        return _assemble(name, load_glyphs(folder, "train"), test, valid, seed, limit)
    return _assemble(name, load_glyphs(folder), None, valid, seed, limit)


def from_hf(dataset, name: str, valid: int = 5000, seed: int = 0, limit: Optional[int] = None) -> ImageData:
    """An ``ImageData`` from a Hugging Face ``DatasetDict`` with an image and a class-label column."""
    from datasets import ClassLabel, Image

    def arrays(split):
        features = split.features
        image_col = next((c for c, f in features.items() if isinstance(f, Image)), None)
        label_col = next((c for c, f in features.items() if isinstance(f, ClassLabel)), None)
        if image_col is None or label_col is None:
            raise DataError(f"hf:{name} needs an Image and a ClassLabel column; it has {dict(features)}")
        images = np.stack([np.asarray(img.convert("L"), dtype=np.uint8) for img in split[image_col]])
        return images, np.asarray(split[label_col], dtype=np.int64)

    if "train" not in dataset:
        raise DataError(f"hf:{name} has no train split (splits: {', '.join(dataset)})")
    test = arrays(dataset["test"]) if "test" in dataset else None
    return _assemble(name, arrays(dataset["train"]), test, valid, seed, limit)


def load(spec: str, root=None, valid: int = 5000, seed: int = 0, limit: Optional[int] = None) -> ImageData:
    """Images by name (``mnist``, ``fashion-mnist``, ``notmnist``), folder path or ``hf:NAME``.

    Names resolve to folders under the data root (``data_root(root)``).
    """
    if spec.startswith("hf:"):
        hub_name = spec[3:]
        try:
            import datasets

            dataset = datasets.load_dataset(hub_name)
        except Exception as err:  # offline, unknown name, no cache: all are the user's to fix
            offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
            hint = " (offline: HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set and it is not in the local cache)" if offline else ""
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DataError(f"cannot load Hugging Face dataset {hub_name!r}{hint}: {first}") from None
        return from_hf(dataset, hub_name, valid, seed, limit)
    if spec in NAMED:
        folder = data_root(root) / NAMED[spec]
        if not folder.is_dir():
            raise missing(spec, folder, HUB.get(spec))
        return load_folder(folder, valid, seed, limit, name=spec)
    path = Path(spec)
    if path.is_dir():
        return load_folder(path, valid, seed, limit)
    raise DataError(
        f"unknown data {spec!r}: give {', '.join(NAMED)}, a folder of IDX files, or hf:NAME"
    )
