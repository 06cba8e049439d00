"""A generator as data: a contraction program compiled once, executed many times.

A program is a list of steps. Each step contracts named tensors (cores and earlier intermediates)
over named indices in one einsum and applies an elementwise activation to the result::

    H_v = sigma( einsum(H_c1[p1, a], H_c2[p2, b], G_v[a, b, c] -> [p1, p2, c]) )

Structures emit one step per core-and-activation; ``Program`` first merges every step whose
activation is the identity into its single consumer (a linear run becomes one einsum), then asks
opt_einsum for each merged step's contraction path once (``contract_path``) and keeps the pairwise
plan (run by executor.py). From the same compiled program come the forward pass, the parameter
count, the multiply-adds, the largest intermediate and the passes over ``|W|``: the numbers a plan
reports are the numbers the code runs.

The final step produces the padded weight with the output indices first and the input indices
after (``W[o_1..o_n, i_1..i_n]``). Where it is linear, the contract schedule reuses it with the
input ``x[batch, i_1..i_n]`` as one more operand and ``y[batch, o_1..o_n]`` as the result, so the
weight is never formed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import opt_einsum as oe
import torch

from .activations import get_activation
from .errors import MemoryBudgetError
from .executor import PairPlan, permute_copy, plan_path, run_path

__all__ = ["CoreSpec", "Network", "Operand", "PathCost", "Program", "Step"]

BATCH = "batch"


@dataclass(frozen=True)
class Operand:
    """A tensor named ``name`` seen with index names ``indices``."""

    name: str
    indices: tuple[str, ...]


@dataclass(frozen=True)
class Step:
    """``out[out_indices] = activation(einsum(operands))``.

    ``sequential`` asks for the operands to be contracted in the order given (a sweep), for long
    steps whose good order the structure knows and a path search would take long to find.
    """

    out: str
    operands: tuple[Operand, ...]
    out_indices: tuple[str, ...]
    activation: str = "identity"
    label: str = ""
    sequential: bool = False


@dataclass(frozen=True)
class CoreSpec:
    """A trainable core; ``identity`` init makes the first ``n_out`` indices map onto the rest."""

    name: str
    indices: tuple[str, ...]
    init: str = "normal"
    n_out: int = 0


@dataclass
class Network:
    """What a structure builds: index sizes, cores, raw steps and the weight's index order."""

    index_sizes: dict[str, int]
    cores: list[CoreSpec]
    steps: list[Step]
    w_out: tuple[str, ...]
    w_in: tuple[str, ...]
    contractible: bool = False
    info: dict = field(default_factory=dict)
    rank: dict[str, float] = field(default_factory=dict)  # canonical position of each index

    def core_shape(self, spec: CoreSpec) -> tuple[int, ...]:
        return tuple(self.index_sizes[i] for i in spec.indices)


@dataclass(frozen=True)
class PathCost:
    """Cost of running some steps: multiply-adds and elements written (largest and summed)."""

    macs: int = 0
    peak_elems: int = 0
    total_elems: int = 0

    def __add__(self, other: PathCost) -> PathCost:
        return PathCost(
            self.macs + other.macs,
            max(self.peak_elems, other.peak_elems),
            self.total_elems + other.total_elems,
        )


def merge_linear(steps: Sequence[Step]) -> list[Step]:
    """Inline every identity-activation step into its only consumer (the final step stays)."""
    steps = list(steps)
    changed = True
    while changed:
        changed = False
        for k, step in enumerate(steps[:-1]):
            if not get_activation(step.activation).linear:
                continue
            users = [
                j for j, s in enumerate(steps) if any(op.name == step.out for op in s.operands)
            ]
            if len(users) != 1:
                continue
            user = steps[users[0]]
            ops: list[Operand] = []
            for op in user.operands:
                ops.extend(step.operands if op.name == step.out else (op,))
            steps[users[0]] = Step(
                user.out,
                tuple(ops),
                user.out_indices,
                user.activation,
                user.label or step.label,
                user.sequential and step.sequential,
            )
            del steps[k]
            changed = True
            break
    return steps


