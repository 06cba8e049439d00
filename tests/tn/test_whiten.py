"""Whitened starts fit the outputs: the best rank-r fit for lowrank, exact at full bonds, closer
on the outputs than the weight's own truncation for chains and trees."""

import pytest
import torch
from torch import nn

from adntn_cli.layers import from_module
from adntn_cli.tn import StructureSpec
from adntn_cli.tn.htsvd import ht_svd_start_
from adntn_cli.tn.svdstart import svd_start_
from adntn_cli.tn.whiten import input_factors


def _inputs(n: int, features: int, seed: int = 0) -> torch.Tensor:
    """Inputs as a trained layer sees them: after a ReLU, with unequal feature scales."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-1, 1, features)[torch.randperm(features, generator=g)]
    return torch.relu(torch.randn(n, features, generator=g) + 0.5) * scales


def _out_err(gen, weight, x) -> float:
    w = gen().detach().double()
    ref = weight.detach().double()
    return float(((w - ref) @ x.double().T).norm() / (ref @ x.double().T).norm())


def _start(structure):
    return ht_svd_start_ if structure == "ttn" else svd_start_


def test_the_factors_are_each_inputs_second_moment_root_and_its_inverse():
    layer = nn.Linear(37, 20)  # padded to 40 inputs for tt: a direction the inputs never take
    gen = from_module(layer, StructureSpec("tt", bond_dim=3)).generator
    x = _inputs(256, 37)
    factors = input_factors(gen, x)
    assert list(factors) == list(gen.network.w_in)
    for root, inverse in factors.values():
        eye = torch.eye(root.shape[0], dtype=torch.float64)
        torch.testing.assert_close(root @ inverse, eye)
        torch.testing.assert_close(root, root.T)
        assert torch.isfinite(inverse).all()
    lowrank = from_module(layer, StructureSpec("lowrank", bond_dim=3)).generator
    ((root, _),) = input_factors(lowrank, x).values()  # one input index: the whole moment
    torch.testing.assert_close(root @ root, x.double().T @ x.double() / len(x))


@pytest.mark.parametrize("rank", [1, 4])
def test_whitened_lowrank_is_the_best_fit_of_its_rank_on_the_outputs(rank):
    torch.manual_seed(0)
    layer = nn.Linear(40, 30)
    x = _inputs(512, 40)
    gen = from_module(layer, StructureSpec("lowrank", bond_dim=rank)).generator
    svd_start_(gen, layer.weight, inputs=x)
    ((root, _),) = input_factors(gen, x).values()
    s = torch.linalg.svdvals(layer.weight.detach().double() @ root)  # the outputs' best: W L
    best = float(s[rank:].pow(2).sum().sqrt() / s.pow(2).sum().sqrt())
    assert _out_err(gen, layer.weight, x) == pytest.approx(best, rel=1e-5)
    plain = from_module(layer, StructureSpec("lowrank", bond_dim=rank)).generator
    svd_start_(plain, layer.weight)
    assert _out_err(plain, layer.weight, x) > best  # the weight's own truncation fits worse


@pytest.mark.parametrize("structure", ["tt", "ttn"])
def test_whitening_keeps_full_bonds_exact(structure):
    torch.manual_seed(0)
    layer = nn.Linear(37, 53)
    spec = StructureSpec(structure, bond_dim=4096, activation="identity")
    gen = from_module(layer, spec).generator
    _start(structure)(gen, layer.weight, inputs=_inputs(256, 37))
    w, ref = gen().detach().double(), layer.weight.detach().double()
    assert float((w - ref).norm() / ref.norm()) < 1e-5


def _kronecker_inputs(gen, n: int, seed: int) -> torch.Tensor:
    """Inputs whose second moment is a product over ``gen``'s input indices, each anisotropic:
    each index of a standard normal sample mixed by its own ill-conditioned matrix."""
    g = torch.Generator().manual_seed(0)  # the distribution: the same for every seed
    sizes = [gen.network.index_sizes[i] for i in gen.network.w_in]
    mixes = [torch.linalg.qr(torch.randn(d, d, generator=g))[0] * torch.logspace(-1, 1, d)
             for d in sizes]  # fmt: skip
    z = torch.randn(n, *sizes, generator=torch.Generator().manual_seed(seed))
    for k, mix in enumerate(mixes):  # (n, .., i_k, ..) x (i_k, i_k) along axis k + 1
        z = torch.tensordot(z, mix, dims=([k + 1], [1])).movedim(-1, k + 1)
    return z.reshape(n, -1)


@pytest.mark.parametrize("structure", ["tt", "ttn"])
def test_a_whitened_truncation_fits_the_outputs_better(structure):
    torch.manual_seed(0)
    layer = nn.Linear(64, 64)
    spec = StructureSpec(structure, bond_dim=3, activation="identity")
    plain, whitened = (from_module(layer, spec).generator for _ in range(2))
    _start(structure)(plain, layer.weight)
    _start(structure)(whitened, layer.weight, inputs=_kronecker_inputs(plain, 2048, seed=0))
    held_out = _kronecker_inputs(plain, 2048, seed=1)  # the same distribution, other samples
    better, worse = (_out_err(g, layer.weight, held_out) for g in (whitened, plain))
    assert better < 0.9 * worse
