"""A data-aware start for trees: the cores from hierarchical SVDs of the weight (HT-SVD).

A tree whose levels are linear is a hierarchical Tucker tensor (Hackbusch & Kuehn 2009): the
subtree under node ``v`` spans a subspace, of its bond's size, of the weight's matricization
``W_(v)`` (rows: the physical indices under ``v``). Grasedyck's truncation (2010), leaves to root,
with ``C`` the weight projected onto the bases found so far (it starts as ``W`` and shrinks)::

    leaf k:  U_k = the leading chi_k left singular vectors of C_(k);    A_k = U_k
    node v:  U_v = the leading chi_v left singular vectors of C_(a1 a2); G_v = U_v as (a1, a2, b)
             after each: C <- C projected onto U (the basis's indices replaced by its bond)
    root:    R = C, a (chi_L, chi_R) matrix

Each basis is the best of its size for what is left (Eckart-Young), and the tree is within
``sqrt(2N - 3)`` of the best one with those bonds (``N`` leaves). With an activation that is the
identity near 0 (tanh) between the levels the same cores are a start, not the weight: each
node's output is an orthonormal basis, entries about ``1/sqrt(rows)``, where tanh is nearly
linear; the layer-wise fit keeps the start only where it beats the random one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .activations import get_activation
from .errors import TNConfigError
from .generator import TNGenerator
from .svdstart import set_core_, weight_tensor

__all__ = ["TreeNode", "ht_svd_start_", "tree_order"]


@dataclass(frozen=True)
class TreeNode:
    """One core of the tree in the order the start sets it: a leaf's ``group`` is its physical
    indices, a node's its children's bonds; ``bond`` is the bond it hands up (None: the root)."""

    core: str
    group: tuple[str, ...]
    bond: str | None


def _near_identity(name: str) -> bool:
    """Whether the activation is the identity to within 1% on |x| <= 0.1 (identity, tanh)."""
    x = torch.tensor([-0.1, -0.01, 0.01, 0.1], dtype=torch.float64)
    return bool(((get_activation(name)(x) - x).abs() <= 0.01 * x.abs()).all())


def tree_order(gen: TNGenerator) -> list[TreeNode] | None:
    """The leaves, then the nodes leaves to root, of a generator that is a binary tree: leaf cores
    on disjoint physical indices with one bond each, every step joining two subtrees through one
    core, activations near the identity, a linear root. None for any other network (a chain,
    disentanglers, mixing tensors, a nonlinear activation)."""
    net = gen.network
    physical = set(net.w_out) | set(net.w_in)
    cores = {c.name: c.indices for c in net.cores}
    bond_of = {}  # a subtree's output (leaf core or step) -> its one bond
    order = []
    for name, indices in cores.items():
        bonds = [i for i in indices if i not in physical]
        if len(bonds) == 1 and len(bonds) < len(indices):
            bond_of[name] = bonds[0]
            order.append(TreeNode(name, tuple(i for i in indices if i in physical), bonds[0]))
    leaves = [i for node in order for i in node.group]
    if sorted(leaves) != sorted(physical):
        return None
    used: set[str] = set()
    for k, step in enumerate(net.steps):
        last = k == len(net.steps) - 1
        act = get_activation(step.activation)
        if len(step.operands) != 3 or not (act.linear if last else _near_identity(step.activation)):
            return None
        children = [op.name for op in step.operands if op.name in bond_of]
        joins = [op for op in step.operands if op.name in cores and op.name not in bond_of]
        new = [i for i in step.out_indices if i not in physical]
        if len(children) != 2 or len(joins) != 1 or used & set(children) or len(new) != 1 - last:
            return None
        group = tuple(bond_of[c] for c in children)
        if sorted(joins[0].indices) != sorted([*group, *new]):
            return None
        used |= set(children)
        if not last:
            bond_of[step.out] = new[0]
        order.append(TreeNode(joins[0].name, group, None if last else new[0]))
    return order if used == set(bond_of) else None  # every subtree joined once


def _leading_basis(
    c: torch.Tensor, axes: list[str], group: tuple[str, ...], size: int
) -> torch.Tensor:
    """The ``size`` leading left singular vectors of ``c`` matricised on ``group`` (rows), as a
    (rows, size) matrix, from the eigenvectors of its Gram matrix; a rank below ``size`` is made
    up with the rest of an orthonormal basis (no exact zeros to stall a gradient)."""
    rows = [axes.index(i) for i in group]
    rest = [k for k in range(c.dim()) if k not in rows]
    n = math.prod(c.shape[k] for k in rows)
    m = c.permute(rows + rest).reshape(n, -1)  # (group..., rest...) -> (group, rest)
    _, vecs = torch.linalg.eigh(m @ m.T)  # (group, group), ascending eigenvalues
    return vecs[:, -size:].flip(1)


@torch.no_grad()
def ht_svd_start_(gen: TNGenerator, weight: torch.Tensor) -> None:
    """Set ``gen``'s cores from ``weight`` (the layer's, shaped like ``gen.weight_shape``) by
    HT-SVD, leaves to root; the output scale becomes 1. Raises TNConfigError for a network that
    is no tree with near-linear levels (``tree_order``)."""
    order = tree_order(gen)
    if order is None:
        raise TNConfigError(
            "an HT-SVD start needs a tree (ttn) without mixing, with activations near the "
            f"identity at 0 (identity, tanh); {gen.spec.structure} is not one"
        )
    sizes = gen.network.index_sizes
    c, axes = weight_tensor(gen, weight)
    for node in order:
        if node.bond is None:  # the root: what is left of the weight, (bond_L, bond_R)
            set_core_(gen, node.core, c, axes)
            break
        u = _leading_basis(c, axes, node.group, sizes[node.bond])  # (group, bond)
        basis = u.reshape(*(sizes[i] for i in node.group), -1)  # (group...,  bond)
        set_core_(gen, node.core, basis, [*node.group, node.bond])
        rows = [axes.index(i) for i in node.group]
        # (rest..., bond): the group's axes contracted away, the bond appended
        c = torch.tensordot(c, basis, dims=(rows, list(range(len(rows)))))
        axes = [a for a in axes if a not in node.group] + [node.bond]
    gen.scale.fill_(1.0)
