"""``adntn eval``: accuracy, size, memory and latency of a model, beside a baseline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from .app import app, handle_errors, out
from .compress import Device
from .options import AllowClassMismatch, Arch, Json, NumClasses

if TYPE_CHECKING:
    from ..preprocess import Preprocess
    from ..report import EvalResult

Source = Annotated[
    str,
    typer.Argument(
        help="A compressed .safetensors (or its run folder), a model file, or torchvision:NAME"
    ),
]


def measure(
    source: str, data: str, *, preprocess: Preprocess | None = None, **options: Any
) -> tuple[EvalResult, Preprocess | None]:
    """Evaluate ``source`` on the validation split of ``data``; images prepared as the
    compressed file recorded, else as ``preprocess`` (the model compared with), else by the
    source's defaults. ``options``: arch, num_classes, input_size, batch, device,
    allow_class_mismatch."""
    from torch.utils.data import DataLoader

    from ..data import make_datasets
    from ..devices import resolve_device
    from ..evaluate import accuracy, count_params, latency, runtime_bytes
    from ..io import load_any
    from ..job import check_classes
    from ..preprocess import Preprocess
    from ..report import EvalResult
    from .resolve import compressed_file

    o = options
    dev = resolve_device(o["device"])
    target = str(compressed_file(Path(source)))
    model, info = load_any(target, o["arch"], o["num_classes"], device=dev)
    size = o["input_size"] or info["input_size"] or 224
    classes = _probe(model, source, size, dev, given=o["input_size"] is not None)
    recorded = info.get("preprocessing")
    pre = Preprocess.from_dict(recorded) if recorded else preprocess
    sets = make_datasets(data, size, classes, preprocess=pre, train=False)
    check_classes(sets, classes, data, allowed=o["allow_class_mismatch"])
    acc = accuracy(model, DataLoader(sets.val, o["batch"]), dev)
    return EvalResult(
        model=source,
        kind=info["kind"],
        top1=acc["top1"],
        top5=acc["top5"],
        loss=acc["loss"],
        val_images=acc["n"],
        file_bytes=info["file_bytes"],
        params=count_params(model),
        **runtime_bytes(model, o["batch"]),
        latency_ms={
            str(b): round(1e3 * latency(model, (3, size, size), b, dev), 3) for b in (1, 64)
        },
        device=str(dev),
        input_size=size,
    ), sets.preprocess


def _probe(model, source: str, size: int, device, *, given: bool) -> int:
    """One forward pass at ``size``: the classifier's size, or why the model refuses it."""
    import torch

    from ..errors import ModelError

    try:
        with torch.no_grad():
            return model(torch.zeros(1, 3, size, size, device=device)).shape[-1]
    except RuntimeError as err:
        why = " ".join(str(err).split())[:160]
        said = "--input-size" if given else "the default size (the file records none)"
        raise ModelError(
            f"{source} does not take {size}x{size} images, {said} ({why}): pass --input-size N, "
            "the size it was trained at"
        ) from None


def _fmt_bytes(n) -> str:
    from ..tn import format_bytes

    return "-" if n is None else format_bytes(n)


@app.command("eval")
@handle_errors
def eval_(
    model: Source,
    data: Annotated[
        str,
        typer.Option(
            "--data", help="digits, imagefolder:PATH, fashion-mnist:PATH, cifar10:PATH, ..."
        ),
    ],
    baseline: Annotated[
        str | None, typer.Option("--baseline", help="A model to compare with (e.g. the teacher).")
    ] = None,
    arch: Arch = None,
    num_classes: NumClasses = None,
    input_size: Annotated[
        int | None, typer.Option("--input-size", min=8, help="Image size (default: from the file).")
    ] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Evaluation batch size.")] = 64,
    device: Device = "auto",
    allow_class_mismatch: AllowClassMismatch = False,
    json_: Json = False,
) -> None:
    """Measure MODEL: top-1, top-5, loss, file size, parameters, runtime memory, latency.

    Only the validation split is read (imagefolder: PATH/val). Images are prepared as the
    compressed file records (the recipe's preprocessing), and a baseline as its model.

    A compressed model caches its generated weights in eval mode, so its runtime memory is the
    dense model's; the contract schedule's memory (layers that never form their weight) is shown
    beside it.

    Examples:
      adntn eval runs/demo/compressed --data digits --baseline runs/demo/teacher.pt
      adntn eval model.safetensors --data imagefolder:/data/imagenet --json
    """
    kw = {"arch": arch, "num_classes": num_classes, "input_size": input_size, "batch": batch,
          "device": device, "allow_class_mismatch": allow_class_mismatch}  # fmt: skip
    result, pre = measure(model, data, **kw)
    if baseline:  # prepared as the model was: a teacher records no preprocessing of its own
        kw["input_size"] = input_size or result.input_size
        result = result.against(measure(baseline, data, preprocess=pre, **kw)[0])
    if json_:
        typer.echo(json.dumps(result.to_dict(), indent=1))
        return
    rows = [result, result.baseline] if baseline else [result]
    table = Table(title=escape(f"eval on {data} ({result.val_images} validation images)"))
    for col in ("", "top-1", "top-5", "loss", "file", "params", "runtime memory",
                "contract memory", "latency b=1", "latency b=64"):  # fmt: skip
        table.add_column(col, justify="right")
    for r, label in zip(rows, ("model", "baseline"), strict=False):
        table.add_row(
            f"{label} ({r.kind})", f"{100 * r.top1:.2f}%", f"{100 * r.top5:.2f}%",
            f"{r.loss:.4f}", _fmt_bytes(r.file_bytes), f"{r.params:,}",
            _fmt_bytes(r.runtime_bytes), _fmt_bytes(r.runtime_bytes_contract),
            f"{r.latency_ms['1']:.2f} ms", f"{r.latency_ms['64']:.2f} ms",
        )  # fmt: skip
    out.print(table)
    if baseline:
        d = result.delta
        out.print(
            f"delta (model - baseline): top-1 {100 * d['top1']:+.2f} points, top-5 "
            f"{100 * d['top5']:+.2f} points, parameters {d['params']:+,}"
        )
