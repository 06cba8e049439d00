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


# What a terminal too narrow for every column drops, first to last: what is left names each
# layer, its structure, bonds, size and ratio in full, never cut to "cla…" (--json has all);
# a cell still too wide folds onto the next line rather than losing characters.
DROPPABLE = ("type", "FLOPs", "peak", "schedule", "kept fraction", "legs", "dense")


def _width(cells: list[list[str]]) -> int:
    """The rendered width of a table whose columns hold ``cells`` (header first): each column
    its widest line plus a space either side and a border, and the last border."""
    return sum(max(len(line) for c in col for line in c.split("\n")) + 3 for col in cells) + 1


def layer_table(
    records: Sequence[LayerRecord], title: str, style: str = "plan", width: int | None = None
) -> Table:
    """A rich table of ``records`` with the columns of ``style`` (plan or report), without the
    ``DROPPABLE`` columns it takes to fit ``width`` (None: every column); a caption names them."""
    every = COLUMNS[style]
    cells = {h: [h, *(cell(r) for r in records)] for h, _, cell in every}

    def fits(dropped: list[str]) -> bool:
        return width is None or _width([c for h, c in cells.items() if h not in dropped]) <= width

    dropped: list[str] = []
    for header in (h for h in DROPPABLE if h in cells):
        if fits(dropped):
            break
        dropped.append(header)
    for header in reversed(dropped[:-1]):  # one dropped late may have made room for these
        if fits([h for h in dropped if h != header]):
            dropped.remove(header)
    columns = [c for c in every if c[0] not in dropped]
    table = Table(title=title)
    for header, right, _ in columns:
        table.add_column(header, justify="right" if right else "left", overflow="fold")
    for r in records:
        table.add_row(*(cell(r) for _, _, cell in columns))
    if dropped:
        table.caption = f"not shown here: {', '.join(dropped)} (--json)"
    return table
