"""``adntn report``: the compression report from the saved artefacts alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import AdntnError
from .app import app, handle_errors, out
from .options import Json
from .plan import compact_legs


def load_report(target: Path) -> dict:
    """report.json of a run directory, or what a compressed file says about itself."""
    if target.is_dir():
        path = target / "report.json"
        if not path.exists():
            raise AdntnError(f"{target} has no report.json: is it an adntn run directory?")
        try:
            report = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise AdntnError(f"{path}: not valid JSON ({err})") from None
        model = Path(report.get("files", {}).get("model", target / "model.safetensors"))
        if model.exists():
            report["files"]["model_bytes"] = model.stat().st_size
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

    rep = load_report(target)
    if plot:
        draw(rep, str(plot))
    if json_:
        typer.echo(json.dumps(rep, indent=1))
        return
    if markdown:
        typer.echo(to_markdown(rep), nl=False)
        return
    table = Table(title=f"adntn report: {target}")
    for col in ("layer", "type", "structure", "legs", "bond_dim", "dense", "generator",
                "x fewer params", "kept fraction", "FLOPs", "peak", "schedule"):  # fmt: skip
        table.add_column(col, justify="right" if col[0] in "dgxkF" else "left")
    for r in rep["layers"]:
        table.add_row(
            r["layer"], r["kind"], r["structure"], compact_legs(r["legs"]),
            ",".join(map(str, r["bond_dim"])),
            f"{r['dense_params']:,}", f"{r['tn_params']:,}", f"{r['ratio']:,.0f}x",
            f"{1 / r['ratio']:.2e}", f"{r['flops']:.3g}", format_bytes(r["peak_bytes"]),
            r["schedule"],
        )  # fmt: skip
    out.print(table)
    t = rep["totals"]
    size = rep.get("files", {}).get("model_bytes")
    out.print(
        f"parameters: {t['dense_params']:,} -> {t['compressed_params']:,} "
        f"({t['ratio']:,.2f}x fewer in total; replaced layers {t['replaced_ratio']:,.0f}x fewer, "
        f"kept fraction {1 / t['replaced_ratio']:.2e})"
    )
    if size:
        out.print(
            f"file: {format_bytes(size)} compressed against {format_bytes(4 * t['dense_params'])} "
            "dense (float32)"
        )
    acc = rep.get("accuracy")
    if acc:
        d, c = acc["dense"], acc["compressed"]
        out.print(
            f"top-1: dense {100 * d['top1']:.2f}% -> compressed {100 * c['top1']:.2f}%; top-5: "
            f"{100 * d['top5']:.2f}% -> {100 * c['top5']:.2f}%"
        )
    if plot:
        out.print(f"plot: {plot}")
