"""Options shared by several commands."""

from __future__ import annotations

from typing import Annotated

import typer

Model = Annotated[
    str,
    typer.Argument(
        help="torchvision:NAME (random weights), or a model file: a state dict or a training "
        "checkpoint (.pt, .pth, .pth.tar, .safetensors)",
        show_default=False,
    ),
]
Arch = Annotated[
    str | None, typer.Option("--arch", help="Architecture of a state-dict file (e.g. vgg16).")
]
NumClasses = Annotated[
    int | None, typer.Option("--num-classes", help="Classifier size (default: recipe or 1000).")
]
RecipeOpt = Annotated[
    str, typer.Option("--recipe", "-r", help="A recipe file, or a shipped recipe by name.")
]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts.")]
AllowClassMismatch = Annotated[
    bool,
    typer.Option(
        "--allow-class-mismatch",
        help="Accept data with another class count than the model's classifier.",
    ),
]
