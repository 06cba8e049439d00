"""The compiled program: merging, costs, the memory budget and the two execution schedules."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from adntn_cli.tn import MemoryBudgetError, StructureSpec, TNGenerator

from .helpers import make


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op returns (views included: they are never larger)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def test_identity_levels_merge_into_one_linear_run():
    tanh = make("ttn", (64, 96), activation="tanh")
    linear = make("ttn", (64, 96), activation="identity")
    assert len(tanh.program.steps) == 3  # two internal nodes and the root
    assert len(linear.program.steps) == 1
    mixed = make("mera", (256, 256), activation="tanh", factors=([2] * 8, [2] * 8))
    assert [c.activation.name for c in mixed.program.steps] == ["tanh", "identity"]


@pytest.mark.parametrize(
    "structure,shape",
    [("ttn", (256, 384)), ("mera", (256, 256)), ("tt", (256, 384)), ("augttn", (256, 256))],
)
def test_planned_peak_agrees_with_the_measured_one(structure, shape):
    gen = make(structure, shape, bond_dim=4, dtype=torch.float32)
    planned = gen.describe()["peak_bytes"]
    with torch.no_grad(), LargestTensor() as probe:
        gen()
    assert planned <= probe.largest <= 1.5 * planned


def test_untapered_mera_on_vgg_fc6_is_refused_with_its_estimate():
    budget = 8 * 2**30
    with pytest.raises(MemoryBudgetError) as err:
        TNGenerator(
            StructureSpec("mera", bond_dim=16), (4096, 25088), device="meta", memory_budget=budget
        )
    msg = str(err.value)
    assert "GiB" in msg and "8.0 GiB" in msg and "taper" in msg
    tapered = TNGenerator(
        StructureSpec("mera", bond_dim=[4, 6, 8]),
        (4096, 25088),
        device="meta",
        memory_budget=budget,
    )
    assert tapered.describe()["total_bytes"] < budget


def test_flops_and_passes_are_reported():
    gen = TNGenerator(StructureSpec("ttn", bond_dim=20), (4096, 25088), device="meta")
    d = gen.describe(batch=64)
    w = 4096 * 25088
    # The root contraction alone is |W| * chi multiply-adds; the program adds the small levels.
    assert w * 16 * 2 <= d["flops"] <= w * 20 * 2 * 1.2
    assert 2.0 <= d["passes"] < 2.2  # the root's output and its (O, I) layout copy
    assert d["schedule"] == "contract"
    assert 1000 < d["ratio"] < 10000


def test_contract_needs_fewer_macs_than_the_dense_matmul_for_fc6():
    gen = TNGenerator(StructureSpec("ttn", bond_dim=20), (4096, 25088), device="meta")
    batch = 64
    contract = gen.program.contract_cost(batch).macs
    assert contract < batch * 4096 * 25088


@pytest.mark.parametrize(
    "structure,options",
    [
        ("ttn", {}),
        ("ttn", {"mixing": "siblings"}),
        ("tt", {}),
        ("lowrank", {}),
        ("augttn", {"disentangler": "separable"}),
        ("augttn", {}),  # full disentanglers: x meets the mixed legs, and still contracts
        ("augttn", {"mixing": "siblings"}),
        ("mera", {}),
        ("mera", {"top_legs": 3}),
    ],
)
@pytest.mark.parametrize("shape", [(24, 40), (97, 13)])
@pytest.mark.parametrize("batch", [(1,), (7,), (5, 2)])
def test_both_schedules_give_the_same_outputs_and_gradients(structure, options, shape, batch):
    """Every structure whose final step is linear contracts, exactly (float64), padded shapes
    included (97 and 13 are prime: both sides are padded)."""
    gen = make(structure, shape, bond_dim=3, options=options)
    assert gen.contractible
    x = torch.randn(*batch, shape[1], dtype=torch.float64, requires_grad=True)
    r = torch.randn(*batch, shape[0], dtype=torch.float64)

    def run(schedule):
        gen.zero_grad()
        x.grad = None
        y = gen.contract(x) if schedule == "contract" else F.linear(x, gen())
        (y * r).sum().backward()
        grads = [p.grad.clone() for p in gen.parameters()]
        return y.detach(), grads, x.grad.clone()

    y1, g1, gx1 = run("materialise")
    y2, g2, gx2 = run("contract")
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(gx1, gx2)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b)


def test_structures_that_cannot_contract_say_so():
    for gen in (
        make("mera", (64, 96), output_activation="tanh"),
        make("augttn", (64, 96), output_activation="tanh"),
        make("ttn", (64, 96), output_activation="tanh"),
        make("ttn", (8, 4, 3, 3)),
    ):
        assert not gen.contractible
        assert set(gen.schedules(64)) == {"materialise"}
        with pytest.raises(RuntimeError, match="cannot contract"):
            gen.contract(torch.randn(2, 96, dtype=torch.float64))


def test_schedule_choice_follows_the_cost_model():
    # A barely compressed layer: generating W costs more than the matmul it feeds.
    gen = TNGenerator(StructureSpec("lowrank", bond_dim=64), (128, 128), device="meta")
    assert gen.choose_schedule(1) == "contract"
    assert gen.choose_schedule(100_000) == "materialise"
    cached = gen.schedules(4096, weight_cached=True)
    assert cached["materialise"].macs == 4096 * 128 * 128


def _blocks_moved(gen) -> int:
    """How many blocks of axes the weight's final copy into (o..., i...) moves: runs of axes that
    stay together (a copy of few blocks is a few fast passes; one of many small legs is slow)."""
    perm = gen.program.steps[-1].final_perm
    return 1 + sum(b != a + 1 for a, b in itertools.pairwise(perm))


@pytest.mark.parametrize(
    "structure,legs,blocks",
    [
        ("ttn", 12, 4),  # [O_L, I_L, O_R, I_R]
        ("ttn", 13, 4),
        ("augttn", 12, 14),  # legs 0 and 11 alone, 5 disentangler pairs: 2 blocks each (not 24)
        ("augttn", 13, 14),  # leg 0 alone, 6 pairs
        ("augttn", 5, 6),
    ],
)
def test_a_tree_forms_its_weight_in_a_few_blocks(structure, legs, blocks):
    shape = (2**legs, 2**legs)
    gen = make(structure, shape, bond_dim=2, factors=([2] * legs, [2] * legs), device="meta")
    assert _blocks_moved(gen) == blocks
