"""The compression report as data: a dict for report.json, Markdown for report.md, CSV metrics."""

from __future__ import annotations

import csv
import io
from typing import Any

__all__ = ["metrics_csv", "to_markdown"]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def to_markdown(report: dict[str, Any]) -> str:
    """A human-readable report: what was replaced, by what, at what cost, and the accuracy."""
    t = report["totals"]
    lines = [
        f"# adntn compression report: {report.get('recipe', '')}",
        "",
        f"Model `{report.get('model', '')}` ({report.get('arch', '')}), data "
        f"`{report.get('data', '')}`, device {report.get('device', '')}, "
        f"seed {report.get('seed')}.",
        "",
        "| layer | type | structure | legs | bond_dim | dense | generator | x fewer | kept |",
        "|---|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in report["layers"]:
        legs = " ".join(f"{o}x{i}" for o, i in r["legs"])
        lines.append(
            f"| {r['layer']} | {r['kind']} | {r['structure']} | {legs} | {r['bond_dim']} | "
            f"{r['dense_params']:,} | {r['tn_params']:,} | {r['ratio']:,.0f}x | "
            f"{1 / r['ratio']:.2e} |"
        )
    lines += [
        "",
        f"Replaced layers: {t['replaced_dense_params']:,} -> {t['replaced_tn_params']:,} "
        f"parameters ({t['replaced_ratio']:,.0f}x fewer; kept fraction "
        f"{1 / t['replaced_ratio']:.2e}).",
        f"Whole model: {t['dense_params']:,} -> {t['compressed_params']:,} parameters "
        f"({t['ratio']:,.2f}x fewer).",
    ]
    acc = report.get("accuracy")
    if acc:
        d, c = acc["dense"], acc["compressed"]
        lines += [
            "",
            "| | top-1 | top-5 |",
            "|---|---:|---:|",
            f"| dense | {_pct(d.get('top1'))} | {_pct(d.get('top5'))} |",
            f"| compressed | {_pct(c.get('top1'))} | {_pct(c.get('top5'))} |",
            "",
            f"Validation images: {acc.get('val_images', '-')}; top-1 agreement with the dense "
            f"model: {_pct(acc.get('agreement'))}.",
        ]
    fit = report.get("layerwise")
    if fit:
        lines += ["", "Layer-wise fit (output error relative to the dense layer's):", ""]
        lines += [f"- {k}: {v['initial']:.3g} -> {v['final']:.3g}" for k, v in fit.items()]
    files = report.get("files")
    if files:
        lines += ["", f"File: {files.get('model')} ({files.get('model_bytes', 0):,} bytes)."]
    return "\n".join(lines) + "\n"


def metrics_csv(history: list[dict[str, Any]]) -> str:
    """One row per training step: step, loss, lr, and validation metrics where measured."""
    keys = ["step", "loss", "lr", "val_top1", "val_loss"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow(row)
    return buf.getvalue()
