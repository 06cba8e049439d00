"""How long a compress run distils: the layer-wise fit and the end-to-end step, in steps.

``adntn plan`` prints it (counting the training images when it is given the data); ``compress``
runs exactly these numbers (``Finetune.total_steps``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .recipe import Recipe
from .recipe.schema import DEFAULT_EPOCHS, MAX_STEPS, MIN_STEPS

__all__ = ["DistillSchedule", "distill_schedule"]


@dataclass(frozen=True)
class DistillSchedule:
    """``finetune_steps`` and ``train_images`` are None when the data was not counted."""

    layers: int
    layerwise_steps: int
    calibration_images: int
    batch: int
    train_images: int | None
    select_images: int | None
    finetune_steps: int | None
    rule: str  # what sets the end-to-end length: the recipe's steps or epochs, or the default

    def describe(self) -> str:
        lw = (
            f"layer-wise fit: {self.layerwise_steps:,} steps per layer ({self.layers} layers) on "
            f"{self.calibration_images:,} calibration images"
        )
        if self.finetune_steps is None:
            return f"{lw}; end-to-end: {self.rule} at batch {self.batch} (give --data to count)"
        passes = self.finetune_steps * self.batch / max(1, self.train_images)
        chosen = (
            f"; the checkpoint chosen on {self.select_images:,} held-out images"
            if self.select_images
            else "; the final model kept (no hold-out)"
        )
        return (
            f"{lw}; end-to-end: {self.finetune_steps:,} steps at batch {self.batch} "
            f"({passes:.2g} passes over {self.train_images:,} training images){chosen}"
        )


def distill_schedule(
    recipe: Recipe, layers: int, train_images: int | None = None, select_images: int | None = None
) -> DistillSchedule:
    """The schedule of ``recipe`` for ``layers`` replaced layers and, when counted, that many
    training images (after the hold-out) on one process."""
    d, batch = recipe.distill, recipe.data.batch_size
    ft, steps = d.finetune, None
    if train_images is not None:
        steps = ft.total_steps(math.ceil(train_images / batch))
    if ft.steps is not None:
        rule = f"{ft.steps:,} steps (distill.finetune.steps)"
    elif ft.epochs is not None:
        rule = f"{ft.epochs:g} passes over the training images (distill.finetune.epochs)"
    else:
        rule = (
            f"{DEFAULT_EPOCHS:g} passes over the training images, {MIN_STEPS:,} to "
            f"{MAX_STEPS:,} steps (the default)"
        )
    return DistillSchedule(
        layers, d.layerwise.steps, d.layerwise.batches * batch, batch, train_images,
        select_images, steps, rule,
    )  # fmt: skip


# -- what it should take ----------------------------------------------------------------------


@dataclass(frozen=True)
class TimeEstimate:
    """A roofline estimate of a compress run's compute (``seconds``), by part, on ``device``."""

    device: str
    flops_per_s: float
    seconds: dict[str, float]  # layer-wise, prefix cache, end-to-end, evaluation
    cached_prefix: bool

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def describe(self) -> str:
        parts = ", ".join(f"{k} {_duration(v)}" for k, v in self.seconds.items() if v >= 0.5)
        return (
            f"expected time: about {_duration(self.total)} of compute on a {self.device} at "
            f"{self.flops_per_s / 1e9:,.0f} GFLOP/s ({parts}; a roofline of the FLOPs: "
            "real runs are within a few times of it)"
        )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def leaf_flops(model, input_size: int) -> list[tuple[str, int]]:
    """FLOPs per image of every leaf module, in the order a forward pass runs them (counted on
    ``model``'s device: the meta device costs nothing)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.zeros(2, 3, input_size, input_size, device=device)
    order: list[tuple[str, int]] = []
    counter = FlopCounterMode(display=False)
    starts: dict[str, int] = {}

    def before(name):
        return lambda *_: starts.__setitem__(name, counter.get_total_flops())

    def after(name):
        return lambda *_: order.append((name, (counter.get_total_flops() - starts[name]) // 2))

    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    hooks = [h for n, m in leaves for h in (m.register_forward_pre_hook(before(n)),
                                            m.register_forward_hook(after(n)))]  # fmt: skip
    try:
        with torch.no_grad(), counter:
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return order


def expected_time(
    model, records, recipe: Recipe, sched: DistillSchedule, val_images: int | None = None,
    device: str = "cpu",
) -> TimeEstimate:  # fmt: skip
    """The compute a compress run of ``recipe`` on the dense ``model`` (meta is fine) should take,
    from its FLOPs and the cost model's device throughput (``tn.cost``). ``records`` are the plan's
    LayerRecords; ``sched`` must have counted the data (``finetune_steps`` set).

    Counted: the layer-wise fit (the calibration images' forward pass once, then per step each
    generator's weight and the layer on one batch, forward and backward); the frozen prefix once
    per image when it is cached (``train`` not ``all`` and ``cache_frozen_prefix`` auto, up to
    the first replaced layer or dropout); each end-to-end step (the teacher's forward where not
    cached, the student's forward and backward, generating materialised weights); the selection
    passes (one per epoch and per ``eval_every``) and the final evaluation of both models."""
    from .distill import DROPOUT
    from .tn.cost import device_profile

    leaves = leaf_flops(model, recipe.model.input_size)
    replaced = {r.layer: r for r in records}
    dropouts = {n for n, m in model.named_modules() if isinstance(m, DROPOUT)}
    d = recipe.distill
    total = sum(f for _, f in leaves)
    first = next((k for k, (n, _) in enumerate(leaves) if n in replaced or n in dropouts), 0)
    cached = d.train != "all" and d.cache_frozen_prefix == "auto" and first > 0
    prefix = sum(f for _, f in leaves[:first]) if cached else 0
    contracted = sum(f for n, f in leaves if n in replaced and replaced[n].schedule == "contract")
    student = total - contracted  # a contracted layer costs a small fraction of its dense GEMM
    generate = sum(r.flops for r in records if r.schedule != "contract")  # per step
    batch, n_train = sched.batch, sched.train_images or 0
    n_select, steps = sched.select_images or 0, sched.finetune_steps or 0
    layer_flops = dict(leaves)
    layerwise = total * sched.calibration_images + sched.layerwise_steps * sum(
        3 * (r.flops + layer_flops.get(r.layer, 0) * batch) for r in records
    )
    head_teacher = 0 if cached else total
    per_step = head_teacher * batch + 3 * (student - prefix) * batch + 3 * generate
    per_epoch = max(1, math.ceil(n_train / batch))
    passes = math.ceil(steps / per_epoch) + (
        steps // d.finetune.eval_every if d.finetune.eval_every else 0
    )
    seconds_of = device_profile(device).flops_per_s
    parts = {
        "layer-wise": layerwise,
        "prefix cache": (prefix * (n_train + n_select) + (total - prefix) * n_train)
        if cached
        else 0,
        "end-to-end": per_step * steps,
        "evaluation": passes * (student - prefix) * n_select
        + (total + student) * (val_images or 0),
    }
    return TimeEstimate(device, seconds_of, {k: v / seconds_of for k, v in parts.items()}, cached)
