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

from .checkpoints import (
    best_checkpoint,
    restore_training,
    rng_state,
    save_atomic,
    training_checkpoint,
)
from .data import EpochSampler, epoch_seed
from .distributed import Dist, any_true, barrier
from .errors import RunInterrupted, TrainingDivergedError
from .evaluate import accuracy
from .recipe.schema import Finetune
from .runtime import MixedPrecision

__all__ = [
    "Callback",
    "Distiller",
    "Event",
    "finetune",
    "kd_loss",
    "layerwise_fit",
    "recalibrate_batchnorm",
    "train_mode",
]


@dataclass
class Event:
    """A training event for a progress callback (not a progress bar): ``phase`` is teacher,
    layerwise, finetune, eval or checkpoint."""

    phase: str
    step: int
    total: int
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""


Callback = Callable[[Event], None]


def _quiet(_: Event) -> None:
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
    """Inputs and outputs of the named teacher layers on the calibration batches, copied as the
    hooks see them: an in-place activation after a layer (torchvision's ``ReLU(inplace=True)``
    in AlexNet and VGG) would otherwise turn the stored output into its activation."""
    store: dict[str, list] = {n: [] for n in names}
    hooks = []
    for n in names:

        def hook(_m, inp, out, n=n):
            store[n].append((inp[0].detach().clone(), out.detach().clone()))

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


def _svd_start(layer: nn.Module, dense: nn.Module) -> bool:
    """Set ``layer``'s generator from ``dense``'s weight where it is one multilinear chain
    (TT-SVD) or a tree with near-linear levels (HT-SVD; Linear and Conv2d layers have one
    generator); whether it was set. The noise that pads a chain's bond the weight's rank cannot
    fill is seeded, so the start draws nothing from the global generator."""
    from .tn.htsvd import ht_svd_start_, tree_order
    from .tn.svdstart import chain_order, svd_start_

    gens = list(getattr(layer, "generators", dict)().values())
    weight = getattr(dense, "weight", None)
    if len(gens) != 1 or weight is None:
        return False
    if chain_order(gens[0]) is not None:
        svd_start_(gens[0], weight, generator=torch.Generator().manual_seed(0))
    elif tree_order(gens[0]) is not None:
        ht_svd_start_(gens[0], weight)
    else:
        return False
    return True


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
    start: str = "random",
) -> dict[str, dict[str, float]]:
    """Fit each named student layer to the teacher layer's outputs; returns relative errors.

    ``start="svd"`` first sets each multilinear chain generator (tt, lowrank) from a TT-SVD of
    the teacher layer's weight (tn/svdstart.py), and each tree whose levels are near-linear
    (ttn with tanh or identity, no mixing) from an HT-SVD (tn/htsvd.py), each kept where its
    error on the calibration outputs is below the random start's (``results[name]["start"]``
    says which was kept).

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
        kept = "random"
        if start == "svd" and _svd_start(layer, teacher.get_submodule(name)):
            svd = _relative_error(layer, pairs, precision)
            if math.isfinite(svd) and svd < initial:
                before = {key: v.detach().clone() for key, v in layer.state_dict().items()}
                initial, kept = svd, "svd"
            else:
                layer.load_state_dict(before)
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
                callback(Event("layerwise", step + 1, steps, metrics, name))
        final = _relative_error(layer, pairs, precision)
        if not math.isfinite(final) or final > initial:
            layer.load_state_dict(before)
            final = initial
        results[name] = {"initial": initial, "final": final}
        if start != "random":
            results[name]["start"] = kept
        callback(Event("layerwise", k + 1, len(fit_names), results[name], f"{name} done"))
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


class FeatureMatch:
    """The auxiliary loss of ``finetune.feature_weight``: the replaced layers' outputs against
    the teacher's at the same layers, ``mean over layers |y_s - y_t|^2 / |y_t|^2`` of a batch.
    Forward hooks on both models capture the outputs while they run; ``remove`` ends it."""

    def __init__(self, teacher: nn.Module, student: nn.Module) -> None:
        from .layers import GeneratedModule

        names = [n for n, m in student.named_modules() if isinstance(m, GeneratedModule)]
        self.outputs: dict[tuple[str, str], torch.Tensor] = {}
        self.names = names
        self.hooks = [
            model.get_submodule(n).register_forward_hook(self._keeper(side, n))
            for side, model in (("t", teacher), ("s", student))
            for n in names
        ]

    def _keeper(self, side: str, name: str):
        def keep(_module, _inputs, output):
            self.outputs[side, name] = output

        return keep

    def loss(self) -> torch.Tensor:
        terms = []
        for n in self.names:
            t, s = self.outputs[("t", n)].float(), self.outputs[("s", n)].float()
            terms.append((s - t).pow(2).sum() / t.pow(2).sum().clamp_min(1e-12))
        self.outputs.clear()
        return torch.stack(terms).mean()

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        self.outputs.clear()


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


DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def train_mode(model: nn.Module, dropout: bool = True) -> nn.Module:
    """Training mode, except that a BatchNorm whose affine parameters are frozen keeps its
    running statistics (``distill.train: replaced`` freezes them with the rest), and that
    with ``dropout=False`` dropout layers pass their input through (``finetune.dropout``)."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in m.parameters(recurse=False)
        ):
            m.eval()
        if not dropout and isinstance(m, DROPOUT):
            m.eval()
    return model


