"""Mixed precision cannot break or degrade a generator: the CUDA code path, proven on the CPU.

CUDA's ``torch.autocast`` casts matmul-like operators to bf16; so does the CPU's. A generator turns
autocast off for its own work and the layer casts once at its boundary (tn/precision.py), so CPU
autocast runs exactly the code CUDA autocast runs. The layers below are large enough that every
branch of the executor runs: the custom ``_LocalOp`` (both outer sizes above ``KRON_MAX``), the
Kronecker-folded local operator and ``torch.tensordot``.
"""

from __future__ import annotations

import collections

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adntn_cli.layers import GeneratedConv2d, GeneratedLinear
from adntn_cli.runtime import MixedPrecision, compile_generators, resolve_precision
from adntn_cli.tn import StructureSpec, executor

BF16 = MixedPrecision("cpu", torch.bfloat16)
STRUCTURES = {
    "ttn": StructureSpec("ttn", bond_dim=8),
    "augttn-full": StructureSpec("augttn", bond_dim=4),
    "augttn-separable": StructureSpec("augttn", bond_dim=4, options={"disentangler": "separable"}),
    "mera": StructureSpec("mera", bond_dim=2),
    "tt": StructureSpec("tt", bond_dim=4),
    "lowrank": StructureSpec("lowrank", bond_dim=4),
}


def _linear(name: str) -> GeneratedLinear:
    torch.manual_seed(0)
    return GeneratedLinear.from_module(nn.Linear(512, 512), STRUCTURES[name])


def _conv(name: str) -> GeneratedConv2d:
    torch.manual_seed(0)
    return GeneratedConv2d.from_module(nn.Conv2d(32, 64, 3, padding=1), STRUCTURES[name])


def _cases():
    for name in STRUCTURES:
        yield pytest.param("linear", name, "materialise", id=f"linear-{name}-materialise")
        if _linear(name).generator.contractible:
            yield pytest.param("linear", name, "contract", id=f"linear-{name}-contract")
        yield pytest.param("conv", name, "materialise", id=f"conv-{name}")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(("kind", "name", "schedule"), list(_cases()))
def test_training_under_bf16_autocast_is_finite_and_as_accurate_as_a_bf16_dense_layer(
    kind, name, schedule
):
    layer = _linear(name) if kind == "linear" else _conv(name)
    if kind == "linear":
        layer.schedule = lambda batch: schedule  # the cost model's choice, pinned for the test
        x = torch.randn(16, 512)
    else:
        x = torch.randn(4, 32, 8, 8)
    dense = layer.to_dense()
    with torch.no_grad():
        exact = dense(x)  # float32 throughout
        with BF16.autocast():
            dense_bf16 = dense(x)  # what a dense layer gives under the same autocast
    with BF16.autocast():
        y = layer(x)
    assert y.dtype == torch.bfloat16  # like the dense layer it replaces
    if kind == "linear":
        assert layer.last_schedule == schedule
    loss = y.float().pow(2).mean()
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in layer.parameters() if p.requires_grad]
    assert grads and all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    # Generated in float32 and rounded once: within 2x of rounding the dense weight once (bf16
    # generation through the whole chain was 4-5x).
    assert _rel(y, exact) <= 2 * _rel(dense_bf16, exact)


def _spy(monkeypatch) -> collections.Counter:
    """Count each executor branch, and check that each runs in float32 with autocast off."""
    seen: collections.Counter = collections.Counter()

    def wrap(label, fn):
        def run(*args, **kwargs):
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            assert not torch.is_autocast_enabled("cpu"), f"{label} ran under autocast"
            assert all(t.dtype == torch.float32 for t in tensors), f"{label} saw bf16"
            seen[label] += 1
            return fn(*args, **kwargs)

        return run

    monkeypatch.setattr(executor._LocalOp, "apply", wrap("local_op", executor._LocalOp.apply))
    monkeypatch.setattr(torch, "kron", wrap("kron", torch.kron))
    monkeypatch.setattr(torch, "tensordot", wrap("tensordot", torch.tensordot))
    return seen


