"""Input whitening for the SVD starts: fit the layer's outputs, not its weight.

A start that truncates ``W`` keeps what is largest in ``W``; the layer is judged on ``W x``, and a
trained layer's inputs are far from isotropic (after a ReLU, most of their energy is along their
mean). The best approximation on the inputs ``X`` minimises ``||(W - W') X||``, which is
``||(W - W') L||`` for ``L L^T = X X^T``: truncate ``W L`` and multiply back by ``L^-1``. A
network keeps its form under that only where ``L`` acts on each physical input index alone, so
``X X^T`` is approximated by a Kronecker product of per-index second moments (as K-FAC does)::

    S_k = E[ X_(k) X_(k)^T ] / (columns)     (the inputs matricised on index i_k: (i_k, rest))
    L_k = S_k^(1/2),   W L = W x_1 L_1 ... x_n L_n,   and afterwards  core(i_k) <- core x_k L_k^-1

Exact when the inputs' second moment is that product (lowrank's one input index: always, which
makes the whitened lowrank start the best rank-r fit of the outputs).
"""

from __future__ import annotations

import torch

from .generator import TNGenerator

__all__ = ["apply_", "input_factors", "transform"]

RELATIVE_FLOOR = 1e-6  # eigenvalues of S_k are floored at this fraction of the largest


def input_factors(
    gen: TNGenerator, inputs: torch.Tensor
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{input index: (L_k, L_k^-1)}`` from a layer's ``inputs`` (``(..., in_size)``, a Linear's),
    in float64: the symmetric square root of each index's second moment and its inverse; a
    direction the inputs never take (padding, dead units) is floored, not inverted to infinity."""
    net, tz = gen.network, gen.tz
    flat = inputs.detach().to("cpu", torch.float64).reshape(-1, tz.in_size)  # (..., I) -> (B, I)
    padded = torch.zeros(flat.shape[0], tz.in_padded_size, dtype=torch.float64)
    padded[:, : tz.in_size] = flat  # a Linear's one input dimension, padded at its end
    x = padded.reshape(-1, *(net.index_sizes[i] for i in net.w_in))  # (B, I_pad) -> (B, i...)
    factors = {}
    for k, name in enumerate(net.w_in):
        m = x.movedim(k + 1, 0).reshape(x.shape[k + 1], -1)  # (i_k, B * rest)
        vals, vecs = torch.linalg.eigh(m @ m.T / m.shape[1])  # S_k: (i_k, i_k)
        vals = vals.clamp_min(float(vals.max()) * RELATIVE_FLOOR)
        factors[name] = (vecs * vals.sqrt()) @ vecs.T, (vecs * vals.rsqrt()) @ vecs.T
    return factors


def transform(t: torch.Tensor, axes: list[str] | tuple[str, ...], by: dict[str, torch.Tensor]):
    """``t`` (axes named ``axes``) multiplied along each named axis ``i`` by ``by[i]``:
    ``t'[.., j, ..] = sum_i t[.., i, ..] M[i, j]``; axes not in ``by`` are left as they are."""
    for name, matrix in by.items():
        if name in axes:
            ax = list(axes).index(name)
            # (.., i, ..) x (i, j) -> (.., j, ..): the contracted axis comes back in its place
            t = torch.tensordot(t, matrix.to(t.dtype), dims=([ax], [0])).movedim(-1, ax)
    return t


@torch.no_grad()
def apply_(gen: TNGenerator, by: dict[str, torch.Tensor]) -> None:
    """Multiply each core along the input indices in ``by`` (each index is on one core)."""
    for spec in gen.network.cores:
        if any(i in by for i in spec.indices):
            core = gen.cores[spec.name]
            core.copy_(transform(core.detach().double(), spec.indices, by).to(core.dtype))
