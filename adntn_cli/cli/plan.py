"""``adntn plan``: what a recipe would do to a model, without weights or training."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from .app import app, handle_errors, out
from .options import Arch, Json, Model, NumClasses, RecipeOpt
from .resolve import meta_model


def compact_legs(legs: list[list[int]]) -> str:
    """``[[2,2],[2,2],[4,1]] -> '2x2^2 4x1'``: runs of equal legs with their count."""
    runs: list[list] = []
    for o, i in legs:
        if runs and runs[-1][0] == (o, i):
            runs[-1][1] += 1
        else:
            runs.append([(o, i), 1])
    return " ".join(f"{o}x{i}" + (f"^{n}" if n > 1 else "") for (o, i), n in runs)


def _si(n: float) -> str:
    for unit in ("", "K", "M", "G", "T", "P"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}E"


@app.command()
@handle_errors
def plan(
    model: Model,
    recipe: RecipeOpt,
    arch: Arch = None,
    num_classes: NumClasses = None,
    memory_gb: Annotated[
        float | None,
        typer.Option("--memory-gb", min=0.001, help="Memory budget (default: limits.memory_gb)."),
    ] = None,
    batch: Annotated[
        int | None, typer.Option("--batch", min=1, help="Batch size for the schedule choice.")
    ] = None,
    json_: Json = False,
) -> None:
    """Show what RECIPE would do to MODEL, per layer and in total, without weights or training.

    Per layer: structure, legs, bond dimensions, dense and generator parameters, ratio ("x fewer
    parameters"), generator FLOPs, peak bytes, execution schedule. Instant even for VGG-16.

    Examples:
      adntn plan torchvision:vgg16 --recipe vgg16
      adntn plan torchvision:alexnet --recipe my.yaml --json
      adntn plan model.pt --arch vgg16 --recipe vgg16 --memory-gb 8
    """
    from ..plan import plan as make_plan
    from ..recipe import load_recipe
    from ..tn import format_bytes

    rec, source = load_recipe(recipe)
    net = meta_model(
        model, arch or rec.model.arch, rec.model.num_classes if num_classes is None else num_classes
    )
    budget = int(memory_gb * 2**30) if memory_gb else None
    p = make_plan(net, rec, source=source, memory_budget=budget, batch=batch)
    if json_:
        typer.echo(json.dumps(p.to_dict(), indent=1))
        return
    table = Table(title=f"plan: {source} on {model}")
    cols = (
        "layer",
        "type",
        "structure",
        "legs",
        "bond_dim",
        "dense",
        "tn",
        "ratio",
        "FLOPs",
        "peak",
        "schedule",
    )
    for col in cols:
        table.add_column(
            col, justify="right" if col in ("dense", "tn", "ratio", "FLOPs") else "left"
        )
    for lp in p.layers:
        r = lp.record
        legs = compact_legs(r["legs"])
        table.add_row(
            r["layer"],
            r["kind"],
            r["structure"],
            legs,
            ",".join(map(str, r["bond_dim"])),
            f"{r['dense_params']:,}",
            f"{r['tn_params']:,}",
            f"{r['ratio']:,.0f}x",
            _si(r["flops"]),
            format_bytes(r["peak_bytes"]),
            r["schedule"],
        )
    out.print(table)
    t = p.totals
    out.print(
        f"replaced layers: {t['replaced_dense_params']:,} -> {t['replaced_tn_params']:,} "
        f"parameters ({t['replaced_ratio']:,.0f}x fewer, kept fraction "
        f"{1 / t['replaced_ratio']:.2e})"
    )
    out.print(
        f"whole model: {t['dense_params']:,} -> {t['compressed_params']:,} parameters "
        f"({t['ratio']:,.1f}x fewer)"
    )
