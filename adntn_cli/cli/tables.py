"""The layer table of ``plan`` and ``report``: one renderer over the report's layer records."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.table import Table

from ..report import LayerRecord, format_legs
from ..tn import format_bytes

Column = tuple[str, bool, Callable[[LayerRecord], str]]  # header, right-aligned, cell


def si(n: float) -> str:
    """``12_600_000 -> '12.6M'``."""
    for unit in ("", "K", "M", "G", "T", "P"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}E"


_HEAD: list[Column] = [
    ("layer", False, lambda r: r.layer),
    ("type", False, lambda r: r.kind),
    ("structure", False, lambda r: r.structure),
    ("legs", False, lambda r: format_legs(r.legs)),
    ("bond_dim", False, lambda r: ",".join(map(str, r.bond_dim))),
    ("dense", True, lambda r: f"{r.dense_params:,}"),
]
_TAIL: list[Column] = [
    ("peak", False, lambda r: format_bytes(r.peak_bytes)),
    ("schedule", False, lambda r: r.schedule),
]
COLUMNS: dict[str, list[Column]] = {
    "plan": [
        *_HEAD,
        ("tn", True, lambda r: f"{r.tn_params:,}"),
        ("ratio", True, lambda r: f"{r.ratio:,.0f}x"),
        ("FLOPs", True, lambda r: si(r.flops)),
        *_TAIL,
    ],
    "report": [
        *_HEAD,
        ("generator", True, lambda r: f"{r.tn_params:,}"),
        ("x fewer params", True, lambda r: f"{r.ratio:,.0f}x"),
        ("kept fraction", True, lambda r: f"{1 / r.ratio:.2e}"),
        ("FLOPs", True, lambda r: f"{r.flops:.3g}"),
        *_TAIL,
    ],
}


def layer_table(records: Sequence[LayerRecord], title: str, style: str = "plan") -> Table:
    """A rich table of ``records`` with the columns of ``style`` (plan or report)."""
    columns = COLUMNS[style]
    table = Table(title=title)
    for header, right, _ in columns:
        table.add_column(header, justify="right" if right else "left")
    for r in records:
        table.add_row(*(cell(r) for _, _, cell in columns))
    return table
