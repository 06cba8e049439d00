"""Modules that put a tensor-network generator in place of a layer's weight.

``GeneratedLinear``, ``GeneratedConv2d`` and ``GeneratedMultiheadAttention`` are built from the
module they replace (``from_module``: the bias is reused, conv geometry copied, the generator
initialised to the replaced weight's std) and turn back into it with ``to_dense()``. In eval mode
with gradients off the generated weight is cached until a core changes (an optimiser step, a
``load_state_dict``, a move to another device); the cache is an attribute, never state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .tn import StructureSpec, TNConfigError, TNGenerator, autocast_dtype

__all__ = [
    "GeneratedConv2d",
    "GeneratedLinear",
    "GeneratedModule",
    "GeneratedMultiheadAttention",
    "from_module",
]


NHWC = torch.channels_last


def _target_std(weight: torch.Tensor) -> float | None:
    """The std a generator should start at: the replaced weight's (None on the meta device)."""
    return None if weight.device.type == "meta" else float(weight.detach().float().std())


def _copy_param(p: torch.Tensor | None) -> nn.Parameter | None:
    return None if p is None else nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)


class _CachedWeight:
    """The eval-mode weight cache of one generator.

    A weight is served again only while everything it was made from is unchanged: the cores'
    values (compared, not their version counters, which writes through ``.data`` do not bump),
    their dtypes, devices and shapes, and the dtype it was cast to (the caller's autocast). The
    comparison reads the cores, a few thousand numbers at most, never the weight.
    """

    def __init__(self, padded: bool = False) -> None:
        self.padded = padded
        self.clear()

    def clear(self) -> None:
        self.key: tuple | None = None
        self.snapshot: torch.Tensor | None = None
        self.value: torch.Tensor | None = None

    def get(self, gen: TNGenerator, dtype: torch.dtype, use: bool) -> torch.Tensor:
        """The weight in ``dtype``; from the cache when ``use`` and nothing changed."""
        make = gen.padded_matrix if self.padded else gen
        if not use:
            self.clear()
            return make().to(dtype)
        params = list(gen.parameters())
        key = (dtype, tuple((p.dtype, p.device, p.shape) for p in params))
        flat = torch.cat([p.detach().reshape(-1).to(params[0].dtype) for p in params])
        if key != self.key or self.snapshot is None or not torch.equal(flat, self.snapshot):
            self.value = make().to(dtype)
            self.key, self.snapshot = key, flat
        return self.value

    @property
    def held(self) -> bool:
        return self.value is not None


class GeneratedModule(nn.Module):
    """Common surface of generated layers: parameter counts, the cache, the inverse.

    ``cache_weights`` (default True) lets eval mode keep the generated weight between forward
    passes: fast, but the layer then holds a dense weight in memory. With it off, eval mode
    generates the weight per forward or contracts the input through the generator, whichever
    the cost model prefers, and holds no dense weight between calls.
    """

    cache_weights: bool = True

    def generators(self) -> dict[str, TNGenerator]:
        return {n: m for n, m in self.named_children() if isinstance(m, TNGenerator)}

    @property
    def tn_params(self) -> int:
        return sum(g.num_params for g in self.generators().values())

    @property
    def dense_params(self) -> int:
        return sum(g.dense_params for g in self.generators().values())

    def train(self, mode: bool = True) -> GeneratedModule:
        if mode:  # training frees a cached weight; eval() on an eval model keeps it
            self.drop_cached_weights()
        return super().train(mode)

    def drop_cached_weights(self) -> None:
        """Free the eval-mode weights this layer holds (they are regenerated when needed)."""
        for cache in self.__dict__.get("_caches", {}).values():
            cache.clear()

    @property
    def holds_weights(self) -> bool:
        """Whether the eval cache holds a generated (dense) weight now."""
        return any(c.held for c in self.__dict__.get("_caches", {}).values())

    def _weight(self, name: str, padded: bool = False) -> torch.Tensor:
        """Generator ``name``'s weight in the compute dtype: autocast's where it is on (the
        generator itself always runs in its cores' dtype), the cores' otherwise."""
        gen = getattr(self, name)
        dtype = autocast_dtype(gen.scale.device) or gen.scale.dtype
        use = not self.training and not torch.is_grad_enabled() and self.cache_weights
        caches = self.__dict__.setdefault("_caches", {})
        return caches.setdefault((name, padded), _CachedWeight(padded)).get(gen, dtype, use)

    def to_dense(self) -> nn.Module:
        raise NotImplementedError

    @torch.no_grad()
    def _fill(self, dense: nn.Module) -> nn.Module:
        """Copy the generated weight and the bias into ``dense`` (a Linear or Conv2d twin)."""
        dense.weight.copy_(self.generator())
        if self.bias is not None:
            dense.bias.copy_(self.bias)
        return dense


