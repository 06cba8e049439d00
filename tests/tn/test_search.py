"""Choosing bond dimensions for a target ratio: the uniform choice, then the budget fill."""

from __future__ import annotations

import dataclasses

import pytest

from adntn_cli.tn import StructureSpec, TNGenerator
from adntn_cli.tn.errors import TNConfigError
from adntn_cli.tn.search import bond_dim_for_ratio
from adntn_cli.tn.structures import get_structure

SHAPE = (512, 1024)  # (out, in)


def _params(spec: StructureSpec) -> int:
    return TNGenerator(spec, SHAPE, device="meta").num_params


def _levels(spec: StructureSpec) -> list[int]:
    gen = TNGenerator(spec, SHAPE, device="meta")
    return gen.structure.bond_dims(spec, gen.structure.levels(gen.tz, spec))


@pytest.mark.parametrize("structure", ["ttn", "augttn", "tt", "mera"])
@pytest.mark.parametrize("target", [40, 400])
def test_the_fill_uses_the_budget_the_uniform_choice_leaves_and_stays_within_it(structure, target):
    spec = StructureSpec(structure)
    uniform = bond_dim_for_ratio(spec, SHAPE, target, fill=False)
    filled = bond_dim_for_ratio(spec, SHAPE, target)
    allowed = SHAPE[0] * SHAPE[1] / target
    assert _params(uniform) <= _params(filled) <= allowed
    assert all(f >= u for f, u in zip(_levels(filled), _levels(uniform), strict=True))
    for level, chi in enumerate(_levels(filled)):  # no single raise would still fit
        bigger = [c + (k == level) for k, c in enumerate(_levels(filled))]
        try:
            n = _params(dataclasses.replace(spec, bond_dim=bigger))
        except Exception:  # a raise the memory budget refuses (mera)
            continue
        assert n > allowed or n == _params(filled), (level, chi)


def test_tt_at_77000x_on_alexnets_fc7_gets_bonds_of_2_where_uniform_gives_1():
    shape, target = (4096, 4096), 77000
    uniform = bond_dim_for_ratio(StructureSpec("tt"), shape, target, fill=False)
    filled = bond_dim_for_ratio(StructureSpec("tt"), shape, target)
    before, after = (TNGenerator(s, shape, device="meta") for s in (uniform, filled))
    assert uniform.bond_dim == 1 and before.ratio > 2 * target
    assert 2 in filled.bond_dim and target <= after.ratio < 1.1 * target


def test_the_fill_raises_trees_from_the_root_and_chains_from_the_middle():
    assert get_structure("ttn").fill_order(3) == [0, 1, 2]
    assert get_structure("tt").fill_order(5) == [2, 1, 3, 0, 4]
    assert get_structure("tt").fill_order(4) == [1, 2, 0, 3]


def test_lowrank_and_a_budget_with_nothing_left_keep_the_uniform_spec():
    spec = bond_dim_for_ratio(StructureSpec("lowrank"), SHAPE, 100)
    assert (
        spec.bond_dim
        == bond_dim_for_ratio(StructureSpec("lowrank"), SHAPE, 100, fill=False).bond_dim
    )
    assert isinstance(spec.bond_dim, int)


def test_the_fill_keeps_mera_under_its_caps_and_every_bond_under_max_bond():
    shape = (4096, 4096)
    spec = StructureSpec("mera", options={"leg_dim": 2})
    filled = bond_dim_for_ratio(spec, shape, 500)
    caps = TNGenerator(filled, shape, device="meta").network.info["caps"]
    assert all(c <= cap for c, cap in zip(filled.bond_dim, caps, strict=True))
    ttn = bond_dim_for_ratio(StructureSpec("ttn"), shape, 1.5, max_bond=16)
    assert max([ttn.bond_dim] if isinstance(ttn.bond_dim, int) else ttn.bond_dim) <= 16


FC7 = (4096, 4096)  # AlexNet's FC7: augttn at legs of 4 reaches at most 12,520x


@pytest.mark.parametrize("structure", ["augttn", "mera"])
def test_a_ratio_out_of_reach_at_the_default_legs_is_reached_with_smaller_legs(structure):
    chosen = bond_dim_for_ratio(StructureSpec(structure), FC7, 20000)
    assert chosen.options["leg_dim"] in (2, 3)
    gen = TNGenerator(chosen, FC7, device="meta")
    assert gen.num_params <= gen.dense_params / 20000
    assert gen.structure.max_leg_dim(chosen) == chosen.options["leg_dim"]
    within = bond_dim_for_ratio(StructureSpec(structure), FC7, 2000)  # reachable: legs kept
    assert "leg_dim" not in within.options


def test_legs_the_user_chose_are_kept_and_the_error_says_what_they_reach():
    pinned = StructureSpec("augttn", options={"leg_dim": 4})
    with pytest.raises(TNConfigError, match=r"has 1340 parameters.*at most 12,520 here$"):
        bond_dim_for_ratio(pinned, FC7, 20000)
    factors = StructureSpec("augttn", factors=((4,) * 6, (4,) * 6))  # legs of 4x4: big ones
    with pytest.raises(TNConfigError, match=r"generator has 131174 parameters.*at most 128 here$"):
        bond_dim_for_ratio(factors, FC7, 20000)


def test_a_ratio_out_of_reach_at_every_leg_size_names_the_smallest_legs_and_their_most():
    with pytest.raises(TNConfigError) as err:
        bond_dim_for_ratio(StructureSpec("augttn"), FC7, 77000)
    assert str(err.value) == (
        "augttn cannot reach 77000x on 4096x4096: its smallest generator (options.leg_dim 3) has "
        "248 parameters, the budget is 218; target_ratio can be at most 67,650 here"
    )
