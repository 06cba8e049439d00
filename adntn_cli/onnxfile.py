"""ONNX export that keeps the compression: the cores in the file, the contraction in the graph.

A compressed model is exported with each generated layer's cores as initializers and its work as
graph nodes, on the schedule the cost model picks for it (``fixed_schedule``):

- contract: the layer contracts its input through the cores; the dense weight is never formed;
- materialise (Conv2d, MERA where the cost model prefers it): the graph generates the weight
  from the cores, then runs the ordinary operator on it.

The graph has a dynamic batch axis: it is traced at ``EXAMPLE_BATCH`` with every schedule and
contraction path fixed (see ``for_export``), so no Python decision on the batch is left in it.
The exporter's constant folding is pinned below 1% of the smallest generated weight, so a
generated weight is never folded into an initializer (what ONNX Runtime does with the generation
subgraph at load time: docs/onnx.md). ``weights="dense"`` exports the materialised model instead.

The file is self-contained up to ``EXTERNAL_ABOVE`` bytes of initializers; above that the weights
go to ``<out>.data`` beside it (ONNX's protobuf limit is 2 GB). Both are written under temporary
names and renamed, the data first and the graph last, so no partial or orphaned file is left.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .atomic import temp_path, write_error
from .errors import AdntnError, ModelError, one_line
from .layers import GeneratedLinear, GeneratedModule

__all__ = [
    "DEFAULT_OPSET",
    "EXAMPLE_BATCH",
    "OnnxExport",
    "check_target",
    "export_model_onnx",
    "for_export",
    "onnx_outputs",
]

DEFAULT_OPSET = 18  # the lowest the dynamo exporter supports
EXAMPLE_BATCH = 2  # traced at this batch; 0 and 1 would be specialised by torch.export
EXTERNAL_ABOVE = 2 * 1024**3 - 64 * 1024**2  # initializer bytes; protobuf's limit is 2 GiB
FOLD_FRACTION = 0.01  # of the smallest generated weight: the largest constant the exporter folds
WEIGHTS = ("compressed", "dense")


@dataclass(frozen=True)
class OnnxExport:
    """What an export wrote: the files, their total size and what the graph holds."""

    path: Path
    data_path: Path | None  # the external weights, for a model above EXTERNAL_ABOVE
    bytes: int  # the .onnx and its .data together
    weights: str  # "compressed" or "dense"
    opset: int
    schedules: dict[str, str]  # generated layer -> the schedule its graph runs
    largest_initializer: int  # elements


def onnx_outputs(out: Path) -> list[Path]:
    """The files an export to ``out`` may write: the graph and its external data."""
    return [out, out.with_name(out.name + ".data")]


def _require_onnx() -> None:
    import importlib.util

    major, minor = (int(p) for p in torch.__version__.split(".")[:2])
    if (major, minor) < (2, 6):
        raise ModelError(
            f"--onnx needs torch 2.6 or newer (its torch.export-based exporter); this is "
            f"torch {torch.__version__}"
        )
    missing = [n for n in ("onnx", "onnxscript") if importlib.util.find_spec(n) is None]
    if missing:
        raise ModelError(
            f"--onnx needs {' and '.join(missing)}: pip install 'adntn[onnx]' "
            "(onnx, onnxscript and onnxruntime)"
        )


@contextlib.contextmanager
def for_export(model: nn.Module, batch: int) -> Iterator[dict[str, str]]:
    """Fix every generated layer's schedule (the cost model's choice at ``batch`` with no weight
    cache) and its contraction path, so the traced graph takes any batch; put them back after.
    Yields the schedule of each generated layer."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, GeneratedModule)]
    saved = [(m, m.cache_weights, getattr(m, "fixed_schedule", None)) for _, m in layers]
    schedules: dict[str, str] = {}
    try:
        for name, m in layers:
            m.cache_weights = False
            m.drop_cached_weights()
            schedule = "materialise"
            if isinstance(m, GeneratedLinear):
                schedule = m.generator.choose_schedule(batch, "cpu", weight_cached=False)
                m.fixed_schedule = schedule
                if schedule == "contract":
                    m.generator.program.fix_contract(batch)
            schedules[name] = schedule
        yield schedules
    finally:
        for m, cache, fixed in saved:
            m.cache_weights = cache
            if isinstance(m, GeneratedLinear):
                m.fixed_schedule = fixed
                m.generator.program.fix_contract(None)


def _fold_limit(model: nn.Module) -> int:
    """Elements of the largest constant the exporter may fold: 1% of the smallest generated
    weight (a generated weight, or most of one, never becomes an initializer)."""
    sizes = [
        math.prod(g.weight_shape)
        for m in model.modules()
        if isinstance(m, GeneratedModule)
        for g in m.generators().values()
    ]
    return max(16, int(FOLD_FRACTION * min(sizes))) if sizes else 512 * 512


