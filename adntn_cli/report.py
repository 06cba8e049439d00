"""The compression report as data: a dict for report.json, Markdown for report.md, CSV metrics."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from .atomic import write_bytes
from .errors import AdntnError

__all__ = ["metrics_csv", "plot", "to_markdown"]


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


def plot(report: dict[str, Any], path: str) -> None:
    """A PNG: per-layer compression (log scale) and, where recorded, dense vs compressed top-1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = report["layers"]
    acc = report.get("accuracy")
    fig, axes = plt.subplots(1, 2 if acc else 1, figsize=(11 if acc else 7, 4.2), squeeze=False)
    ax = axes[0][0]
    names = [r["layer"] for r in layers]
    ratios = [r["ratio"] for r in layers]
    colours = {"ttn": "#3b75af", "augttn": "#519e3e", "mera": "#ef8636", "tt": "#8d69b8",
               "lowrank": "#858585"}  # fmt: skip
    bars = ax.bar(names, ratios, color=[colours.get(r["structure"], "#444") for r in layers])
    ax.set_yscale("log")
    ax.set_ylim(1, max(ratios) * 4)  # bars start at 1x: their heights compare honestly
    ax.set_ylabel("x fewer parameters (log scale)")
    ax.set_title("compression per layer (kept fraction = 1 / ratio)")
    for bar, r in zip(bars, layers, strict=True):
        ax.annotate(f"{r['ratio']:,.0f}x\n{r['structure']}", (bar.get_x() + bar.get_width() / 2,
                    bar.get_height()), ha="center", va="bottom", fontsize=8)  # fmt: skip
    ax.tick_params(axis="x", rotation=30)
    if acc:
        ax2 = axes[0][1]
        keys = ["top1", "top5"]
        dense = [100 * acc["dense"][k] for k in keys]
        comp = [100 * acc["compressed"][k] for k in keys]
        xs = range(len(keys))
        ax2.bar([x - 0.2 for x in xs], dense, 0.4, label="dense", color="#999999")
        ax2.bar([x + 0.2 for x in xs], comp, 0.4, label="compressed", color="#3b75af")
        for x, (d, c) in enumerate(zip(dense, comp, strict=True)):
            ax2.annotate(f"{d:.2f}", (x - 0.2, d), ha="center", va="bottom", fontsize=8)
            ax2.annotate(f"{c:.2f}", (x + 0.2, c), ha="center", va="bottom", fontsize=8)
        ax2.set_xticks(list(xs), ["top-1", "top-5"])
        ax2.set_ylim(max(0, min(dense + comp) - 10), 100.5)
        ax2.set_ylabel("accuracy on the validation split (%)")
        ax2.set_title(f"accuracy ({acc.get('val_images', '?')} images)")
        ax2.legend(loc="lower right")
    t = report["totals"]
    fig.suptitle(
        f"{report.get('arch', '')}: replaced layers {t['replaced_ratio']:,.0f}x fewer parameters, "
        f"whole model {t['ratio']:,.1f}x"
    )
    fig.tight_layout()
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    if fmt not in fig.canvas.get_supported_filetypes():
        plt.close(fig)
        valid = ", ".join(sorted(fig.canvas.get_supported_filetypes()))
        raise AdntnError(f"--plot {path}: cannot draw a .{fmt} file; valid suffixes: {valid}")
    buf = io.BytesIO()  # drawn in memory, then written atomically
    fig.savefig(buf, format=fmt, dpi=120)
    plt.close(fig)
    write_bytes(path, buf.getbuffer())
