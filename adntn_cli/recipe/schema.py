"""The recipe schema (version 1): frozen, validated data; unknown keys are errors.

Reading and checking a recipe imports pydantic and PyYAML only, never torch.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    field_validator,
    model_validator,
)

__all__ = [
    "ACTIVATION_NAMES",
    "STRUCTURE_NAMES",
    "Data",
    "Distill",
    "Factors",
    "Finetune",
    "LayerRule",
    "Layerwise",
    "Limits",
    "ModelSpec",
    "Recipe",
    "StructureFields",
]

# The registries' names, kept here so that validating a recipe needs no torch (a test checks that
# they equal adntn_cli.tn's registries).
STRUCTURE_NAMES = ("ttn", "augttn", "mera", "tt", "lowrank")
ACTIVATION_NAMES = (
    "identity",
    "tanh",
    "relu",
    "gelu",
    "silu",
    "sigmoid",
    "elu",
    "leaky_relu",
    "softplus",
)

Structure = Literal["ttn", "augttn", "mera", "tt", "lowrank"]
Activation = Literal[
    "identity", "tanh", "relu", "gelu", "silu", "sigmoid", "elu", "leaky_relu", "softplus"
]
PositiveInt = Annotated[int, Field(ge=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Factors(_Strict):
    """Explicit physical legs: output factors and input factors (conv: of C * kh * kw)."""

    out: list[PositiveInt] = Field(min_length=1)
    in_: list[PositiveInt] = Field(alias="in", min_length=1)


class StructureFields(_Strict):
    """What a layer's generator is: shared by ``defaults`` and each ``layers`` entry."""

    structure: Structure | None = None
    bond_dim: PositiveInt | list[PositiveInt] | None = Field(
        default=None, description="one bond dimension, or one per level (coarse to fine)"
    )
    target_ratio: float | None = Field(
        default=None, gt=1, description="x fewer parameters; the plan picks bond_dim"
    )
    activation: Activation | list[Activation] | None = None
    output_activation: Activation | None = None
    factors: Factors | None = None
    n_legs: int | None = Field(default=None, ge=2)
    input_legs: Literal["map", "flat"] | None = Field(
        default=None,
        description="a Linear that reads a flattened C x H x W map (FC6): map keeps C, H and W "
        "apart in its legs (H and W the last), flat factors C*H*W as one number",
    )
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("bond_dim", "activation")
    @classmethod
    def _non_empty(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("give one value or a non-empty list (one per level, coarse to fine)")
        return v

    @model_validator(mode="after")
    def _one_size(self) -> StructureFields:
        if self.bond_dim is not None and self.target_ratio is not None:
            raise ValueError("give bond_dim or target_ratio, not both")
        return self


class LayerRule(StructureFields):
    """Which layers (``select``, minus ``exclude``) get which generator."""

    select: str | list[str]
    exclude: list[str] = Field(default_factory=list)

    @field_validator("select")
    @classmethod
    def _selectors(cls, v: str | list[str]) -> str | list[str]:
        items = [v] if isinstance(v, str) else v
        if not items or any(not s.strip() for s in items):
            raise ValueError("select needs at least one non-empty selector")
        return v

    @property
    def selectors(self) -> list[str]:
        return [self.select] if isinstance(self.select, str) else list(self.select)


class ModelSpec(_Strict):
    arch: str | None = Field(default=None, description="a torchvision architecture, e.g. vgg16")
    num_classes: PositiveInt = 1000
    input_size: PositiveInt = Field(default=224, description="input height and width")


class Limits(_Strict):
    memory_gb: float | None = Field(default=None, gt=0, description="memory budget for plans")


class Layerwise(_Strict):
    steps: int = Field(default=200, ge=0)
    lr: float = Field(default=1e-2, gt=0)
    batches: PositiveInt = Field(default=8, description="calibration batches")
    start: Literal["random", "svd"] = Field(
        default="random",
        description="svd: multilinear chains (tt, lowrank) start from a TT-SVD of the dense "
        "weight, trees (ttn with tanh or identity levels, no mixing) from an HT-SVD; kept "
        "where it fits the calibration outputs better than the random start",
    )


# The end-to-end step's default length, in optimiser steps: DEFAULT_EPOCHS passes over the
# training images, at least MIN_STEPS and at most MAX_STEPS. docs/results.md: on Fashion-MNIST
# (55,000 images, batch 64) 7 passes (6,020 steps) kept 0.0 to 0.6 points more than 2 did, for
# ttn and tt, at 2,000x and 20,000x, on two teachers; with the peak lr at 3e-3, more again.
DEFAULT_EPOCHS, MIN_STEPS, MAX_STEPS = 7.0, 1000, 20000


class Finetune(_Strict):
    steps: int | None = Field(
        default=None, ge=0, description="optimiser steps (0 skips the step); default: by data"
    )
    epochs: float | None = Field(
        default=None, ge=0, description="instead of steps: passes over the training images"
    )
    lr: float = Field(default=3e-3, gt=0)  # 1e-3 kept 0.1 to 0.3 points less (docs/results.md)
    weight_decay: float = Field(default=0.0, ge=0)
    temperature: float = Field(default=4.0, gt=0)
    # 0.25, 0.5 and 0.9 kept less on Fashion-MNIST (docs/results.md)
    kd_weight: float = Field(default=0.1, ge=0, le=1)
    warmup: float = Field(default=0.05, ge=0, lt=1, description="fraction of steps")
    clip: float | None = Field(default=1.0, gt=0)
    feature_weight: float = Field(
        default=0.0, ge=0, description="weight of matching the replaced layers' outputs"
    )
    dropout: bool = Field(
        default=False,
        description="the model's dropout layers stay active while the student trains (default "
        "off: the student fits the teacher's eval-mode outputs)",
    )
    eval_every: PositiveInt | None = None
    checkpoint_every: PositiveInt = 200

    @model_validator(mode="after")
    def _one_length(self) -> Finetune:
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give steps or epochs, not both")
        return self

    def total_steps(self, per_epoch: int) -> int:
        """The optimiser steps of the end-to-end step, ``per_epoch`` steps making one pass."""
        if self.steps is not None:
            return self.steps
        if self.epochs is not None:
            return math.ceil(self.epochs * per_epoch)
        return min(MAX_STEPS, max(MIN_STEPS, math.ceil(DEFAULT_EPOCHS * per_epoch)))


class Distill(_Strict):
    layerwise: Layerwise = Field(default_factory=Layerwise)
    finetune: Finetune = Field(default_factory=Finetune)
    compile: Literal["auto", "on", "off"] = Field(
        default="off", description="torch.compile the generators: auto = on CUDA only"
    )
    train: Literal["all", "replaced", "head"] = Field(
        default="replaced",
        description="which parameters the end-to-end step trains: all, the replaced layers', "
        "or head: those and every layer after the first replaced one",
    )
    cache_frozen_prefix: Literal["auto", "off"] = Field(
        default="auto",
        description="with train: replaced, compute the frozen layers before the first replaced "
        "one once per image (auto: when the data is not augmented and the cache fits)",
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto",
        description="autocast of the forward passes: auto = bf16 on CUDA, fp32 elsewhere",
    )

    @field_validator("compile", "cache_frozen_prefix", mode="before")
    @classmethod
    def _yaml_switch(cls, v: Any, info: Any) -> Any:
        """YAML 1.1 reads a bare on/off as true/false: take them as the words they were."""
        if isinstance(v, bool):
            return ("on" if info.field_name == "compile" else "auto") if v else "off"
        return v


Interpolation = Literal["bilinear", "bicubic", "nearest"]
Augment = Literal["none", "flip", "imagenet"]
Stat = Annotated[float, Field(ge=-10, le=10)]


class Data(_Strict):
    """The data and its preprocessing; unset preprocessing keys take the source's defaults
    (docs/recipes.md has the table)."""

    train: str | None = Field(default=None, description="digits, imagefolder:PATH, ...")
    batch_size: PositiveInt = 64
    workers: int = Field(default=0, ge=0)
    holdout: Annotated[StrictInt, Field(ge=0)] | Annotated[float, Field(gt=0, lt=1)] | None = Field(
        default=None,
        description="training images held out to pick the best checkpoint on: a count, a "
        "fraction, or 0 for none (report the final model); default 10%, at most 5,000",
    )
    mean: Stat | list[Stat] | None = Field(default=None, description="one value or R, G, B")
    std: Annotated[float, Field(gt=0)] | list[Annotated[float, Field(gt=0)]] | None = Field(
        default=None, description="one value or R, G, B"
    )
    resize: PositiveInt | None = Field(default=None, description="short side before the crop")
    crop: PositiveInt | None = Field(default=None, description="centre crop (default: input)")
    interpolation: Interpolation | None = None
    augment: Augment | None = Field(
        default=None, description="training images: none, flip, or imagenet (crop and flip)"
    )
    crop_scale: (
        tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]] | None
    ) = Field(default=None, description="area range of augment: imagenet's random crop (0.08 to 1)")

    def preprocessing(self) -> dict[str, Any]:
        """The preprocessing keys this recipe sets (the rest are the source's defaults)."""
        keys = ("mean", "std", "resize", "crop", "interpolation", "augment", "crop_scale")
        return {k: v for k in keys if (v := getattr(self, k)) is not None}


class Recipe(_Strict):
    """A compression recipe (see docs/recipes.md)."""

    version: Literal[1]
    model: ModelSpec = Field(default_factory=ModelSpec)
    defaults: StructureFields = Field(default_factory=StructureFields)
    layers: list[LayerRule] = Field(min_length=1)
    limits: Limits = Field(default_factory=Limits)
    distill: Distill = Field(default_factory=Distill)
    data: Data = Field(default_factory=Data)
