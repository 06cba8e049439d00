"""The compressed file: one safetensors file, self-describing, written atomically.

Every generator core and every untouched parameter and buffer is stored under its state-dict name
(``classifier.0.generator.cores.leaf0``, ``features.0.weight``), contiguous and unshared; no key
holds a dense copy of a replaced weight. ``__metadata__`` (strings only) holds ``format: adntn/1``,
the adntn version, the architecture, num_classes and the resolved recipe as JSON. Loading never
unpickles anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__

__all__ = ["FORMAT", "save_compressed"]

FORMAT = "adntn/1"


def save_compressed(
    model: nn.Module,
    path: Path,
    *,
    arch: str,
    num_classes: int,
    recipe: dict[str, Any],
    dtype: torch.dtype | None = None,
) -> int:
    """Write ``model`` to ``path`` (cores in float32, or ``dtype``); returns the file size."""
    from safetensors.torch import save_file

    tensors = {}
    for key, value in model.state_dict().items():
        t = value.detach().to("cpu")
        if dtype is not None and t.is_floating_point() and ".generator" in key:
            t = t.to(dtype)
        tensors[key] = t.contiguous().clone()
    metadata = {
        "format": FORMAT,
        "adntn_version": __version__,
        "arch": arch,
        "num_classes": str(num_classes),
        "recipe": json.dumps(recipe, sort_keys=True),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path.stat().st_size
