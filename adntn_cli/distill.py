"""Distillation: fit each generator to its dense layer, then distil the whole model end to end.

Step 1, layer-wise: each generated layer is fitted to the outputs of the dense layer it replaces on
calibration batches (feature matching on the teacher's own inputs to that layer), which gives a good
start where a weight-space fit at 10^3-10^5x compression cannot. Step 2, end-to-end: knowledge
distillation (KL at temperature T, times T^2) plus cross-entropy on the labels, AdamW with warm-up
and cosine decay, mixed precision (bf16 autocast on CUDA by default, see runtime.MixedPrecision),
gradient clipping, atomic checkpoints and exact resume.

Nothing here prints: progress goes to a callback, results are returned.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .checkpoints import load_checkpoint, restore, restore_rng, rng_state, same_place, save_atomic
from .data import EpochSampler
from .distributed import Dist, any_true, barrier
from .errors import RunInterrupted, TrainingDivergedError
from .evaluate import accuracy
from .recipe.schema import Finetune
from .runtime import MixedPrecision

__all__ = [
    "Progress",
    "finetune",
    "kd_loss",
    "layerwise_fit",
    "load_checkpoint",
    "recalibrate_batchnorm",
    "restore",
    "save_atomic",
]


@dataclass
class Progress:
    """One progress report: ``phase`` is layerwise, finetune, eval or checkpoint."""

    phase: str
    step: int
    total: int
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""


Callback = Callable[[Progress], None]


def _quiet(_: Progress) -> None:
    pass


# -- step 1: layer-wise -------------------------------------------------------------------------
@torch.no_grad()
def _capture(
    teacher: nn.Module,
    names: Sequence[str],
    batches: Iterable[torch.Tensor],
    device: torch.device,
    precision: MixedPrecision,
) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Inputs and outputs of the named teacher layers on the calibration batches."""
    store: dict[str, list] = {n: [] for n in names}
    hooks = []
    for n in names:

        def hook(_m, inp, out, n=n):
            store[n].append((inp[0].detach(), out.detach()))

        hooks.append(teacher.get_submodule(n).register_forward_hook(hook))
    try:
        teacher.eval()
        for x in batches:
            with precision.autocast():
                teacher(x.to(device))
    finally:
        for h in hooks:
            h.remove()
    return store


@torch.no_grad()
def _relative_error(
    layer: nn.Module,
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    precision: MixedPrecision,
) -> float:
    num = den = 0.0
    for x, y in pairs:
        with precision.autocast():
            out = layer(x)
        num += float((out.float() - y.float()).pow(2).sum())
        den += float(y.float().pow(2).sum())
    return num / max(den, 1e-30)


