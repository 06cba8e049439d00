"""``adntn plan``: what a recipe would do to a model, without weights or training."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from .app import app, handle_errors, out
from .options import Arch, Json, Model, NumClasses, RecipeOpt
from .resolve import meta_model

if TYPE_CHECKING:
    from ..schedule import DistillSchedule


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
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="Count the training images of this source (default: the "
            "recipe's data.train) to give the distillation's steps.",
        ),
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
    from .tables import layer_table

    rec, source = load_recipe(recipe)
    net, found = meta_model(model, arch, num_classes, recipe=rec)
    budget = int(memory_gb * 2**30) if memory_gb else None
    p = make_plan(net, rec, source=source, memory_budget=budget, batch=batch)
    sched, counted = _schedule(rec, len(p.layers), data or rec.data.train, found.num_classes)
    expected = _expected(net, p, rec, sched, counted) if counted else None
    if json_:
        extra = {"distill": dataclasses.asdict(sched)}
        if isinstance(expected, str):
            extra["expected_time"] = {"error": expected}
        elif expected is not None:
            extra["expected_time"] = {**dataclasses.asdict(expected), "total": expected.total}
        typer.echo(json.dumps({**p.to_dict(), **extra}, indent=1))
        return
    records = [lp.record for lp in p.layers]
    out.print(layer_table(records, escape(f"plan: {source} on {model}"), width=out.width))
    t = p.totals
    out.print(
        f"replaced layers: {t.replaced_dense_params:,} -> {t.replaced_tn_params:,} "
        f"parameters ({t.replaced_ratio:,.0f}x fewer, kept fraction {1 / t.replaced_ratio:.2e})"
    )
    out.print(
        f"whole model: {t.dense_params:,} -> {t.compressed_params:,} parameters "
        f"({t.ratio:,.1f}x fewer)"
    )
    out.print(escape(f"distillation: {sched.describe()}"))
    if isinstance(expected, str):
        out.print(escape(expected), soft_wrap=not out.is_terminal)  # a log keeps it whole
    elif expected is not None:
        out.print(escape(expected.describe()), soft_wrap=not out.is_terminal)


def _expected(net, p, rec, sched, counted: tuple[int | None, bool]):
    """The run's expected time, or a line saying why it cannot be estimated."""
    import torch

    from ..errors import one_line
    from ..schedule import expected_time

    val_images, augmented = counted
    kind = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return expected_time(
            net, p.layers, rec, sched, val_images, device=kind, augmented=augmented
        )
    except Exception as err:  # a model that does not run on the meta device, say
        reason = one_line(err)[:160]
        return f"expected time: not estimated (counting the FLOPs failed: {reason})"


def _schedule(
    rec, layers: int, spec: str | None, num_classes: int
) -> tuple[DistillSchedule, tuple[int | None, bool] | None]:
    """The distillation schedule, the training images counted when a source is known; and,
    when counted, the number of validation images and whether the training data is augmented."""
    from ..data import make_datasets
    from ..schedule import distill_schedule

    if not spec:
        return distill_schedule(rec, layers), None
    data = make_datasets(
        spec, rec.model.input_size, num_classes, preprocess=rec.data.preprocessing(),
        holdout=rec.data.holdout,
    )  # fmt: skip
    select = len(data.select) if data.select is not None else 0
    val = len(data.val) if data.val is not None else None
    return distill_schedule(rec, layers, len(data.train), select), (val, data.augmented)
