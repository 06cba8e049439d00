"""``adntn layers``: what can be compressed in a model."""

from __future__ import annotations

import json

import typer
from rich.markup import escape
from rich.table import Table

from .app import app, handle_errors, out
from .options import Arch, Json, Model, NumClasses
from .resolve import meta_model

TEMPLATE_MIN_PARAMS = 1_000_000


def _shape(module) -> list[int]:
    from torch import nn

    if isinstance(module, nn.MultiheadAttention):
        return list(module.in_proj_weight.shape)
    return list(module.weight.shape)


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def template(arch: str, num_classes: int, rows: list[dict]) -> str:
    """A starter recipe: every layer of at least 1M parameters, 1,000x fewer, with ttn."""
    big = [r["layer"] for r in rows if r["params"] >= TEMPLATE_MIN_PARAMS] or [rows[-1]["layer"]]
    lines = [
        "# Starter recipe from `adntn layers --template`: edit, then `adntn plan`.",
        "version: 1",
        f"model: {{arch: {arch}, num_classes: {num_classes}}}",
        "defaults: {structure: ttn, activation: tanh}",
        "layers:",
    ]
    for name in big:
        lines += [f"  - select: {name}", "    target_ratio: 1000"]
    return "\n".join(lines) + "\n"


@app.command()
@handle_errors
def layers(
    model: Model,
    arch: Arch = None,
    num_classes: NumClasses = None,
    template_: bool = typer.Option(False, "--template", help="Print a starter recipe instead."),
    json_: Json = False,
) -> None:
    """List the layers adntn can compress: name, type, weight shape, parameters.

    Examples:
      adntn layers torchvision:vgg16
      adntn layers torchvision:alexnet --template > alexnet.yaml
      adntn layers model.pt --arch resnet18 --json
    """
    from ..models import compressible_layers

    net, found = meta_model(model, arch, num_classes, compressed_ok=True)
    rows = [
        {"layer": n, "kind": type(m).__name__, "shape": _shape(m), "params": _params(m)}
        for n, m in compressible_layers(net)
    ]
    if template_:
        typer.echo(template(found.arch, found.num_classes, rows), nl=False)
    elif json_:
        typer.echo(json.dumps({"layers": rows}, indent=1))
    else:
        what = model if found.arch in model else f"{model} ({found.arch})"
        table = Table(title=escape(f"compressible layers of {what}"))
        for col in ("layer", "type", "weight shape", "parameters"):
            table.add_column(col, justify="right" if col == "parameters" else "left")
        for r in rows:
            shape = " x ".join(map(str, r["shape"]))
            table.add_row(r["layer"], r["kind"], shape, f"{r['params']:,}")
        out.print(table)
