"""The teacher's own preprocessing: per-source defaults, the recipe's ``data:`` keys on top.

An image is resized (short side to ``resize``), centre-cropped to ``crop``, resized to the
model's input size if the crop differs from it, and normalised with ``mean`` and ``std`` (grey
images are repeated to three channels first). Training images are then augmented as
``augment`` says: ``none``; ``flip`` (a random horizontal flip); ``imagenet`` (a random resized
crop of ``crop_scale`` of the area, aspect 3/4 to 4/3, and a flip: torchvision's reference
recipe, with its 0.08 to 1 scale by default).

Defaults per source (``DEFAULTS``): ImageNet's statistics and augmentation for image folders
(ImageNet layout); each data set's own statistics, the image resized to the input and no
augmentation for CIFAR, MNIST and Fashion-MNIST (small images lose their object under a 0.08
crop, and a distilled student only has to match its teacher on the images the teacher sees).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["DEFAULTS", "Preprocess", "resolve_preprocess"]

IMAGENET_CROP_SCALE = (0.08, 1.0)


@dataclass(frozen=True)
class Preprocess:
    """Resolved preprocessing; ``resize`` and ``crop`` of None mean the model's input size
    (``resize_ratio`` scales it: ImageNet's 256/224)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: int | None = None
    crop: int | None = None
    interpolation: str = "bilinear"
    augment: str = "none"
    crop_scale: tuple[float, float] = IMAGENET_CROP_SCALE
    resize_ratio: float = 1.0

    def at(self, input_size: int) -> Preprocess:
        """Every size fixed for a model taking ``input_size`` images."""
        crop = self.crop or input_size
        resize = self.resize or round(crop * self.resize_ratio)
        return replace(self, resize=resize, crop=crop, resize_ratio=1.0)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("resize_ratio")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        three = ("mean", "std", "crop_scale")
        return cls(**{k: tuple(v) if k in three else v for k, v in data.items()})

    def transforms(self, input_size: int, *, train: bool):
        """The torchvision (v2) transform of one image (PIL, or a uint8 tensor C x H x W)."""
        import torch
        from torchvision.transforms import InterpolationMode, v2

        p = self.at(input_size)
        mode = InterpolationMode(p.interpolation)
        steps: list[Any] = [v2.ToImage()]
        if train and p.augment == "imagenet":
            steps.append(v2.RandomResizedCrop(input_size, scale=p.crop_scale, interpolation=mode))
        else:
            steps += [v2.Resize(p.resize, interpolation=mode), v2.CenterCrop(p.crop)]
            if p.crop != input_size:
                steps.append(v2.Resize((input_size, input_size), interpolation=mode))
        if train and p.augment in ("flip", "imagenet"):
            steps.append(v2.RandomHorizontalFlip())
        steps += [_ThreeChannels(), v2.ToDtype(torch.float32, scale=True)]
        steps.append(v2.Normalize(list(p.mean), list(p.std)))
        return v2.Compose(steps)


class _ThreeChannels:
    """A grey image (1 x H x W) repeated to three channels; colour images pass unchanged."""

    def __call__(self, image):
        return image.expand(3, *image.shape[1:]) if image.shape[0] == 1 else image


def _grey(mean: float, std: float) -> Preprocess:
    return Preprocess((mean,) * 3, (std,) * 3)


DEFAULTS: dict[str, Preprocess] = {
    "imagefolder": Preprocess(
        (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), augment="imagenet", resize_ratio=256 / 224
    ),
    "cifar10": Preprocess((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": Preprocess((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": _grey(0.1307, 0.3081),
    "fashion-mnist": _grey(0.2860, 0.3530),
}
KEYS = ("mean", "std", "resize", "crop", "interpolation", "augment", "crop_scale")


def resolve_preprocess(kind: str, given: dict[str, Any]) -> Preprocess | None:
    """The source's defaults with the recipe's ``data:`` keys (``given``, unset ones absent)
    on top; None for sources adntn prepares itself (digits, synthetic), which take none."""
    from .errors import DataError

    if kind not in DEFAULTS:
        if given:
            raise DataError(
                f"data.{sorted(given)[0]}: {kind} is prepared by adntn itself and takes no "
                f"preprocessing keys; they apply to {', '.join(DEFAULTS)}"
            )
        return None
    p = DEFAULTS[kind]
    for key in ("mean", "std"):
        if key in given:
            value = given[key]
            three = tuple(float(v) for v in (value if isinstance(value, list) else [value] * 3))
            if len(three) != 3:
                raise DataError(f"data.{key}: give one value or three (R, G, B), got {value}")
            p = replace(p, **{key: three})
    rest = {k: given[k] for k in KEYS[2:] if k in given}
    if "crop_scale" in rest:
        rest["crop_scale"] = tuple(rest["crop_scale"])
    return replace(p, **rest)
