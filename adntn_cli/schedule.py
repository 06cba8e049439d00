"""How long a compress run distils: the layer-wise fit and the end-to-end step, in steps.

``adntn plan`` prints it (counting the training images when it is given the data); ``compress``
runs exactly these numbers (``Finetune.total_steps``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
            f"{self.flops_per_s / 1e9:,.0f} GFLOP/s ({parts + '; ' if parts else ''}a roofline "
            "of the FLOPs: real runs are within a few times of it)"
        )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def leaf_flops(
    model, input_size: int, leaves: Sequence[str] = ()
) -> tuple[list[tuple[str, int]], int]:
    """FLOPs per image of every leaf module (and of the modules named in ``leaves``, whose
    children are then not counted apart), in the order a forward pass runs them, and of the
    whole forward pass (work outside modules included). Counted on ``model``'s device: the
    meta device costs nothing."""
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

    named = set(leaves)
    inside = {n for n, _ in model.named_modules() if any(n.startswith(f"{b}.") for b in named)}
    chosen = [(n, m) for n, m in model.named_modules()
              if n and n not in inside and (n in named or not list(m.children()))]  # fmt: skip
    hooks = [h for n, m in chosen for h in (m.register_forward_pre_hook(before(n)),
                                            m.register_forward_hook(after(n)))]  # fmt: skip
    try:
        with torch.no_grad(), counter:
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return order, counter.get_total_flops() // 2


def _selection_passes(steps: int, per_epoch: int, every: int | None) -> int:
    """Selection evaluations: at each epoch's end and every ``every`` steps (once where both)."""
    ends = set(range(per_epoch, steps + 1, per_epoch))
    return len(ends | set(range(every, steps + 1, every)) if every else ends)


def _layer_costs(lp, batch: int, device: str) -> tuple[int, int]:
    """A planned layer's forward FLOPs in training at ``batch``, on the schedule the cost model
    picks there: generating its weight (once a step; 0 when it contracts) and contracting one
    batch through its cores (0 when it materialises)."""
    from .tn import StructureSpec, TNGenerator

    r = lp.record
    if lp.kind != "Linear" or not isinstance(lp.spec, StructureSpec):
        return r.flops, 0
    gen = TNGenerator(lp.spec, tuple(r.shape), device="meta")
    if gen.choose_schedule(batch, device, weight_cached=False) != "contract":
        return r.flops, 0
    return 0, 2 * gen.program.contract_cost(batch).macs


def expected_time(
    model, layers, recipe: Recipe, sched: DistillSchedule, val_images: int | None = None,
    device: str = "cpu", augmented: bool = False,
) -> TimeEstimate:  # fmt: skip
    """The compute a compress run of ``recipe`` on the dense ``model`` (meta is fine) should take,
    from its FLOPs and the cost model's device throughput (``tn.cost``). ``layers`` are the
    plan's LayerPlans; ``sched`` must have counted the data (``finetune_steps`` set).

    Each replaced layer runs the schedule the cost model picks at the training batch: contract
    (the batch through the cores, in place of the dense GEMM) or materialise (the weight
    generated once per step, then the dense operator). Counted:

    - the layer-wise fit: the calibration images' forward pass once, then per step each layer on
      one batch, forward and backward (attention layers are left to the end-to-end step);
    - the frozen prefix (the layers before the first replaced one or dropout) once per training
      and held-out image, with the teacher's logits, where it is cached: ``train`` not ``all``,
      ``cache_frozen_prefix`` auto, the data not augmented;
    - each end-to-end step: the teacher's forward where not cached, the frozen prefix forward
      only, the rest of the student forward and backward (3x);
    - the selection passes (each epoch's end and every ``eval_every`` steps) and the final
      evaluation of the dense and the compressed model on ``val_images``: on a cached prefix
      that BatchNorm recalibration leaves the teacher's (none in it), the prefix once per image
      and both models after it; else both whole models.
    """
    from torch.nn.modules.batchnorm import _BatchNorm

    from .distill import DROPOUT
    from .tn.cost import device_profile

    d, batch = recipe.distill, sched.batch
    replaced = {lp.layer: lp for lp in layers}
    leaves, total = leaf_flops(model, recipe.model.input_size, list(replaced))
    dropouts = {n for n, m in model.named_modules() if isinstance(m, DROPOUT)}
    first = next((k for k, (n, _) in enumerate(leaves) if n in replaced or n in dropouts), 0)
    frozen = sum(f for _, f in leaves[:first]) if d.train != "all" else 0
    cached = frozen > 0 and d.cache_frozen_prefix == "auto" and not augmented
    dense = dict(leaves)
    costs = {n: _layer_costs(lp, batch, device) for n, lp in replaced.items()}
    # per image: a contracted layer's GEMM becomes its contraction
    student = total + sum(c / batch - dense.get(n, 0) for n, (_, c) in costs.items() if c)
    generate = sum(g for g, _ in costs.values())  # per step
    n_train, n_select = sched.train_images or 0, sched.select_images or 0
    steps = sched.finetune_steps or 0
    fitted = [n for n, lp in replaced.items() if lp.kind != "MultiheadAttention"]
    layerwise = total * sched.calibration_images + sched.layerwise_steps * sum(
        3 * (costs[n][0] + (costs[n][1] or dense.get(n, 0) * batch)) for n in fitted
    )
    teacher = 0 if cached else total
    per_step = (teacher + (0 if cached else frozen) + 3 * (student - frozen)) * batch
    per_epoch = max(1, math.ceil(n_train / batch))
    passes = _selection_passes(steps, per_epoch, d.finetune.eval_every)
    head = student - frozen if cached else student
    norms = any(isinstance(model.get_submodule(n), _BatchNorm) for n, _ in leaves[:first])
    final = total + head if cached and not norms else total + student  # teacher + student
    parts = {
        "layer-wise": layerwise,
        "prefix cache": frozen * (n_train + n_select) + (total - frozen) * n_train if cached else 0,
        "end-to-end": (per_step + 3 * generate) * steps,
        "evaluation": passes * head * n_select + final * (val_images or 0),
    }
    flops = device_profile(device).flops_per_s
    return TimeEstimate(device, flops, {k: v / flops for k, v in parts.items()}, cached)
