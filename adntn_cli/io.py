"""The compressed file: one safetensors file, self-describing, written atomically.

Every generator core and every untouched parameter and buffer is stored under its state-dict name
(``classifier.0.generator.cores.leaf0``, ``features.0.weight``), contiguous and unshared; no key
holds a dense copy of a replaced weight. ``__metadata__`` (strings only) holds ``format: adntn/1``,
the adntn version, the architecture, num_classes and the resolved recipe as JSON. Loading never
unpickles anything.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .atomic import temp_path, torch_bytes, write_bytes
from .errors import ModelError, UnsafeFileError
from .models import MAX_HEADER_BYTES, check_safetensors_header
from .report import CompressionReport

__all__ = [
    "FORMAT",
    "MAX_HEADER_BYTES",
    "MAX_METADATA_BYTES",
    "export_dense",
    "export_onnx",
    "file_report",
    "is_compressed",
    "load_any",
    "load_compressed",
    "read_metadata",
    "save_compressed",
]

FORMAT = "adntn/1"
FORMAT_VERSION = 1
MAX_METADATA_BYTES = 1 * 2**20  # adntn writes a few KiB: the resolved recipe is the largest part


def save_compressed(
    model: nn.Module,
    path: Path,
    *,
    arch: str,
    num_classes: int,
    recipe: dict[str, Any],
    dtype: torch.dtype | None = None,
) -> int:
    """Write ``model`` to ``path`` (cores in float32, or ``dtype``); returns the file size."""
    from safetensors.torch import save

    tensors = {}
    for key, value in model.state_dict().items():
        t = value.detach().to("cpu")
        if dtype is not None and t.is_floating_point() and ".generator" in key:
            t = t.to(dtype)
        tensors[key] = t.contiguous().clone()
    metadata = {
        "format": FORMAT,
        "adntn_version": __version__,
        "arch": arch,
        "num_classes": str(num_classes),
        "recipe": json.dumps(recipe, sort_keys=True),
    }
    return write_bytes(path, canonical_safetensors(save(tensors, metadata=metadata)))


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


def read_metadata(path: Path) -> dict[str, str]:
    """The file's string metadata; a file safetensors cannot read is a ModelError."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    check_safetensors_header(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise ModelError(f"{path}: not a readable safetensors file ({err})") from None
    size = sum(len(k.encode()) + len(v.encode()) for k, v in meta.items())
    if size > MAX_METADATA_BYTES:
        raise UnsafeFileError(
            f"{path}: its metadata holds {size:,} bytes, over the limit of "
            f"{MAX_METADATA_BYTES:,} (adntn writes a few KiB); refused unread"
        )
    return meta


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


def _check_format(path: Path, meta: dict[str, str]) -> None:
    fmt = meta.get("format", "")
    if not fmt.startswith("adntn/"):
        raise ModelError(
            f"{path} was not written by adntn (no 'format: adntn/N' metadata); a plain state "
            "dict loads as MODEL with --arch"
        )
    try:
        version = int(fmt.split("/", 1)[1])
    except ValueError:
        raise ModelError(f"{path}: unknown format {fmt!r}") from None
    if version > FORMAT_VERSION:
        raise ModelError(
            f"{path} is format {fmt}, newer than this adntn ({__version__}) reads ({FORMAT}): "
            "upgrade adntn"
        )
    for key in ("arch", "num_classes", "recipe"):
        if key not in meta:
            raise ModelError(f"{path}: adntn metadata lacks {key!r}; the file is damaged")


def _check_keys(path: Path, model: nn.Module, keys) -> None:
    """Strict: the file holds exactly the model's state-dict keys (listed, sorted, if not)."""
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(keys)), sorted(set(keys) - expected)
    if missing or unexpected:
        raise ModelError(f"{path}: missing keys {missing}, unexpected keys {unexpected}")


