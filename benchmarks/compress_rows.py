"""Rows of finished ``adntn compress`` runs, from their report.json files alone.

    python benchmarks/compress_rows.py RUN_DIR [RUN_DIR ...] --out benchmarks/results/compress

Writes OUT.json and OUT.md (rows of other devices already there are kept), one row per run:
device, precision, the structures per layer, parameters, accuracy, layer-wise errors and time.
A run directory without a report.json is a row marked unfinished, never skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def row(run: Path) -> dict:
    path = run / "report.json"
    if not path.exists():
        return {"run": run.name, "finished": False}
    r = json.loads(path.read_text())
    acc = r["accuracy"]
    return {
        "run": run.name,
        "finished": True,
        "recipe": Path(r["recipe"]).name,
        "device": r["device"].split(":")[0],
        "precision": r.get("precision", "fp32"),
        "channels_last": r.get("channels_last", False),
        "layers": {x["layer"]: f"{x['kind']} {x['structure']}" for x in r["layers"]},
        "replaced_ratio": r["totals"]["replaced_ratio"],
        "dense_top1": acc["dense"]["top1"],
        "compressed_top1": acc["compressed"]["top1"],
        "layerwise_final": {k: v["final"] for k, v in r["layerwise"].items()},
        "finetune_steps": r["finetune"]["step"],
        "seconds": r["seconds"],
        "torch": r["versions"]["torch"],
    }


def markdown(doc: dict) -> str:
    lines = ["# `adntn compress` runs", "", *[f"- `{c}`" for c in doc["commands"]], ""]
    lines += [
        "| run | device | precision | layers | replaced ratio | top-1 dense | top-1 compressed "
        "| worst layer-wise error | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        if not r["finished"]:
            lines.append(f"| {r['run']} | | | unfinished (no report.json) | | | | | |")
            continue
        layers = ", ".join(f"{k}: {v}" for k, v in r["layers"].items())
        worst = max(r["layerwise_final"].values(), default=0.0)
        lines.append(
            f"| {r['run']} | {r['device']} | {r['precision']} | {layers} "
            f"| {r['replaced_ratio']:,.0f}x | {r['dense_top1']:.2%} | {r['compressed_top1']:.2%} "
            f"| {worst:.3f} | {r['seconds']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="results stem (no suffix)")
    ap.add_argument("--command", default="", help="the command that made the runs")
    args = ap.parse_args()
    rows = [row(run) for run in args.runs]
    out_json = args.out.with_suffix(".json")
    doc = json.loads(out_json.read_text()) if out_json.exists() else {"commands": [], "rows": []}
    devices = {r.get("device") for r in rows}
    doc["rows"] = [r for r in doc["rows"] if r.get("device") not in devices] + rows
    command = args.command or "python benchmarks/compress_rows.py " + " ".join(sys.argv[1:])
    doc["commands"] = [c for c in doc["commands"] if c != command] + [command]
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(doc, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(doc))
    print(f"wrote {out_json} and {args.out.with_suffix('.md')}")
    if not all(r["finished"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
