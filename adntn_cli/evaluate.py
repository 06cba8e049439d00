"""Measuring a model: top-1, top-5 and loss on a data loader."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

__all__ = ["accuracy", "agreement"]


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu") -> dict:
    """``{top1, top5, loss, n}``: fractions in [0, 1] and mean cross-entropy (eval mode)."""
    was_training = model.training
    model.eval()
    top1 = top5 = loss = 0.0
    n = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x).float()
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        k = min(5, logits.shape[-1])
        best = logits.topk(k, dim=-1).indices
        top1 += float((best[:, 0] == y).sum())
        top5 += float((best == y[:, None]).any(-1).sum())
        n += len(y)
    model.train(was_training)
    return {"top1": top1 / n, "top5": top5 / n, "loss": loss / n, "n": n}


@torch.no_grad()
def agreement(
    a: nn.Module, b: nn.Module, loader: DataLoader, device: torch.device | str = "cpu"
) -> float:
    """Fraction of inputs on which two models predict the same class."""
    a.eval()
    b.eval()
    same = n = 0
    for x, _ in loader:
        x = x.to(device)
        same += int((a(x).argmax(-1) == b(x).argmax(-1)).sum())
        n += len(x)
    return same / n
