"""A data-aware start for multilinear chains: the cores from sequential SVDs of the weight.

A generator whose network is one linear step over a chain of cores (tt: ``G_1 - G_2 - ... - G_n``,
each core holding one physical leg; lowrank: ``U - V``) can be set from the weight it replaces by
TT-SVD (Oseledets 2011): with the weight's physical indices ordered core by core,

    C_0 = W reshaped (d_1, rest);  C_{k-1} = U_k S_k V_k^T  (truncated to the bond r_k);
    G_k = U_k reshaped (r_{k-1}, d_k, r_k);  C_k = S_k V_k^T reshaped (r_k d_{k+1}, rest)

and the last core takes what is left. Each truncation is the best of its rank (Eckart-Young), and
the whole is within ``sqrt(n - 1)`` of the best chain with those bonds; for lowrank it is the
truncated SVD itself. A bond the weight's rank cannot fill is padded with small random values,
so that no gradient is exactly zero. Trees start from an HT-SVD (htsvd.py).
"""

from __future__ import annotations

import torch

from .errors import TNConfigError
from .generator import TNGenerator

__all__ = ["chain_order", "set_core_", "svd_start_", "weight_tensor"]


def weight_tensor(gen: TNGenerator, weight: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """``weight`` zero-padded to ``gen``'s tensorisation, in float64 on the CPU, with one axis per
    physical index, and those indices' names in axis order (outputs first)."""
    net, tz = gen.network, gen.tz
    padded = torch.zeros(tz.out_padded, *tz.in_padded, dtype=torch.float64)
    padded[(slice(0, tz.out_size), *(slice(0, s) for s in tz.in_sizes))] = (
        weight.detach().to("cpu", torch.float64).reshape(tz.out_size, *tz.in_sizes)
    )
    order = list(net.w_out) + list(net.w_in)
    full = padded.reshape([net.index_sizes[i] for i in order])  # (O_pad, I_pad...) -> (o..., i...)
    return full, order


def chain_order(gen: TNGenerator) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]] | None:
    """``[(core, physical indices, bond indices)]`` in chain order, or None when the generator is
    not one linear step over a chain (each core sharing one bond with its neighbours only)."""
    net, program = gen.network, gen.program
    if len(program.steps) != 1 or not program.steps[0].activation.linear:
        return None
    physical = set(net.w_out) | set(net.w_in)
    cores = {c.name: c.indices for c in net.cores}
    if [op.name for op in program.steps[0].step.operands] != list(cores):
        return None
    bonds = {n: tuple(i for i in idx if i not in physical) for n, idx in cores.items()}
    names = list(cores)
    for k, name in enumerate(names):
        expected = 0 if len(names) == 1 else (1 if k in (0, len(names) - 1) else 2)
        if len(bonds[name]) != expected:
            return None
        if k and not set(bonds[names[k - 1]]) & set(bonds[name]):
            return None
    return [(n, tuple(i for i in cores[n] if i in physical), bonds[n]) for n in names]


@torch.no_grad()
def svd_start_(
    gen: TNGenerator, weight: torch.Tensor, generator: torch.Generator | None = None
) -> None:
    """Set ``gen``'s cores from ``weight`` (the layer's, shaped like ``gen.weight_shape``) by
    TT-SVD; the output scale becomes 1. Raises TNConfigError for a network that is no chain."""
    chain = chain_order(gen)
    if chain is None:
        raise TNConfigError(
            f"an SVD start needs a multilinear chain (tt, lowrank); {gen.spec.structure} is not one"
        )
    net = gen.network
    sizes = net.index_sizes
    full, order = weight_tensor(gen, weight)
    by_core = [i for _, phys, _ in chain for i in phys]
    rest = full.permute([order.index(i) for i in by_core])  # physical indices core by core
    rank_in = 1
    for k, (name, phys, bonds) in enumerate(chain):
        d = 1
        for i in phys:
            d *= sizes[i]
        if k == len(chain) - 1:
            core = rest.reshape(rank_in, d)  # (r_{n-1}, d_n): what the SVDs left
            _set(gen, name, core, phys, bonds, rank_in, None)
            break
        right = next(b for b in bonds if b not in chain[k - 1][2]) if k else bonds[0]
        bond = sizes[right]
        u, s, vh = torch.linalg.svd(rest.reshape(rank_in * d, -1), full_matrices=False)
        r = min(bond, s.numel())
        core = torch.zeros(rank_in * d, bond, dtype=torch.float64)
        core[:, :r] = u[:, :r]
        if r < bond:  # a bond the weight's rank cannot fill: small noise, not exact zeros
            core[:, r:] = 1e-3 * torch.randn(rank_in * d, bond - r, generator=generator)
        nxt = torch.zeros(bond, vh.shape[1], dtype=torch.float64)
        nxt[:r] = s[:r, None] * vh[:r]
        _set(gen, name, core, phys, bonds, rank_in, right)
        rest, rank_in = nxt, bond
    gen.scale.fill_(1.0)


def _set(gen, name, matrix, phys, bonds, rank_in, right) -> None:
    """Write ``matrix`` ((r_in d, r_out), or (r_in, d) for the last core) into core ``name``:
    (left bond, physical..., right bond)."""
    sizes = gen.network.index_sizes
    left = [b for b in bonds if b != right]
    ordered = [*left, *phys, *([right] if right else [])]
    t = matrix.reshape([sizes[i] for i in ordered])  # (r_in, d, r_out) with d split per index
    set_core_(gen, name, t, ordered)


def set_core_(gen: TNGenerator, name: str, t: torch.Tensor, indices: list[str]) -> None:
    """Write ``t`` (axes named ``indices``) into core ``name``, in the core's own index order."""
    own = next(c.indices for c in gen.network.cores if c.name == name)
    core = gen.cores[name]
    core.copy_(t.permute([indices.index(i) for i in own]).to(core.dtype))
