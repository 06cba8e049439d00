"""Data sources for distillation and evaluation; nothing is fetched from the network.

SPEC strings (``--data`` or the recipe's ``data.train``):

- ``digits``: scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), upsampled to the
  model's input size and repeated to 3 channels. Split: a fixed permutation (seed 0) puts 20% (359
  images) in validation, the rest in training, whatever ``--seed`` says.
- ``synthetic[:N]``: ``N`` (default 256) random images with random labels, for smoke tests and
  timing; 25% validation.
- ``imagefolder:PATH``: ``PATH/train`` and ``PATH/val`` in ImageNet layout (one folder per
  class); evaluation needs only ``PATH/val``.
- ``cifar10:PATH`` / ``cifar100:PATH``: a local copy of the python-version batches
  (``download=False``); the official train and test splits.
- ``mnist:PATH`` / ``fashion-mnist:PATH``: the four IDX files, gzipped or raw (see idx.py); the
  official 60,000 / 10,000 splits, grey repeated to three channels.

Image sources are preprocessed as preprocess.py says: each source's defaults, with the recipe's
``data:`` keys (mean, std, resize, crop, interpolation, augment, crop_scale) on top.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from .errors import DataError
from .preprocess import Preprocess, resolve_preprocess

__all__ = [
    "DataSpec",
    "Datasets",
    "EpochSampler",
    "epoch_seed",
    "loaders",
    "make_datasets",
    "parse_data_spec",
]

VALID = (
    "digits, synthetic[:N], imagefolder:PATH, cifar10:PATH, cifar100:PATH, mnist:PATH or "
    "fashion-mnist:PATH"
)
PATH_SOURCES = ("imagefolder", "cifar10", "cifar100", "mnist", "fashion-mnist")
SPLIT_SEED = 0


@dataclass(frozen=True)
class DataSpec:
    kind: str
    path: Path | None = None
    size: int | None = None


@dataclass
class Datasets:
    """The splits of a source; ``train`` is None where only validation was asked for (eval).
    ``classes`` names the classes where the source has names; ``preprocess`` is what image
    sources were prepared with (None for digits and synthetic)."""

    train: Dataset | None
    val: Dataset
    num_classes: int
    description: str
    augmented: bool = False  # whether a training image differs from one epoch to the next
    classes: list[str] | None = None
    preprocess: Preprocess | None = None


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s data order and worker RNG: exact resume depends on every
    user of it agreeing, so this is the one place it is computed."""
    return seed * 1_000_003 + epoch


def parse_data_spec(spec: str) -> DataSpec:
    """``'cifar10:/data/c10'`` -> ``DataSpec('cifar10', Path('/data/c10'))``."""
    if spec == "digits":
        return DataSpec("digits")
    m = re.fullmatch(r"synthetic(?::(\d+))?", spec)
    if m:
        n = int(m.group(1) or 256)
        if n < 4:
            raise DataError(f"data {spec!r}: synthetic needs at least 4 images")
        return DataSpec("synthetic", size=n)
    kind, sep, path = spec.partition(":")
    if kind in PATH_SOURCES and sep and path:
        return DataSpec(kind, Path(path).expanduser())
    raise DataError(f"data {spec!r} is not a data source; valid: {VALID}")


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def _digits(size: int) -> Datasets:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    x = _resize(x, size).repeat(1, 3, 1, 1)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = round(0.2 * len(y))
    val, train = perm[:n_val], perm[n_val:]
    return Datasets(
        TensorDataset(x[train], y[train]),
        TensorDataset(x[val], y[val]),
        10,
        f"digits: {len(train)} train / {n_val} val images, {size}x{size}",
    )


