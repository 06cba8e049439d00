"""The shipped ImageNet-shape recipes resolve on their architectures with the structures and the
per-layer ratios their comments claim (the paper's span, about 2,000x to at least 77,000x)."""

import pytest

from adntn_cli.models import build_model
from adntn_cli.plan import plan
from adntn_cli.recipe import load_recipe, shipped_recipes

VGG_CONV5 = {f"features.{k}": ("ttn", 2000) for k in (24, 26, 28)}
ALEX_CONVS = {f"features.{k}": ("ttn", 2000) for k in (6, 8, 10)}
# recipe -> (arch, classes, {layer: (structure, at least this many x fewer parameters)})
CLAIMS = {
    "vgg16": (
        "vgg16",
        1000,
        {
            "classifier.0": ("ttn", 77000),
            "classifier.3": ("mera", 20000),
            "classifier.6": ("augttn", 2000),
            **VGG_CONV5,
        },
    ),
    "vgg16-10": (
        "vgg16",
        10,
        {"classifier.0": ("ttn", 77000), "classifier.3": ("mera", 20000), **VGG_CONV5},
    ),
    "alexnet": (
        "alexnet",
        1000,
        {
            "classifier.1": ("ttn", 77000),
            "classifier.4": ("mera", 20000),
            "classifier.6": ("augttn", 2000),
            **ALEX_CONVS,
        },
    ),
    "alexnet-10": (
        "alexnet",
        10,
        {"classifier.1": ("ttn", 77000), "classifier.4": ("mera", 20000), **ALEX_CONVS},
    ),
}


def test_every_shipped_model_recipe_has_claims():
    assert set(shipped_recipes()) - {"demo"} == set(CLAIMS)


@pytest.mark.parametrize("name", sorted(CLAIMS))
def test_shipped_recipe_resolves_with_the_claimed_structures_and_ratios(name):
    arch, classes, claims = CLAIMS[name]
    recipe, source = load_recipe(name)
    assert (recipe.model.arch, recipe.model.num_classes) == (arch, classes)
    p = plan(build_model(arch, classes, device="meta"), recipe, source=source)
    got = {lp.layer: (lp.record["structure"], lp.record["ratio"]) for lp in p.layers}
    assert set(got) == set(claims)
    for layer, (structure, at_least) in claims.items():
        assert got[layer][0] == structure, layer
        assert got[layer][1] >= at_least, (layer, got[layer][1])
    ratios = [ratio for _, ratio in got.values()]
    assert min(ratios) < 3000 and max(ratios) >= 77000  # the paper's span, both ends
    if classes == 1000:
        assert {s for s, _ in got.values()} == {"ttn", "augttn", "mera"}
