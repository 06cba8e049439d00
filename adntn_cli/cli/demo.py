"""``adntn demo``: the embedded default job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app, handle_errors, out
from .compress import Device, Quiet, Seed, summary


@app.command()
@handle_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where the demo writes.")] = Path(
        "runs/demo"
    ),
    device: Device = "auto",
    seed: Seed = 0,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Start --out over although it is not an earlier demo run (deletes its files).",
        ),
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Train a small VGG-style teacher on the bundled digits and compress it >= 1,000x.

    Its two large fully connected layers become TTN generators (the shipped demo recipe); the
    report compares dense and compressed accuracy. A few minutes on a laptop CPU.

    An earlier demo run in --out is started over; any other non-empty folder is refused
    unless --force.

    Example:
      adntn demo --out runs/demo
    """
    from ..demo import run_demo
    from .progress import Reporter

    with Reporter(quiet) as reporter:
        report = run_demo(out_dir, device=device, seed=seed, force=force, callback=reporter)
    # markup=False: the report and the summary hold paths, printed as they are
    out.print((Path(report.run_dir) / "report.md").read_text(), markup=False, highlight=False)
    out.print(summary(report), markup=False, highlight=False)
