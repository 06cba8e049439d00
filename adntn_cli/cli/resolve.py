"""Turning the MODEL argument into a meta-device model, for commands that need no weights."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError


def meta_model(model: str, arch: str | None, num_classes: int | None):
    """The architecture behind MODEL, built on the meta device (instant, no memory)."""
    from ..models import build_model

    if model.startswith("torchvision:"):
        return build_model(
            model.split(":", 1)[1], 1000 if num_classes is None else num_classes, device="meta"
        )
    if not Path(model).exists():
        raise ModelError(f"model {model!r} is neither a file nor torchvision:NAME")
    if arch is None:
        raise ModelError(f"{model} holds weights only: name the architecture with --arch")
    return build_model(arch, 1000 if num_classes is None else num_classes, device="meta")
