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
