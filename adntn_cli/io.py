"""The compressed file: one safetensors file, self-describing, written atomically.

Every generator core and every untouched parameter and buffer is stored under its state-dict name
(``classifier.0.generator.cores.leaf0``, ``features.0.weight``), contiguous and unshared; no key
holds a dense copy of a replaced weight. ``__metadata__`` (strings only) says what rebuilds it:
see fileformat.py (format ``adntn/2``: the architecture, num_classes, input size, the resolved
recipe and every generator's resolved spec). Loading never unpickles anything.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .atomic import torch_bytes, write_bytes
from .errors import ModelError, UnsafeFileError
from .fileformat import (
    FORMAT,
    MAX_METADATA_BYTES,
    Header,
    LayerSpecs,
    metadata,
    read_header,
    read_metadata,
)
from .models import MAX_HEADER_BYTES
from .report import CompressionReport

if TYPE_CHECKING:
    from .onnxfile import OnnxExport
    from .plan import Plan

__all__ = [
    "FORMAT",
    "MAX_HEADER_BYTES",
    "MAX_METADATA_BYTES",
    "export_dense",
    "export_onnx",
    "file_report",
    "is_compressed",
    "layer_specs",
    "load_any",
    "load_compressed",
    "read_header",
    "read_metadata",
    "save_compressed",
]


def save_compressed(
    model: nn.Module,
    path: Path,
    *,
    arch: str,
    num_classes: int,
    recipe: dict[str, Any],
    dtype: torch.dtype | None = None,
    preprocess: dict[str, Any] | None = None,
    classes: list[str] | None = None,
) -> int:
    """Write ``model`` to ``path`` (cores in float32, or ``dtype``); returns the file size.
    ``preprocess`` and ``classes`` are what the data was prepared with and its class names."""
    from safetensors.torch import save

    tensors = {}
    for key, value in model.state_dict().items():
        t = value.detach().to("cpu")
        if dtype is not None and t.is_floating_point() and ".generator" in key:
            t = t.to(dtype)
        tensors[key] = t.contiguous().clone()
    meta = metadata(
        arch=arch,
        num_classes=num_classes,
        input_size=int(recipe.get("model", {}).get("input_size", 224)),
        recipe=recipe,
        layers=layer_specs(model),
        preprocessing=preprocess,
        classes=classes,
    )
    return write_bytes(path, canonical_safetensors(save(tensors, metadata=meta)))


def layer_specs(model: nn.Module) -> LayerSpecs:
    """Every generated layer's generators with their frozen specs (what rebuilds them)."""
    from .layers import GeneratedModule

    return {
        name: {g: gen.frozen_spec() for g, gen in m.generators().items()}
        for name, m in model.named_modules()
        if isinstance(m, GeneratedModule)
    }


def canonical_safetensors(blob: bytes) -> bytes:
    """``blob`` with its header in one order: metadata keys sorted, tensors by offset.

    safetensors writes the metadata from a hash map whose order changes from one process to
    the next, so the same model would give files that differ byte for byte. The header is
    re-written (JSON, padded with spaces to 8 bytes, as safetensors pads it); the data after it
    is untouched, and its offsets are relative to the data, so they stay valid.
    """
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    ordered = {"__metadata__": dict(sorted(meta.items()))} if meta else {}
    ordered.update(sorted(header.items(), key=lambda kv: (kv[1]["data_offsets"], kv[0])))
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + blob[8 + n :]


def is_compressed(path: Path) -> bool:
    """Whether ``path`` is a safetensors file written by adntn."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.exists():
        return False
    try:
        return read_metadata(path).get("format", "").startswith("adntn/")
    except UnsafeFileError:
        raise
    except ModelError:
        return False


def _check_keys(path: Path, model: nn.Module, keys) -> None:
    """Strict: the file holds exactly the model's state-dict keys (listed, sorted, if not)."""
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(keys)), sorted(set(keys) - expected)
    if missing or unexpected:
        raise ModelError(f"{path}: missing keys {missing}, unexpected keys {unexpected}")


def _rebuild(header: Header) -> tuple[nn.Module, Plan]:
    """The compressed architecture on the meta device and its plan: the stored specs
    (adntn/2), or the embedded recipe planned again (adntn/1)."""
    from .models import build_model
    from .plan import apply_plan, plan, plan_from_specs

    model = build_model(header.arch, header.num_classes, device="meta")
    source = str(header.path)
    if header.layers is None:
        p = plan(model, header.recipe, source=source)
    else:
        p = plan_from_specs(
            model, header.layers, source=source, batch=header.recipe.data.batch_size
        )
    return apply_plan(model, p), p


