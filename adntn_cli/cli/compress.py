"""``adntn compress``: the whole pipeline."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .app import app, handle_errors, out
from .options import AllowClassMismatch, Arch, Json, Model, RecipeOpt

if TYPE_CHECKING:
    from ..report import CompressionReport

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for initialisation, data order, dropout.")]
AllowScheduleChange = Annotated[
    bool,
    typer.Option(
        "--allow-schedule-change",
        help="With --resume: continue although the recipe's schedule changed (said, recorded).",
    ),
]

Data = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="digits, synthetic[:N], imagefolder:PATH, fashion-mnist:PATH, mnist:PATH, "
        "cifar10:PATH, ...",
    ),
]
OutDir = Annotated[
    Path | None, typer.Option("--out", help="Run directory (default: runs/<recipe>-<n>).")
]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")]
Force = Annotated[bool, typer.Option("--force", help="Empty --out and start over.")]
AllowPickle = Annotated[
    bool,
    typer.Option(
        "--allow-pickle",
        help="Load a pickled whole model. Pickle runs code: only for files you trust.",
    ),
]
CoresDtype = Annotated[
    str, typer.Option("--cores-dtype", help="Store the cores as float32 or bfloat16.")
]
CompileMode = Annotated[
    str | None,
    typer.Option(
        "--compile",
        help="torch.compile the generators: auto (CUDA only), on, off (default: the "
        "recipe's distill.compile).",
    ),
]
Precision = Annotated[
    str | None,
    typer.Option(
        "--precision",
        help="Autocast of the forward passes: auto (bf16 on CUDA, fp32 elsewhere), bf16, "
        "fp32 (default: the recipe's distill.precision).",
    ),
]
PrefixCache = Annotated[
    Path | None,
    typer.Option(
        "--prefix-cache",
        help="Folder that keeps the frozen prefix's outputs (training, hold-out and "
        "validation images) between runs on the same teacher and data (read when there, "
        "else written).",
    ),
]


def summary(report: CompressionReport) -> str:
    acc, t = report.accuracy, report.totals
    return (
        f"replaced layers {t.replaced_ratio:,.0f}x fewer parameters; whole model "
        f"{t.ratio:,.2f}x; top-1 dense {100 * acc.dense.top1:.2f}% -> compressed "
        f"{100 * acc.compressed.top1:.2f}% ({acc.val_images} validation images)\n"
        f"wrote {report.run_dir}/: model.safetensors, report.json, report.md, metrics.csv, "
        "recipe.resolved.yaml, checkpoints/"
    )


@app.command()
@handle_errors
def compress(
    model: Model,
    recipe: RecipeOpt,
    data: Data = None,
    out_dir: OutDir = None,
    device: Device = "auto",
    seed: Seed = 0,
    resume: Resume = False,
    force: Force = False,
    arch: Arch = None,
    allow_pickle: AllowPickle = False,
    cores_dtype: CoresDtype = "float32",
    compile_mode: CompileMode = None,
    precision: Precision = None,
    prefix_cache: PrefixCache = None,
    allow_class_mismatch: AllowClassMismatch = False,
    allow_schedule_change: AllowScheduleChange = False,
    quiet: Quiet = False,
    json_: Json = False,
) -> None:
    """Compress MODEL with RECIPE: distil the generators and write a run directory.

    Examples:
      adntn compress teacher.pt --arch vgg16 --recipe vgg16 --data imagefolder:/data/imagenet
      adntn compress torchvision:resnet18 --recipe my.yaml --data synthetic:256 --out runs/try
      adntn compress teacher.pt --recipe demo --out runs/demo --resume
      adntn compress t.pth -r alexnet-10 --data fashion-mnist:/usr/share/datasets/fashion-mnist
    """
    import json

    from ..distributed import from_env
    from ..job import CompressJob
    from ..job import compress as run
    from .progress import Reporter

    job = CompressJob.create(
        model, recipe, data=data, out=out_dir, device=device, seed=seed, resume=resume,
        force=force, arch=arch, allow_pickle=allow_pickle, argv=["adntn", *sys.argv[1:]],
        cores_dtype=cores_dtype, compile_mode=compile_mode, precision=precision,
        allow_class_mismatch=allow_class_mismatch, allow_schedule_change=allow_schedule_change,
        prefix_cache=prefix_cache,
    )  # fmt: skip
    main_process = from_env().main  # under torchrun only rank 0 prints
    with Reporter(quiet or not main_process) as reporter:
        report = run(job, reporter)
    if not main_process:
        return
    if json_:
        typer.echo(json.dumps({**report.to_dict(), "run_dir": report.run_dir}, indent=1))
    else:
        out.print(summary(report), markup=False, highlight=False)
