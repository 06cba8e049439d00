"""The file format: adntn/1 files keep loading as they did, adntn/2 stores every generator's
resolved spec, and loading one never re-runs the factorisation heuristic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from adntn_cli.fileformat import FORMAT, read_header, read_metadata
from adntn_cli.io import file_report, layer_specs, load_compressed, save_compressed
from adntn_cli.models import build_model
from adntn_cli.plan import compress_
from adntn_cli.recipe import parse_recipe
from adntn_cli.resolved import resolved_recipe
from tests.fixtures.make_format1 import RECIPE as FORMAT1_RECIPE

FIXTURES = Path(__file__).parent / "fixtures"
RECIPE = FORMAT1_RECIPE  # every structure on demo_vgg, as the adntn/1 fixture has them


def test_an_adntn1_file_written_by_the_old_code_loads_with_identical_logits():
    path = FIXTURES / "format1.safetensors"
    assert read_metadata(path)["format"] == "adntn/1"
    header = read_header(path)
    assert header.version == 1 and header.layers is None and header.input_size == 32
    expected = load_file(str(FIXTURES / "format1_expected.safetensors"))
    model = load_compressed(path)
    stored = load_file(str(path))  # every tensor as the file holds it
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stored.items())
    with torch.no_grad():
        logits = model(expected["images"])
    # The same model: the logits differ from the recorded ones only by float32 rounding where a
    # later adntn contracts in another order (#14: mera and augttn contract at this batch now).
    torch.testing.assert_close(logits, expected["logits"], rtol=1e-5, atol=1e-6)
    assert len(file_report(path).layers) == 6


def _compressed(tmp_path: Path) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    model = build_model("demo_vgg", 10)
    recipe = parse_recipe(RECIPE)
    p = compress_(model, recipe)
    path = tmp_path / "m.safetensors"
    save_compressed(model, path, arch="demo_vgg", num_classes=10, recipe=resolved_recipe(recipe, p))
    return model.eval(), path


def test_adntn2_stores_every_generators_resolved_spec_and_round_trips(tmp_path):
    model, path = _compressed(tmp_path)
    meta = read_metadata(path)
    assert meta["format"] == FORMAT == "adntn/2" and meta["input_size"] == "32"
    layers = json.loads(meta["layers"])
    assert sorted(layers) == [
        "classifier.0", "classifier.3", "classifier.6", "features.0", "features.4", "features.8"
    ]  # fmt: skip
    entry = layers["classifier.0"]["generator"]
    bonds = entry["bond_dim"]  # the ratio search resolved: one bond, or one per level (filled)
    bonds = bonds if isinstance(bonds, list) else [bonds]
    assert entry["factors"] and bonds and all(isinstance(b, int) for b in bonds)
    assert entry["activation"] == "tanh"
    assert layers["features.0"]["generator"]["options"]["disentangler"] == "full"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_compressed(path)(x), model(x), rtol=0, atol=0)


def test_loading_adntn2_never_runs_the_factorisation(tmp_path, monkeypatch):
    """A later factorize.py that chose other legs must not change how a saved file reads."""
    model, path = _compressed(tmp_path)
    import adntn_cli.tn.factorize as factorize

    real = factorize.tensorize

    def changed_heuristic(shape, *, factors=None, **kwargs):
        if factors is None:
            raise AssertionError("the automatic factorisation ran while loading")
        return real(shape, factors=factors, **kwargs)

    monkeypatch.setattr("adntn_cli.tn.structures.base.tensorize", changed_heuristic)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_compressed(path)(x), model(x), rtol=0, atol=0)
    assert len(file_report(path).layers) == 6


def test_frozen_specs_rebuild_the_same_generators():
    torch.manual_seed(0)
    model = build_model("demo_vgg", 10)
    compress_(model, parse_recipe(RECIPE))
    for name, gens in layer_specs(model).items():
        layer = model.get_submodule(name)
        for g, spec in gens.items():
            gen = layer.generators()[g]
            from adntn_cli.tn import TNGenerator

            twin = TNGenerator(spec, gen.weight_shape, device="meta")
            assert twin.tz == gen.tz, name
            assert {k: v.shape for k, v in twin.cores.items()} == {
                k: v.shape for k, v in gen.cores.items()
            }, name


def test_attention_layers_store_one_spec_per_projection(tmp_path):
    from adntn_cli.layers import GeneratedMultiheadAttention
    from adntn_cli.tn import StructureSpec

    mha = nn.MultiheadAttention(24, 4)
    new = GeneratedMultiheadAttention(mha, StructureSpec("ttn", bond_dim=3))
    specs = {g: gen.frozen_spec() for g, gen in new.generators().items()}
    assert specs["in_proj"].factors != specs["out_proj"].factors  # 72x24 and 24x24
    rebuilt = GeneratedMultiheadAttention.from_module(mha, specs)
    assert {g: gen.tz for g, gen in rebuilt.generators().items()} == {
        g: gen.tz for g, gen in new.generators().items()
    }


@pytest.mark.parametrize(
    "layers,message",
    [
        ("[1, 2]", "layers is not a mapping"),
        ('{"classifier.3": {"generator": {"structure": "ttn", "bond_dim": "x"}}}', "bond_dim"),
        ('{"nope": {"generator": {"structure": "ttn", "bond_dim": 2}}}', "'nope' is not in"),
    ],
)
def test_damaged_layer_specs_are_named(tmp_path, layers, message):
    from safetensors.torch import save_file

    from adntn_cli.errors import AdntnError

    _, path = _compressed(tmp_path)
    meta = read_metadata(path)
    meta["layers"] = layers
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(path)), str(bad), metadata=meta)
    with pytest.raises(AdntnError, match=message):
        load_compressed(bad)


def test_map_legs_are_stored_as_factors_and_rebuild_without_the_probe(tmp_path):
    rule = {"select": "classifier.0", "structure": "ttn", "bond_dim": 3, "input_legs": "map"}
    recipe = parse_recipe({"version": 1, "model": {"input_size": 32}, "layers": [rule]})
    torch.manual_seed(0)
    model = build_model("demo_vgg", 10).eval()
    p = compress_(model, recipe)
    path = tmp_path / "m.safetensors"
    save_compressed(model, path, arch="demo_vgg", num_classes=10, recipe=resolved_recipe(recipe, p))
    (spec,) = layer_specs(model)["classifier.0"].values()
    assert spec.factors[1][-2:] == (4, 4) and spec.in_map is None  # the map's rows, columns
    loaded = load_compressed(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
