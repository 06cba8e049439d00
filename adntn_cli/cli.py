"""The ``adntn`` command line: a thin Typer shell over the Python API."""

from __future__ import annotations

from typing import Annotated

import typer

from . import __version__

app = typer.Typer(
    name="adntn",
    help="Compress PyTorch vision models with nonlinear tensor-network weight generators.",
    no_args_is_help=True,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"adntn {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """adntn: tensor-network compression of vision models."""


@app.command()
def demo() -> None:
    """Run the embedded demo (placeholder until the pipeline lands).

    Example: adntn demo
    """
    typer.echo(
        "adntn demo: the compression pipeline (recipes, distillation, reports) is not built yet; "
        "the tensor-network generators are: see README.md and docs/architectures.md."
    )


def main() -> None:
    app()
