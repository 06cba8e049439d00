"""``adntn export``: a compressed model as an ordinary state dict, and as ONNX."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..errors import AdntnError
from .app import app, handle_errors, out


class OnnxWeights(str, Enum):
    compressed = "compressed"
    dense = "dense"


@app.command()
@handle_errors
def export(
    compressed: Annotated[
        Path, typer.Argument(help="A compressed .safetensors written by adntn, or its run folder")
    ],
    dense: Annotated[
        Path | None, typer.Option("--dense", help="Write a plain state dict (.safetensors or .pt).")
    ] = None,
    onnx: Annotated[
        Path | None,
        typer.Option("--onnx", help="Write ONNX (needs adntn\\[onnx]); any batch size runs it."),
    ] = None,
    onnx_weights: Annotated[
        OnnxWeights,
        typer.Option(
            "--onnx-weights",
            help="compressed: the cores and their contraction in the graph; dense: plain weights.",
        ),
    ] = OnnxWeights.compressed,
    opset: Annotated[
        int, typer.Option("--opset", help="ONNX opset: 18 (the default) up to onnx's newest.")
    ] = 18,
    batch: Annotated[
        int, typer.Option("--batch", min=1, help="The batch size the schedules are chosen for.")
    ] = 8,
    force: Annotated[bool, typer.Option("--force", help="Replace existing output files.")] = False,
) -> None:
    """Export a compressed model for runtimes that know nothing of tensor networks.

    --dense materialises every generated weight into the plain architecture's state dict. --onnx
    writes a self-contained .onnx that keeps the compression: each generated layer's cores, and
    their contraction (or the generation of its weight) as graph nodes.

    Examples:
      adntn export runs/demo/compressed/model.safetensors --dense demo_dense.safetensors
      adntn export runs/vgg16-1 --onnx vgg16.onnx
      adntn export model.safetensors --onnx model_dense.onnx --onnx-weights dense
    """
    from ..io import export_dense, export_onnx
    from ..tn import format_bytes
    from .resolve import compressed_file

    if dense is None and onnx is None:
        raise AdntnError("nothing to export: give --dense OUT and/or --onnx OUT")
    compressed = compressed_file(compressed)
    if dense is not None and dense.exists() and not force:
        raise AdntnError(f"{dense} exists; choose another name or pass --force to replace it")
    if onnx is not None:  # every output checked before anything is written
        from ..onnxfile import check_target

        check_target(onnx, weights=onnx_weights.value, opset=opset, force=force)
    if dense is not None:
        size = export_dense(compressed, dense)
        out.print(
            escape(f"wrote {dense} ({format_bytes(size)}): loads into the plain architecture"),
            highlight=False,
            soft_wrap=True,
        )
    if onnx is not None:
        done = export_onnx(
            compressed, onnx, weights=onnx_weights.value, opset=opset, batch=batch, force=force
        )
        files = f"{done.path}" + (f" + {done.data_path.name}" if done.data_path else "")
        kind = "cores and contractions" if done.weights == "compressed" else "dense weights"
        out.print(
            escape(f"wrote {files} ({format_bytes(done.bytes)}, {kind}, opset {done.opset})"),
            highlight=False,
            soft_wrap=True,
        )