def _read_adntn(path: Path) -> tuple[dict[str, str], Any, int]:
    """The metadata of an adntn file, checked: (metadata, embedded recipe, num_classes)."""
    from .recipe import parse_recipe

    meta = read_metadata(path)
    _check_format(path, meta)
    try:
        recipe = parse_recipe(json.loads(meta["recipe"]), f"{path} (embedded recipe)")
        num_classes = int(meta["num_classes"])
    except (ValueError, RecursionError) as err:  # JSONDecodeError, RecipeError: ValueErrors
        detail = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        raise ModelError(f"{path}: damaged adntn metadata ({detail})") from None
    if num_classes < 1:
        raise ModelError(f"{path}: damaged adntn metadata (num_classes {num_classes})")
    return meta, recipe, num_classes


def load_compressed(path: Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the compressed model from ``path`` alone (no pickle), in eval mode.

    The architecture is built on the meta device, the resolved recipe re-applied, and every
    tensor then taken from the file; keys are checked strictly (missing and unexpected listed).
    """
    from safetensors.torch import load_file

    from .models import build_model
    from .plan import apply_plan, plan

    path = Path(path)
    meta, recipe, num_classes = _read_adntn(path)
    model = build_model(meta["arch"], num_classes, device="meta")
    apply_plan(model, plan(model, recipe, source=str(path)))
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
    """A compressed file, a dense state dict or ``torchvision:NAME``; returns it and facts about it
    (``kind``, ``file_bytes``, ``arch``, ``input_size`` where known)."""
    from .models import load_model

    path = Path(source)
    if is_compressed(path):
        model = load_compressed(path, device)
        meta, recipe, _ = _read_adntn(path)
        info = {"kind": "compressed", "arch": meta["arch"], "input_size": recipe.model.input_size}
    else:
        model = load_model(source, arch, num_classes, allow_pickle=allow_pickle, device=device)
        info = {"kind": "dense", "arch": arch or source.split(":", 1)[-1], "input_size": None}
    info["file_bytes"] = path.stat().st_size if path.exists() else None
    return model.eval(), info


def export_dense(source: Path, out: Path) -> int:
    """Materialise every generated weight of ``source`` into a plain state dict at ``out``
    (.safetensors or .pt) that loads into the ordinary architecture; returns the file size."""
    from .plan import densify_

    out = Path(out)
    if out.suffix not in (".safetensors", ".pt", ".pth"):
        raise ModelError(f"--dense {out}: use a .safetensors, .pt or .pth file name")
    model = densify_(load_compressed(source))
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if out.suffix == ".safetensors":
        from safetensors.torch import save

        meta = read_metadata(source)
        return write_bytes(out, save(state, metadata={"arch": meta["arch"], "from": str(source)}))
    return write_bytes(out, torch_bytes(state))


def export_onnx(source: Path, out: Path, input_size: int | None = None) -> int:
    """The dense form of ``source`` as ONNX (needs the onnx package); returns the file size."""
    from .plan import densify_

    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ModelError("--onnx needs the onnx package (pip install onnx)") from None
    meta, recipe, _ = _read_adntn(Path(source))
    size = input_size or recipe.model.input_size
    model = densify_(load_compressed(source))
    dummy = torch.randn(1, 3, size, size)
    out = Path(out)
    tmp = temp_path(out)  # exported beside ``out``, renamed when complete
    try:
        torch.onnx.export(
            model, (dummy,), str(tmp), input_names=["images"], output_names=["logits"]
        )
        os.replace(tmp, out)
    except Exception as err:  # exporters fail in many ways; say which
        tmp.unlink(missing_ok=True)
        raise ModelError(f"ONNX export of {meta['arch']} failed: {err}") from None
    return out.stat().st_size


def file_report(path: Path) -> CompressionReport:
    """What a compressed file holds, from the file alone: per-layer records and totals."""
    from safetensors import safe_open

    from .models import build_model
    from .plan import apply_plan, plan

    path = Path(path)
    meta, recipe, num_classes = _read_adntn(path)
    model = build_model(meta["arch"], num_classes, device="meta")
    p = plan(model, recipe, source=str(path))
    with safe_open(str(path), "pt") as f:
        _check_keys(path, apply_plan(model, p), list(f.keys()))
    return dataclasses.replace(
        p.report,
        model=str(path),
        arch=meta["arch"],
        adntn_version=meta.get("adntn_version"),
        files={"model": str(path), "model_bytes": path.stat().st_size},
    )
