"""The tree start (HT-SVD): exact for a linear tree at full bonds or on a tree-shaped weight,
within Grasedyck's bounds when truncated, near-exact under tanh, trees only; in the fit."""

import copy
import math

import pytest
import torch
from torch import nn

from adntn_cli.distill import layerwise_fit
from adntn_cli.layers import from_module
from adntn_cli.tn import StructureSpec, TNConfigError
from adntn_cli.tn.htsvd import ht_svd_start_, tree_order
from adntn_cli.tn.svdstart import weight_tensor

MODULES = [nn.Linear(36, 48), nn.Linear(37, 53), nn.Conv2d(6, 10, 3), nn.Linear(64, 64)]


def _rel(gen, weight) -> float:
    w, ref = gen().detach().double(), weight.detach().double()
    return float((w - ref).norm() / ref.norm())


@pytest.mark.parametrize(
    "module", MODULES, ids=lambda m: f"{type(m).__name__}{tuple(m.weight.shape)}"
)
def test_a_linear_tree_at_full_bonds_reproduces_the_weight(module):
    gen = from_module(module, StructureSpec("ttn", bond_dim=4096, activation="identity")).generator
    ht_svd_start_(gen, module.weight)  # padded shapes (53 x 37) and size-1 legs included
    assert _rel(gen, module.weight) < 1e-6 and float(gen.scale.detach()) == 1.0


def test_under_tanh_the_start_is_the_linear_tree_to_within_a_few_percent():
    torch.manual_seed(0)
    layer = nn.Linear(64, 64)
    gen = from_module(layer, StructureSpec("ttn", bond_dim=4096)).generator  # tanh levels
    ht_svd_start_(gen, layer.weight)
    assert _rel(gen, layer.weight) < 0.05


def test_a_weight_the_tree_can_hold_is_found_at_its_bonds():
    torch.manual_seed(0)
    layer = nn.Linear(64, 64)
    spec = StructureSpec("ttn", bond_dim=3, activation="identity")
    weight = from_module(layer, spec).generator().detach()  # a random tree's weight: bonds 3
    gen = from_module(layer, spec).generator
    assert _rel(gen, weight) > 0.5  # another random tree is far from it
    ht_svd_start_(gen, weight)
    assert _rel(gen, weight) < 1e-5


def test_a_truncated_tree_is_within_the_ht_svd_bounds():
    torch.manual_seed(0)
    layer = nn.Linear(64, 64)
    gen = from_module(layer, StructureSpec("ttn", bond_dim=3, activation="identity")).generator
    ht_svd_start_(gen, layer.weight)
    err = _rel(gen, layer.weight)
    # Grasedyck: max_t eps_t <= err <= sqrt(sum_t eps_t^2), eps_t the relative truncation error of
    # the matricisation on node t's physical indices at t's bond (every node but the root).
    full, axes = weight_tensor(gen, layer.weight)
    sizes, under = gen.network.index_sizes, {}
    eps = []
    for node in tree_order(gen)[:-1]:
        phys = [i for g in node.group for i in under.get(g, (g,))]
        under[node.bond] = phys
        rows = [axes.index(i) for i in phys]
        m = full.permute(rows + [k for k in range(full.dim()) if k not in rows])
        s = torch.linalg.svdvals(m.reshape(math.prod(sizes[i] for i in phys), -1))
        eps.append(float(s[sizes[node.bond] :].pow(2).sum().sqrt() / s.pow(2).sum().sqrt()))
    assert max(eps) > 0.1  # the bonds truncate
    assert max(eps) - 1e-9 <= err <= sum(e * e for e in eps) ** 0.5 + 1e-9


@pytest.mark.parametrize(
    "spec",
    [
        StructureSpec("tt", bond_dim=3),
        StructureSpec("augttn", bond_dim=2),
        StructureSpec("mera", bond_dim=2),
        StructureSpec("ttn", bond_dim=2, options={"mixing": "siblings"}),
        StructureSpec("ttn", bond_dim=2, activation="relu"),
        StructureSpec("ttn", bond_dim=2, output_activation="tanh"),
    ],
    ids=["tt", "augttn", "mera", "ttn-mixing", "ttn-relu", "ttn-tanh-root"],
)
def test_only_trees_with_near_linear_levels_take_the_start(spec):
    layer = nn.Linear(64, 64)
    gen = from_module(layer, spec).generator
    assert tree_order(gen) is None
    with pytest.raises(TNConfigError, match="HT-SVD start needs a tree"):
        ht_svd_start_(gen, layer.weight)


def test_the_fit_starts_a_tree_from_its_ht_svd_where_it_is_better():
    torch.manual_seed(0)
    # a teacher layer whose weight a tree with bonds 4 holds: the start must fit it at once
    spec = StructureSpec("ttn", bond_dim=4)
    teacher = nn.Sequential(nn.Linear(64, 64))
    with torch.no_grad():
        linear = StructureSpec("ttn", bond_dim=4, activation="identity")
        teacher[0].weight.copy_(from_module(teacher[0], linear).generator())
    student = copy.deepcopy(teacher)
    student[0] = from_module(teacher[0], spec)
    batches = [torch.randn(32, 64) for _ in range(2)]
    random = layerwise_fit(teacher, copy.deepcopy(student), ["0"], batches, steps=0, lr=1e-2)
    svd = layerwise_fit(teacher, student, ["0"], batches, steps=0, lr=1e-2, start="svd")
    assert svd["0"]["start"] == "svd" and random["0"]["initial"] > 0.5
    assert svd["0"]["initial"] < 0.01  # tanh levels: near the linear tree, not exact
