"""Runtime switches for a compressed model: the eval-mode weight cache and torch.compile.

Both act in place on every generated layer of a model and leave its state dict unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import GeneratedModule
from .tn import TNGenerator

__all__ = ["compile_generators", "use_weight_cache"]


def use_weight_cache(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Turn the eval-mode weight cache of every generated layer in ``model`` on or off.

    Off, the model's runtime memory is its parameters plus one transient weight at a time (none
    for layers that contract their input); on, it is the dense model's. Returns ``model``.
    """
    for m in model.modules():
        if isinstance(m, GeneratedModule):
            m.cache_weights = enabled
            for cache in m.__dict__.get("_caches", {}).values():
                cache.key = cache.value = None
    return model


def compile_generators(model: nn.Module, mode: str = "auto") -> dict[str, str]:
    """``torch.compile`` the weight and contraction functions of every generator in ``model``.

    ``mode``: ``off``; ``on`` (any device); ``auto`` (CUDA only: on a CPU the compile time is
    rarely repaid). Each generator is compiled and run once at once, so that a compiler that
    fails (no C++ toolchain, an unsupported operator) falls back to eager for that generator
    instead of failing the run later. Returns ``{layer.generator: "compiled" | "eager: why"}``;
    the state dict is unchanged (the methods are wrapped, not the modules).
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"compile mode {mode!r}: valid: auto, on, off")
    result: dict[str, str] = {}
    for name, module in model.named_modules():
        if not isinstance(module, GeneratedModule):
            continue
        for gname, gen in module.generators().items():
            key = f"{name}.{gname}"
            if mode == "off" or (mode == "auto" and gen.scale.device.type != "cuda"):
                result[key] = "eager: compile " + ("off" if mode == "off" else "auto, not on CUDA")
                continue
            result[key] = _compile_one(gen)
    return result


def _compile_one(gen: TNGenerator) -> str:
    originals = {k: gen.__dict__.get(k) for k in ("forward", "contract")}
    try:
        gen.forward = torch.compile(type(gen).forward.__get__(gen))
        with torch.no_grad():
            gen()
        if gen.contractible:
            gen.contract = torch.compile(type(gen).contract.__get__(gen))
            with torch.no_grad():
                gen.contract(gen.scale.new_zeros(2, gen.tz.in_size))
    except Exception as err:  # any compiler failure: keep the eager methods
        for k, v in originals.items():
            if v is None:
                gen.__dict__.pop(k, None)
            else:
                gen.__dict__[k] = v
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"eager: compile failed ({first[:200]})"
    return "compiled"
