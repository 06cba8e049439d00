"""Recipe validation: every malformed recipe is refused with the place and what would be valid."""

import pytest
import yaml

from adntn_cli.errors import RecipeError, SelectionError
from adntn_cli.recipe import Candidate, load_recipe, parse_recipe, select_layers, shipped_recipes
from adntn_cli.recipe.schema import ACTIVATION_NAMES, STRUCTURE_NAMES

GOOD = {"version": 1, "layers": [{"select": "fc", "bond_dim": 4}]}


def with_(**changes):
    out = {**GOOD, **changes}
    return {k: v for k, v in out.items() if v is not ...}


MALFORMED = [
    (with_(version=2), "version: 2 is not supported"),
    (with_(version=...), "version: required key is missing"),
    (with_(layers=[]), "layers: List should have at least 1 item"),
    (with_(layers=...), "layers: required key is missing"),
    (with_(colour="red"), "colour: unknown key; valid keys here: version, model"),
    (with_(layers=[{"select": "fc", "bondim": 4}]), "layers[0].bondim: unknown key"),
    (with_(layers=[{"select": "fc", "bond_dim": 0}]), "layers[0].bond_dim: "),
    (with_(layers=[{"select": "fc", "bond_dim": []}]), "layers[0].bond_dim: "),
    (with_(layers=[{"select": "fc", "bond_dim": "big"}]), "layers[0].bond_dim: "),
    (with_(layers=[{"select": "fc", "structure": "attn"}]), "layers[0].structure: Input should be"),
    (with_(layers=[{"select": "fc", "activation": "swish"}]), "layers[0].activation: "),
    (with_(layers=[{"select": "fc", "bond_dim": 4, "target_ratio": 100}]), "not both"),
    (with_(layers=[{"select": "fc", "target_ratio": 0.5}]), "layers[0].target_ratio: "),
    (with_(layers=[{"bond_dim": 4}]), "layers[0].select: required key is missing"),
    (with_(layers=[{"select": ""}]), "layers[0].select: "),
    (with_(layers=[{"select": "fc", "factors": {"out": [2, 2]}}]), "layers[0].factors.in: "),
    (with_(model={"arch": "vgg16", "num_classes": 0}), "model.num_classes: "),
    (with_(limits={"memory_gb": -1}), "limits.memory_gb: "),
    (with_(distill={"finetune": {"kd_weight": 2}}), "distill.finetune.kd_weight: "),
    (with_(distill={"layerwise": {"stepz": 3}}), "distill.layerwise.stepz: unknown key"),
    (with_(defaults={"structure": "mera", "select": "x"}), "defaults.select: unknown key"),
    ([1, 2, 3], "a recipe is a YAML mapping"),
]


@pytest.mark.parametrize("data,message", MALFORMED, ids=[m for _, m in MALFORMED])
def test_malformed_recipes_name_the_place(data, message):
    with pytest.raises(RecipeError) as err:
        parse_recipe(data, "r.yaml")
    assert str(err.value).startswith("r.yaml")
    assert message in str(err.value)


def test_yaml_syntax_errors_name_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\nlayers: [\n  {select: fc\n")
    with pytest.raises(RecipeError, match=r"bad.yaml.* line \d+, column \d+: not valid YAML"):
        load_recipe(path)


def test_unknown_recipe_name_lists_the_shipped_ones():
    with pytest.raises(RecipeError, match=r"neither a file nor a shipped recipe.*demo"):
        load_recipe("nope")


@pytest.mark.parametrize("name", ["demo", "vgg16", "alexnet", "vgg16-10", "alexnet-10"])
def test_shipped_recipes_load_by_name(name):
    assert name in shipped_recipes()
    recipe, source = load_recipe(name)
    assert source == name and recipe.version == 1


def test_names_match_the_tn_registries():
    from adntn_cli.tn import ACTIVATIONS, STRUCTURES

    assert set(STRUCTURE_NAMES) == set(STRUCTURES)
    assert set(ACTIVATION_NAMES) == set(ACTIVATIONS)


def test_json_schema_is_valid_json_with_the_top_level_keys():
    import json

    from adntn_cli.recipe import json_schema

    schema = json.loads(json_schema())
    assert {"version", "model", "layers", "defaults"} <= set(schema["properties"])


LAYERS = [
    Candidate("features.0", "Conv2d"),
    Candidate("features.3", "Conv2d"),
    Candidate("classifier.0", "Linear"),
    Candidate("classifier.3", "Linear"),
    Candidate("attn", "MultiheadAttention"),
]


def rules(*entries):
    return parse_recipe({"version": 1, "layers": list(entries)}).layers


def test_selector_precedence_exact_then_pattern_then_type():
    chosen = select_layers(
        rules(
            {"select": "type:Linear"},
            {"select": "classifier.*"},
            {"select": "re:classifier\\.(0|3)"},
            {"select": "classifier.3"},
        ),
        LAYERS,
    )
    assert chosen == {"classifier.0": 1, "classifier.3": 3}


def test_type_selector_is_exact_class_and_excludes_apply_per_rule():
    chosen = select_layers(
        rules({"select": "type:Conv2d", "exclude": ["features.3"]}, {"select": "features.3"}),
        LAYERS,
    )
    assert chosen == {"features.0": 0, "features.3": 1}
    assert "attn" not in select_layers(rules({"select": "type:Linear"}), LAYERS)


def test_regex_is_a_full_match():
    assert select_layers(rules({"select": "re:features\\.0"}), LAYERS) == {"features.0": 0}
    with pytest.raises(SelectionError):
        select_layers(rules({"select": "re:features"}), LAYERS)


@pytest.mark.parametrize(
    "entry,message",
    [
        ({"select": "classifer.0"}, "closest layers: classifier.0"),
        ({"select": "type:Conv1d"}, "compressible types here: Conv2d, Linear, MultiheadAttention"),
        ({"select": "re:("}, "not a valid regex"),
        ({"select": "type:Linear", "exclude": ["nothing"]}, "layers[0].exclude"),
    ],
)
def test_selectors_that_match_nothing_are_errors(entry, message):
    with pytest.raises(SelectionError) as err:
        select_layers(rules(entry), LAYERS, "r.yaml")
    assert message in str(err.value) and "r.yaml: layers[0]" in str(err.value)


def test_reading_a_recipe_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys; from adntn_cli.recipe import load_recipe; load_recipe('vgg16'); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_yaml_round_trip_of_a_shipped_recipe():
    recipe, _ = load_recipe("demo")
    data = yaml.safe_load(yaml.safe_dump(recipe.model_dump(by_alias=True, exclude_none=True)))
    assert parse_recipe(data) == recipe
