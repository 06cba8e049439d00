"""Planning: defaults and overrides, target_ratio resolution, totals, validate-then-mutate."""

import pytest
import torch
from torch import nn

from adntn_cli.errors import RecipeError
from adntn_cli.layers import GeneratedLinear
from adntn_cli.plan import apply_plan, compress_, plan
from adntn_cli.recipe import parse_recipe


def small_model():
    return nn.Sequential(
        nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 128), nn.ReLU(), nn.Linear(128, 10)
    )


def recipe(*layers, **top):
    return parse_recipe({"version": 1, "layers": list(layers), **top})


def test_defaults_apply_and_layers_override():
    r = recipe(
        {"select": "0"},
        {"select": "2", "structure": "tt", "bond_dim": 2},
        defaults={"structure": "mera", "bond_dim": 3, "activation": "gelu"},
    )
    p = plan(small_model(), r)
    specs = {lp.layer: lp.spec for lp in p.layers}
    assert specs["0"].structure == "mera" and specs["0"].activation == "gelu"
    assert specs["2"].structure == "tt" and specs["2"].bond_dim == 2
    assert specs["2"].activation is None  # the defaults' activation is not forced on a baseline


@pytest.mark.parametrize("structure", ["ttn", "augttn", "mera", "tt"])
@pytest.mark.parametrize("target", [20, 60])
def test_target_ratio_picks_the_largest_generator_within_budget(structure, target):
    r = recipe({"select": "0", "structure": structure, "target_ratio": target})
    (lp,) = plan(nn.Sequential(nn.Linear(256, 512)), r).layers
    assert lp.record["ratio"] >= target
    bigger = lp.spec.bond_dim
    bigger = [b + 1 for b in bigger] if isinstance(bigger, (list, tuple)) else bigger + 1
    from dataclasses import replace

    from adntn_cli.tn import TNGenerator

    over = TNGenerator(replace(lp.spec, bond_dim=bigger), (512, 256), device="meta")
    assert over.ratio < target or over.num_params == lp.record["tn_params"]


@pytest.mark.parametrize("structure", ["tt", "augttn"])
def test_an_attention_layer_plans_with_a_target_ratio(structure):
    """in_proj (3E x E) and out_proj (E x E) have different level counts: one uniform bond
    serves both (a filled per-level list would fit only in_proj)."""
    r = recipe({"select": "0", "structure": structure, "target_ratio": 20})
    (lp,) = plan(nn.Sequential(nn.MultiheadAttention(256, 4)), r).layers
    assert isinstance(lp.spec.bond_dim, int) and lp.record["tn_params"] > 0


def test_unreachable_target_is_a_recipe_error_naming_the_layer():
    r = recipe({"select": "2", "structure": "lowrank", "target_ratio": 1000})
    with pytest.raises(RecipeError, match=r"layers\[0\] \(2\): lowrank cannot reach 1000x"):
        plan(small_model(), r)


def test_totals_and_records_use_the_design_keys():
    p = plan(small_model(), recipe({"select": "type:Linear", "bond_dim": 2}))
    keys = {
        "layer",
        "structure",
        "dense_params",
        "tn_params",
        "ratio",
        "flops",
        "peak_bytes",
        "schedule",
        "legs",
        "bond_dim",
        "kind",
    }
    assert all(keys <= set(lp.record) for lp in p.layers)
    t = p.totals
    assert (
        t["compressed_params"]
        == t["dense_params"] - t["replaced_dense_params"] + t["replaced_tn_params"]
    )
    assert t["ratio"] == pytest.approx(t["dense_params"] / t["compressed_params"])


def test_apply_plan_swaps_layers_and_keeps_the_rest():
    model = small_model()
    x = torch.randn(4, 64)
    p = compress_(model, recipe({"select": ["0", "2"], "bond_dim": 3}))
    assert isinstance(model[0], GeneratedLinear) and isinstance(model[2], GeneratedLinear)
    assert type(model[4]) is nn.Linear
    assert model(x).shape == (4, 10)
    assert len(p.layers) == 2


def test_a_failing_replacement_leaves_the_model_untouched():
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    p = plan(model, recipe({"select": ["0", "2"], "bond_dim": 3}))
    bad = p.layers[1]
    from dataclasses import replace

    from adntn_cli.tn import StructureSpec

    broken = replace(bad, spec=StructureSpec("ttn", bond_dim=[1, 2, 3, 4, 5, 6, 7]))
    with pytest.raises(RecipeError):
        apply_plan(model, replace(p, layers=[p.layers[0], broken]))
    assert all(type(m) is not GeneratedLinear for m in model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_input_legs_map_follows_the_feature_map_fc6_reads():
    from adntn_cli.models import demo_vgg  # classifier.0 reads a 128 x 4 x 4 map at 32x32

    def legs(**rule):
        r = recipe({"select": "classifier.0", "bond_dim": 3, **rule}, model={"input_size": 32})
        (lp,) = plan(demo_vgg(), r).layers
        return lp.record.legs, lp.spec

    mapped, spec = legs(input_legs="map")
    assert spec.in_map == (128, 4, 4)
    assert [i for _, i in mapped][-2:] == [4, 4]
    flat, spec = legs(input_legs="flat")
    assert spec.in_map is None and flat != mapped
    assert legs()[0] == flat  # the default, for now
    explicit, spec = legs(input_legs="map", factors={"out": [32, 32], "in": [64, 32]})
    assert spec.in_map is None and explicit == [[32, 64], [32, 32]]  # explicit factors win


def test_input_legs_is_validated_and_written_to_the_resolved_recipe():
    from adntn_cli.models import demo_vgg
    from adntn_cli.resolved import resolved_recipe

    with pytest.raises(Exception, match="input_legs"):
        recipe({"select": "classifier.0", "input_legs": "rows"})
    r = recipe({"select": "classifier.0", "input_legs": "map"}, model={"input_size": 32})
    out = resolved_recipe(r, plan(demo_vgg(), r))
    assert out["layers"][0]["input_legs"] == "map"
