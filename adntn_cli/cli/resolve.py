"""Turning the MODEL argument into a meta-device model, for commands that need no weights."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from ..models import ModelSource
    from ..recipe import Recipe


def meta_model(
    model: str,
    arch: str | None,
    num_classes: int | None,
    *,
    recipe: Recipe | None = None,
    compressed_ok: bool = False,
) -> tuple[nn.Module, ModelSource]:
    """The architecture behind MODEL on the meta device (instant, no memory), checked against
    the file's keys and shapes as ``compress`` checks it; a compressed file (``compressed_ok``)
    gives the architecture it was made from."""
    from ..io import is_compressed, read_header
    from ..models import ModelSource, build_model, inspect_model
    from ..plan import model_source

    if compressed_ok and is_compressed(Path(model)):
        header = read_header(Path(model))
        found = ModelSource(model, header.arch, header.num_classes)
    elif recipe is not None:
        found = model_source(model, recipe, arch=arch, num_classes=num_classes)
    else:
        found = inspect_model(model, arch, num_classes)
    return build_model(found.arch, found.num_classes, device="meta"), found


def compressed_file(target: Path) -> Path:
    """A compressed file, or the one in a run directory (``compress --out``, or the demo's
    folder with its ``compressed/`` run)."""
    from ..errors import ModelError

    if not target.is_dir():
        return target
    for candidate in (target / "model.safetensors", target / "compressed" / "model.safetensors"):
        if candidate.is_file():
            return candidate
    raise ModelError(
        f"{target} holds no model.safetensors: name a compressed file or a run directory"
    )
