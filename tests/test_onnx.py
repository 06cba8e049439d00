"""ONNX export: ONNX Runtime against torch for every structure, Linear and Conv2d, any batch;
no generated weight in the file; the file runs from anywhere; the writes leave nothing behind."""

import copy
import errno
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from adntn_cli import onnxfile
from adntn_cli.errors import AdntnError, ModelError
from adntn_cli.layers import GeneratedModule, from_module
from adntn_cli.onnxfile import export_model_onnx
from adntn_cli.tn import StructureSpec

# onnx and onnxruntime come with the test extra (adntn[onnx]): imported, not skipped, so that
# CI fails if the extra is missing.
SIZE = 8  # input 8x8: conv 3x3 keeps it, pooling to 2x2 feeds fc 1024 -> 512
BOND = {"ttn": 4, "tt": 4, "augttn": 3, "mera": 3, "lowrank": 2}


class Net(nn.Module):
    """A dense stem, then a replaceable Conv2d (256 -> 256, 3x3) and Linear (1024 -> 512)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 256, 3, padding=1)
        self.conv = nn.Conv2d(256, 256, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(1024, 512)
        self.head = nn.Linear(512, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv(torch.relu(self.stem(x)))))  # (N, 256, 2, 2)
        return self.head(torch.relu(self.fc(x.flatten(1))))  # (N, 1024) -> (N, 10)


def _compressed(structure: str) -> nn.Module:
    torch.manual_seed(0)
    net = Net()
    spec = StructureSpec(structure, bond_dim=BOND[structure])
    net.conv, net.fc = from_module(net.conv, spec), from_module(net.fc, spec)
    return net.eval()


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _check_matches(model: nn.Module, path) -> None:
    session = _session(path)
    for batch in (1, 8):
        x = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            want = model(x).numpy()
        (got,) = session.run(None, {"images": x.numpy()})
        assert got.shape == want.shape == (batch, 10)
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def _initializers(path) -> dict[str, int]:
    """Element counts of every stored tensor: initializers and Constant nodes' values."""
    graph = onnx.load(str(path)).graph
    sizes = {t.name: int(np.prod(t.dims)) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    sizes[f"{node.output[0]} (Constant)"] = int(np.prod(attr.t.dims))
    return sizes


@pytest.fixture(scope="module", params=sorted(BOND))
def exported(request, tmp_path_factory):
    model = _compressed(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    done = export_model_onnx(model, folder / "m.onnx", input_size=SIZE)
    return model, done


def test_onnx_runtime_matches_torch_at_batch_1_and_8_from_a_copy(exported, tmp_path):
    model, done = exported
    assert sorted(p.name for p in done.path.parent.iterdir()) == ["m.onnx"]  # nothing left over
    assert done.bytes == done.path.stat().st_size and done.data_path is None
    copy = tmp_path / "elsewhere" / "copy.onnx"
    copy.parent.mkdir()
    shutil.copy(done.path, copy)
    _check_matches(model, copy)


def test_no_initializer_holds_a_generated_weight(exported):
    model, done = exported
    generated = [m for m in model.modules() if isinstance(m, GeneratedModule)]
    limit = 0.01 * min(g.generator.dense_params for g in generated)
    dense_names = {n for n, _ in model.named_parameters() if ".generator." not in n}
    inits = _initializers(done.path)
    assert dense_names <= set(inits)  # the layers left dense keep their names
    held = {n: k for n, k in inits.items() if n not in dense_names}
    assert held and max(held.values()) < limit, held
    assert done.largest_initializer <= max(model.stem.weight.numel(), limit)
    assert done.schedules == {"conv": "materialise", "fc": "contract"}


def test_dense_export_holds_the_weights_and_is_ten_times_larger(tmp_path):
    model = _compressed("ttn")
    small = export_model_onnx(model, tmp_path / "c.onnx", input_size=SIZE)
    dense = export_model_onnx(model, tmp_path / "d.onnx", input_size=SIZE, weights="dense")
    inits = _initializers(dense.path)
    assert inits["conv.weight"] == 256 * 256 * 9 and inits["fc.weight"] == 1024 * 512
    assert isinstance(model.fc, GeneratedModule)  # the caller's model is not densified
    assert small.bytes < 0.1 * dense.bytes
    _check_matches(model, dense.path)


def test_large_models_write_their_weights_to_out_data(tmp_path, monkeypatch):
    monkeypatch.setattr(onnxfile, "EXTERNAL_ABOVE", 0)  # as if above 2 GB
    model = _compressed("tt")
    done = export_model_onnx(model, tmp_path / "big.onnx", input_size=SIZE)
    assert done.data_path == tmp_path / "big.onnx.data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert done.bytes == done.path.stat().st_size + done.data_path.stat().st_size
    moved = tmp_path / "moved"
    moved.mkdir()
    for p in (done.path, done.data_path):
        shutil.move(p, moved / p.name)
    _check_matches(model, moved / "big.onnx")


def test_existing_files_are_kept_unless_forced(tmp_path):
    model = _compressed("tt")
    out = tmp_path / "m.onnx"
    out.write_bytes(b"the user's file")
    with pytest.raises(AdntnError, match=r"exists; .* --force"):
        export_model_onnx(model, out, input_size=SIZE)
    assert out.read_bytes() == b"the user's file"
    stale = tmp_path / "m.onnx.data"
    stale.write_bytes(b"old weights")
    export_model_onnx(model, out, input_size=SIZE, force=True)
    assert not stale.exists()  # a self-contained export leaves no .data of an older one
    _check_matches(model, out)


def test_the_hint_names_the_extra_when_a_package_is_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import fails
    with pytest.raises(ModelError, match=r"onnxscript: pip install 'adntn\[onnx\]'"):
        export_model_onnx(_compressed("tt"), tmp_path / "m.onnx", input_size=SIZE)
    assert not list(tmp_path.iterdir())


def test_bad_options_are_refused_before_any_work(tmp_path):
    model = _compressed("tt")
    newest = onnx.defs.onnx_opset_version()
    for opset in (17, newest + 1):
        with pytest.raises(AdntnError, match=f"--opset {opset}: valid: 18 .* to {newest}"):
            export_model_onnx(model, tmp_path / "m.onnx", input_size=SIZE, opset=opset)
    with pytest.raises(AdntnError, match=r"\.onnx"):
        export_model_onnx(model, tmp_path / "m.bin", input_size=SIZE)
    with pytest.raises(AdntnError, match="valid: compressed, dense"):
        export_model_onnx(model, tmp_path / "m.onnx", input_size=SIZE, weights="fp16")
    (tmp_path / "t.pt").write_bytes(b"x")
    with pytest.raises(AdntnError, match=r"t\.pt is a file, not a folder"):
        export_model_onnx(model, tmp_path / "t.pt" / "m.onnx", input_size=SIZE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.pt"]


def test_the_opset_asked_for_is_the_one_written(tmp_path):
    done = export_model_onnx(_compressed("tt"), tmp_path / "m.onnx", input_size=SIZE, opset=20)
    versions = {o.domain: o.version for o in onnx.load(str(done.path)).opset_import}
    assert done.opset == 20 and versions[""] == 20


def test_the_data_is_renamed_first_and_the_graph_last(tmp_path, monkeypatch):
    monkeypatch.setattr(onnxfile, "EXTERNAL_ABOVE", 0)
    moves = []  # renames into the target folder (onnx_ir renames inside the staging one too)
    real = os.replace

    def replace(a, b):
        if Path(b).parent == tmp_path:
            moves.append(Path(b).name)
        return real(a, b)

    monkeypatch.setattr(onnxfile.os, "replace", replace)
    export_model_onnx(_compressed("tt"), tmp_path / "m.onnx", input_size=SIZE)
    assert moves == ["m.onnx.data", "m.onnx"]


@pytest.mark.parametrize("where", ["trace", "write"])
def test_a_failed_export_leaves_nothing_behind(tmp_path, monkeypatch, where):
    if where == "trace":

        def broken(*_):
            raise RuntimeError("Failed to export") from ValueError("the real cause")

        monkeypatch.setattr(onnxfile, "_trace", broken)
        expected = ModelError
    else:
        monkeypatch.setattr(onnxfile, "_save", lambda *_, **__: (_ for _ in ()).throw(
            OSError(errno.ENOSPC, "No space left on device")))  # fmt: skip
        expected = AdntnError
    out = tmp_path / "new" / "deeper" / "m.onnx"
    with pytest.raises(expected) as caught:
        export_model_onnx(_compressed("tt"), out, input_size=SIZE)
    assert list(tmp_path.iterdir()) == []  # no staging folder, no folder made for it
    message = str(caught.value)
    assert ("the real cause" in message) if where == "trace" else (str(out) in message)


def test_export_puts_the_layers_back_as_they_were(tmp_path):
    model = _compressed("ttn").train()
    fresh = copy.deepcopy(model).eval()
    export_model_onnx(model, tmp_path / "m.onnx", input_size=SIZE)
    export_model_onnx(model, tmp_path / "d.onnx", input_size=SIZE, weights="dense")
    assert model.training  # the caller's mode is kept
    assert model.fc.fixed_schedule is None and model.fc.cache_weights
    assert model.fc.generator.program.fixed_batch is None
    model.eval()
    for batch in (3, 300):  # every batch takes its own path again
        x = torch.randn(batch, 3, SIZE, SIZE)
        with torch.no_grad():
            torch.testing.assert_close(model(x), fresh(x))


def test_an_old_torch_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.5.1+cu124")
    with pytest.raises(ModelError, match=r"torch 2\.6 or newer .* torch 2\.5\.1"):
        export_model_onnx(_compressed("tt"), tmp_path / "m.onnx", input_size=SIZE)
