"""Building and loading models: torchvision architectures by name, state dicts, module swaps.

Weights are never downloaded: architectures are built with ``weights=None``. Where no weights are
needed (plans) models are built on the meta device, so even VGG-16 costs no memory or time.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .errors import ModelError

__all__ = [
    "COMPRESSIBLE",
    "MAX_HEADER_BYTES",
    "build_model",
    "check_readable",
    "check_safetensors_header",
    "compressible_layers",
    "known_archs",
    "load_model",
    "set_submodule",
]

COMPRESSIBLE = (nn.Linear, nn.Conv2d, nn.MultiheadAttention)
MAX_HEADER_BYTES = 64 * 2**20  # a safetensors JSON header this large is not a model


def unreadable(path: Path, err: OSError, what: str = "file") -> ModelError:
    """An OSError on reading ``path`` as the user's error: what went wrong and what to do."""
    if isinstance(err, IsADirectoryError) or Path(path).is_dir():
        return ModelError(f"{path} is a directory: name the {what} itself")
    if isinstance(err, PermissionError):
        return ModelError(f"cannot read {path}: permission denied; make the {what} readable")
    return ModelError(f"cannot read {path}: {err.strerror or err}")


def check_readable(path: Path, what: str = "model file") -> None:
    """Raise ``ModelError`` unless ``path`` is a file this process can open and read."""
    try:
        with Path(path).open("rb") as f:
            f.read(1)
    except OSError as err:
        raise unreadable(path, err, what) from None


def check_safetensors_header(path: Path) -> None:
    """Refuse a safetensors file whose declared header is absurd, before anything parses it."""
    try:
        with Path(path).open("rb") as f:
            head = f.read(8)
    except OSError as err:
        raise unreadable(path, err, "safetensors file") from None
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

    if not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes {num_classes!r}: the classifier needs at least 1 class")
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
    except OSError as err:
        raise unreadable(path, err) from None
    except Exception as err:  # torch raises many types for a bad or pickled file
        raise _load_error(path, err) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path}: expected a state dict of tensors")
    return obj


def _load_error(path: Path, err: Exception) -> ModelError:
    """Why ``torch.load(path, weights_only=True)`` failed, in one line with the way out."""
    import zipfile

    text = " ".join(str(err).split())
    pickled = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if pickled:
        return ModelError(
            f"{path} pickles {pickled.group(1)}, not only tensors (a whole model?): "
            "--allow-pickle loads it (pickle runs code: only for files you trust)"
        )
    if "central directory" in text or "zip archive" in text:
        return ModelError(f"{path}: the file is truncated or corrupted (its zip archive is broken)")
    if not zipfile.is_zipfile(path):
        return ModelError(
            f"{path} is not a state dict written by torch.save (nor a .safetensors file); a "
            "pickled whole model needs --allow-pickle (pickle runs code: only for trusted files)"
        )
    first = text[:200] or type(err).__name__
    return ModelError(f"{path}: cannot load a state dict ({first})")


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
        return build_model(
            source.split(":", 1)[1], 1000 if num_classes is None else num_classes, device
        )
    path = Path(source)
    if not path.exists():
        raise ModelError(f"model {source!r} is neither a file nor torchvision:NAME")
    check_readable(path)
    if allow_pickle:
        try:
            model = torch.load(path, map_location=device, weights_only=False)
        except Exception as err:  # unpickling fails in many ways; say which
            first = " ".join(str(err).split())[:200] or type(err).__name__
            raise ModelError(f"{path}: cannot unpickle a model ({first})") from None
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