class Distiller:
    """End-to-end distillation, as named steps: ``resume``, then per step ``_batch_loss``,
    ``_optimise``, ``_validate`` and ``_checkpoint``, until the schedule ends or a stop.

    ``forward`` (default ``student``) is the module trained and validated; with the frozen
    prefix cached it is the student's head, and the batches carry the prefix's outputs and the
    teacher's logits (``x, y, teacher_logits``). Checkpoints always hold the whole student.
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        train: DataLoader,
        val: DataLoader | None,
        cfg: Finetune,
        *,
        checkpoints: Path,
        device: torch.device | str = "cpu",
        dist: Dist | None = None,
        precision: MixedPrecision | None = None,
        callback: Callback = _quiet,
        forward: nn.Module | None = None,
    ) -> None:
        if not isinstance(train.sampler, EpochSampler) or train.generator is None:
            raise ValueError("finetune needs a DataLoader from data.loaders (an EpochSampler)")
        self.teacher, self.student, self.forward = teacher, student, forward or student
        self.train, self.val, self.cfg = train, val, cfg
        self.device, self.dist, self.callback = torch.device(device), dist or Dist(), callback
        self.precision = precision or MixedPrecision(self.device.type)
        self.last, self.best = checkpoints / "last.pt", checkpoints / "best.pt"
        self.per_epoch = len(train)
        self.total = max(1, cfg.total_steps(self.per_epoch))
        self.params = [p for p in student.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        warmup = round(cfg.warmup * self.total)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _schedule(self.total, warmup))
        self.state: dict[str, Any] = {
            "step": 0,
            "best_top1": -1.0,
            "best_loss": math.inf,
            "best_step": None,
            "history": [],
            "per_epoch": self.per_epoch,
        }
        self.channels_last = _is_channels_last(teacher)  # then feed NHWC batches too
        self.features = FeatureMatch(teacher, student) if cfg.feature_weight > 0 else None
        self.model: nn.Module = self.forward

    # -- the named steps ---------------------------------------------------------------------
    def resume(self) -> None:
        """Continue from ``last.pt`` exactly: model, optimiser, scheduler, step, RNG, data."""
        if not self.last.exists():
            return
        self.state = restore_training(
            self.last, self.student, self.opt, self.sched, self.dist, self.device, self.per_epoch
        )
        self.callback(
            Event("checkpoint", self.state["step"], self.total, message=f"resumed from {self.last}")
        )

    def _batches(self):
        """The rest of the current epoch, in the order of (seed, epoch): a resumed run starts
        inside it without loading the batches it skips; the workers' seeds follow the epoch."""
        epoch, done = divmod(self.state["step"], self.per_epoch)
        sampler = self.train.sampler
        sampler.set_epoch(epoch, start=done * self.train.batch_size)
        self.train.generator.manual_seed(epoch_seed(sampler.seed, epoch))
        return iter(self.train)

    def _batch_loss(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        x, y, *cached = (t.to(self.device, non_blocking=True) for t in batch)
        if x.dim() == 4 and self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if cached and self.features is None:  # the teacher's logits of this image, cached
            (t_logits,) = cached
        else:  # with the prefix cached, the teacher is its head: x is the prefix's output
            with torch.no_grad(), self.precision.autocast():
                t_logits = self.teacher(x)
        with self.precision.autocast():
            s_logits = self.model(x)
        loss = kd_loss(s_logits, t_logits, y, self.cfg.temperature, self.cfg.kd_weight)
        if self.features is not None:
            loss = loss + self.cfg.feature_weight * self.features.loss()
        (diverged,) = any_true(self.dist, [not bool(torch.isfinite(loss))], self.device)
        if diverged:
            raise TrainingDivergedError(
                f"the distillation loss became {float(loss.detach())} at step "
                f"{self.state['step'] + 1}; the last good checkpoint is {self.last}; lower "
                f"distill.finetune.lr (now {self.cfg.lr})"
            )
        return loss

    def _optimise(self, loss: torch.Tensor) -> dict[str, float]:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip)
        self.opt.step()
        self.sched.step()
        self.state["step"] += 1
        step = self.state["step"]
        return {"step": step, "loss": float(loss.detach()), "lr": self.sched.get_last_lr()[0]}

    def _validate(self, row: dict[str, float]) -> None:
        """Rank 0, at the end of each epoch (and every ``eval_every`` steps): top-1 on the
        held-out selection images (never the reported validation split), and ``best.pt`` when
        it improved: a higher top-1, or the same top-1 at a lower loss. A small hold-out reaches
        its best top-1 (often 100%) early; without the loss the first, least trained model to
        reach it was kept (on digits' 144 images: step 42 of 210, 98.1% against 99.7%)."""
        step, every = self.state["step"], self.cfg.eval_every
        due = step % self.per_epoch == 0 or step == self.total or (every and step % every == 0)
        if self.val is None or not self.dist.main or not due:
            return
        metrics = accuracy(self.forward, self.val, self.device, self.precision)
        train_mode(self.student, self.cfg.dropout)
        row.update(select_top1=metrics["top1"], select_loss=metrics["loss"])
        self.callback(Event("eval", step, self.total, metrics))
        best = (self.state["best_top1"], -self.state["best_loss"])
        if (metrics["top1"], -metrics["loss"]) > best:
            self.state.update(best_top1=metrics["top1"], best_loss=metrics["loss"], best_step=step)
            self._save(self.best, full=False)

    def _checkpoint(self, signalled: bool, stopping: bool) -> None:
        step = self.state["step"]
        if step % self.cfg.checkpoint_every == 0 or step == self.total or stopping or signalled:
            self._save(self.last)
            self.callback(Event("checkpoint", step, self.total, message=str(self.last)))

    def _save(self, path: Path, full: bool = True) -> None:
        """Rank 0 writes; a full save is a collective (every rank's RNG state is gathered)."""
        if not full:
            if self.dist.main:
                save_atomic(best_checkpoint(self.student, self.state), path)
            return
        rng = rng_state(self.device)
        ranks = [rng]
        if self.dist.enabled:
            ranks = [None] * self.dist.world
            torch.distributed.all_gather_object(ranks, rng)
        if self.dist.main:
            obj = training_checkpoint(
                self.student, self.state, self.opt, self.sched, ranks, self.dist.world
            )
            save_atomic(obj, path)

    # -- the loop ----------------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train to the end of the schedule (or ``stop_after`` steps, checkpointed)."""
        if self.dist.enabled:  # after a resume: every rank starts from the same weights
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.forward, device_ids=ids)
        with _deferred_signals() as caught:  # a signal is honoured between steps, after a save
            train_mode(self.student, self.cfg.dropout)
            while self.state["step"] < self.total:
                for batch in self._batches():
                    row = self._optimise(self._batch_loss(batch))
                    self._validate(row)
                    self.state["history"].append(row)
                    self.callback(Event("finetune", row["step"], self.total, row))
                    if self._after_step(caught, stop_after):
                        return self._result(interrupted=True)
                    if self.state["step"] >= self.total:
                        break
            barrier(self.dist)  # best.pt and last.pt are on disk for every rank
            return self._result(interrupted=False)

    def _after_step(self, caught: dict[str, str], stop_after: int | None) -> bool:
        """Checkpoint when due; a signal raises ``RunInterrupted``; True when ``stop_after``
        ends the run here."""
        step = self.state["step"]
        stopping = stop_after is not None and step >= stop_after
        (signalled,) = any_true(self.dist, [bool(caught)], self.device)
        self._checkpoint(signalled, stopping)
        if signalled or stopping:
            barrier(self.dist)
        if signalled:
            raise RunInterrupted(step, str(self.last), caught.get("name", "a signal"))
        return stopping

    def _result(self, interrupted: bool) -> dict[str, Any]:
        return {**self.state, "total": self.total, "interrupted": interrupted}