def _synthetic(n: int, size: int, num_classes: int) -> Datasets:
    g = torch.Generator().manual_seed(SPLIT_SEED)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    n_val = max(1, n // 4)
    return Datasets(
        TensorDataset(x[n_val:], y[n_val:]),
        TensorDataset(x[:n_val], y[:n_val]),
        num_classes,
        f"synthetic: {n - n_val} train / {n_val} val random images, {size}x{size}",
    )


def _imagefolder(path: Path, size: int, p: Preprocess, train: bool) -> Datasets:
    from torchvision import datasets

    splits = ("train", "val") if train else ("val",)
    for split in splits:
        if not (path / split).is_dir():
            raise DataError(
                f"imagefolder:{path}: no {split}/ folder (expected {split}/CLASS/*.jpg)"
            )
    try:
        sets = {
            split: datasets.ImageFolder(
                str(path / split), transform=p.transforms(size, train=split == "train")
            )
            for split in splits
        }
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(f"imagefolder:{path}: {err}") from None
    val, train_set = sets["val"], sets.get("train")
    if train_set is not None and train_set.classes != val.classes:
        raise DataError(f"imagefolder:{path}: train/ and val/ have different class folders")
    n = len(val.classes)
    counts = f"{len(train_set)} train / " if train_set is not None else ""
    desc = f"imagefolder {path}: {counts}{len(val)} val images, {n} classes"
    return Datasets(train_set, val, n, desc, p.augment != "none", val.classes, p)


def _cifar(kind: str, path: Path, size: int, p: Preprocess, train: bool) -> Datasets:
    from torchvision import datasets

    cls = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
    try:
        val = cls(str(path), train=False, transform=p.transforms(size, train=False), download=False)
        train_set = (
            cls(str(path), train=True, transform=p.transforms(size, train=True), download=False)
            if train
            else None
        )
    except RuntimeError:
        folder = "cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python"
        raise DataError(
            f"{kind}:{path}: no dataset there (adntn never downloads: put {folder}/ in {path})"
        ) from None
    return _described(kind, path, train_set, val, p)


def _idx(kind: str, path: Path, size: int, p: Preprocess, train: bool) -> Datasets:
    from .idx import IdxImages

    if not path.is_dir():
        raise DataError(f"{kind}:{path}: no such folder (it holds the four IDX files)")
    val = IdxImages(kind, path, "val", p.transforms(size, train=False))
    train_set = IdxImages(kind, path, "train", p.transforms(size, train=True)) if train else None
    return _described(kind, path, train_set, val, p)


def _described(kind: str, path: Path, train: Dataset | None, val, p: Preprocess) -> Datasets:
    counts = f"{len(train)} train / " if train is not None else ""
    n = len(val.classes)
    desc = f"{kind} {path}: {counts}{len(val)} val images, {n} classes"
    return Datasets(train, val, n, desc, p.augment != "none", list(val.classes), p)


def make_datasets(
    spec: str | DataSpec,
    image_size: int,
    num_classes: int = 10,
    *,
    preprocess: Preprocess | dict[str, Any] | None = None,
    train: bool = True,
) -> Datasets:
    """Training and validation sets for ``spec`` at ``image_size`` (see the module docstring).

    ``preprocess`` is a resolved ``Preprocess`` (a compressed file's), or the recipe's ``data:``
    keys over the source's defaults; ``train=False`` reads the validation split alone."""
    s = parse_data_spec(spec) if isinstance(spec, str) else spec
    if s.kind in ("digits", "synthetic"):
        if isinstance(preprocess, dict):
            resolve_preprocess(s.kind, preprocess)  # refuses keys these sources do not take
        if s.kind == "digits":
            return _digits(image_size)
        return _synthetic(s.size or 256, image_size, num_classes)
    p = preprocess if isinstance(preprocess, Preprocess) else None
    p = p or resolve_preprocess(s.kind, preprocess if isinstance(preprocess, dict) else {})
    if s.kind == "imagefolder":
        return _imagefolder(s.path, image_size, p, train)
    if s.kind in ("mnist", "fashion-mnist"):
        return _idx(s.kind, s.path, image_size, p, train)
    return _cifar(s.kind, s.path, image_size, p, train)


class EpochSampler(Sampler[int]):
    """A seeded shuffle whose order is a function of ``(seed, epoch)`` alone, startable mid-epoch.

    Resuming needs the data order of the interrupted epoch without replaying it: ``set_epoch(e,
    start)`` gives epoch ``e``'s permutation from sample ``start`` on, so the skipped samples are
    never loaded (no image decoded, no augmentation drawn from the RNG). ``rank`` and ``world``
    shard every epoch's permutation (rank r takes positions r, r + world, ...) for several
    processes; each rank sees ``ceil(n / world)`` samples, the last ranks repeating the first
    positions so that all ranks run the same number of steps.
    """

    def __init__(self, n: int, seed: int = 0, *, rank: int = 0, world: int = 1) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in 0..{world - 1}")
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch ``epoch``'s order from its ``start``-th sample (of this rank's share)."""
        self.epoch, self.start = epoch, start

    def order(self, epoch: int) -> list[int]:
        """This rank's share of epoch ``epoch``'s permutation, from the beginning."""
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        perm = torch.randperm(self.n, generator=g).tolist()
        per_rank = -(-self.n // self.world)
        perm += perm[: per_rank * self.world - self.n]  # pad so every rank gets per_rank
        return perm[self.rank :: self.world]

    def __iter__(self):
        return iter(self.order(self.epoch)[self.start :])

    def __len__(self) -> int:
        return -(-self.n // self.world) - self.start


def loaders(
    data: Datasets,
    batch_size: int,
    *,
    workers: int = 0,
    seed: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world: int = 1,
) -> tuple[DataLoader, DataLoader]:
    """Shuffled (seeded, resumable) training batches and in-order validation batches.

    The training loader's sampler is an :class:`EpochSampler`; its ``generator`` (which seeds the
    workers) is reseeded per epoch by ``finetune``, so nothing draws from torch's global RNG.
    """
    common = {"num_workers": workers, "pin_memory": pin_memory, "persistent_workers": workers > 0}
    sampler = EpochSampler(len(data.train), seed, rank=rank, world=world)
    train = DataLoader(
        data.train, batch_size, sampler=sampler, generator=torch.Generator().manual_seed(seed),
        **common,
    )  # fmt: skip
    val = DataLoader(
        data.val, batch_size, shuffle=False, generator=torch.Generator().manual_seed(seed),
        **common,
    )  # fmt: skip
    return train, val
