"""Relabel a Fashion-MNIST results file after a change of adntn's defaults.

    python benchmarks/accuracy/relabel.py benchmarks/results/accuracy-fashion-bf16.json \\
        --why "measured when adntn's default kd_weight was 0.9"

A row's variant names the ``distill:`` settings of cells.TUNING its cell changed from adntn's
defaults. When a default changes, the same measured settings need other names: a grid row run
under the old default becomes a try of it, and a try of the new value becomes a grid row. Each
row recorded the schedule it ran (``distill``, as the schema resolved it); this names that
schedule again against the present defaults, with the fewest TUNING settings (structure tries
and ``data:`` settings are kept), records the old key and why under ``relabelled_from``, and
records the present defaults, so that the study adds cells to the file again. The measured
numbers are not touched.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from cells import TUNING, Cell, cell_recipe
from pydantic import ValidationError
from study import adntn_defaults, save_rows, write_markdown, write_plot

from adntn_cli.recipe.schema import Distill

MAX_SETTINGS = 3  # the most TUNING settings one row's schedule is named with
SCHEDULE_TRIES = [v for v, t in TUNING.items() if "data" not in t]


def _kept(variant: str) -> list[str]:
    """The parts of ``variant`` that are not a distill: setting (structure and data tries)."""
    return [v for v in variant.split("+") if v and v not in SCHEDULE_TRIES]


def _cell(row: dict, variant: str) -> Cell:
    fields = ("teacher", "unit", "budget", "structure", "seed")
    return Cell(**{k: row[k] for k in fields}, variant=variant)


def _resolved(cell: Cell) -> dict | None:
    """The schedule ``cell`` runs, as the schema resolves it; None for settings that clash."""
    try:
        return Distill(**cell_recipe(cell, None).get("distill", {})).model_dump(mode="json")
    except ValidationError:  # e.g. steps and epochs together
        return None


def name_schedule(row: dict) -> str:
    """The variant that reproduces ``row``'s recorded schedule under the present defaults."""
    kept = _kept(row["variant"])
    for n in range(MAX_SETTINGS + 1):
        for names in itertools.combinations(SCHEDULE_TRIES, n):
            variant = "+".join([*kept, *names])
            if _resolved(_cell(row, variant)) == row["distill"]:
                return variant
    raise ValueError(
        f"{row['key']}: no {MAX_SETTINGS} settings of cells.TUNING reproduce its schedule;"
        " add the setting it ran with"
    )


def relabel(rows: list[dict], why: str) -> list[dict]:
    """``rows`` with each key and variant named against the present defaults."""
    out = []
    for row in rows:
        if "distill" not in row:  # an unreachable row ran no schedule
            out.append(row)
            continue
        variant = name_schedule(row)
        if variant == row["variant"]:
            out.append(row)
            continue
        cell = _cell(row, variant)
        earlier = row.get("relabelled_from")
        moved = {"key": row["key"], "why": why}
        if earlier:  # keep what it was measured as, first
            moved = {"key": earlier["key"], "why": f"{earlier['why']}; {why}"}
        out.append({**row, "key": cell.key, "variant": variant, "relabelled_from": moved})
    keys = [r["key"] for r in out]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"two rows would share a key: {', '.join(twice)}")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("results", type=Path, help="a fashion results file (accuracy-fashion*.json)")
    ap.add_argument("--why", required=True, help="what changed, recorded on each moved row")
    args = ap.parse_args(argv)
    doc = json.loads(args.results.read_text())
    before = doc.pop("rows")
    try:
        rows = relabel(before, args.why)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    moved = sum(r["key"] != o["key"] for r, o in zip(rows, before, strict=True))
    meta = {**doc, "defaults": adntn_defaults()}
    save_rows(args.results, meta, rows)
    write_markdown({**meta, "rows": rows}, args.results.with_suffix(".md"))
    write_plot({**meta, "rows": rows}, args.results.with_suffix(".png"))
    print(f"{args.results}: {moved} of {len(rows)} rows relabelled against the present defaults")


if __name__ == "__main__":
    main()
