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
from pathlib import Path

import torch
from torch import fx, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .data import Datasets
from .distill import DROPOUT
from .layers import GeneratedModule
from .runtime import MixedPrecision
from .tn import format_bytes

__all__ = ["CACHE_BUDGET", "FrozenPrefix", "PrefixCache", "cache_frozen_prefix"]

CACHE_BUDGET = 4 * 2**30  # bytes of host memory the cached prefix outputs may take


@dataclass(frozen=True)
class FrozenPrefix:
    """Whether the prefix was cached, and why (report.json's ``frozen_prefix``)."""

    used: bool
    reason: str
    cut: str | None = None
    bytes: int = 0
    validation: str = ""  # how the final evaluation read the validation split ("": as images)


@dataclass
class PrefixCache:
    """The student's head (sharing its modules) and the cached data it trains on: training
    items ``(prefix output, label, teacher logits)``, selection items ``(prefix output,
    label)`` (None without a hold-out); the teacher's head runs where its layers' outputs are
    needed (``finetune.feature_weight``). The validation split is not read before the final
    evaluation, which asks ``validation`` for its prefix outputs."""

    head: nn.Module
    train: TensorDataset
    select: TensorDataset | None
    decision: FrozenPrefix
    teacher_head: nn.Module | None = None  # the teacher after the cut (feature matching)
    outputs: _Outputs | None = None  # what computes (or stores) the prefix's outputs

    def validation(self, store: Path | None = None) -> tuple[TensorDataset | None, str]:
        """The validation split's ``(prefix output, label)`` items for the final evaluation of
        the teacher's head and the student's, read from or written to ``store``, and what was
        done; None, and why, where the two whole models run instead: the teacher's prefix is
        not the student's (BatchNorm recalibrated in it), or the outputs would not fit."""
        run, whole = self.outputs, "the whole models on the validation images: "
        if run is None or not _same_modules(run.prefix, run.teacher):
            return None, whole + "the student's prefix is not the teacher's"
        per_item = self.train.tensors[0][0].numel() * self.train.tensors[0].element_size()
        if self.decision.bytes + per_item * len(run.data.val) > CACHE_BUDGET:
            over = f"their prefix outputs would take the cache over {format_bytes(CACHE_BUDGET)}"
            return None, whole + over
        t, where = run.val_stored_in(store) if store is not None else (run.val_computed(), "")
        what = f"the validation images' output of {self.decision.cut} computed once" + where
        return TensorDataset(t["h_val"], t["y_val"]), what


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
         and isinstance(gm.get_submodule(n.target), DROPOUT)),
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
    if train == "all":
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
    store: Path | None = None,
) -> tuple[PrefixCache | None, FrozenPrefix]:
    """The cache of the student's frozen prefix, or None and the reason it is off. With
    ``store`` (a folder) the outputs are read from there when a run computed them before,
    and written there when not (prefixstore.py)."""
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
    held_out = len(data.select) if data.select is not None else 0
    need = per_item * (len(data.train) + held_out)
    if need > CACHE_BUDGET:
        return None, FrozenPrefix(
            False, f"the cache would take {format_bytes(need)}, over {format_bytes(CACHE_BUDGET)}"
        )
    cut = nodes[k].name
    run = _Outputs(prefix, teacher, data, cut, device, precision, batch)
    t, where = run.stored_in(store) if store is not None else (run.computed(), "")
    held = sum(v.numel() * v.element_size() for k, v in t.items() if not k.startswith("y_"))
    what = f"cached the output of {cut} ({math.prod(t['h_train'].shape[1:]):,} values per image)"
    decision = FrozenPrefix(True, what + where, cut, held)
    train_set = TensorDataset(t["h_train"], t["y_train"], t["t_train"].float())
    select = TensorDataset(t["h_select"], t["y_select"]) if "h_select" in t else None
    cache = PrefixCache(head, train_set, select, decision, _teacher_head(teacher, cut), run)
    return cache, decision


