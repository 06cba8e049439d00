"""The ``adntn`` command line: a thin Typer shell over the Python API (one module per command)."""

from .app import app, main

__all__ = ["app", "main"]
