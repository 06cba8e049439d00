"""``adntn demo``: the embedded default job."""

from __future__ import annotations

import typer

from .app import app, handle_errors


@app.command()
@handle_errors
def demo() -> None:
    """Run the embedded demo (the distillation pipeline is still being built).

    Example:
      adntn demo
    """
    typer.echo(
        "adntn demo: distillation is not built yet. The generators and plans exist, e.g.\n"
        "  adntn plan torchvision:vgg16 --recipe vgg16\n"
        "  adntn layers torchvision:alexnet --template"
    )
