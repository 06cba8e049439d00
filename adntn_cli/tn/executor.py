"""Running a contraction path with the big tensors kept in one canonical index order.

opt_einsum chooses which pairs to contract; this module decides how. Every intermediate is laid
out in the program's canonical order (physical legs, leg by leg or in blocks, then bonds), so the
common patterns need no permutation of a large tensor:

- a *local operator*: a small core ``U[e..., d...]`` acting on a contiguous run ``d...`` of a big
  tensor ``T[l..., d..., r...]`` and putting its other indices in the same place:
  ``out[l, e, r] = sum_d U[e, d] T[l, d, r]`` (isometries, disentanglers, TT cores, tree nodes);
- a GEMM-shaped pair, left to ``torch.tensordot`` (which uses views where strides allow);
- anything else, ``torch.einsum``.

Permuting a tensor of many small legs is the slowest thing a CPU does with it (several times a
plain copy), so avoiding it is what makes generating a weight cost a few passes over it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

__all__ = ["PairPlan", "permute_copy", "plan_path", "run_path"]

KRON_MAX = 8  # a side this small is folded into the operator (kron with an identity) instead


class _LocalOp(torch.autograd.Function):
    """``out[l, e, r] = sum_d u[e, d] t[l, d, r]`` with a backward that never forms L x E x D."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(t, u)
        return torch.bmm(u.expand(t.shape[0], *u.shape), t)  # (E, D) @ (L, D, R) -> (L, E, R)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        t, u = ctx.saved_tensors
        gt = gu = None
        if ctx.needs_input_grad[0]:
            ut = u.transpose(0, 1).expand(g.shape[0], u.shape[1], u.shape[0])
            gt = torch.bmm(ut, g)  # (D, E) @ (L, E, R) -> (L, D, R)
        if ctx.needs_input_grad[1]:
            n, e, d = t.shape[0], u.shape[0], u.shape[1]
            chunk = max(1, (t.numel() // 8) // max(1, e * d))
            gu = torch.zeros_like(u)
            for s in range(0, n, chunk):  # sum_l g[l] @ t[l]^T, a bounded slab at a time
                gu += torch.bmm(g[s : s + chunk], t[s : s + chunk].transpose(1, 2)).sum(0)
        return gt, gu


def _permute_copy(x: torch.Tensor, perm: Sequence[int]) -> torch.Tensor:
    """``x.permute(perm).contiguous()``, in two passes when the innermost axis moves.

    A permute whose output's innermost axis is not the input's walks memory with a stride in its
    inner loop; with many small axes that is several times slower than a copy. Either rotate the
    output order so the input's innermost axis stays innermost (a fast pass) and then swap the two
    halves with one 2-D transpose, or transpose first so the output's innermost axis comes last and
    then permute; whichever 2-D transpose is less skinny.
    """
    last = x.dim() - 1
    perm = tuple(perm)
    if not perm or perm[-1] == last:
        return x.permute(perm).contiguous()
    shape = list(x.shape)
    k = perm.index(last)
    head, tail = perm[: k + 1], perm[k + 1 :]  # rotate: permute(tail + head), then transpose
    rows_a = math.prod(shape[i] for i in tail)
    j = perm[-1]  # transpose first: axes 0..j | j+1.., then permute with axis j last
    rows_b = math.prod(shape[: j + 1])
    total = x.numel()
    if min(rows_a, total // rows_a) >= min(rows_b, total // rows_b):
        staged = x.permute(tail + head).contiguous()
        return staged.reshape(rows_a, -1).t().contiguous().reshape([shape[i] for i in perm])
    swapped = x.reshape(rows_b, -1).t().contiguous()  # axes j+1.., then 0..j
    order = list(range(j + 1, len(shape))) + list(range(j + 1))
    swapped = swapped.reshape([shape[i] for i in order])
    return swapped.permute([order.index(i) for i in perm]).contiguous()


class _PermuteCopy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, perm: tuple[int, ...]) -> torch.Tensor:
        ctx.inverse = tuple(perm.index(i) for i in range(len(perm)))
        return _permute_copy(x, perm)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return _permute_copy(g, ctx.inverse), None


def permute_copy(x: torch.Tensor, perm: Sequence[int]) -> torch.Tensor:
    """A contiguous permuted copy of ``x``, differentiable, in at most two fast passes."""
    return _PermuteCopy.apply(x, tuple(perm))


def _known(size: int | torch.SymInt) -> bool:
    """Whether a size is a number now (not a symbol of a graph being traced, e.g. the batch of
    an ONNX export with a dynamic batch axis: no branch may depend on one)."""
    return not isinstance(size, torch.SymInt)


def _right_factor(m: torch.Tensor, rows: int | torch.SymInt) -> torch.Tensor:
    """``m`` (K, N), the right factor of a product with ``rows`` rows, made contiguous where it
    is the smaller side. For a transposed view, mm's backward forms ``m``'s gradient as
    ``(grad^T @ a)^T``, a skinny GEMM that reads ``grad`` across its rows: 3 times slower on a
    CPU than ``a^T @ grad`` for AlexNet FC7's augttn root (65,536 x 11 times 11 x 256). Where
    ``m`` is the larger side (a weight meeting a batch) the view is what its backward wants."""
    return m.contiguous() if _known(rows) and m.shape[1] < rows else m


def local_op(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Apply ``u`` (E, D) to the middle axis of ``t`` (L, D, R); returns (L, E, R).

    The layout is chosen by the sizes; where L or E is symbolic (a traced batch) only layouts
    valid for every value are used."""
    n, d, r = t.shape
    e = u.shape[0]
    if r == 1:  # (L, D) @ (D, E) -> (L, E, 1)
        return (t.reshape(n, d) @ _right_factor(u.transpose(0, 1), n)).reshape(n, e, 1)
    if not (_known(n) and _known(e)):  # (E, D) @ (L, D, R), broadcast -> (L, E, R)
        return torch.matmul(u, t)
    if n == 1:
        return (u @ t.reshape(d, r)).reshape(1, e, r)
    if r <= KRON_MAX:  # (L, D R) @ (D R, E R): one GEMM, r times the (cheap) multiply-adds
        eye = torch.eye(r, dtype=u.dtype, device=u.device)
        op = _right_factor(torch.kron(u, eye).transpose(0, 1), n)  # (D R, E R)
        return (t.reshape(n, d * r) @ op).reshape(n, e, r)
    if n <= KRON_MAX:
        eye = torch.eye(n, dtype=u.dtype, device=u.device)
        return (torch.kron(eye, u) @ t.reshape(n * d, r)).reshape(n, e, r)
    return _LocalOp.apply(t, u)


@dataclass(frozen=True)
class PairPlan:
    """How one pairwise contraction of the path runs."""

    pos: tuple[int, ...]  # positions in the operand list (opt_einsum convention)
    kind: str  # "local", "tensordot" or "einsum"
    out: tuple[str, ...]  # result indices, canonical order
    big: int = 0  # local: which of the two popped operands is the big tensor
    u_perm: tuple[int, ...] = ()  # local: the small core as (free..., contracted...)
    lde: tuple[int, int, int, int] = (0, 0, 0, 0)  # local: L, D, R, E
    out_shape: tuple[int, ...] = ()
    dims: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())  # tensordot axes
    perm: tuple[int, ...] = ()  # tensordot: result -> canonical
    eq: str = ""  # einsum


def _local(
    t_idx: Sequence[str], u_idx: Sequence[str], out: Sequence[str], sizes: Mapping[str, int]
) -> dict | None:
    """The local-operator layout of ``T x U -> out``, if the indices allow one."""
    shared = [i for i in t_idx if i in u_idx]
    if not shared or any(i in out for i in shared):
        return None
    p = t_idx.index(shared[0])
    if tuple(t_idx[p : p + len(shared)]) != tuple(shared):
        return None
    free = [i for i in u_idx if i not in shared]
    if any(i not in out for i in free) or any(i not in out for i in t_idx if i not in shared):
        return None
    free.sort(key=list(out).index)
    if tuple(out) != tuple(t_idx[:p]) + tuple(free) + tuple(t_idx[p + len(shared) :]):
        return None
    dims = [sizes[i] for i in t_idx]
    return {
        "u_perm": tuple(u_idx.index(i) for i in (*free, *shared)),
        "lde": (
            math.prod(dims[:p]),
            math.prod(dims[p : p + len(shared)]),
            math.prod(dims[p + len(shared) :]),
            math.prod(sizes[i] for i in free),
        ),
    }


def plan_path(
    operands: Sequence[Sequence[str]],
    out: Sequence[str],
    path: Sequence[Sequence[int]],
    sizes: Mapping[str, int],
    rank: Mapping[str, float],
    free: str | None = None,
) -> tuple[list[PairPlan], tuple[str, ...]]:
    """Plans for every contraction of ``path``; returns them and the final canonical indices.

    ``free`` names an index whose extent is known only at run time (the batch): result shapes
    give it as -1, so one plan runs every extent."""
    ops = [tuple(o) for o in operands]
    plans = []
    for pos in path:
        pos = tuple(sorted(pos, reverse=True))
        popped = [ops.pop(p) for p in pos]
        keep = set(out).union(*ops)
        union = list(dict.fromkeys(i for o in popped for i in o))
        res = tuple(sorted((i for i in union if i in keep), key=lambda i: rank[i]))
        shape = tuple(-1 if i == free else sizes[i] for i in res)
        if free is not None and any(free in o and o[0] != free for o in [*popped, res]):
            # run_path infers a free extent as L or E: it must lead (the batch ranks first)
            raise AssertionError(f"index {free} must come first in every tensor holding it")
        plan = None
        if len(popped) == 2:
            a, b = popped
            shared = set(a) & set(b)
            summed_alone = any(i not in keep for o in popped for i in o if i not in shared)
            batch = any(i in keep for i in shared)
            if not summed_alone and not batch:
                for big in sorted((0, 1), key=lambda k: -math.prod(sizes[i] for i in popped[k])):
                    loc = _local(popped[big], popped[1 - big], res, sizes)
                    if loc:
                        plan = PairPlan(pos, "local", res, big, out_shape=shape, **loc)
                        break
                if plan is None:
                    ax_a = tuple(a.index(i) for i in a if i in shared)
                    ax_b = tuple(b.index(a[k]) for k in ax_a)
                    td = [i for i in a if i not in shared] + [i for i in b if i not in shared]
                    perm = tuple(td.index(i) for i in res)
                    plan = PairPlan(pos, "tensordot", res, dims=(ax_a, ax_b), perm=perm)
        if plan is None:
            plan = PairPlan(pos, "einsum", res, eq=_einsum_eq(popped, res))
        plans.append(plan)
        ops.append(res)
    (final,) = ops
    return plans, final


def _einsum_eq(terms: Sequence[Sequence[str]], out: Sequence[str]) -> str:
    names = list(dict.fromkeys([*(i for t in terms for i in t), *out]))
    letters = {
        n: chr(ord("a") + k) if k < 26 else chr(ord("A") + k - 26) for k, n in enumerate(names)
    }
    if len(names) > 52:  # torch.einsum's alphabet; such a plan is refused by the budget first
        return ""
    return (
        ",".join("".join(letters[i] for i in t) for t in terms)
        + "->"
        + "".join(letters[i] for i in out)
    )


def run_path(plans: Sequence[PairPlan], operands: Sequence[torch.Tensor]) -> torch.Tensor:
    """Execute ``plans`` on ``operands``; the result is in the final canonical order."""
    ops = list(operands)
    for plan in plans:
        popped = [ops.pop(p) for p in plan.pos]
        if plan.kind == "local":
            t, u = popped[plan.big], popped[1 - plan.big]
            _, d, r, _ = plan.lde  # L and E from the tensors: either may hold the batch
            u2 = u.permute(plan.u_perm).reshape(-1, d).contiguous()  # (E, D), small: cheap
            res = local_op(t.reshape(-1, d, r), u2).reshape(plan.out_shape)  # (L, D, R)
        elif plan.kind == "tensordot":
            res = torch.tensordot(popped[0], popped[1], dims=plan.dims).permute(plan.perm)
        else:
            if not plan.eq:
                raise RuntimeError("a contraction of more than 52 indices cannot run as one einsum")
            res = torch.einsum(plan.eq, *popped)
        ops.append(res)
    return ops[0]