SEQUENTIAL_ABOVE = 10  # operands; below this a dp search is fast and at least as good
DP_MAX = 16  # operands; dp grows exponentially (16: about 2 s; 23: about 30 s)
BATCH_BUCKETS = (8, 256, 4096)  # contract paths are searched at these batch sizes only
RANDOM_GREEDY_REPEATS = 64  # seeded trials: the same path on every machine, in bounded time


def _optimizer(n_operands: int, sequential: bool) -> str | list[tuple[int, int]] | Any:
    """Path search by size: exhaustive for a few operands, dp up to ``DP_MAX``, then a fixed
    number of seeded random-greedy trials (deterministic, a fraction of a second); a sweep
    (``[(0, 1), (0, last), ...]``) for long sequential steps."""
    if sequential and n_operands > SEQUENTIAL_ABOVE:
        return [(0, 1)] + [(0, n - 1) for n in range(n_operands - 1, 1, -1)]
    if n_operands <= 4:
        return "optimal"
    if n_operands <= DP_MAX:
        return "dp"
    return oe.RandomGreedy(max_repeats=RANDOM_GREEDY_REPEATS)


def _contract_path(eq: str, shapes: list[tuple[int, ...]], optimize: Any, memory_limit: int | None):
    """``oe.contract_path`` on shapes; random-greedy reseeds Python's ``random`` per trial, so
    its state is put back (a search must not change anyone's random numbers)."""
    state = random.getstate()
    try:
        return oe.contract_path(
            eq, *shapes, shapes=True, optimize=optimize, memory_limit=memory_limit
        )
    finally:
        random.setstate(state)


def _path_cost(info: oe.contract.PathInfo) -> PathCost:
    """Multiply-adds and intermediate sizes of one contraction path."""
    sizes = info.size_dict
    macs = peak = total = 0
    for _, _, einsum_str, _, _ in info.contraction_list:
        inputs, out = einsum_str.split("->")
        macs += math.prod(sizes[c] for c in set(inputs.replace(",", "")))
        elems = math.prod(sizes[c] for c in out)
        peak, total = max(peak, elems), total + elems
    return PathCost(macs, peak, total)


class _Compiled:
    """One merged step with its contraction path chosen once and planned for execution."""

    def __init__(
        self,
        step: Step,
        sizes: Mapping[str, int],
        memory_limit: int | None,
        rank: Mapping[str, float],
        path: list[tuple[int, ...]] | None = None,
        free: str | None = None,
    ) -> None:
        self.step = step
        self.activation = get_activation(step.activation)
        names = sorted({i for op in step.operands for i in op.indices} | set(step.out_indices))
        self.symbols = {name: oe.get_symbol(k) for k, name in enumerate(names)}
        self.eq = self._equation([op.indices for op in step.operands], step.out_indices)
        self.shapes = [tuple(sizes[i] for i in op.indices) for op in step.operands]
        opt = path if path is not None else _optimizer(len(self.shapes), step.sequential)
        try:
            path, info = _contract_path(self.eq, self.shapes, opt, memory_limit)
        except RuntimeError as err:  # opt_einsum: "No contraction found for given memory_limit"
            if "memory_limit" not in str(err):
                raise
            raise MemoryBudgetError(
                f"every contraction order of step {step.out!r} needs an intermediate over "
                f"{memory_limit:,} elements"
            ) from None
        terms = [op.indices for op in step.operands]
        self.plans, final = plan_path(terms, step.out_indices, path, sizes, rank, free)
        if len(terms) == 1 and set(final) != set(step.out_indices):  # a lone trace or sum
            final = tuple(sorted(step.out_indices, key=lambda i: rank[i]))
            self.plans = [PairPlan((0,), "einsum", final, eq=self._equation(terms, final))]
        self.final_perm = tuple(final.index(i) for i in step.out_indices)
        self.path = [tuple(p) for p in path]
        cost = _path_cost(info)
        out_elems = math.prod(sizes[i] for i in step.out_indices)
        if not self.activation.linear:  # the activation writes the output once more
            cost = cost + PathCost(0, out_elems, out_elems)
        self.cost = cost
        self.out_elems = out_elems

    def _equation(self, terms: Sequence[Sequence[str]], out: Sequence[str]) -> str:
        sym = self.symbols
        return (
            ",".join("".join(sym[i] for i in t) for t in terms)
            + "->"
            + "".join(sym[i] for i in out)
        )

    def linear_part(self, operands: Sequence[torch.Tensor], copy: bool = False) -> torch.Tensor:
        """The step before its activation; ``copy`` lays it out contiguously (the weight)."""
        out = run_path(self.plans, operands)
        if copy and self.final_perm != tuple(range(out.dim())):
            return permute_copy(out, self.final_perm)
        return out.permute(self.final_perm)


