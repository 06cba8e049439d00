"""Runtime switches for a run and a compressed model: mixed precision, the memory format, the
eval-mode weight cache and torch.compile.

The model switches act in place on every generated layer and leave the state dict unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import platform
from dataclasses import dataclass

import torch
from torch import nn

from .errors import AdntnError, one_line
from .layers import GeneratedModule
from .tn import TNGenerator

__all__ = [
    "PRECISIONS",
    "MixedPrecision",
    "compile_generators",
    "resolve_precision",
    "use_channels_last",
    "use_weight_cache",
]

PRECISIONS = ("auto", "bf16", "fp32")
log = logging.getLogger("adntn")


def cpu_has_native_bf16() -> bool | None:
    """Whether this x86 CPU computes in bf16 natively (AVX512-BF16 or AMX); None when torch
    cannot say or the CPU is not x86. Without it bf16 autocast is emulated: on a 2-core AVX2
    EPYC an AlexNet training step took 25x as long as in float32 (61 s against 2.4 s, batch 128
    at 112x112)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None  # the probes are x86's (an Arm CPU may have bf16 without them)
    names = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    probes = [getattr(torch.cpu, n, None) for n in names]
    if any(p is None for p in probes):
        return None
    return any(p() for p in probes)


@dataclass(frozen=True)
class MixedPrecision:
    """The autocast of a run's forward passes: ``dtype`` None keeps float32 throughout.

    ``device_type`` is autocast's device kind (``cuda``, ``cpu``); on a CPU, bf16 autocast runs
    the same code path as on CUDA (the generators keep float32 inside either way: see
    tn/precision.py), which is how tests prove the GPU path without a GPU.
    """

    device_type: str = "cpu"
    dtype: torch.dtype | None = None

    @property
    def name(self) -> str:
        return "fp32" if self.dtype is None else {torch.bfloat16: "bf16"}.get(self.dtype, "fp16")

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def resolve_precision(name: str, device: torch.device | str) -> MixedPrecision:
    """``auto``: bf16 autocast on CUDA, float32 elsewhere; ``bf16``: bf16 autocast on
    ``device`` (CUDA or CPU); ``fp32``: no autocast."""
    kind = torch.device(device).type
    if name not in PRECISIONS:
        raise AdntnError(f"precision {name!r}: valid: {', '.join(PRECISIONS)}")
    if name == "fp32" or (name == "auto" and kind != "cuda"):
        return MixedPrecision(kind)
    if kind not in ("cuda", "cpu"):
        raise AdntnError(f"bf16 autocast runs on cuda or cpu, not on {kind}; use fp32")
    if kind == "cpu" and cpu_has_native_bf16() is False:
        log.warning(
            "bf16 on this CPU is emulated (no AVX512-BF16 or AMX): many times slower than fp32; "
            "--precision fp32 (or auto) is faster here"
        )
    return MixedPrecision(kind, torch.bfloat16)


def use_channels_last(
    models: list[nn.Module], device: torch.device | str, choice: bool | None = None
) -> bool:
    """Lay out the Conv2d weights of ``models`` as NHWC when ``choice`` says so (None: on CUDA,
    where cuDNN's tensor-core kernels want it; on a CPU it rarely helps). Returns whether it did.

    Only Conv2d modules move: ``model.to(memory_format=...)`` would also try every other 4- and
    5-dimensional parameter, and generator cores are not images (a 5-D core makes it raise).
    Generated convolutions lay their weight out like their input (``GeneratedConv2d.forward``).
    """
    convs = [m for model in models for m in model.modules() if isinstance(m, nn.Conv2d)]
    on = bool(convs) and (torch.device(device).type == "cuda" if choice is None else choice)
    for conv in convs if on else []:
        conv.to(memory_format=torch.channels_last)
    return on


def use_weight_cache(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Turn the eval-mode weight cache of every generated layer in ``model`` on or off.

    Off, the model's runtime memory is its parameters plus one transient weight at a time (none
    for layers that contract their input); on, it is the dense model's. Returns ``model``.
    """
    for m in model.modules():
        if isinstance(m, GeneratedModule):
            m.cache_weights = enabled
            m.drop_cached_weights()
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
        return f"eager: compile failed ({one_line(err)[:200]})"
    return "compiled"