@dataclass
class _Outputs:
    """What the cache holds for one prefix over one data set: computed, or stored on disk."""

    prefix: fx.GraphModule
    teacher: nn.Module
    data: Datasets
    cut: str
    device: torch.device
    precision: MixedPrecision
    batch: int

    def computed(self) -> dict[str, torch.Tensor]:
        """``h_train, y_train, t_train`` (prefix outputs, labels, teacher logits) and, with a
        hold-out, ``h_select, y_select``."""
        run = (self.device, self.precision, self.batch)
        h_train, y_train = _outputs(self.prefix, self.data.train, *run)
        if _same_modules(self.prefix, self.teacher):  # the teacher's head reads the outputs
            t_train = _teacher_logits(self.teacher, self.cut, h_train, *run)
        else:  # e.g. BatchNorm recalibrated in the prefix: the teacher's prefix is another
            t_train, _ = _outputs(self.teacher, self.data.train, *run)
        t = {"h_train": h_train, "y_train": y_train, "t_train": t_train}
        if self.data.select is not None:
            t["h_select"], t["y_select"] = _outputs(self.prefix, self.data.select, *run)
        return t

    def val_computed(self) -> dict[str, torch.Tensor]:
        """``h_val, y_val``: the prefix's outputs over the validation split, and its labels."""
        h_val, y_val = _outputs(self.prefix, self.data.val, self.device, self.precision, self.batch)
        return {"h_val": h_val, "y_val": y_val}

    def stored_in(self, folder: Path) -> tuple[dict[str, torch.Tensor], str]:
        """The tensors read from ``folder``, or computed and written there; and what was done."""
        return self._stored(folder, "train", self.computed)

    def val_stored_in(self, folder: Path) -> tuple[dict[str, torch.Tensor], str]:
        return self._stored(folder, "val", self.val_computed)

    def _stored(self, folder: Path, split: str, compute) -> tuple[dict[str, torch.Tensor], str]:
        from . import prefixstore

        key = prefixstore.prefix_key(
            self.teacher, self.prefix, self.cut, self.data, self.precision.name, split
        )
        stored = prefixstore.load(folder, key)
        if stored is not None:
            return stored, f", read from {prefixstore.path_of(folder, key)}"
        path = prefixstore.save(folder, key, t := compute())
        return t, f", written to {path}"


def _same_modules(prefix: fx.GraphModule, teacher: nn.Module) -> bool:
    """Whether every module the prefix calls holds the teacher's parameters and buffers."""
    for n in prefix.graph.nodes:
        if n.op != "call_module":
            continue
        mine, theirs = prefix.get_submodule(n.target).state_dict(), None
        try:
            theirs = teacher.get_submodule(n.target).state_dict()
        except AttributeError:
            return False
        if mine.keys() != theirs.keys() or not all(
            torch.equal(v, theirs[key].to(v.device)) for key, v in mine.items()
        ):
            return False
    return True


def _teacher_head(teacher: nn.Module, cut: str) -> fx.GraphModule:
    """The teacher after the node named ``cut`` (on the teacher's own modules)."""
    gm = fx.GraphModule(teacher, _Tracer().trace(teacher))
    nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    k = next(i for i, n in enumerate(nodes) if n.name == cut)
    return _split(gm, teacher, nodes, k)[1]


@torch.no_grad()
def _teacher_logits(
    teacher: nn.Module,
    cut: str,
    h: torch.Tensor,
    device: torch.device,
    precision: MixedPrecision,
    batch: int,
) -> torch.Tensor:
    """The teacher's logits from the cached prefix outputs ``h``: its own head after the same
    cut (the frozen prefix is the teacher's), so its prefix is not run a second time."""
    head = _teacher_head(teacher, cut)
    return _outputs(head, TensorDataset(h, torch.zeros(len(h))), device, precision, batch)[0]