def layerwise_fit(
    teacher: nn.Module,
    student: nn.Module,
    names: Sequence[str],
    batches: Sequence[torch.Tensor],
    *,
    steps: int,
    lr: float,
    device: torch.device | str = "cpu",
    callback: Callback = _quiet,
    precision: MixedPrecision | None = None,
) -> dict[str, dict[str, float]]:
    """Fit each named student layer to the teacher layer's outputs; returns relative errors.

    The loss is the squared error relative to the teacher output's power (in float32), with Adam
    and a cosine decay; the teacher and the layer run under ``precision``'s autocast, as they
    will in the end-to-end step. A fit that ends worse than it started is undone.
    MultiheadAttention layers are left to the end-to-end step.
    """
    device = torch.device(device)
    precision = precision or MixedPrecision(device.type)
    fit_names = [
        n for n in names if not isinstance(teacher.get_submodule(n), nn.MultiheadAttention)
    ]
    io = _capture(teacher, fit_names, batches, device, precision)
    results = {}
    for k, name in enumerate(fit_names):
        layer = student.get_submodule(name)
        pairs = io.pop(name)
        layer.train()
        before = {key: v.detach().clone() for key, v in layer.state_dict().items()}
        initial = _relative_error(layer, pairs, precision)
        params = [p for p in layer.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
        for step in range(steps):
            x, y = pairs[step % len(pairs)]
            with precision.autocast():
                out = layer(x)
            y = y.float()
            loss = F.mse_loss(out.float(), y) / y.pow(2).mean().clamp_min(1e-30)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % 50 == 0 or step == steps - 1:
                metrics = {"loss": float(loss.detach())}
                callback(Progress("layerwise", step + 1, steps, metrics, name))
        final = _relative_error(layer, pairs, precision)
        if not math.isfinite(final) or final > initial:
            layer.load_state_dict(before)
            final = initial
        results[name] = {"initial": initial, "final": final}
        callback(Progress("layerwise", k + 1, len(fit_names), results[name], f"{name} done"))
    return results


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device | str = "cpu"
) -> bool:
    """Recompute BatchNorm running statistics on ``batches``; False when there is no BatchNorm."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return False
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    was_training = model.training
    model.train()
    for x in batches:
        model(x.to(device))
    for m, mom in zip(norms, momenta, strict=True):
        m.momentum = mom
    model.train(was_training)
    return True


# -- step 2: end to end -------------------------------------------------------------------------
def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    kd_weight: float,
) -> torch.Tensor:
    """``kd_weight * T^2 KL(teacher_T || student_T) + (1 - kd_weight) * CE(student, labels)``."""
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student_logits.float() / t, -1),
        F.log_softmax(teacher_logits.float() / t, -1),
        log_target=True,
        reduction="batchmean",
    )
    loss = kd_weight * kl * t * t
    if labels is not None and kd_weight < 1:
        loss = loss + (1 - kd_weight) * F.cross_entropy(student_logits.float(), labels)
    return loss


def _schedule(total: int, warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


@contextlib.contextmanager
def _deferred_signals():
    """Turn SIGINT and SIGTERM into a flag checked between steps (main thread only)."""
    caught: dict[str, str] = {}
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def handler(signum, _frame):
        caught["name"] = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def finetune(
    teacher: nn.Module,
    student: nn.Module,
    train: DataLoader,
    val: DataLoader | None,
    cfg: Finetune,
    *,
    checkpoints: Path,
    device: torch.device | str = "cpu",
    resume: bool = False,
    stop_after: int | None = None,
    callback: Callback = _quiet,
    dist: Dist | None = None,
    precision: MixedPrecision | None = None,
) -> dict[str, Any]:
    """Knowledge distillation of ``student`` from ``teacher``; returns the history and best top-1.

    Checkpoints (``last.pt`` every ``cfg.checkpoint_every`` steps and at the end, ``best.pt`` by
    validation top-1 after each epoch) are written atomically. ``resume`` continues from
    ``last.pt`` exactly: model, optimiser, scheduler, step, RNG and data order. ``stop_after``
    ends the run after that many steps, checkpointed, as an interruption would.

    With ``dist`` (several processes, see ``distributed``) the student trains as a
    DistributedDataParallel replica on this rank's shard of each batch; rank 0 alone evaluates
    and writes checkpoints, and a signal or a non-finite loss on any rank stops every rank at
    the same step. A run resumed with another number of processes continues at the same place
    in the data (the global batches do not depend on the process count), but dropout masks and
    BatchNorm batch statistics do, so it matches within a tolerance, not bitwise.
    ``precision`` is the autocast of the forward passes (default: none); the loss is computed
    in float32.
    """
    device = torch.device(device)
    dist = dist or Dist()
    precision = precision or MixedPrecision(device.type)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    sampler, g = train.sampler, train.generator
    if not isinstance(sampler, EpochSampler) or g is None:
        raise ValueError("finetune needs a DataLoader from data.loaders (an EpochSampler)")
    sampler.set_epoch(0)
    batch = train.batch_size
    per_epoch = len(train)
    total = max(1, math.ceil(cfg.epochs * per_epoch))
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(total, round(cfg.warmup * total)))
    state: dict[str, Any] = {"step": 0, "best_top1": -1.0, "history": [], "per_epoch": per_epoch}
    last, best = checkpoints / "last.pt", checkpoints / "best.pt"
    if resume and last.exists():
        ckpt = load_checkpoint(last, device)
        restore(student, ckpt["model"], last)
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        restore_rng(ckpt, dist, device)
        state = {k: ckpt[k] for k in ("step", "best_top1", "history")}
        state["step"] = same_place(ckpt["step"], ckpt.get("per_epoch", per_epoch), per_epoch)
        state["per_epoch"] = per_epoch
        callback(Progress("checkpoint", state["step"], total, message=f"resumed from {last}"))

    def save(path: Path, full: bool = True) -> None:
        """Rank 0 writes; a full save is a collective (every rank's RNG state is gathered)."""
        obj = {"model": student.state_dict(), **state}
        if full:
            rng = rng_state(device)
            ranks = [rng]
            if dist.enabled:
                ranks = [None] * dist.world
                torch.distributed.all_gather_object(ranks, rng)
            obj.update(
                optimizer=opt.state_dict(),
                scheduler=sched.state_dict(),
                rng=ranks[0],
                rng_ranks=ranks,
                world=dist.world,
            )
        if dist.main:
            save_atomic(obj, path)

    model = student
    if dist.enabled:  # after the resume: every rank starts from the same weights
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        model = DistributedDataParallel(student, device_ids=ids)

    with _deferred_signals() as caught:  # a signal is honoured between steps, after a save
        student.train()
        channels_last = _is_channels_last(teacher)  # then feed NHWC batches too
        while state["step"] < total:
            # The epoch's order is a function of (seed, epoch): a resumed run starts inside it
            # without loading the batches it skips. The workers' seeds follow the epoch too.
            epoch, done = divmod(state["step"], per_epoch)
            sampler.set_epoch(epoch, start=done * batch)
            g.manual_seed(sampler.seed * 1_000_003 + epoch)
            for x, y in train:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if x.dim() == 4 and channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.no_grad(), precision.autocast():
                    t_logits = teacher(x)
                with precision.autocast():
                    s_logits = model(x)
                loss = kd_loss(s_logits, t_logits, y, cfg.temperature, cfg.kd_weight)
                (diverged,) = any_true(dist, [not bool(torch.isfinite(loss))], device)
                if diverged:
                    bad, at = float(loss.detach()), state["step"] + 1
                    raise TrainingDivergedError(
                        f"the distillation loss became {bad} at step {at}; the last good "
                        f"checkpoint is {last}; lower distill.finetune.lr (now {cfg.lr})"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.clip)
                opt.step()
                sched.step()
                state["step"] += 1
                step = state["step"]
                row = {"step": step, "loss": float(loss.detach()), "lr": sched.get_last_lr()[0]}
                end_of_epoch = step % per_epoch == 0 or step == total
                if (
                    val is not None
                    and dist.main
                    and (end_of_epoch or (cfg.eval_every and step % cfg.eval_every == 0))
                ):
                    metrics = accuracy(student, val, device, precision)
                    student.train()
                    row.update(val_top1=metrics["top1"], val_loss=metrics["loss"])
                    callback(Progress("eval", step, total, metrics))
                    if metrics["top1"] > state["best_top1"]:
                        state["best_top1"] = metrics["top1"]
                        save(best, full=False)
                state["history"].append(row)
                callback(Progress("finetune", step, total, row))
                stopping = stop_after is not None and step >= stop_after
                (signalled,) = any_true(dist, [bool(caught)], device)
                if step % cfg.checkpoint_every == 0 or step == total or stopping or signalled:
                    save(last)
                    callback(Progress("checkpoint", step, total, message=str(last)))
                if signalled:
                    barrier(dist)
                    raise RunInterrupted(step, str(last), caught.get("name", "a signal"))
                if stopping:
                    barrier(dist)
                    return {**state, "total": total, "interrupted": True}
                if step >= total:
                    break
        barrier(dist)  # best.pt and last.pt are on disk for every rank
        return {**state, "total": total, "interrupted": False}


def _is_channels_last(model: nn.Module) -> bool:
    """Whether ``model``'s conv weights were moved to NHWC (``to(memory_format=...)``)."""
    return any(
        p.dim() == 4
        and not p.is_contiguous()
        and p.is_contiguous(memory_format=torch.channels_last)
        for p in model.parameters()
    )
