"""Building and loading models: torchvision architectures by name, state dicts, module swaps.

Weights are never downloaded: architectures are built with ``weights=None``. Where no weights are
needed (plans) models are built on the meta device, so even VGG-16 costs no memory or time.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .errors import ModelError

__all__ = [
    "COMPRESSIBLE",
    "MAX_HEADER_BYTES",
    "build_model",
    "check_safetensors_header",
    "compressible_layers",
    "known_archs",
    "load_model",
    "set_submodule",
]

COMPRESSIBLE = (nn.Linear, nn.Conv2d, nn.MultiheadAttention)
MAX_HEADER_BYTES = 64 * 2**20  # a safetensors JSON header this large is not a model


def check_safetensors_header(path: Path) -> None:
    """Refuse a safetensors file whose declared header is absurd, before anything parses it."""
    with Path(path).open("rb") as f:
        head = f.read(8)
    size = int.from_bytes(head, "little") if len(head) == 8 else -1
    if not 0 < size <= min(MAX_HEADER_BYTES, Path(path).stat().st_size - 8):
        raise ModelError(
            f"{path}: not a readable safetensors file (header size {size} bytes; at most "
            f"{MAX_HEADER_BYTES} and within the file)"
        )


def demo_vgg(num_classes: int = 10) -> nn.Module:
    """A small VGG-style network for 32x32 inputs with two large fully connected layers."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]

    model = nn.Sequential()
    model.features = nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 128))
    model.flatten = nn.Flatten()
    model.classifier = nn.Sequential(
        nn.Linear(128 * 4 * 4, 1024),  # classifier.0: 2.1M parameters
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(1024, 1024),  # classifier.3: 1.0M parameters
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(1024, num_classes),
    )
    return model


CUSTOM: dict[str, Callable[..., nn.Module]] = {"demo_vgg": demo_vgg}


def known_archs() -> list[str]:
    import torchvision

    return sorted({*CUSTOM, *torchvision.models.list_models(module=torchvision.models)})


def build_model(
    arch: str, num_classes: int = 1000, device: str | torch.device = "cpu"
) -> nn.Module:
    """``arch`` (a torchvision classification model or ``demo_vgg``) with random weights."""
    import torchvision

    with torch.device(device):
        if arch in CUSTOM:
            return CUSTOM[arch](num_classes=num_classes)
        try:
            return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
        except ValueError:
            close = difflib.get_close_matches(arch, known_archs(), n=5)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise ModelError(f"unknown architecture {arch!r}{hint}") from None


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        check_safetensors_header(path)
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise ModelError(f"{path}: not a readable safetensors file ({err})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad or pickled file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(
            f"{path}: cannot load a state dict ({first}); a pickled whole model needs "
            "--allow-pickle (pickle runs code: only for files you trust)"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path}: expected a state dict of tensors")
    return obj


def load_model(
    source: str,
    arch: str | None = None,
    num_classes: int | None = None,
    *,
    allow_pickle: bool = False,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """A model from ``torchvision:NAME`` (random weights) or a .pt/.pth/.safetensors state dict.

    A state dict needs ``arch``; ``num_classes`` defaults to the classifier size in the file. A
    pickled whole model is loaded only with ``allow_pickle`` (pickle runs code).
    """
    if source.startswith("torchvision:"):
        return build_model(source.split(":", 1)[1], num_classes or 1000, device)
    path = Path(source)
    if not path.exists():
        raise ModelError(f"model {source!r} is neither a file nor torchvision:NAME")
    if allow_pickle:
        model = torch.load(path, map_location=device, weights_only=False)
        if not isinstance(model, nn.Module):
            raise ModelError(f"{path}: --allow-pickle expects a pickled nn.Module")
        return model
    state = _state_dict(path)
    if arch is None:
        raise ModelError(f"{path} holds weights only: name the architecture (--arch or model.arch)")
    if num_classes is None:
        num_classes = _classes_in(state)
    model = build_model(arch, num_classes, device="meta")
    missing, unexpected = _key_diff(model, state)
    if missing or unexpected:
        raise ModelError(
            f"{path} does not fit {arch}: missing keys {sorted(missing)[:8]}, unexpected keys "
            f"{sorted(unexpected)[:8]}"
        )
    try:
        model.load_state_dict(state, assign=True, strict=True)
    except RuntimeError as err:
        raise ModelError(
            f"{path} does not fit {arch}: {str(err).splitlines()[-1].strip()}"
        ) from None
    return model.to(device)


def _key_diff(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[set[str], set[str]]:
    keys = set(model.state_dict())
    return keys - set(state), set(state) - keys


def _classes_in(state: dict[str, torch.Tensor]) -> int:
    """The row count of the last 2-D weight: the classifier's output size."""
    weights = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    return int(weights[-1].shape[0]) if weights else 1000


def compressible_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Layers adntn can replace (exact classes Linear, Conv2d, MultiheadAttention), in order.

    Sub-layers of a MultiheadAttention (its out_proj) are part of that layer, not separate.
    """
    out, inside = [], set()
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        if type(module) in COMPRESSIBLE:
            out.append((name, module))
            if isinstance(module, nn.MultiheadAttention):
                inside.add(name)
    return out


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path ``name``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
