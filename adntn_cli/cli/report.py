"""``adntn report``: the compression report from the saved artefacts alone."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from ..errors import AdntnError
from .app import app, handle_errors, out
from .options import Json

if TYPE_CHECKING:
    from ..report import CompressionReport


def load_report(target: Path) -> CompressionReport:
    """report.json of a run directory, or what a compressed file says about itself."""
    from ..report import CompressionReport

    if target.is_dir():
        path = target / "report.json"
        if not path.exists():
            raise AdntnError(f"{target} has no report.json: is it an adntn run directory?")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise AdntnError(f"{path}: not valid JSON ({err})") from None
        report = CompressionReport.from_dict(data)
        model = Path((report.files or {}).get("model", target / "model.safetensors"))
        if model.exists():
            files = {**(report.files or {}), "model_bytes": model.stat().st_size}
            report = dataclasses.replace(report, files=files)
        return report
    if not target.exists():
        raise AdntnError(f"{target}: no such run directory or file")
    from ..io import file_report

    return file_report(target)


@app.command()
@handle_errors
def report(
    target: Annotated[Path, typer.Argument(help="A run directory or a compressed .safetensors")],
    json_: Json = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print Markdown.")] = False,
    plot: Annotated[Path | None, typer.Option("--plot", help="Also write a PNG plot.")] = None,
) -> None:
    """Explain a compression from its artefacts alone (no data, no GPU).

    Examples:
      adntn report runs/demo/compressed
      adntn report runs/demo/compressed --plot report.png
      adntn report model.safetensors --json
    """
    from ..report import plot as draw
    from ..report import to_markdown
    from ..tn import format_bytes
    from .tables import layer_table

    rep = load_report(target)
    if plot:
        draw(rep, str(plot))
    if json_:
        typer.echo(json.dumps(rep.to_dict(), indent=1))
        return
    if markdown:
        typer.echo(to_markdown(rep), nl=False)
        return
    out.print(
        layer_table(rep.layers, escape(f"adntn report: {target}"), style="report", width=out.width)
    )
    t = rep.totals
    size = (rep.files or {}).get("model_bytes")
    out.print(
        f"parameters: {t.dense_params:,} -> {t.compressed_params:,} "
        f"({t.ratio:,.2f}x fewer in total; replaced layers {t.replaced_ratio:,.0f}x fewer, "
        f"kept fraction {1 / t.replaced_ratio:.2e})"
    )
    if size:
        out.print(
            f"file: {format_bytes(size)} compressed against {format_bytes(4 * t.dense_params)} "
            "dense (float32)"
        )
    acc = rep.accuracy
    if acc:
        d, c = acc.dense, acc.compressed
        out.print(
            f"top-1: dense {100 * d.top1:.2f}% -> compressed {100 * c.top1:.2f}%; top-5: "
            f"{100 * d.top5:.2f}% -> {100 * c.top5:.2f}%"
        )
    if plot:
        out.print(f"plot: {plot}", markup=False, highlight=False)
