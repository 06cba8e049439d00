"""Measuring a model: top-1, top-5 and loss on a data loader."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

if TYPE_CHECKING:
    from .runtime import MixedPrecision

__all__ = ["accuracy", "agreement", "compare", "count_params", "latency", "runtime_bytes"]


def _autocast(precision: MixedPrecision | None) -> contextlib.AbstractContextManager:
    return precision.autocast() if precision is not None else contextlib.nullcontext()


@torch.no_grad()
def accuracy(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device | str = "cpu",
    precision: MixedPrecision | None = None,
) -> dict:
    """``{top1, top5, loss, n}``: fractions in [0, 1] and mean cross-entropy (eval mode, under
    ``precision``'s autocast when given)."""
    was_training = model.training
    model.eval()
    tally = _Tally()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with _autocast(precision):
            tally.add(model(x).float(), y)
    model.train(was_training)
    return tally.result()


@torch.no_grad()
def agreement(
    a: nn.Module,
    b: nn.Module,
    loader: DataLoader,
    device: torch.device | str = "cpu",
    precision: MixedPrecision | None = None,
) -> float:
    """Fraction of inputs on which two models predict the same class."""
    a.eval()
    b.eval()
    same = n = 0
    for x, _ in loader:
        x = x.to(device)
        with _autocast(precision):
            same += int((a(x).argmax(-1) == b(x).argmax(-1)).sum())
        n += len(x)
    return same / n


class _Tally:
    """Running top-1, top-5 and summed cross-entropy of one model's logits."""

    def __init__(self) -> None:
        self.top1 = self.top5 = self.loss = 0.0
        self.n = 0

    def add(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Count a batch; returns its top-1 predictions."""
        self.loss += float(F.cross_entropy(logits, y, reduction="sum"))
        best = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        self.top1 += float((best[:, 0] == y).sum())
        self.top5 += float((best == y[:, None]).any(-1).sum())
        self.n += len(y)
        return best[:, 0]

    def result(self) -> dict:
        n = self.n
        return {"top1": self.top1 / n, "top5": self.top5 / n, "loss": self.loss / n, "n": n}


@torch.no_grad()
def compare(
    a: nn.Module,
    b: nn.Module,
    loader: DataLoader,
    device: torch.device | str = "cpu",
    precision: MixedPrecision | None = None,
) -> tuple[dict, dict, float]:
    """``accuracy`` of ``a`` and of ``b`` and their ``agreement``, in one pass over ``loader``
    (each model runs once per batch)."""
    modes = a.training, b.training
    a.eval()
    b.eval()
    tally_a, tally_b, same = _Tally(), _Tally(), 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with _autocast(precision):
            logits_a, logits_b = a(x).float(), b(x).float()
        same += int((tally_a.add(logits_a, y) == tally_b.add(logits_b, y)).sum())
    a.train(modes[0])
    b.train(modes[1])
    return tally_a.result(), tally_b.result(), same / tally_a.n


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def runtime_bytes(model: nn.Module, batch: int = 64) -> dict[str, int]:
    """Memory the model holds at inference: parameters and buffers, plus every generated weight
    the eval cache keeps (``runtime_bytes``); ``runtime_bytes_contract`` counts only the layers
    that cannot contract their input at ``batch`` (the rest never form their weight)."""
    from .layers import GeneratedLinear, GeneratedModule

    base = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    cached = contract = 0
    for m in model.modules():
        if not isinstance(m, GeneratedModule):
            continue
        size = next(m.parameters()).element_size()
        dense = m.dense_params * size
        cached += dense
        contracts = isinstance(m, GeneratedLinear) and m.generator.contractible
        if not (contracts and m.generator.choose_schedule(batch, weight_cached=True) == "contract"):
            contract += dense
    return {"runtime_bytes": base + cached, "runtime_bytes_contract": base + contract}


@torch.no_grad()
def latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch: int,
    device: torch.device | str = "cpu",
    *,
    warmup: int = 3,
    repeats: int = 10,
) -> float:
    """Median seconds of one eval-mode forward at ``batch`` (after warm-up, device synchronised)."""
    import statistics
    import time

    device = torch.device(device)
    model.eval()
    x = torch.randn(batch, *input_shape, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        model(x)
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(x)
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
