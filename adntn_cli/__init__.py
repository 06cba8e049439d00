"""adntn: compress PyTorch vision models with nonlinear tensor-network weight generators.

Heavy names (everything that needs torch) resolve on first use, so ``import adntn_cli``,
reading a recipe and ``adntn --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "StructureSpec": "adntn_cli.tn",
    "TNGenerator": "adntn_cli.tn",
    "tensorize": "adntn_cli.tn",
    "GeneratedConv2d": "adntn_cli.layers",
    "GeneratedLinear": "adntn_cli.layers",
    "GeneratedMultiheadAttention": "adntn_cli.layers",
    "from_module": "adntn_cli.layers",
    "compress": "adntn_cli.pipeline",
    "CompressJob": "adntn_cli.job",
    "plan": "adntn_cli.plan",
    "compress_": "adntn_cli.plan",
    "load_recipe": "adntn_cli.recipe",
}

_RENAMED = {"load": ("adntn_cli.io", "load_compressed")}

__all__ = ["__version__", *sorted(_LAZY), *sorted(_RENAMED)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _RENAMED:
        module, attr = _RENAMED[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'adntn_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