def load_compressed(path: Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the compressed model from ``path`` alone (no pickle), in eval mode.

    The architecture is built on the meta device with the file's generators (see ``_rebuild``),
    and every tensor then taken from the file; keys are checked strictly (missing and
    unexpected listed).
    """
    from safetensors.torch import load_file

    path = Path(path)
    model, _ = _rebuild(read_header(path))
    try:
        state = load_file(str(path), device=str(device))
    except Exception as err:
        raise ModelError(f"{path}: not a readable safetensors file ({err})") from None
    _check_keys(path, model, state)
    ref = model.state_dict()
    for key, value in state.items():
        if value.shape != ref[key].shape:
            raise ModelError(
                f"{path}: {key} has shape {list(value.shape)}, the recipe makes "
                f"{list(ref[key].shape)}"
            )
        if value.dtype == torch.bfloat16 and ref[key].dtype != torch.bfloat16:
            state[key] = value.to(ref[key].dtype)  # cores stored in bf16 compute in float32
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval()


def load_any(
    source: str,
    arch: str | None = None,
    num_classes: int | None = None,
    *,
    allow_pickle: bool = False,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """A compressed file, a dense model file or ``torchvision:NAME``; returns it and facts
    about it (``kind``, ``file_bytes``, ``arch``; ``input_size`` and ``preprocessing`` where the
    file records them)."""
    from .models import inspect_model, load_model, load_source

    path = Path(source)
    if is_compressed(path):
        header = read_header(path)
        model = load_compressed(path, device)
        info = {"kind": "compressed", "arch": header.arch, "input_size": header.input_size,
                "preprocessing": header.preprocessing}  # fmt: skip
    elif allow_pickle:
        model = load_model(source, arch, num_classes, allow_pickle=True, device=device)
        info = {"kind": "dense", "arch": arch or type(model).__name__.lower(), "input_size": None}
    else:
        found = inspect_model(source, arch, num_classes)
        model = load_source(found, device)
        info = {"kind": "dense", "arch": found.arch, "input_size": found.input_size}
    info["file_bytes"] = path.stat().st_size if path.exists() else None
    return model.eval(), info


def export_dense(source: Path, out: Path) -> int:
    """Materialise every generated weight of ``source`` into a state dict at ``out`` that loads
    into the ordinary architecture; returns the file size. Both forms record ``arch``,
    ``num_classes`` and ``input_size``: .safetensors in its metadata (the tensors are the plain
    state dict), .pt/.pth as ``{"state_dict": ..., "arch": ..., ...}`` (timm's layout)."""
    from .plan import densify_

    out = Path(out)
    if out.suffix not in (".safetensors", ".pt", ".pth"):
        raise ModelError(f"--dense {out}: use a .safetensors, .pt or .pth file name")
    header = read_header(Path(source))
    model = densify_(load_compressed(source))
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    facts = {
        "arch": header.arch,
        "num_classes": header.num_classes,
        "input_size": header.input_size,
    }
    if out.suffix == ".safetensors":
        from safetensors.torch import save

        meta = {**{k: str(v) for k, v in facts.items()}, "from": str(source)}
        return write_bytes(out, save(state, metadata=meta))
    return write_bytes(out, torch_bytes({"state_dict": state, **facts}))


def export_onnx(
    source: Path, out: Path, *, input_size: int | None = None, **options: Any
) -> OnnxExport:
    """``source`` (a compressed file) as ONNX at ``out``: compressed by default (the cores and
    their contraction in the graph), ``weights="dense"`` materialised; see onnxfile.py."""
    from .onnxfile import export_model_onnx

    header = read_header(Path(source))
    model = load_compressed(source)
    size = input_size or header.input_size
    return export_model_onnx(model, out, input_size=size, label=header.arch, **options)


def file_report(path: Path) -> CompressionReport:
    """What a compressed file holds, from the file alone: per-layer records and totals."""
    from safetensors import safe_open

    path = Path(path)
    header = read_header(path)
    model, p = _rebuild(header)
    with safe_open(str(path), "pt") as f:
        _check_keys(path, model, list(f.keys()))
    return dataclasses.replace(
        p.report,
        model=str(path),
        arch=header.arch,
        adntn_version=header.adntn_version,
        files={"model": str(path), "model_bytes": path.stat().st_size},
    )
