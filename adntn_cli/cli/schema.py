"""``adntn schema``: the recipe's JSON Schema for editors."""

from __future__ import annotations

import typer

from .app import app, handle_errors


@app.command()
@handle_errors
def schema() -> None:
    """Print the recipe JSON Schema (for editor completion and checks).

    Example:
      adntn schema > recipe.schema.json
    """
    from ..recipe import json_schema

    typer.echo(json_schema())
