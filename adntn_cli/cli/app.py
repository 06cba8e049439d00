"""The Typer app, its global options, and the one place errors become exit codes."""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from .. import __version__
from ..atomic import FULL

app = typer.Typer(
    name="adntn",
    help="Compress PyTorch vision models with nonlinear tensor-network weight generators.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["--help", "-h"]},  # commands inherit it
)


def _width(stream: Any) -> int | None:
    """A terminal's own width; a pipe or log file gets the COLUMNS its user set, or 160."""
    if stream.isatty():
        return None
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else 160


# emoji=False: a ":cat:" in a path or data spec prints as typed, not as an emoji.
out = Console(width=_width(sys.stdout), emoji=False)
err = Console(stderr=True, width=_width(sys.stderr), emoji=False)
STATE = {"debug": False}
F = TypeVar("F", bound=Callable[..., Any])

USER_ERRORS = ("AdntnError", "TNConfigError")


def _is_user_error(exc: BaseException) -> bool:
    return any(c.__name__ in USER_ERRORS for c in type(exc).__mro__)


def _is_path_error(exc: BaseException) -> bool:
    """An OSError about a path the user gave (a data folder, an output): their input, exit 2."""
    return isinstance(exc, OSError) and (exc.filename is not None or exc.errno in FULL)


def _path_error(exc: OSError) -> str:
    if exc.errno in FULL:
        where = f" while writing {exc.filename}" if exc.filename else ""
        return f"no space left on device{where}: free space and run again"
    what = {errno.EACCES: "permission denied", errno.EPERM: "permission denied"}.get(
        exc.errno or 0, exc.strerror or type(exc).__name__
    )
    return f"{exc.filename}: {what}; check the path and its permissions"


def handle_errors(fn: F) -> F:
    """Bad input: its message on stderr and exit 2; anything else: exit 1 (traceback: --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            err.print("[bold red]interrupted[/] (nothing after the last checkpoint is kept)")
            raise typer.Exit(130) from None
        except Exception as exc:
            if type(exc).__name__ == "RunInterrupted":
                err.print(
                    f"[bold yellow]stopped:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
                )
                raise typer.Exit(130) from None
            if STATE["debug"]:
                traceback.print_exc()
            if _is_user_error(exc) or _is_path_error(exc):
                message = _path_error(exc) if isinstance(exc, OSError) else str(exc)
                for line in message.splitlines():
                    err.print(
                        f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True
                    )
                raise typer.Exit(2) from None
            err.print(
                f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}"
                + ("" if STATE["debug"] else " (rerun with --debug for the traceback)"),
                highlight=False,
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


class _Notes(logging.Handler):
    """Records of logger ``adntn`` (INFO and up) as ``note: ...`` lines on stderr, plain text.

    ``sys.stderr`` is looked up as each record is written, so a swapped stream (pytest, Typer's
    CliRunner) gets the line. The CLI installs it for the length of a command; a program that
    uses adntn as a library sees these records only through its own logging set-up."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.said: set[str] = set()  # a file read twice (shapes, then weights) says it once

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if os.environ.get("RANK", "0") != "0" or message in self.said:  # torchrun: rank 0 says it
            return
        self.said.add(message)
        try:
            sys.stderr.write(f"note: {message}\n")
            sys.stderr.flush()
        except Exception:  # logging's rule: a handler never raises
            self.handleError(record)


def _show_notes(ctx: typer.Context) -> None:
    """Print the library's notes while this command runs (once, however often it is called)."""
    logger = logging.getLogger("adntn")
    if any(isinstance(h, _Notes) for h in logger.handlers):
        return
    handler, level = _Notes(logging.INFO), logger.level
    logger.addHandler(handler)
    if level == logging.NOTSET or level > logging.INFO:
        logger.setLevel(logging.INFO)

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(level)

    ctx.call_on_close(restore)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"adntn {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """adntn: tensor-network compression of vision models.

    Start with [bold]adntn layers torchvision:vgg16[/], then [bold]adntn plan torchvision:vgg16
    --recipe vgg16[/].
    """
    STATE["debug"] = debug
    _show_notes(ctx)


def reflow(doc: str | None) -> str | None:
    """A docstring's prose paragraphs on one line each, so the terminal wraps them at its own
    width (rich keeps single line breaks: a paragraph wrapped at 100 columns comes out ragged
    at 80). Paragraphs with indented lines (examples) keep their lines."""
    if not doc:
        return doc
    import inspect

    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(
        p if any(line.startswith(" ") for line in p.splitlines()) else " ".join(p.split("\n"))
        for p in paragraphs
    )


def register_commands() -> None:
    """Import every command module (each registers itself on ``app``); their help reflowed."""
    from . import compress, demo, evaluate, export, layers, plan, report, schema  # noqa: F401

    for command in app.registered_commands:
        if command.callback is not None:
            command.callback.__doc__ = reflow(command.callback.__doc__)


def main() -> None:
    register_commands()
    try:
        app(prog_name="adntn")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    _end(code)


def _end(code: int) -> None:
    """Exit; a process of a torchrun run leaves through ``distributed.finish`` (a barrier on
    success, then ``os._exit``), since gloo's threads can abort a normal exit."""
    tdist = sys.modules.get("torch.distributed")  # never imported for --help or a recipe check
    if tdist is not None and tdist.is_available() and tdist.is_initialized():
        from ..distributed import finish

        finish(code, wait=code == 0)
    sys.exit(code)