def _trace(model: nn.Module, example: torch.Tensor, opset: int):
    """torch.export and translate to ONNX (an onnx_ir model), optimisation left to the caller."""
    import inspect
    import warnings

    batch = torch.export.Dim("batch", min=1)
    options = {"optimize": False}  # where this torch's exporter has the switch
    known = inspect.signature(torch.onnx.export).parameters
    with warnings.catch_warnings():  # the exporter's own deprecation chatter is not the user's
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            verbose=False,
            **{k: v for k, v in options.items() if k in known},
        )
    return program.model


def _initializer_bytes(model) -> tuple[int, int]:
    """Total bytes and the largest element count of the initializers of an onnx_ir model."""
    total = largest = 0
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is None:
            continue
        total += tensor.nbytes
        largest = max(largest, math.prod(int(d) for d in tensor.shape))
    return total, largest


def _save(model, out: Path, staging: Path, external: bool) -> Path | None:
    """Write ``model`` into ``staging`` (a folder beside ``out``), then rename into place: the
    data first and the graph last. Returns the data file, if any."""
    import onnx_ir as ir

    data_name = out.name + ".data"
    if external:  # the .onnx refers to the data by its final name, beside it
        ir.save(model, staging / out.name, external_data=data_name)
        os.replace(staging / data_name, out.with_name(data_name))
    else:
        ir.save(model, staging / out.name)
    os.replace(staging / out.name, out)
    return out.with_name(data_name) if external else None


def check_target(out: Path, *, weights: str = "compressed", opset: int = DEFAULT_OPSET,
                 force: bool = False) -> Path:  # fmt: skip
    """Refuse what an export to ``out`` could not do, before any work: a missing package, an
    unknown weights form or opset, a name not ending in .onnx, a folder that is a file, an
    existing output without ``force``. Returns ``out`` as a Path."""
    _require_onnx()
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if weights not in WEIGHTS:
        raise AdntnError(f"unknown ONNX weights {weights!r}; valid: {', '.join(WEIGHTS)}")
    if not DEFAULT_OPSET <= opset <= newest:
        raise AdntnError(
            f"--opset {opset}: valid: {DEFAULT_OPSET} (the dynamo exporter's lowest) to {newest} "
            f"(the newest this onnx {onnx.__version__} knows)"
        )
    out = Path(out)
    if out.suffix != ".onnx":
        raise AdntnError(f"--onnx {out}: use a file name ending in .onnx")
    for folder in (out.parent, *out.parent.parents):
        if folder.exists() and not folder.is_dir():
            raise AdntnError(f"--onnx {out}: {folder} is a file, not a folder")
    existing = [p for p in onnx_outputs(out) if p.exists()]
    if existing and not force:
        raise AdntnError(f"{existing[0]} exists; choose another name or pass --force to replace it")
    return out


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` (its missing parents made); whatever happens it is
    removed, and so are the parents it made if the export fails."""
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    staging = temp_path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
    except OSError as err:
        raise write_error(err, out) from None
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in made:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)


def _reason(err: BaseException) -> str:
    """The innermost cause of an exporter's failure, in one line."""
    while err.__cause__ is not None:
        err = err.__cause__
    return one_line(err)


def export_model_onnx(
    model: nn.Module,
    out: Path,
    *,
    input_size: int,
    weights: str = "compressed",
    opset: int = DEFAULT_OPSET,
    batch: int = 8,
    force: bool = False,
    label: str = "the model",
) -> OnnxExport:
    """Export ``model`` (inputs (N, 3, input_size, input_size), any N) as ONNX at ``out``.

    ``weights="compressed"`` keeps the generators (module docstring); ``"dense"`` materialises
    every generated layer first (of a copy: ``model`` is left as it was). ``batch`` is the
    batch the schedules are chosen for. An existing ``out`` (or ``<out>.data``) is kept unless
    ``force``.
    """
    from .plan import densify_

    out = check_target(out, weights=weights, opset=opset, force=force)
    import onnxscript.optimizer

    training = model.training
    example = torch.randn(EXAMPLE_BATCH, 3, input_size, input_size)
    with _staging(out) as staging:
        try:
            model.eval()
            traced = densify_(copy.deepcopy(model)) if weights == "dense" else model
            with torch.no_grad(), for_export(traced, batch) as schedules:
                onnx_model = _trace(traced, example, opset)
            limit = _fold_limit(traced) if weights == "compressed" else 512 * 512
            onnxscript.optimizer.optimize(onnx_model, output_size_limit=limit)
        except Exception as err:  # exporters fail in many ways; say which, in one line
            raise ModelError(f"ONNX export of {label} failed: {_reason(err)}") from None
        finally:
            model.train(training)
        written = onnx_model.opset_imports.get("", opset)
        if written != opset:
            raise ModelError(f"ONNX export of {label}: asked for opset {opset}, got {written}")
        total, largest = _initializer_bytes(onnx_model)
        try:
            data = _save(onnx_model, out, staging, external=total > EXTERNAL_ABOVE)
        except OSError as err:
            raise write_error(err, out, total) from None
    stale = onnx_outputs(out)[1]
    if data is None and stale.exists():  # --force: an old .data must not outlive its graph
        stale.unlink()
    size = out.stat().st_size + (data.stat().st_size if data else 0)
    return OnnxExport(out, data, size, weights, written, schedules, largest)