class Program:
    """A network's steps, merged across linear runs and compiled once (see the module docstring)."""

    def __init__(self, network: Network, memory_limit: int | None = None) -> None:
        self.network = network
        self.sizes = dict(network.index_sizes)
        self.core_names = [c.name for c in network.cores]
        late = 1e12  # indices without a rank go last, in name order
        self.rank = {BATCH: -1.0, **{i: late + k for k, i in enumerate(sorted(self.sizes))}}
        self.rank.update(network.rank)
        self.steps = [
            _Compiled(s, self.sizes, memory_limit, self.rank) for s in merge_linear(network.steps)
        ]
        final = self.steps[-1].step
        expected = tuple(network.w_out) + tuple(network.w_in)
        if final.out_indices != expected:
            raise AssertionError(f"final step indices {final.out_indices} != weight {expected}")
        self.memory_limit = memory_limit
        self._contract_cache: dict[int, tuple[_Compiled, PathCost]] = {}
        self._contract_paths: dict[int, list[tuple[int, ...]]] = {}  # batch bucket -> path
        self.fixed_batch: int | None = None  # see fix_contract
        cores = set(self.core_names)
        own = [op.name for op in final.operands if op.name in cores]
        # The output scale is folded into the final step's smallest core when the output is linear.
        self.scale_into = (
            min(own, key=lambda n: math.prod(self._shape(n)))
            if own and self.steps[-1].activation.linear
            else None
        )
        self._last_use = {}
        for k, c in enumerate(self.steps):
            for op in c.step.operands:
                self._last_use[op.name] = k

    def _shape(self, name: str) -> tuple[int, ...]:
        spec = next(c for c in self.network.cores if c.name == name)
        return self.network.core_shape(spec)

    @property
    def w_elems(self) -> int:
        return math.prod(self.sizes[i] for i in self.network.w_out + self.network.w_in)

    def _prefix_cost(self) -> PathCost:
        return sum((c.cost for c in self.steps[:-1]), PathCost())

    def cost(self) -> PathCost:
        """Materialise: every step, plus the copy that lays W out as (O, I)."""
        return self._prefix_cost() + self.steps[-1].cost + PathCost(0, self.w_elems, self.w_elems)

    # -- execution ---------------------------------------------------------------------------
    def _operands(self, step: _Compiled, env: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        return [env[op.name] for op in step.step.operands]

    def _run_prefix(
        self, cores: Mapping[str, torch.Tensor], scale: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        env = dict(cores)
        if scale is not None and self.scale_into is not None:
            env[self.scale_into] = env[self.scale_into] * scale
        for k, c in enumerate(self.steps[:-1]):
            env[c.step.out] = c.activation(c.linear_part(self._operands(c, env)))
            for op in c.step.operands:
                if self._last_use[op.name] == k and op.name not in cores:
                    del env[op.name]
        return env

    def run(
        self, cores: Mapping[str, torch.Tensor], scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The padded weight as a tensor with indices ``w_out + w_in``."""
        env = self._run_prefix(cores, scale)
        last = self.steps[-1]
        out = last.activation(last.linear_part(self._operands(last, env), copy=True))
        if scale is not None and self.scale_into is None:
            out = out * scale
        return out

    # -- the contract schedule ---------------------------------------------------------------
    def _contract_step(self, batch: int) -> tuple[_Compiled, PathCost]:
        """The final step with ``x`` as one more operand, compiled for ``batch``. Its path is
        searched once per bucket of batch sizes (``BATCH_BUCKETS``: at most three searches) at
        the bucket's size, and reused, re-costed, for every batch in it."""
        if batch not in self._contract_cache:
            final = self.steps[-1].step
            x = Operand(BATCH, (BATCH, *self.network.w_in))
            step = Step("y", (*final.operands, x), (BATCH, *self.network.w_out), "identity")
            bucket = next(b for b in BATCH_BUCKETS if batch <= b or b == BATCH_BUCKETS[-1])
            if bucket not in self._contract_paths:
                sizes = {**self.sizes, BATCH: bucket}
                searched = _Compiled(step, sizes, self.memory_limit, self.rank)
                self._contract_paths[bucket] = searched.path
            sizes = {**self.sizes, BATCH: batch}
            path = self._contract_paths[bucket]
            compiled = _Compiled(step, sizes, self.memory_limit, self.rank, path, BATCH)
            self._contract_cache[batch] = (compiled, self._prefix_cost() + compiled.cost)
        return self._contract_cache[batch]

    def contract_cost(self, batch: int) -> PathCost:
        """Contract schedule at ``batch``: the prefix steps and ``x`` through the final step."""
        return self._contract_step(batch)[1]

    def fix_contract(self, batch: int | None) -> None:
        """Run every batch with the path compiled for ``batch`` (None: each its own). A traced
        graph (an ONNX export) must not branch on its batch: its plans take any batch."""
        if batch is not None:
            self._contract_step(batch)
        self.fixed_batch = batch

    def contract(
        self, cores: Mapping[str, torch.Tensor], x: torch.Tensor, scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``y[b, o...] = sum_i W[o..., i...] x[b, i...]`` without forming W."""
        batch = self.fixed_batch if self.fixed_batch is not None else x.shape[0]
        compiled, _ = self._contract_step(batch)
        env = self._run_prefix(cores, scale)
        env[BATCH] = x
        return compiled.linear_part(self._operands(compiled, env))

    # -- initialisation ----------------------------------------------------------------------
    @torch.no_grad()
    def calibrate_(
        self,
        cores: Mapping[str, torch.nn.Parameter],
        target_std: float,
        to_weight: Callable[[torch.Tensor], torch.Tensor],
    ) -> float:
        """Rescale cores so each step's pre-activation has std 1 and the weight has zero mean.

        Each step's own cores share the correction equally (``s ** (-1/k)`` each), which is exact
        because a step is linear in each of its cores. For a linear output the mean is projected
        out through the largest own core (the weight is linear in it), so the generated weight
        starts with mean 0 and std 1 and the returned output scale is ``target_std``; otherwise the
        scale that gives the weight ``target_std``.
        """
        env: dict[str, torch.Tensor] = dict(cores)
        specs = {c.name: c for c in self.network.cores}
        for k, c in enumerate(self.steps):
            own = [op.name for op in c.step.operands if op.name in specs]
            free = [n for n in own if specs[n].init == "normal"] or own
            final = k == len(self.steps) - 1

            if final and c.activation.linear and free:
                target = max(free, key=lambda n: env[n].numel())
                with torch.enable_grad():
                    core = env[target].detach().requires_grad_(True)
                    ops = [core if op.name == target else env[op.name] for op in c.step.operands]
                    mean = to_weight(c.linear_part(ops)).mean()
                    (grad,) = torch.autograd.grad(mean, core)
                norm2 = grad.pow(2).sum()
                if norm2 > 0:
                    env[target].sub_(grad * (mean.detach() / norm2))
            out = c.linear_part(self._operands(c, env))
            std = float((to_weight(out) if final else out).std())
            if free and math.isfinite(std) and std > 0:
                factor = std ** (-1.0 / len(free))
                for n in free:
                    env[n].mul_(factor)
                out = out / std
            out = c.activation(out)
            env[c.step.out] = out
        w = to_weight(env[self.steps[-1].step.out])
        std = float(w.std())
        return target_std / std if std > 0 and math.isfinite(std) else target_std

    def pre_activation_stds(self, cores: Mapping[str, torch.Tensor]) -> list[tuple[str, float]]:
        """Std of every step's pre-activation (for tests and diagnostics)."""
        env = dict(cores)
        out = []
        with torch.no_grad():
            for c in self.steps:
                pre = c.linear_part(self._operands(c, env))
                out.append((c.step.label or c.step.out, float(pre.std())))
                env[c.step.out] = c.activation(pre)
        return out
