"""The frozen-prefix cache kept on disk between runs: ``adntn compress --prefix-cache DIR``.

Runs that compress the same teacher on the same data (a study's grid: several structures,
ratios and seeds) compute the same prefix outputs; with a folder given, the first run writes
them (safetensors, atomically) and the others read them. A file is named by a SHA-256 of all
that its contents depend on: the teacher's weights and buffers, the prefix's own (BatchNorm
recalibration changes them), the cut and the prefix's code, the data (its description, split
sizes, preprocessing and a sample of its images), the precision, and this format's version.
Anything else gives another name, so a stale file is never read; files are never deleted.
The validation split's outputs, computed by the final evaluation, are stored under a key of
their own (``split="val"``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from .atomic import write_bytes
from .data import Datasets
from .errors import AdntnError

__all__ = ["FORMAT", "load", "path_of", "prefix_key", "save"]

FORMAT = 1  # bump when what is stored, or how it is computed, changes


def _update(h: Any, tensors: dict[str, torch.Tensor]) -> None:
    for name, t in sorted(tensors.items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def prefix_key(
    teacher: nn.Module, prefix: fx.GraphModule, cut: str, data: Datasets, precision: str,
    split: str = "train",
) -> str:  # fmt: skip
    """The name of the stored outputs of ``prefix`` (cut after ``cut``) over ``data``'s
    training and selection splits, or (``split="val"``) over its validation split."""
    h = hashlib.sha256()
    if split == "val":
        sizes, samples = [len(data.val)], [data.val[0][0], data.val[len(data.val) - 1][0]]
    else:
        sizes = [len(data.train), len(data.select) if data.select is not None else 0]
        samples = [data.train[0][0], data.train[len(data.train) - 1][0]]
        if data.select is not None:
            samples.append(data.select[0][0])
    pre = data.preprocess.to_dict() if data.preprocess is not None else None
    about = {"format": FORMAT, "cut": cut, "code": prefix.code, "data": data.description,
             "sizes": sizes, "preprocess": pre, "precision": precision}  # fmt: skip
    if split == "val":  # the training key stays what it was: stored files are still found
        about["split"] = split
    h.update(json.dumps(about, sort_keys=True, default=str).encode())
    _update(h, teacher.state_dict())
    _update(h, {f"prefix.{k}": v for k, v in prefix.state_dict().items()})
    _update(h, {f"sample{i}": x for i, x in enumerate(samples)})
    return h.hexdigest()[:32]


def path_of(folder: Path, key: str) -> Path:
    return folder / f"prefix-{key}.safetensors"


def load(folder: Path, key: str) -> dict[str, torch.Tensor] | None:
    """The stored tensors of ``key``, or None when there are none."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = path_of(folder, key)
    if not path.is_file():
        return None
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise AdntnError(
            f"{path}: not a readable prefix cache ({err}); delete it, and it is recomputed"
        ) from None


def save(folder: Path, key: str, tensors: dict[str, torch.Tensor]) -> Path:
    """Write ``tensors`` under ``key`` (atomically: a half-written file is never read)."""
    from safetensors.torch import save

    path = path_of(folder, key)
    write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}))
    return path
