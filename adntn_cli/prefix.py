"""The frozen prefix of a student, computed once per image so that each step runs the head only.

With ``distill.train: replaced`` every layer before the first replaced one is frozen, and in
eval mode (frozen BatchNorm keeps its statistics: ``distill.train_mode``). When the training
images are the same every epoch (no augmentation), the prefix's output for each image, and the
teacher's logits, are the same at every step: they are computed once, and the distillation runs
the rest of the student (its *head*) on them. It computes what the uncached run computes.

The cut is found on the student's ``torch.fx`` graph (generated layers are leaves): a point
before the first replaced layer after which nothing reads an earlier value. Of those, the one
with the smallest output is taken (the latest among equals): at small inputs VGG's
AdaptiveAvgPool2d replicates a 512x1x1 map into 25,088 values, and the cut goes before it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .data import Datasets
from .layers import GeneratedModule
from .runtime import MixedPrecision
from .tn import format_bytes

__all__ = ["CACHE_BUDGET", "FrozenPrefix", "PrefixCache", "cache_frozen_prefix"]

CACHE_BUDGET = 4 * 2**30  # bytes of host memory the cached prefix outputs may take
STOCHASTIC = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


@dataclass(frozen=True)
class FrozenPrefix:
    """Whether the prefix was cached, and why (report.json's ``frozen_prefix``)."""

    used: bool
    reason: str
    cut: str | None = None
    bytes: int = 0


@dataclass
class PrefixCache:
    """The student's head (sharing its modules) and the cached data it trains on: training
    items ``(prefix output, label, teacher logits)``, validation ``(prefix output, label)``."""

    head: nn.Module
    data: Datasets
    decision: FrozenPrefix


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, GeneratedModule) or super().is_leaf_module(m, qualname)


def _cuts(gm: fx.GraphModule, replaced: set[str]) -> tuple[list[int], list[fx.Node]]:
    """Indices of the nodes after which the graph can be cut: before the first replaced layer
    and the first dropout, after a layer with parameters."""
    nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    order = {n: k for k, n in enumerate(nodes)}
    first = next(
        (k for k, n in enumerate(nodes) if n.op == "call_module" and n.target in replaced),
        len(nodes),
    )
    # the earliest node each later node reads: a cut after k is valid if nothing after k reads
    # a value from before k (or the input)
    stochastic = next(
        (k for k, n in enumerate(nodes) if n.op == "call_module"
         and isinstance(gm.get_submodule(n.target), STOCHASTIC)),
        len(nodes),
    )  # fmt: skip
    valid = []
    for k in range(min(first, stochastic)):  # a prefix runs once: no dropout in it
        reads = [
            order.get(a, -1)
            for n in nodes[k + 1 :]
            for a in n.all_input_nodes
            if a is not nodes[k] and order.get(a, -1) <= k
        ]
        if not reads and any(
            n.op == "call_module" and any(True for _ in gm.get_submodule(n.target).parameters())
            for n in nodes[: k + 1]
        ):
            valid.append(k)
    return valid, nodes


def _split(gm: fx.GraphModule, root: nn.Module, nodes: list[fx.Node], k: int):
    """The prefix (input -> node k) and the head (node k -> output), on ``root``'s modules."""
    prefix_graph, head_graph = fx.Graph(), fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in gm.graph.nodes:
        if n.op == "placeholder" or n in nodes[: k + 1]:
            env[n] = prefix_graph.node_copy(n, lambda a: env[a])
    prefix_graph.output(env[nodes[k]])
    head_env = {nodes[k]: head_graph.placeholder("prefix_out")}
    for n in gm.graph.nodes:
        if n.op != "placeholder" and n not in nodes[: k + 1]:
            head_env[n] = head_graph.node_copy(n, lambda a: head_env[a])
    return fx.GraphModule(root, prefix_graph), fx.GraphModule(root, head_graph)


@torch.no_grad()
def _output_sizes(gm: fx.GraphModule, sample: torch.Tensor) -> dict[fx.Node, int]:
    """The number of values each node of ``gm`` outputs for ``sample`` (one pass)."""
    sizes: dict[fx.Node, int] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node):
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                sizes[n] = out[0].numel()  # per image
            return out

    Recorder(gm).run(sample)
    return sizes


@torch.no_grad()
def _outputs(fn, dataset: Dataset, device: torch.device, precision: MixedPrecision, batch: int):
    """``fn`` of every item of ``dataset``, in order, on the CPU; and the labels."""
    outs, labels = [], []
    # A loader of its own generator: one without draws its seed from the global RNG, which
    # would shift every later dropout mask against an uncached run.
    loader = DataLoader(dataset, batch_size=batch, shuffle=False, generator=torch.Generator())
    for x, y in loader:
        with precision.autocast():
            outs.append(fn(x.to(device)).cpu())
        labels.append(y)
    return torch.cat(outs), torch.cat(labels)


def _refusal(data: Datasets, train: str, mode: str) -> str:
    """Why the prefix cannot be cached ("" when it can be)."""
    if mode == "off":
        return "distill.cache_frozen_prefix is off"
    if train != "replaced":
        return "distill.train is all: the layers before the replaced ones train too"
    if data.augmented:
        return "the training data is augmented: a cached image would repeat one crop"
    return ""


def cache_frozen_prefix(
    student: nn.Module,
    teacher: nn.Module,
    data: Datasets,
    replaced: Sequence[str],
    *,
    train: str,
    mode: str,
    device: torch.device,
    precision: MixedPrecision,
    batch: int,
    budget: int = CACHE_BUDGET,
) -> tuple[PrefixCache | None, FrozenPrefix]:
    """The cache of the student's frozen prefix, or None and the reason it is off."""
    why = _refusal(data, train, mode)
    if why:
        return None, FrozenPrefix(False, why)
    try:
        gm = fx.GraphModule(student, _Tracer().trace(student))
    except Exception as err:  # fx fails on data-dependent control flow, in many ways
        return None, FrozenPrefix(False, f"the model cannot be traced by torch.fx ({err})")
    valid, nodes = _cuts(gm, set(replaced))
    if not valid:
        return None, FrozenPrefix(
            False, "no frozen layer comes before the first replaced one (and before any dropout)"
        )
    sample = data.train[0][0].unsqueeze(0).to(device)
    student.eval()
    numel = _output_sizes(gm, sample)  # one forward of one image, every node's output size
    sizes = [(numel[nodes[k]], -k) for k in valid]
    k = -min(sizes)[1]
    prefix, head = _split(gm, student, nodes, k)
    per_item = 4 * (min(sizes)[0] + data.num_classes)  # float32 output and teacher logits
    need = per_item * (len(data.train) + len(data.val))
    if need > budget:
        return None, FrozenPrefix(
            False, f"the cache would take {format_bytes(need)}, over {format_bytes(budget)}"
        )
    h_train, y_train = _outputs(prefix, data.train, device, precision, batch)
    t_train, _ = _outputs(teacher, data.train, device, precision, batch)
    h_val, y_val = _outputs(prefix, data.val, device, precision, batch)
    cached = Datasets(
        TensorDataset(h_train, y_train, t_train.float()),
        TensorDataset(h_val, y_val),
        data.num_classes,
        data.description,
    )
    held = sum(t.numel() * t.element_size() for t in (h_train, t_train, h_val))
    cut = nodes[k].name
    what = f"cached the output of {cut} ({math.prod(h_train.shape[1:]):,} values per image)"
    decision = FrozenPrefix(True, what, cut, held)
    return PrefixCache(head, cached, decision), decision
