"""``adntn export``: a compressed model as an ordinary state dict (and ONNX)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..errors import AdntnError
from .app import app, handle_errors, out


@app.command()
@handle_errors
def export(
    compressed: Annotated[
        Path, typer.Argument(help="A compressed .safetensors written by adntn, or its run folder")
    ],
    dense: Annotated[
        Path | None, typer.Option("--dense", help="Write a plain state dict (.safetensors or .pt).")
    ] = None,
    onnx: Annotated[Path | None, typer.Option("--onnx", help="Write ONNX (needs onnx).")] = None,
) -> None:
    """Materialise every generated weight for runtimes that know nothing of tensor networks.

    Examples:
      adntn export runs/demo/compressed/model.safetensors --dense demo_dense.safetensors
      adntn export runs/vgg16-1 --dense vgg16_dense.safetensors
      adntn export model.safetensors --dense model.pt --onnx model.onnx
    """
    from ..io import export_dense, export_onnx
    from ..tn import format_bytes
    from .resolve import compressed_file

    if dense is None and onnx is None:
        raise AdntnError("nothing to export: give --dense OUT and/or --onnx OUT")
    compressed = compressed_file(compressed)
    if dense is not None:
        size = export_dense(compressed, dense)
        out.print(
            escape(f"wrote {dense} ({format_bytes(size)}): loads into the plain architecture"),
            highlight=False,
        )
    if onnx is not None:
        size = export_onnx(compressed, onnx)
        out.print(escape(f"wrote {onnx} ({format_bytes(size)})"), highlight=False)