def finetune(
    teacher: nn.Module,
    student: nn.Module,
    train: DataLoader,
    val: DataLoader | None,
    cfg: Finetune,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Knowledge distillation of ``student`` from ``teacher``; returns the history and best top-1.

    ``options`` are ``Distiller``'s: ``checkpoints`` (a folder), ``device``, ``dist``,
    ``precision``, ``callback``, ``forward``. Checkpoints (``last.pt`` every
    ``cfg.checkpoint_every`` steps and at the end, ``best.pt`` by held-out top-1 after each
    epoch) are written atomically. ``resume`` continues from ``last.pt`` exactly: model,
    optimiser, scheduler, step, RNG and data order. ``stop_after`` ends the run after that many
    steps, checkpointed, as an interruption would.

    With ``dist`` (several processes, see ``distributed``) the student trains as a
    DistributedDataParallel replica on this rank's shard of each batch; rank 0 alone evaluates
    and writes checkpoints, and a signal or a non-finite loss on any rank stops every rank at
    the same step. A run resumed with another number of processes continues at the same place
    in the data (the global batches do not depend on the process count), but dropout masks and
    BatchNorm batch statistics do, so it matches within a tolerance, not bitwise.
    ``precision`` is the autocast of the forward passes (default: none); the loss is computed
    in float32.
    """
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    run = Distiller(teacher, student, train, val, cfg, **options)
    try:
        if resume:
            run.resume()
        return run.run(stop_after)
    finally:
        if run.features is not None:
            run.features.remove()


def _is_channels_last(model: nn.Module) -> bool:
    """Whether ``model``'s conv weights were moved to NHWC (``to(memory_format=...)``)."""
    return any(
        p.dim() == 4
        and not p.is_contiguous()
        and p.is_contiguous(memory_format=torch.channels_last)
        for p in model.parameters()
    )