class GeneratedLinear(GeneratedModule):
    """``y = x W^T + b`` with ``W`` from a generator; the schedule is chosen per batch size."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        spec: StructureSpec,
        *,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **gen_kwargs: Any,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.generator = TNGenerator(
            spec, (out_features, in_features), device=device, dtype=dtype, **gen_kwargs
        )
        self.bias = (
            nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        )
        self.last_schedule: str | None = None
        self.fixed_schedule: str | None = None  # set: every batch runs it (an ONNX export)
        self._schedules: dict[tuple, str] = {}

    @classmethod
    def from_module(
        cls, linear: nn.Linear, spec: StructureSpec, **gen_kwargs: Any
    ) -> GeneratedLinear:
        gen_kwargs.setdefault("target_std", _target_std(linear.weight))
        new = cls(
            linear.in_features,
            linear.out_features,
            spec,
            bias=False,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
            **gen_kwargs,
        )
        new.bias = _copy_param(linear.bias)
        return new

    @property
    def weight(self) -> torch.Tensor:
        return self._weight("generator")

    @property
    def padded(self) -> bool:
        return self.generator.tz.is_padded

    def schedule(self, batch: int) -> str:
        """The execution schedule for ``batch`` rows, from the cost model (cached)."""
        cached = not self.training and not torch.is_grad_enabled() and self.cache_weights
        key = (batch, cached, self.generator.scale.device.type)
        if key not in self._schedules:
            gen = self.generator
            self._schedules[key] = gen.choose_schedule(batch, key[2], weight_cached=cached)
        return self._schedules[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last_schedule = self.fixed_schedule or self.schedule(
            max(1, x.numel() // self.in_features)
        )
        if self.last_schedule == "contract":  # in the cores' dtype, the output cast back
            out_dtype = autocast_dtype(x.device) or x.dtype
            y = self.generator.contract(x)
            return (y if self.bias is None else y + self.bias).to(out_dtype)
        if self.padded:  # pad x rather than slice (copy) W: B x I instead of |W|
            tz = self.generator.tz
            wp = self._weight("generator", padded=True)
            y = F.linear(F.pad(x, (0, tz.in_padded_size - tz.in_size)), wp)[..., : tz.out_size]
            return y if self.bias is None else y + self.bias.to(y.dtype)
        return F.linear(x, self.weight, self.bias)

    def to_dense(self) -> nn.Linear:
        p = self.generator.scale
        dense = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=p.device,
            dtype=p.dtype,
        )
        return self._fill(dense)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


class GeneratedConv2d(GeneratedModule):
    """A Conv2d whose ``(O, C/groups, kh, kw)`` weight is generated (materialise schedule)."""

    def __init__(self, conv: nn.Conv2d, spec: StructureSpec, **gen_kwargs: Any) -> None:
        super().__init__()
        for attr in (
            "in_channels",
            "out_channels",
            "kernel_size",
            "stride",
            "padding",
            "dilation",
            "groups",
            "padding_mode",
            "_reversed_padding_repeated_twice",
        ):
            setattr(self, attr, getattr(conv, attr))
        gen_kwargs.setdefault("target_std", _target_std(conv.weight))
        self.generator = TNGenerator(
            spec,
            tuple(conv.weight.shape),
            device=conv.weight.device,
            dtype=conv.weight.dtype,
            **gen_kwargs,
        )
        self.bias = _copy_param(conv.bias)

    @classmethod
    def from_module(
        cls, conv: nn.Conv2d, spec: StructureSpec, **gen_kwargs: Any
    ) -> GeneratedConv2d:
        return cls(conv, spec, **gen_kwargs)

    @property
    def weight(self) -> torch.Tensor:
        return self._weight("generator")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=NHWC):
            w = w.contiguous(memory_format=NHWC)  # (O, C, kh, kw) laid out as the input is
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, w, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def to_dense(self) -> nn.Conv2d:
        p = self.generator.scale
        dense = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias is not None,
            padding_mode=self.padding_mode,
            device=p.device,
            dtype=p.dtype,
        )
        return self._fill(dense)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, groups={self.groups}"
        )


class GeneratedMultiheadAttention(GeneratedModule):
    """nn.MultiheadAttention with generated ``in_proj`` (3E x E) and/or ``out_proj`` (E x E).

    Only the packed projection (``kdim == vdim == embed_dim``) is supported; a projection left out
    of ``projections`` stays an ordinary parameter.
    """

    PROJECTIONS = ("in_proj", "out_proj")

    def __init__(
        self,
        mha: nn.MultiheadAttention,
        spec: StructureSpec | Mapping[str, StructureSpec],
        projections: tuple[str, ...] = PROJECTIONS,
        **gen_kwargs: Any,
    ) -> None:
        super().__init__()
        if not mha._qkv_same_embed_dim:
            raise TNConfigError(
                "MultiheadAttention with separate q/k/v projections (kdim or vdim != embed_dim) "
                "is not supported; compress its out_proj as a Linear instead"
            )
        bad = sorted(set(projections) - set(self.PROJECTIONS))
        if bad or not projections:
            raise TNConfigError(f"unknown projections {bad}; valid: in_proj, out_proj")
        self.embed_dim, self.num_heads = mha.embed_dim, mha.num_heads
        self.dropout, self.batch_first = mha.dropout, mha.batch_first
        self.add_zero_attn = mha.add_zero_attn
        self.in_proj_bias = _copy_param(mha.in_proj_bias)
        self.bias_k, self.bias_v = _copy_param(mha.bias_k), _copy_param(mha.bias_v)
        self.out_proj_bias = _copy_param(mha.out_proj.bias)
        self.projections = tuple(p for p in self.PROJECTIONS if p in projections)
        dense = {"in_proj": mha.in_proj_weight, "out_proj": mha.out_proj.weight}
        for name, w in dense.items():
            if name in self.projections:
                kw = {"target_std": _target_std(w), **gen_kwargs}
                s = spec[name] if isinstance(spec, Mapping) else spec
                gen = TNGenerator(s, tuple(w.shape), device=w.device, dtype=w.dtype, **kw)
                setattr(self, name, gen)
            else:
                setattr(self, f"{name}_weight", _copy_param(w))

    @classmethod
    def from_module(
        cls,
        mha: nn.MultiheadAttention,
        spec: StructureSpec | Mapping[str, StructureSpec],
        **gen_kwargs: Any,
    ) -> GeneratedMultiheadAttention:
        """A spec for both projections, or one per projection (``{"in_proj": ...}``): those
        named are generated."""
        if isinstance(spec, Mapping):
            gen_kwargs.setdefault("projections", tuple(spec))
        return cls(mha, spec, **gen_kwargs)

    def _proj(self, name: str) -> torch.Tensor:
        return self._weight(name) if name in self.projections else getattr(self, f"{name}_weight")

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batched = query.dim() == 3
        if self.batch_first and batched:
            query, key, value = (t.transpose(1, 0) for t in (query, key, value))
        out, weights = F.multi_head_attention_forward(
            query,
            key,
            value,
            self.embed_dim,
            self.num_heads,
            self._proj("in_proj"),
            self.in_proj_bias,
            self.bias_k,
            self.bias_v,
            self.add_zero_attn,
            self.dropout,
            self._proj("out_proj"),
            self.out_proj_bias,
            training=self.training,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            attn_mask=attn_mask,
            average_attn_weights=average_attn_weights,
            is_causal=is_causal,
        )
        if self.batch_first and batched:
            out = out.transpose(1, 0)
        return out, weights

    def to_dense(self) -> nn.MultiheadAttention:
        p = self.in_proj_bias if self.in_proj_bias is not None else self.out_proj_bias
        ref = next(self.parameters())
        dense = nn.MultiheadAttention(
            self.embed_dim,
            self.num_heads,
            dropout=self.dropout,
            bias=p is not None,
            add_bias_kv=self.bias_k is not None,
            add_zero_attn=self.add_zero_attn,
            batch_first=self.batch_first,
            device=ref.device,
            dtype=ref.dtype,
        )
        with torch.no_grad():
            for name, param in (
                ("in_proj", dense.in_proj_weight),
                ("out_proj", dense.out_proj.weight),
            ):
                src = getattr(self, name)() if name in self.projections else self._proj(name)
                param.copy_(src)
            for src, dst in (
                (self.in_proj_bias, dense.in_proj_bias),
                (self.out_proj_bias, dense.out_proj.bias),
                (self.bias_k, dense.bias_k),
                (self.bias_v, dense.bias_v),
            ):
                if src is not None:
                    dst.copy_(src)
        return dense

    def extra_repr(self) -> str:
        heads = f"embed_dim={self.embed_dim}, num_heads={self.num_heads}"
        return f"{heads}, projections={self.projections}"


_LAYERS: dict[type[nn.Module], type[GeneratedModule]] = {
    nn.Linear: GeneratedLinear,
    nn.Conv2d: GeneratedConv2d,
    nn.MultiheadAttention: GeneratedMultiheadAttention,
}


def from_module(
    module: nn.Module, spec: StructureSpec | Mapping[str, StructureSpec], **gen_kwargs: Any
) -> GeneratedModule:
    """The generated replacement of ``module`` (exact class: Linear, Conv2d, MultiheadAttention).

    ``spec`` is one spec, or one per generator as ``generators()`` names them (``generator``;
    ``in_proj`` and ``out_proj`` of an attention layer), as a compressed file stores them.
    """
    cls = _LAYERS.get(type(module))
    if cls is None:
        valid = ", ".join(c.__name__ for c in _LAYERS)
        raise TNConfigError(f"cannot compress a {type(module).__name__}; supported: {valid}")
    if isinstance(spec, Mapping) and cls is not GeneratedMultiheadAttention:
        spec = spec["generator"]
    return cls.from_module(module, spec, **gen_kwargs)