def test_every_executor_branch_runs_under_autocast_in_float32(monkeypatch):
    seen = _spy(monkeypatch)
    for name in ("augttn-full", "augttn-separable", "tt", "ttn"):
        layer = _linear(name)
        with BF16.autocast():
            y = layer(torch.randn(16, 512))
        y.float().sum().backward()
    assert seen["local_op"] > 0 and seen["kron"] > 0 and seen["tensordot"] > 0, dict(seen)


def test_eval_cache_is_keyed_on_the_autocast_dtype():
    layer = _linear("mera").eval()  # materialise only: the cache is what runs
    x = torch.randn(4, 512)
    with torch.no_grad():
        with BF16.autocast():
            assert layer(x).dtype == torch.bfloat16
        y = layer(x)  # a float32 call after a bf16 one gets a float32 weight
        assert y.dtype == torch.float32
        torch.testing.assert_close(y, F.linear(x, layer.generator(), layer.bias))
        with BF16.autocast():
            assert layer(x).dtype == torch.bfloat16


def _changes():
    def data_write(layer):
        for p in layer.generator.parameters():
            p.data.copy_(p.data * 1.5)  # .data writes do not bump the version counter

    def load(layer):
        state = {k: v * 0.5 for k, v in layer.state_dict().items()}
        layer.load_state_dict(state)

    def step(layer):
        opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        with torch.enable_grad():
            layer.generator().pow(2).sum().backward()
        opt.step()

    def double(layer):
        layer.double()

    return {
        "data-write": data_write,
        "load_state_dict": load,
        "optimiser": step,
        ".double()": double,
    }


@pytest.mark.parametrize("change", list(_changes()))
def test_eval_cache_never_serves_a_weight_after_the_cores_changed(change):
    torch.manual_seed(0)  # a nonlinear root never contracts: eval mode caches its weight
    spec = StructureSpec("mera", bond_dim=2, output_activation="tanh")
    layer = GeneratedLinear.from_module(nn.Linear(512, 512), spec).eval()
    x = torch.randn(4, 512)
    with torch.no_grad():
        before = layer(x)
        assert layer.holds_weights
        _changes()[change](layer)
        x = x.to(layer.generator.scale.dtype)
        fresh = F.linear(x, layer.generator(), layer.bias)
        after = layer(x)
    assert not torch.allclose(after.to(before.dtype), before)
    torch.testing.assert_close(after, fresh)


def test_precision_names_resolve_per_device():
    assert resolve_precision("auto", "cuda") == MixedPrecision("cuda", torch.bfloat16)
    assert resolve_precision("auto", "cpu") == MixedPrecision("cpu")
    assert resolve_precision("bf16", "cpu").name == "bf16"
    assert resolve_precision("fp32", "cuda").dtype is None


@pytest.mark.parametrize("native", [True, False, None])
def test_bf16_on_a_cpu_that_emulates_it_is_warned_about(native, monkeypatch, caplog):
    from adntn_cli import runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    with caplog.at_level("WARNING", logger="adntn"):
        assert resolve_precision("bf16", "cpu").name == "bf16"
        resolve_precision("auto", "cpu")
    warned = [r.getMessage() for r in caplog.records if "emulated" in r.getMessage()]
    assert len(warned) == (1 if native is False else 0)


def test_the_bf16_probe_answers_on_this_cpu():
    import platform

    from adntn_cli.runtime import cpu_has_native_bf16

    if platform.machine().lower() in ("x86_64", "amd64"):  # torch's probes, in the tested range
        assert cpu_has_native_bf16() in (True, False)
    else:
        assert cpu_has_native_bf16() is None


@pytest.mark.slow
def test_a_compiled_generator_trains_under_cpu_autocast():
    torch.manual_seed(0)
    model = nn.Sequential(GeneratedLinear(48, 32, StructureSpec("ttn", bond_dim=3)))
    result = compile_generators(model, "on")
    if result["0.generator"] != "compiled":
        pytest.skip(f"torch.compile unavailable here: {result['0.generator']}")
    x = torch.randn(4, 48)
    with BF16.autocast():
        y = model(x)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())
