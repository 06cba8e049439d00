"""The SVD start: exact at full bonds, Eckart-Young for lowrank, chains only; in the fit."""

import copy

import pytest
import torch
from torch import nn

from adntn_cli.distill import layerwise_fit
from adntn_cli.layers import from_module
from adntn_cli.tn import StructureSpec, TNConfigError
from adntn_cli.tn.svdstart import chain_order, svd_start_

MODULES = [nn.Linear(36, 48), nn.Linear(37, 53), nn.Conv2d(6, 10, 3), nn.Linear(1000, 10)]


def _rel(gen, weight) -> float:
    w, ref = gen().detach().double(), weight.detach().double()
    return float((w - ref).norm() / ref.norm())


@pytest.mark.parametrize("structure", ["tt", "lowrank"])
@pytest.mark.parametrize(
    "module", MODULES, ids=lambda m: f"{type(m).__name__}{tuple(m.weight.shape)}"
)
def test_full_bonds_reproduce_the_weight(structure, module):
    torch.manual_seed(0)
    gen = from_module(module, StructureSpec(structure, bond_dim=4096)).generator
    svd_start_(gen, module.weight)  # padded shapes (53 x 37) and size-1 legs included
    assert _rel(gen, module.weight) < 1e-6 and float(gen.scale.detach()) == 1.0


@pytest.mark.parametrize("rank", [1, 3, 8])
def test_lowrank_is_the_truncated_svd(rank):
    torch.manual_seed(0)
    layer = nn.Linear(40, 30)
    gen = from_module(layer, StructureSpec("lowrank", bond_dim=rank)).generator
    svd_start_(gen, layer.weight)
    s = torch.linalg.svdvals(layer.weight.detach().double())
    best = float(s[rank:].pow(2).sum().sqrt() / s.pow(2).sum().sqrt())  # Eckart-Young
    assert _rel(gen, layer.weight) == pytest.approx(best, rel=1e-5)


def test_a_truncated_train_is_within_the_tt_svd_bounds():
    torch.manual_seed(0)
    layer = nn.Linear(64, 64)
    weight = layer.weight.detach()
    gen = from_module(layer, StructureSpec("tt", bond_dim=3)).generator
    svd_start_(gen, weight)
    err = _rel(gen, weight)
    # Oseledets: max_k eps_k <= err <= sqrt(sum_k eps_k^2), eps_k the relative truncation error
    # of the k-th unfolding (legs 1..k against the rest) at bond k's size.
    chain, sizes = chain_order(gen), gen.network.index_sizes
    order = [*gen.network.w_out, *gen.network.w_in]
    by_core = [i for _, phys, _ in chain for i in phys]
    full = weight.double().reshape([sizes[i] for i in order])
    full = full.permute([order.index(i) for i in by_core])  # (o1 i1, o2 i2, ...)
    eps, rows = [], 1
    for k, (_, phys, bonds) in enumerate(chain[:-1]):
        for i in phys:
            rows *= sizes[i]
        bond = sizes[next(b for b in bonds if b in chain[k + 1][2])]
        s = torch.linalg.svdvals(full.reshape(rows, -1))
        eps.append(float(s[bond:].pow(2).sum().sqrt() / s.pow(2).sum().sqrt()))
    assert max(eps) > 0.1  # the bonds truncate
    assert max(eps) - 1e-9 <= err <= sum(e * e for e in eps) ** 0.5 + 1e-9


def test_trees_and_nonlinear_networks_are_no_chains():
    layer = nn.Linear(64, 64)
    for spec in (StructureSpec("ttn", bond_dim=3), StructureSpec("ttn", bond_dim=3,
                 activation="identity"), StructureSpec("mera", bond_dim=2)):  # fmt: skip
        gen = from_module(layer, spec).generator
        assert chain_order(gen) is None
        with pytest.raises(TNConfigError, match="multilinear chain"):
            svd_start_(gen, layer.weight)


def test_the_fit_keeps_the_svd_start_only_where_it_is_better():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32))
    student = copy.deepcopy(teacher)
    student[0] = from_module(teacher[0], StructureSpec("tt", bond_dim=4))
    student[2] = from_module(teacher[2], StructureSpec("mera", bond_dim=2))  # no chain, no tree
    batches = [torch.randn(32, 64) for _ in range(2)]
    random = layerwise_fit(teacher, copy.deepcopy(student), ["0", "2"], batches, steps=0, lr=1e-2)
    svd = layerwise_fit(teacher, student, ["0", "2"], batches, steps=0, lr=1e-2, start="svd")
    assert svd["0"]["start"] == "svd" and svd["0"]["initial"] < random["0"]["initial"] / 2
    assert svd["2"]["start"] == "random" and "start" not in random["0"]
    assert _rel(student[0].generator, teacher[0].weight) < 1  # the start stayed in the layer


def test_a_bond_the_rank_cannot_fill_is_padded_with_seeded_noise():
    torch.manual_seed(0)
    layer = nn.Linear(36, 48)
    gen = from_module(layer, StructureSpec("tt", bond_dim=[2, 4096])).generator
    state = torch.random.get_rng_state()
    svd_start_(gen, layer.weight, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator untouched
    cores = [gen.cores[name] for name, _, _ in chain_order(gen)]
    assert all(c.abs().min() > 0 for c in cores)  # no exact zeros: every entry gets a gradient
    # the best chain with a first bond of 2 is the best rank-2 cut there: the start attains it
    err = _rel(gen, layer.weight)
    legs, order = gen.tz.legs, [*gen.network.w_out, *gen.network.w_in]
    full = layer.weight.detach().double().reshape([gen.network.index_sizes[i] for i in order])
    first = [order.index(i) for i in ("o0", "i0")]
    rest = [k for k in range(full.dim()) if k not in first]
    s = torch.linalg.svdvals(full.permute(first + rest).reshape(legs[0][0] * legs[0][1], -1))
    assert err == pytest.approx(float(s[2:].pow(2).sum().sqrt() / s.pow(2).sum().sqrt()), rel=1e-4)


def test_a_worse_svd_start_is_undone(monkeypatch):
    from adntn_cli import distill

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(64, 48))
    student = copy.deepcopy(teacher)
    student[0] = from_module(teacher[0], StructureSpec("tt", bond_dim=4))
    random_start = copy.deepcopy(student[0].state_dict())

    def garbage(layer, dense):
        with torch.no_grad():
            for core in layer.generator.cores.values():
                core.mul_(1e3)
        return True

    monkeypatch.setattr(distill, "_svd_start", garbage)
    batches = [torch.randn(32, 64) for _ in range(2)]
    fit = layerwise_fit(teacher, student, ["0"], batches, steps=0, lr=1e-2, start="svd")
    assert fit["0"]["start"] == "random"
    for key, value in student[0].state_dict().items():
        torch.testing.assert_close(value, random_start[key], rtol=0, atol=0)


def test_a_fit_that_ends_worse_goes_back_to_the_svd_start():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(64, 48))
    student = copy.deepcopy(teacher)
    student[0] = from_module(teacher[0], StructureSpec("tt", bond_dim=4))
    batches = [torch.randn(32, 64) for _ in range(2)]
    fit = layerwise_fit(teacher, student, ["0"], batches, steps=5, lr=1e3, start="svd")
    assert fit["0"]["start"] == "svd" and fit["0"]["final"] == fit["0"]["initial"]
    reference = copy.deepcopy(student[0])
    svd_start_(reference.generator, teacher[0].weight, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(student[0].generator(), reference.generator())
