"""Every registered structure against oracles: one naive einsum, gradcheck, formulas, init."""

import math

import pytest
import torch

from adntn_cli.tn import STRUCTURES, StructureSpec, TNConfigError, TNGenerator, default_target_std

from .helpers import VARIANTS, make, naive_weight, variant_id

SHAPES = [(12, 20), (16, 8, 3, 3), (24, 24)]


def test_registry_holds_the_five_structures():
    assert set(STRUCTURES) == {"ttn", "augttn", "mera", "tt", "lowrank"}


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
@pytest.mark.parametrize("shape", SHAPES)
def test_multilinear_case_equals_one_naive_einsum(variant, shape):
    name, kw = variant
    gen = make(name, shape, activation="identity", **kw)
    program_out = gen.program.run(dict(gen.cores), gen.scale)
    torch.testing.assert_close(program_out, naive_weight(gen), rtol=1e-10, atol=1e-12)
    tz = gen.tz
    ref = naive_weight(gen).reshape(tz.out_padded, *tz.in_padded)
    ref = ref[(slice(0, tz.out_size), *(slice(0, s) for s in tz.in_sizes))].reshape(shape)
    torch.testing.assert_close(gen(), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
@pytest.mark.parametrize("activation", ["identity", "tanh"])
def test_gradcheck(variant, activation):
    name, kw = variant
    gen = make(name, (8, 12), bond_dim=2, activation=activation, **kw)
    names = list(gen.cores)
    inputs = tuple(gen.cores[n].detach().clone().requires_grad_(True) for n in names)
    scale = gen.scale.detach().clone().requires_grad_(True)

    def f(*args):
        return gen.program.run(dict(zip(names, args[:-1], strict=True)), args[-1])

    assert torch.autograd.gradcheck(f, (*inputs, scale), eps=1e-6, atol=1e-6)


def _ttn_reference(gen, act):
    """A recursive TTN over 4 legs with leaf pairs (0,1), (2,3): independent of the program."""
    c = {k: v.detach() for k, v in gen.cores.items()}
    tz = gen.tz
    leaves = [c[f"leaf{k}"].reshape(tz.leg_dims[k], -1) for k in range(4)]

    def node(h1, h2, g):  # (p, a), (q, b), (a, b, c) -> (p q, c)
        return act(torch.einsum("pa,qb,abc->pqc", h1, h2, g).reshape(-1, g.shape[-1]))

    left = node(leaves[0], leaves[1], c["node0"])
    right = node(leaves[2], leaves[3], c["node1"])
    w = torch.einsum("pa,qb,ab->pq", left, right, c["root"]) * gen.scale.detach()
    # (o0 i0 o1 i1 | o2 i2 o3 i3) -> (o0 o1 o2 o3, i0 i1 i2 i3)
    dims = [d for leg in tz.legs for d in leg]
    w = w.reshape(dims).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return w.reshape(tz.out_padded, tz.in_padded_size)


@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu", "silu"])
def test_ttn_matches_recursive_reference(activation):
    gen = make("ttn", (16, 81), bond_dim=3, activation=activation, factors=([2] * 4, [3] * 4))
    act = {"tanh": torch.tanh, "relu": torch.relu}.get(activation)
    act = act or getattr(torch.nn.functional, activation)
    torch.testing.assert_close(gen().detach(), _ttn_reference(gen, act), rtol=1e-10, atol=1e-12)


def test_tt_and_lowrank_match_matrix_products():
    gen = make("tt", (16, 81), bond_dim=3, factors=([2] * 4, [3] * 4))
    cores = [gen.cores[f"core{k}"].detach() for k in range(4)]
    w = cores[0].reshape(6, 3)  # (p0, a)
    for core in cores[1:]:
        w = torch.einsum("xa,a...->x...", w, core.reshape(core.shape[0], 6, -1)).reshape(
            -1, core.shape[-1] if core.dim() == 4 else 1
        )
    w = (w.reshape([2, 3] * 4).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(16, 81)) * gen.scale
    torch.testing.assert_close(gen().detach(), w.detach(), rtol=1e-10, atol=1e-12)
    lr = make("lowrank", (16, 81), bond_dim=5)
    ref = lr.cores["u"] @ lr.cores["v"] * lr.scale
    torch.testing.assert_close(lr(), ref, rtol=1e-10, atol=1e-12)


# -- parameter counts against the documented closed forms (docs/architectures.md) -----------------
def _ttn_formula(d, n, chi):
    return n * d * chi + (n - 2) * chi**3 + chi**2 + 1


@pytest.mark.parametrize("n,o,i,chi", [(4, 2, 3, 3), (8, 2, 2, 3), (4, 3, 3, 5)])
def test_param_count_formulas(n, o, i, chi):
    d = o * i
    factors = ([o] * n, [i] * n)
    shape = (o**n, i**n)
    n_dis = (n - 1) // 2

    def count(name, **kw):
        return make(name, shape, bond_dim=chi, factors=factors, **kw).num_params

    assert count("ttn") == _ttn_formula(d, n, chi)
    mix = count("ttn", options={"mixing": "siblings"})
    assert mix == _ttn_formula(d, n, chi) + (n - 2) * chi**4
    assert count("augttn") == _ttn_formula(d, n, chi) + n_dis * d**4
    sep = count("augttn", options={"disentangler": "separable"})
    assert sep == _ttn_formula(d, n, chi) + n_dis * (o**4 + i**4)
    assert count("tt") == 2 * d * chi + (n - 2) * d * chi**2 + 1
    assert count("lowrank") == chi * (o**n + i**n) + 1


@pytest.mark.parametrize("chi,d", [(2, 4), (3, 4), (4, 4)])
def test_mera_param_formula(chi, d):
    gen = make("mera", (2**8, 2**8), bond_dim=chi, factors=([2] * 8, [2] * 8))
    assert gen.num_params == chi**2 + 2 * chi**3 + chi**4 + 4 * chi * d**2 + 3 * d**4 + 1


def test_parameter_count_comes_from_the_parameters():
    gen = make("ttn", (64, 96), bond_dim=4)
    assert gen.num_params == sum(p.numel() for p in gen.parameters())
    assert gen.ratio == pytest.approx(64 * 96 / gen.num_params)


def test_bonds_are_clamped_to_what_the_legs_can_carry():
    gen = make("ttn", (4, 6), bond_dim=50, factors=([2, 2], [2, 3]))
    assert max(gen.bond_dims) <= 6
    tt = make("tt", (16, 81), bond_dim=1000, factors=([2] * 4, [3] * 4))
    assert tt.bond_dims == [6, 36, 6]


# -- initialisation -----------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
@pytest.mark.parametrize("shape,bond_dim", [((64, 96), 2), ((64, 96), 6), ((256, 512), 4)])
def test_init_matches_the_target_statistics(variant, shape, bond_dim):
    name, kw = variant
    gen = make(name, shape, bond_dim=bond_dim, dtype=torch.float32, **kw)
    w = gen().detach()
    target = default_target_std(shape)
    assert 0.5 < float(w.std()) / target < 2.0
    assert abs(float(w.mean())) < 0.05 * target
    x = torch.randn(512, shape[1])
    dense = torch.nn.Linear(shape[1], shape[0], bias=False)
    ratio = float((x @ w.T).var()) / float(dense(x).detach().var())
    assert 0.5 < ratio < 2.0
    for label, std in gen.program.pre_activation_stds(dict(gen.cores))[:-1]:
        assert std == pytest.approx(1.0, rel=1e-3), label


@pytest.mark.parametrize("depth_legs", [2, 3, 5, 8])
def test_init_scale_holds_at_any_depth(depth_legs):
    gen = make(
        "ttn",
        (2**depth_legs, 2**depth_legs),
        bond_dim=3,
        dtype=torch.float32,
        factors=([2] * depth_legs, [2] * depth_legs),
    )
    w = gen().detach()
    target = default_target_std(w.shape)
    assert 0.5 < float(w.std()) / target < 2.0


def test_target_std_is_honoured():
    gen = make("augttn", (64, 96), target_std=0.37)
    assert float(gen().detach().std()) == pytest.approx(0.37, rel=1e-6)


def test_seeded_generator_reproduces_the_cores():
    a = make("ttn", (64, 96), generator=torch.Generator().manual_seed(3))
    b = make("ttn", (64, 96), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a(), b())


# -- expressiveness -----------------------------------------------------------------------------
def test_ttn_fits_an_arbitrary_small_matrix():
    torch.manual_seed(1)
    target = torch.randn(12, 10, dtype=torch.float64)
    gen = make("ttn", (12, 10), bond_dim=16, activation="identity", n_legs=3)
    opt = torch.optim.LBFGS(
        gen.parameters(),
        lr=1,
        max_iter=2000,
        tolerance_grad=1e-14,
        tolerance_change=0,
        history_size=50,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = (gen() - target).pow(2).sum()
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    rel = float((gen().detach() - target).norm() / target.norm())
    assert rel < 1e-6


# -- bad configurations -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec,match",
    [
        (StructureSpec("nope"), "unknown structure 'nope'; known: augttn"),
        (StructureSpec("ttn", bond_dim=[2, 3, 4, 5, 6]), "bond_dim has 5 entries"),
        (StructureSpec("ttn", bond_dim=0), "positive integers"),
        (StructureSpec("ttn", activation="swish2"), "unknown activation 'swish2'"),
        (StructureSpec("tt", activation="tanh"), "multilinear baseline"),
        (StructureSpec("ttn", options={"foo": 1}), "no option 'foo'"),
        (StructureSpec("ttn", options={"mixing": "neighbours"}), "non-sibling"),
        (StructureSpec("augttn", options={"disentangler": "x"}), "disentangler form"),
        (StructureSpec("mera", options={"top_legs": 99}), "more than top_legs"),
    ],
)
def test_bad_specs_raise_clear_errors(spec, match):
    with pytest.raises(TNConfigError, match=match):
        TNGenerator(spec, (64, 96))


def test_meta_device_builds_without_memory_or_init():
    gen = TNGenerator(StructureSpec("ttn", bond_dim=20), (4096, 25088), device="meta")
    assert gen.scale.device.type == "meta"
    assert math.isclose(gen.ratio, 4096 * 25088 / gen.num_params)
