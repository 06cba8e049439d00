"""``TNGenerator``: a module whose forward pass returns a layer's weight, made from small cores."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .cost import (
    ScheduleEstimate,
    default_memory_budget,
    device_profile,
    estimate,
    format_bytes,
)
from .errors import MemoryBudgetError
from .precision import without_autocast
from .program import PathCost, Program
from .spec import StructureSpec
from .structures import get_structure

__all__ = ["TNGenerator", "default_target_std"]


def default_target_std(weight_shape: Sequence[int]) -> float:
    """Std of PyTorch's default Linear/Conv2d init, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    fan_in = math.prod(weight_shape[1:])
    return 1.0 / math.sqrt(3.0 * fan_in)


class TNGenerator(nn.Module):
    """Generates a weight of ``weight_shape`` ((O, I) or (O, C, kh, kw)) from the cores of ``spec``.

    The network is laid out and its contraction program compiled once, here; the plan's memory
    estimate is checked against ``memory_budget`` (bytes; default half the device's memory) before
    any core is allocated. On the meta device nothing is initialised (plans). Otherwise cores are
    drawn and calibrated so every level's pre-activation has std 1 and the weight has zero mean and
    std ``target_std`` (default: PyTorch's init std for this shape).
    """

    def __init__(
        self,
        spec: StructureSpec,
        weight_shape: Sequence[int],
        *,
        target_std: float | None = None,
        memory_budget: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.structure = get_structure(spec.structure)
        self.structure.check(spec)
        self.weight_shape = tuple(int(s) for s in weight_shape)
        self.tz = self.structure.tensorize(self.weight_shape, spec)
        self.network = self.structure.build(self.tz, spec)
        dtype = dtype or torch.get_default_dtype()
        budget = memory_budget if memory_budget is not None else default_memory_budget(device)
        size = torch.empty((), dtype=dtype, device="meta").element_size()
        # Paths never plan an intermediate larger than the budget; the total is checked below.
        try:
            self.program = Program(self.network, memory_limit=max(1, budget // size))
        except MemoryBudgetError:  # no order fits: report what the best order would need
            self._check_budget(budget, dtype, Program(self.network))
            raise
        self._check_budget(budget, dtype, self.program)
        self.cores = nn.ParameterDict(
            {
                c.name: nn.Parameter(
                    torch.empty(self.network.core_shape(c), device=device, dtype=dtype)
                )
                for c in self.network.cores
            }
        )
        self.scale = nn.Parameter(torch.ones((), device=device, dtype=dtype))
        if self.scale.device.type != "meta":
            self.reset_parameters(target_std, generator)

    # -- construction --------------------------------------------------------------------------
    def _check_budget(self, budget: int, dtype: torch.dtype, program: Program) -> None:
        cost = program.cost()
        size = torch.empty((), dtype=dtype, device="meta").element_size()
        need = cost.total_elems * size
        if need > budget:
            raise MemoryBudgetError(
                f"{self.spec.structure} on weight {'x'.join(map(str, self.weight_shape))} with "
                f"bond_dim {self.bond_dims} needs about {format_bytes(need)} to generate it "
                f"(largest intermediate {format_bytes(cost.peak_elems * size)}), over the memory "
                f"budget of {format_bytes(budget)}; taper bond_dim or raise limits.memory_gb"
                + (f" ({self.network.info['hint']})" if "hint" in self.network.info else "")
            )

    @torch.no_grad()
    def reset_parameters(
        self, target_std: float | None = None, generator: torch.Generator | None = None
    ) -> None:
        """Draw the cores and calibrate them (see the class docstring)."""
        if target_std is None:
            target_std = default_target_std(self.weight_shape)
        for spec in self.network.cores:
            core = self.cores[spec.name]
            shape = tuple(core.shape)
            fan = max(1, core.numel() // shape[-1])
            values = torch.randn(shape, generator=generator, dtype=torch.float64) / math.sqrt(fan)
            if spec.init == "identity":
                n = math.prod(shape[: spec.n_out])
                values = torch.eye(n, dtype=torch.float64).reshape(shape) + 0.01 * values
            core.copy_(values)
        self.scale.fill_(1.0)
        scale = self.program.calibrate_(dict(self.cores), target_std, self._to_weight)
        self.scale.fill_(scale)

    # -- the weight ------------------------------------------------------------------------------
    def _to_weight(self, out: torch.Tensor) -> torch.Tensor:
        """The program's padded output (indices ``w_out + w_in``) as the layer's weight."""
        tz = self.tz
        padded = out.reshape(tz.out_padded, *tz.in_padded)
        if tz.is_padded:
            padded = padded[(slice(0, tz.out_size), *(slice(0, s) for s in tz.in_sizes))]
        return padded.reshape(self.weight_shape)

    def forward(self) -> torch.Tensor:
        """The generated weight, shaped like the weight it replaces, in the cores' dtype (the
        caller's autocast is off inside: see precision.py)."""
        with without_autocast(self.scale.device):
            return self._to_weight(self.program.run(dict(self.cores), self.scale))

    def padded_matrix(self) -> torch.Tensor:
        """The generated weight before slicing, as an (O_pad, I_pad) matrix (no copy)."""
        with without_autocast(self.scale.device):
            w = self.program.run(dict(self.cores), self.scale)
        return w.reshape(self.tz.out_padded, self.tz.in_padded_size)  # (o..., i...) -> (O, I)

    @property
    def contractible(self) -> bool:
        """Whether ``contract`` applies: a linear final step and a Linear-shaped weight."""
        return self.network.contractible and len(self.weight_shape) == 2

    def contract(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T`` for ``x`` of shape (..., I) without forming ``W`` (contract schedule).

        Runs in the cores' dtype with autocast off: ``x`` is cast to it, and so is the result.
        """
        if not self.contractible:
            raise RuntimeError(f"{self.spec.structure} here cannot contract its input")
        tz = self.tz
        lead = x.shape[:-1]
        flat = x.reshape(-1, tz.in_size).to(self.scale.dtype)  # (..., I) -> (B, I)
        if tz.in_padded_size != tz.in_size:
            flat = F.pad(flat, (0, tz.in_padded_size - tz.in_size))
        i_dims = [self.network.index_sizes[i] for i in self.network.w_in]
        with without_autocast(self.scale.device):  # (B, I_pad) -> (B, i_1, ..., i_n)
            y = self.program.contract(dict(self.cores), flat.reshape(-1, *i_dims), self.scale)
        y = y.reshape(flat.shape[0], tz.out_padded)[:, : tz.out_size]  # (B, o...) -> (B, O)
        return y.reshape(*lead, tz.out_size)  # (B, O) -> (..., O)

    # -- what it costs ------------------------------------------------------------------------
    @property
    def num_params(self) -> int:
        """Parameters of the generator, the output scale included."""
        return sum(p.numel() for p in self.parameters())

    @property
    def dense_params(self) -> int:
        return self.tz.dense_params

    @property
    def ratio(self) -> float:
        """``dense_params / num_params``: how many times fewer parameters."""
        return self.dense_params / max(1, self.num_params)

    def frozen_spec(self) -> StructureSpec:
        """This generator's spec with every choice a heuristic made written out: the physical
        legs as explicit factors, the default activation and options by name. A generator built
        from it is this one, whatever later versions of the factorisation would choose."""
        s = self.spec
        legs = self.tz.legs
        return dataclasses.replace(
            s,
            activation=s.activation or ("tanh" if self.structure.nonlinear else "identity"),
            factors=(tuple(o for o, _ in legs), tuple(i for _, i in legs)),
            n_legs=None,
            in_map=None,
            options={**self.structure.options, **s.options},
        )

    @property
    def bond_dims(self) -> list[int]:
        """The bond dimension used at each level (coarse to fine), after clamping."""
        return list(self.network.info["bond_dim"])

    def schedules(
        self, batch: int, device: torch.device | str | None = None, weight_cached: bool = False
    ) -> dict[str, ScheduleEstimate]:
        """Forward cost of each applicable schedule for a Linear layer at ``batch`` rows."""
        profile = device_profile(device if device is not None else self.scale.device)
        size = self.scale.element_size()
        o, i = self.tz.out_size, self.tz.in_size
        gen = self.program.cost()
        if weight_cached:
            gen = PathCost()  # the weight is cached: generating it costs nothing
        io = batch * (o + i)
        out = {
            "materialise": estimate("materialise", gen, batch * o * i, o * i + io, size, profile)
        }
        if self.contractible:
            try:
                contract = self.program.contract_cost(batch)
            except MemoryBudgetError:  # x's path at this batch would not fit the budget
                return out
            out["contract"] = estimate("contract", contract, 0, io, size, profile)
        return out

    def choose_schedule(
        self, batch: int, device: torch.device | str | None = None, weight_cached: bool = False
    ) -> str:
        """The cheaper schedule at ``batch`` by the cost model."""
        options = self.schedules(batch, device, weight_cached)
        return min(options.values(), key=lambda e: e.seconds).schedule

    def describe(self, batch: int | None = None) -> dict[str, Any]:
        """The numbers a plan reports (keys of DESIGN.md §9)."""
        cost = self.program.cost()
        size = self.scale.element_size()
        out: dict[str, Any] = {
            "structure": self.spec.structure,
            "legs": [list(leg) for leg in self.tz.legs],
            "bond_dim": self.bond_dims,
            "dense_params": self.dense_params,
            "tn_params": self.num_params,
            "ratio": self.ratio,
            "flops": 2 * cost.macs,
            "peak_bytes": cost.peak_elems * size,
            "total_bytes": cost.total_elems * size,
            "passes": cost.total_elems / self.tz.padded_params,
            "padded": self.tz.is_padded,
        }
        if batch is not None and len(self.weight_shape) == 2:
            out["schedule"] = self.choose_schedule(batch)
        return out

    def extra_repr(self) -> str:
        return (
            f"{self.spec.structure}, legs={self.tz.describe()}, bond_dim={self.bond_dims}, "
            f"params={self.num_params}, ratio={self.ratio:.1f}x"
        )
