"""Progress display: rich bars on a terminal, plain lines otherwise, nothing with --quiet."""

from __future__ import annotations

import sys
from collections.abc import Callable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .app import err

PLAIN_EVERY = 20


class Reporter:
    """A callback for ``adntn_cli.distill.Event`` events; use as a context manager."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.rich = sys.stderr.isatty() and not quiet
        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=err,
        )  # fmt: skip
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> Callable:
        if self.rich:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.rich:
            self.bar.stop()

    def __call__(self, event) -> None:
        if self.quiet:
            return
        info = ", ".join(f"{k}={v:.4g}" for k, v in event.metrics.items() if isinstance(v, float))
        if event.message and not info:
            info = event.message
        if not self.rich:
            if (
                event.phase in ("eval", "checkpoint")
                or event.step % PLAIN_EVERY == 0
                or (event.step == event.total)
            ):
                err.print(
                    f"{event.phase} {event.step}/{event.total} {info}",
                    markup=False,
                    highlight=False,
                )
            return
        key = f"{event.phase}:{event.message}" if event.phase == "layerwise" else event.phase
        if event.phase in ("eval", "checkpoint"):
            err.print(f"{event.phase} at step {event.step}: {info}", markup=False, highlight=False)
            return
        if key not in self.tasks:
            label = f"{event.phase} {event.message}".strip()
            self.tasks[key] = self.bar.add_task(label, total=event.total, info="")
        self.bar.update(self.tasks[key], completed=event.step, total=event.total, info=info)
