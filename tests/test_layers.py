"""Generated layers: equality with their materialised form, the eval cache, the inverse."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adntn_cli.layers import (
    GeneratedConv2d,
    GeneratedLinear,
    GeneratedMultiheadAttention,
    from_module,
)
from adntn_cli.runtime import compile_generators, use_weight_cache
from adntn_cli.tn import StructureSpec, TNConfigError

TTN = StructureSpec("ttn", bond_dim=4)


def test_linear_from_module_keeps_bias_and_std():
    dense = nn.Linear(96, 64)
    layer = GeneratedLinear.from_module(dense, TTN)
    torch.testing.assert_close(layer.bias, dense.bias)
    assert layer.bias is not dense.bias
    w = layer.weight.detach()
    assert float(w.std()) == pytest.approx(float(dense.weight.detach().std()), rel=1e-4)
    x = torch.randn(3, 96)
    torch.testing.assert_close(layer(x), F.linear(x, layer.generator(), layer.bias))
    assert "ttn" in repr(layer) and "ratio=" in repr(layer)


@pytest.mark.parametrize("batch", [1, 4096])
@pytest.mark.parametrize("structure", ["ttn", "mera", "lowrank"])
@pytest.mark.parametrize("shape", [(64, 96), (97, 13)])
def test_linear_schedules_agree(batch, structure, shape):
    spec = StructureSpec(structure, bond_dim=3)
    layer = GeneratedLinear(shape[1], shape[0], spec, dtype=torch.float64)
    x = torch.randn(batch, shape[1], dtype=torch.float64)
    ref = F.linear(x, layer.generator(), layer.bias)
    torch.testing.assert_close(layer(x), ref)
    assert layer.last_schedule in {"contract", "materialise"}
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ref)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"stride": 2, "padding": 1},
        {"padding": 2, "dilation": 2},
        {"groups": 4, "padding": "same"},
        {"padding": 1, "padding_mode": "reflect", "bias": False},
    ],
)
def test_conv_equals_f_conv2d_with_its_materialised_weight(kwargs):
    conv = nn.Conv2d(8, 16, 3, **kwargs).double()
    layer = GeneratedConv2d.from_module(conv, TTN)
    x = torch.randn(2, 8, 11, 11, dtype=torch.float64)
    w = layer.generator()
    assert w.shape == conv.weight.shape
    if conv.padding_mode == "zeros":
        ref = F.conv2d(x, w, layer.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    else:
        ref = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), w, None, conv.stride, 0)
    torch.testing.assert_close(layer(x), ref)
    torch.testing.assert_close(layer.to_dense()(x), ref)


def test_eval_cache_reused_until_an_optimiser_step():
    layer = GeneratedLinear(96, 64, TTN)
    x = torch.randn(4, 96)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer.eval()
    with torch.no_grad():
        w1 = layer.weight
        assert layer.weight is w1  # cached
        y1 = layer(x)
    layer.train()
    loss = layer(x).pow(2).sum()
    loss.backward()
    opt.step()
    layer.eval()
    with torch.no_grad():
        w2 = layer.weight
        assert w2 is not w1
        torch.testing.assert_close(w2, layer.generator())
        assert not torch.allclose(layer(x), y1)


def test_eval_cache_survives_eval_again_and_is_dropped_by_train():
    layer = GeneratedLinear(96, 64, StructureSpec("mera", bond_dim=2)).eval()
    with torch.no_grad():
        w = layer.weight
        layer.eval()  # an evaluation loop calls eval() every time: the cache stays
        assert layer.weight is w
        layer.train()
        layer.eval()
        assert layer.weight is not w


def test_eval_cache_sees_in_place_core_edits_and_state_loads():
    layer = GeneratedLinear(96, 64, TTN).eval()
    with torch.no_grad():
        w1 = layer.weight.clone()
        layer.generator.scale.mul_(2)
        torch.testing.assert_close(layer.weight, 2 * w1)
        other = GeneratedLinear(96, 64, TTN)
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer.weight, other.generator())


def test_no_cache_when_gradients_are_on():
    layer = GeneratedLinear(96, 64, TTN).eval()
    w = layer.weight
    assert w.requires_grad
    assert layer.weight is not w


def _holds_weight(m: nn.Module) -> bool:
    return any(c.held for c in m.__dict__.get("_caches", {}).values())


def test_weight_cache_off_holds_no_weight_and_gives_the_same_outputs():
    mera = StructureSpec("mera", bond_dim=2)  # materialise only: the cache matters
    model = nn.Sequential(GeneratedLinear(96, 64, mera), nn.ReLU(), GeneratedLinear(64, 8, TTN))
    model.eval()
    x = torch.randn(5, 96)
    with torch.no_grad():
        cached = model(x)
        assert _holds_weight(model[0])
        use_weight_cache(model, False)
        assert not _holds_weight(model[0])
        torch.testing.assert_close(model(x), cached, rtol=1e-5, atol=1e-6)
        assert not any(_holds_weight(m) for m in model)
        use_weight_cache(model, True)
        model(x)
        assert _holds_weight(model[0])


def test_state_dict_holds_cores_and_bias_only():
    layer = GeneratedLinear(96, 64, TTN).eval()
    with torch.no_grad():
        layer(torch.randn(2, 96))
    keys = set(layer.state_dict())
    assert "bias" in keys and "generator.scale" in keys
    assert all(k.startswith("generator.cores.") for k in keys - {"bias", "generator.scale"})


def test_to_dense_round_trip():
    dense = nn.Linear(96, 64)
    layer = GeneratedLinear.from_module(dense, TTN)
    back = layer.to_dense()
    assert type(back) is nn.Linear
    x = torch.randn(3, 96)
    torch.testing.assert_close(back(x), layer(x))


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("projections", [("in_proj", "out_proj"), ("out_proj",)])
def test_multihead_attention(batch_first, projections):
    mha = nn.MultiheadAttention(24, 4, batch_first=batch_first).double()
    layer = GeneratedMultiheadAttention.from_module(mha, TTN, projections=projections)
    assert layer.dense_params == (4 * 24 * 24 if "in_proj" in projections else 24 * 24)
    q = torch.randn(5, 3, 24, dtype=torch.float64)
    out, weights = layer(q, q, q)
    dense = layer.to_dense()
    ref, ref_w = dense(q, q, q)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(weights, ref_w)
    assert not any(k.endswith("in_proj_weight") for k in layer.state_dict()) or (
        "in_proj" not in projections
    )


def test_from_module_dispatch_and_refusals():
    assert isinstance(from_module(nn.Linear(8, 8), TTN), GeneratedLinear)
    assert isinstance(from_module(nn.Conv2d(4, 8, 3), TTN), GeneratedConv2d)
    with pytest.raises(TNConfigError, match="cannot compress a ReLU"):
        from_module(nn.ReLU(), TTN)
    with pytest.raises(TNConfigError, match="separate q/k/v"):
        from_module(nn.MultiheadAttention(8, 2, kdim=4, vdim=4), TTN)


def test_meta_module_builds_a_meta_layer():
    with torch.device("meta"):
        dense = nn.Linear(25088, 4096)
    layer = GeneratedLinear.from_module(dense, StructureSpec("ttn", bond_dim=20))
    assert layer.generator.scale.device.type == "meta"
    assert layer.dense_params == 25088 * 4096


def test_compile_generators_off_and_auto_on_cpu_keep_eager():
    model = nn.Sequential(GeneratedLinear(96, 64, TTN))
    assert compile_generators(model, "off") == {"0.generator": "eager: compile off"}
    assert compile_generators(model, "auto") == {"0.generator": "eager: compile auto, not on CUDA"}
    assert "forward" not in model[0].generator.__dict__
    with pytest.raises(ValueError, match="valid: auto, on, off"):
        compile_generators(model, "fast")


def test_a_compiler_that_fails_falls_back_to_eager(monkeypatch):
    def broken(fn, **_):
        def run(*a, **k):
            raise RuntimeError("no C++ compiler found\nmore detail")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    model = nn.Sequential(GeneratedLinear(96, 64, TTN))
    x = torch.randn(3, 96)
    before = model(x)
    result = compile_generators(model, "on")
    assert result == {"0.generator": "eager: compile failed (no C++ compiler found)"}
    assert "forward" not in model[0].generator.__dict__
    torch.testing.assert_close(model(x), before)


@pytest.mark.slow
def test_compiled_generator_matches_eager():
    layer = GeneratedLinear(48, 32, StructureSpec("ttn", bond_dim=3))
    x = torch.randn(4, 48)
    eager_w, eager_y = layer.generator().detach(), layer.generator.contract(x).detach()
    result = compile_generators(nn.Sequential(layer), "on")
    if result["0.generator"] != "compiled":
        pytest.skip(f"torch.compile unavailable here: {result['0.generator']}")
    torch.testing.assert_close(layer.generator(), eager_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.generator.contract(x), eager_y, rtol=1e-5, atol=1e-6)
    assert (
        layer.generator.state_dict().keys()
        == GeneratedLinear(48, 32, TTN).generator.state_dict().keys()
    )


def test_generated_conv_follows_a_channels_last_input():
    conv = nn.Conv2d(8, 16, 3, padding=1)
    layer = GeneratedConv2d.from_module(conv, TTN)
    x = torch.randn(2, 8, 6, 6)
    ref = layer(x)
    y = layer(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
