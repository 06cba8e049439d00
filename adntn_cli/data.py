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

With ``holdout`` (the recipe's ``data.holdout``), a seeded part of the *training* split is set
aside as the ``select`` split, on which ``compress`` picks its best checkpoint: the reported
validation split is never used to choose. The same images are held out whatever ``--seed``
says (a permutation of seed ``SPLIT_SEED``), under the evaluation transforms (no augmentation).

Image sources are preprocessed as preprocess.py says: each source's defaults, with the recipe's
``data:`` keys (mean, std, resize, crop, interpolation, augment, crop_scale) on top.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, TensorDataset

from .errors import DataError
from .preprocess import Preprocess, resolve_preprocess

__all__ = [
    "DEFAULT_HOLDOUT",
    "DataSpec",
    "Datasets",
    "EpochSampler",
    "epoch_seed",
    "holdout_count",
    "loaders",
    "make_datasets",
    "ordered_loader",
    "parse_data_spec",
    "train_loader",
]

VALID = (
    "digits, synthetic[:N], imagefolder:PATH, cifar10:PATH, cifar100:PATH, mnist:PATH or "
    "fashion-mnist:PATH"
)
PATH_SOURCES = ("imagefolder", "cifar10", "cifar100", "mnist", "fashion-mnist")
SPLIT_SEED = 0
DEFAULT_HOLDOUT = (0.1, 5000)  # data.holdout unset: 10% of the training images, at most 5,000


@dataclass(frozen=True)
class DataSpec:
    kind: str
    path: Path | None = None
    size: int | None = None


@dataclass
class Datasets:
    """The splits of a source; ``train`` is None where only validation was asked for (eval).
    ``select`` is the part of the training split held out to choose a checkpoint on (None: no
    hold-out); ``classes`` names the classes where the source has names; ``preprocess`` is what
    image sources were prepared with (None for digits and synthetic)."""

    train: Dataset | None
    val: Dataset
    num_classes: int
    description: str
    augmented: bool = False  # whether a training image differs from one epoch to the next
    classes: list[str] | None = None
    preprocess: Preprocess | None = None
    select: Dataset | None = None


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


def holdout_count(n_train: int, holdout: float | int | None) -> int:
    """How many of ``n_train`` training images ``holdout`` sets aside: None is the default (10%,
    at most 5,000), a float below 1 a fraction, an int a count, 0 none."""
    if holdout is None:
        fraction, cap = DEFAULT_HOLDOUT
        return min(cap, max(1, round(fraction * n_train))) if n_train >= 2 else 0
    if isinstance(holdout, float) and 0 < holdout < 1:
        count = max(1, round(holdout * n_train))
    else:
        count = int(holdout)
    if count and count >= n_train:
        raise DataError(
            f"data.holdout {holdout} leaves no training images (of {n_train}): hold out a "
            "fraction below 1, a count below the training images, or 0 (no selection)"
        )
    return count


def _hold_out(
    train: Dataset, plain: Dataset, holdout: float | int | None
) -> tuple[Dataset, Dataset | None]:
    """``train`` less the held-out images, and those images as read from ``plain`` (the same
    split under the evaluation transforms): a fixed permutation of seed ``SPLIT_SEED``."""
    count = holdout_count(len(train), holdout)
    if not count:
        return train, None
    g = torch.Generator().manual_seed(SPLIT_SEED)
    perm = torch.randperm(len(train), generator=g)
    held, kept = perm[:count].sort().values, perm[count:].sort().values
    return Subset(train, kept.tolist()), Subset(plain, held.tolist())


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
    holdout: float | int | None = 0,
) -> Datasets:
    """Training and validation sets for ``spec`` at ``image_size`` (see the module docstring).

    ``preprocess`` is a resolved ``Preprocess`` (a compressed file's), or the recipe's ``data:``
    keys over the source's defaults; ``train=False`` reads the validation split alone.
    ``holdout`` sets part of the training split aside as ``select`` (``holdout_count``: None
    is the recipe's default, 0 none)."""
    s = parse_data_spec(spec) if isinstance(spec, str) else spec
    data = _source(s, image_size, num_classes, preprocess, train)
    return _with_holdout(data, image_size, holdout) if train else data


def _source(s: DataSpec, image_size: int, num_classes: int, preprocess, train: bool) -> Datasets:
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


def _with_holdout(data: Datasets, image_size: int, holdout: float | int | None) -> Datasets:
    """``data`` with its ``select`` split held out of ``train`` (see ``holdout_count``)."""
    plain = data.train
    if data.augmented:  # the held-out images are read as validation images are: no augmentation
        plain = copy.copy(data.train)  # the same files or arrays, under other transforms
        plain.transform = data.preprocess.transforms(image_size, train=False)
    train, select = _hold_out(data.train, plain, holdout)
    if select is None:
        return data
    n, k = len(data.train), len(select)
    description = data.description.replace(f"{n} train / ", f"{n - k} train / {k} select / ", 1)
    return dataclasses.replace(data, train=train, select=select, description=description)


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
    """``train_loader`` of the training split and ``ordered_loader`` of the validation split."""
    train = train_loader(
        data.train, batch_size, workers=workers, seed=seed, pin_memory=pin_memory, rank=rank,
        world=world,
    )  # fmt: skip
    return train, ordered_loader(data.val, batch_size, workers=workers, pin_memory=pin_memory)


def train_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    workers: int = 0,
    seed: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world: int = 1,
) -> DataLoader:
    """Shuffled (seeded, resumable) training batches.

    The sampler is an :class:`EpochSampler`; the loader's ``generator`` (which seeds the
    workers) is reseeded per epoch by ``finetune``, so nothing draws from torch's global RNG.
    """
    sampler = EpochSampler(len(dataset), seed, rank=rank, world=world)
    return DataLoader(
        dataset, batch_size, sampler=sampler, generator=torch.Generator().manual_seed(seed),
        num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0,
    )  # fmt: skip


def ordered_loader(
    dataset: Dataset, batch_size: int, *, workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """In-order batches of ``dataset`` (validation, selection); a generator of its own, so that
    making it draws nothing from torch's global RNG."""
    return DataLoader(
        dataset, batch_size, shuffle=False, num_workers=workers, pin_memory=pin_memory,
        persistent_workers=workers > 0, generator=torch.Generator(),
    )  # fmt: skip
