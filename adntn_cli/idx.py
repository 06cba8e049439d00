"""MNIST and Fashion-MNIST from their IDX files (gzipped or raw), official splits.

``PATH`` holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
and ``t10k-labels-idx1-ubyte``, each optionally ``.gz`` (as ``apt-get install
dataset-fashion-mnist`` puts them in /usr/share/datasets/fashion-mnist). Training: the 60,000
train images; validation: the 10,000 test images.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DataError

__all__ = ["CLASSES", "IdxImages", "read_idx"]

CLASSES = {
    "mnist": [str(d) for d in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
}  # fmt: skip
SPLITS = {"train": "train", "val": "t10k"}
MAGIC = {1: 0x00000801, 3: 0x00000803}  # unsigned bytes, 1 (labels) or 3 (images) dimensions


def _find(root: Path, name: str, spec: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{spec}: no {name}[.gz] in {root} (expected the four IDX files; Fashion-MNIST: "
        "apt-get install dataset-fashion-mnist puts them in /usr/share/datasets/fashion-mnist)"
    )


def read_idx(path: Path, dims: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``dims`` dimensions, checked against its header."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            blob = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read the IDX file ({err})") from None
    magic = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else -1
    if magic != MAGIC[dims]:
        raise DataError(f"{path}: not an IDX file of {dims}-d unsigned bytes (magic {magic:#x})")
    shape = [int.from_bytes(blob[4 + 4 * d : 8 + 4 * d], "big") for d in range(dims)]
    start = 4 + 4 * dims
    if len(blob) - start != int(np.prod(shape)):
        raise DataError(f"{path}: truncated ({len(blob) - start} bytes for shape {shape})")
    return np.frombuffer(blob, dtype=np.uint8, offset=start).reshape(shape)


class IdxImages(Dataset):
    """One split of an IDX data set: uint8 images (N x 28 x 28), transformed on access."""

    def __init__(self, kind: str, root: Path, split: str, transform) -> None:
        spec, prefix = f"{kind}:{root}", SPLITS[split]
        images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte", spec), 3)
        labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte", spec), 1)
        if len(images) != len(labels):
            raise DataError(f"{spec}: {len(images)} {split} images but {len(labels)} labels")
        self.images = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 1, 28, 28) uint8
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.transform = transform
        self.classes = CLASSES[kind]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), int(self.labels[i])
