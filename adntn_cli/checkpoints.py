"""Checkpoints: their three schemas, written atomically, read without unpickling, checked against
the model, and the RNG state that makes a resumed run continue exactly (per rank when several
processes run).

- ``layerwise.pt``: the student after the layer-wise fit, its errors, whether BatchNorm was
  recalibrated;
- ``last.pt``: everything a resumed distillation needs: model, optimiser, scheduler, progress
  (step, best top-1, history, steps per epoch), every rank's RNG and the process count;
- ``best.pt``: the model and progress at the best top-1 on the held-out selection images (a
  tie: the lower loss there).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import torch_bytes, write_bytes
from .distributed import Dist
from .errors import CheckpointError

__all__ = [
    "best_checkpoint",
    "layerwise_checkpoint",
    "load_checkpoint",
    "restore",
    "restore_layerwise",
    "restore_rng",
    "restore_training",
    "rng_state",
    "same_place",
    "save_atomic",
    "training_checkpoint",
]

# a distillation's progress
PROGRESS = ("step", "best_top1", "best_loss", "best_step", "history", "per_epoch")


def layerwise_checkpoint(
    model: nn.Module, errors: dict[str, dict[str, float]], batchnorm: bool
) -> dict[str, Any]:
    return {"model": model.state_dict(), "errors": errors, "batchnorm": batchnorm}


def restore_layerwise(
    path: Path, model: nn.Module, device: torch.device | str
) -> tuple[dict[str, dict[str, float]], bool]:
    """Load ``layerwise.pt`` into ``model``; returns the fit's errors and the BatchNorm flag."""
    saved = load_checkpoint(path, device)
    restore(model, saved["model"], path)
    return saved["errors"], saved["batchnorm"]


def best_checkpoint(model: nn.Module, progress: dict[str, Any]) -> dict[str, Any]:
    return {"model": model.state_dict(), **{k: progress[k] for k in PROGRESS}}


def training_checkpoint(
    model: nn.Module,
    progress: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rng_ranks: list[dict[str, Any]],
    world: int,
) -> dict[str, Any]:
    """``last.pt``: ``rng`` is rank 0's entry of ``rng_ranks`` (read by one-process runs)."""
    return {
        **best_checkpoint(model, progress),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_ranks[0],
        "rng_ranks": rng_ranks,
        "world": world,
    }


def restore_training(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    dist: Dist,
    device: torch.device,
    per_epoch: int,
) -> dict[str, Any]:
    """Load ``last.pt`` into the model, optimiser, scheduler and RNG; returns the progress, its
    step moved to the same place in the data when the steps per epoch changed."""
    ckpt = load_checkpoint(path, device)
    restore(model, ckpt["model"], path)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    restore_rng(ckpt, dist, device)
    progress = {k: ckpt[k] for k in ("step", "best_top1", "history")}
    progress["best_step"] = ckpt.get("best_step")  # absent before adntn recorded it
    progress["best_loss"] = ckpt.get("best_loss", math.inf)  # absent before ties were broken
    progress["step"] = same_place(ckpt["step"], ckpt.get("per_epoch", per_epoch), per_epoch)
    progress["per_epoch"] = per_epoch
    return progress


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: never half a file.

    A full disk raises ``DiskFullError`` with the temporary file removed and the previous
    checkpoint intact (see ``adntn_cli.atomic``).
    """
    write_bytes(path, torch_bytes(obj))


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint written by ``save_atomic``, read without unpickling code (tensors, numbers,
    strings and containers only); a damaged file is a ``CheckpointError``."""
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file
        text = " ".join(str(err).split())
        why = "truncated or corrupted" if "zip archive" in text else text[:200] or "unreadable"
        raise CheckpointError(
            f"{path}: not a readable adntn checkpoint ({why}); start over with --force"
        ) from None
    if not isinstance(obj, dict) or "model" not in obj:
        raise CheckpointError(f"{path}: not an adntn checkpoint; start over with --force")
    return obj


def restore(module: nn.Module, state: dict[str, Any], path: Path) -> None:
    """Load a checkpoint's weights; a checkpoint of another recipe is a ``CheckpointError``."""
    fix = "resume with the recipe and model of that run, or start over with --force"
    keys, saved = set(module.state_dict()), set(state)
    if keys != saved:
        missing, unexpected = sorted(keys - saved), sorted(saved - keys)
        raise CheckpointError(
            f"{path} does not fit the model this recipe builds: missing keys {missing[:4]}"
            f"{' ...' if len(missing) > 4 else ''}, unexpected keys {unexpected[:4]}"
            f"{' ...' if len(unexpected) > 4 else ''}; {fix}"
        )
    try:
        module.load_state_dict(state)
    except RuntimeError as err:  # same keys, other shapes
        lines = [ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln]
        detail = (lines or [" ".join(str(err).split())])[0][:200]
        raise CheckpointError(
            f"{path} does not fit the model this recipe builds ({detail}); {fix}"
        ) from None


def rng_state(device: torch.device) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def restore_rng(ckpt: dict[str, Any], dist: Dist, device: torch.device) -> None:
    """This rank's RNG as saved; with another process count, rank 0's state plus the rank (the
    dropout masks then differ from an uninterrupted run: see ``finetune``)."""
    ranks = ckpt.get("rng_ranks") or [ckpt["rng"]]
    same_world = len(ranks) == dist.world
    rng = ranks[dist.rank] if same_world else ranks[0]
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and rng.get("cuda") is not None:
        torch.cuda.set_rng_state(rng["cuda"], device)
    if not same_world and dist.rank:
        torch.manual_seed(int(torch.randint(0, 2**31, ())) + dist.rank)


def same_place(step: int, saved_per_epoch: int, per_epoch: int) -> int:
    """The step that starts at the same place in the data when the steps per epoch changed
    (another process count with an uneven split)."""
    if saved_per_epoch == per_epoch:
        return step
    epoch, done = divmod(step, saved_per_epoch)
    return epoch * per_epoch + min(done, per_epoch)
