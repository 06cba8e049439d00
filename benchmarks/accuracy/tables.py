"""accuracy.md from accuracy.json: per teacher and layer set, each budget and structure with the
mean and spread over seeds, the comparison of the best ADNTN structure with the baselines, and the
issue's targets."""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from pathlib import Path

ADNTN = ("ttn", "augttn", "mera")
BASELINES = ("tt", "lowrank")
UNIT_NAMES = {
    "fc6": "FC6 alone",
    "fc7": "FC7 alone",
    "fc": "FC6 and FC7 together",
    "all": "every conv and FC layer",
}


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _is_try(name: str) -> bool:
    """Whether a summary's structure name is a try: ``summarise`` names one "tt (kd-0.25)"."""
    return " " in name


def summarise(rows: list[dict]) -> dict[tuple, dict]:
    """(teacher, unit, budget, structure) -> mean/spread of the seeds' numbers."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        name = r["structure"] + (f" ({r['variant']})" if r.get("variant") else "")
        groups[(r["teacher"], r["unit"], r["budget"], name)].append(r)
    out = {}
    for key, rs in groups.items():
        if rs[0]["status"] == "unreachable":
            out[key] = {"status": "unreachable", "reason": rs[0]["reason"]}
            continue
        top1, spread = _stats([r["top1"] for r in rs])
        sqnr = [statistics.mean(r["sqnr_db"].values()) for r in rs]
        out[key] = {
            "status": "done",
            "seeds": len(rs),
            "top1": top1,
            "spread": spread,
            # the teacher as the cell's own run measured it (same images, same precision)
            "dense_top1": rs[0].get("dense_top1_run", rs[0]["dense_top1"]),
            "agreement": statistics.mean(r["agreement"] for r in rs),
            "sqnr_db": statistics.mean(sqnr),
            "replaced_ratio": rs[0]["replaced_ratio"],
            "min_layer_ratio": min(layer["ratio"] for layer in rs[0]["layers"]),
            "model_ratio": rs[0]["model_ratio"],
            "tn_params": sum(layer["tn_params"] for layer in rs[0]["layers"]),
            "bond_dim": "; ".join(str(layer["bond_dim"]) for layer in rs[0]["layers"])
            if len(rs[0]["layers"]) <= 3
            else f"{len(rs[0]['layers'])} layers: see the JSON",
            "seconds": statistics.median(r["seconds"] for r in rs),
            "val_images": rs[0]["val_images"],
        }
    return out


def _unreachable(v: dict) -> str:
    """'unreachable', naming the first layer that cannot reach the budget and the largest ratio
    it can, where the reason says them (another layer may reach less)."""
    most = re.search(r"\(([\w.]+)\):.* can be at most ([\d,]+)", v["reason"])
    return f"unreachable ({most[1]}: at most {most[2]}x)" if most else "unreachable"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def compare(
    summary: dict, teacher: str, unit: str, budget: int, variants: bool = False
) -> str | None:
    """'ADNTN wins / ties / loses' at one budget, a tie being a gap inside the larger spread
    (said to rest on one seed where either side has only one)."""

    def best(names):
        done = [(summary[k]["top1"], k[3], summary[k]["spread"]) for k in
                ((teacher, unit, budget, s) for s in names)
                if k in summary and summary[k]["status"] == "done"]  # fmt: skip
        return max(done) if done else None

    names = {k[3] for k in summary if k[:3] == (teacher, unit, budget)}
    if not variants:
        names = {n for n in names if " " not in n}
    a = best([n for n in names if n.split(" ")[0] in ADNTN])
    b = best([n for n in names if n.split(" ")[0] in BASELINES])
    if a is None or b is None:
        return None
    gap = a[0] - b[0]
    spread = max(a[2], b[2])
    one_image = 1 / summary[(teacher, unit, budget, a[1])]["val_images"]
    margin = max(spread, one_image)  # a single image is the resolution of the split
    tie = abs(gap) <= margin + 1e-9  # one image's gap is a tie, whatever the float rounding
    verdict = "tie" if tie else ("ADNTN better" if gap > 0 else "baseline better")
    seeds = min(summary[(teacher, unit, budget, name)]["seeds"] for name in (a[1], b[1]))
    if seeds < 2:  # one run has no spread: the verdict is one image's resolution, not the seeds'
        verdict += " on one seed (spread not measured)"
    return (
        f"{a[1]} {_pct(a[0])} vs {b[1]} {_pct(b[0])}: {100 * gap:+.2f} points, "
        f"spread {100 * spread:.2f}: **{verdict}**"
    )


_DATA_TEXT = {
    "cpu": "Teachers (10 classes, scikit-learn digits, 1,438 training / 359 validation images; "
    "one teacher per architecture, seed 0):",
    "fashion": "Teacher (10 classes, Fashion-MNIST: trained on the 60,000 training images; "
    "every cell distils on 55,000 of them, chooses its checkpoint on the other 5,000 (the "
    "default `data.holdout`) and is measured on all 10,000 test images; seed 0):",
}


def _commands_line(doc: dict) -> str:
    """The command that made the file, or, when its rows came from several, how many and the
    last (every row keeps its own in the JSON's ``command``)."""
    commands = {r.get("command", doc["command"]) for r in doc["rows"]} | {doc["command"]}
    if len(commands) == 1:
        return f"Command: `{doc['command']}`"
    return (
        f"Made by {len(commands)} commands (each row's is its `command` in the JSON); "
        f"the last: `{doc['command']}`"
    )


def write_markdown(doc: dict, path: Path) -> None:
    rows = doc["rows"]
    summary = summarise(rows)
    lines = [
        "# Accuracy study: ADNTN structures against TT and low-rank",
        "",
        f"{_commands_line(doc)} (grid `{doc['grid']}`, device `{doc['device']}`"
        f" {doc.get('device_name', '')}, {doc.get('threads', '?')} threads, torch {doc['torch']}).",
        f"Distillation schedule of every cell: `{doc['schedule']}`.",
        "",
        _DATA_TEXT.get(doc["grid"], _DATA_TEXT["cpu"]),
        "",
        "| teacher | input | dense top-1 | training |",
        "|---|---|---|---|",
    ]
    for name, t in doc.get("teachers", {}).items():
        epochs = t.get("epochs") or " + ".join(f"{e} at {px}px" for px, e in t["phases"])
        training = f"{epochs} epochs, {t['seconds']:.0f} s"
        if t.get("polish"):  # the Fashion teacher's last epoch at a lower learning rate
            p = t["polish"]
            training += f"; a polish of {p['epochs']} at {p['size']}px (lr {p['lr']:g})"
            if "polish_seconds" in t:  # records from before the polish was timed lack these
                training += f", {t['polish_seconds']:.0f} s"
            if "top1_before_polish" in t:
                training += f"; {_pct(t['top1_before_polish'])}% before the polish"
            if "precision" in t:
                training += f"; {t['precision']}"
        lines.append(
            f"| {name} | {t['input_size']}x{t['input_size']} | {_pct(t['top1'])}% | {training} |"
        )
    if doc.get("flags"):
        lines += ["", f"Every cell ran `adntn compress` with `{doc['flags']}`."]
    lines += [
        "",
        "Each cell: top-1 in % as mean ± sample std over the seeds (generator initialisation and "
        "data order; the teacher is fixed); Δ against the dense teacher; agreement = top-1 "
        "agreement with the teacher; SQNR = output signal-to-quantisation-noise ratio of the "
        "replaced layers on the validation inputs (mean over layers, dB); ratio = x fewer "
        "parameters over the replaced layers; model = x fewer over the whole model; time = median "
        "wall seconds per seed. A gap between two structures is a tie when it is within the "
        "larger of their spreads or within one validation image (digits: 1/359 = 0.28 points; "
        "Fashion-MNIST: 0.01 points; the resolution of the split). Rows marked (long) or "
        "(linear) are tries beyond the grid's settings: (long) 4x the layer-wise steps and 4x "
        "the distillation epochs (whole model: 3x), (linear) the identity activation between "
        "levels (a multilinear tree); on Fashion-MNIST a row's (name) is the one `distill:` "
        "setting of cells.TUNING it changes from adntn's defaults, or the structure setting of "
        "cells.STRUCTURE_TRIES it adds to the layer rules ((mixing): `mixing: siblings`, the "
        "lateral mixing tensors; (act-A): activation A between levels in place of tanh; "
        "(legs-N): `n_legs: N` physical legs; (map-legs): `input_legs: map`; (root-bonds), "
        "(mid-bonds): the tree's root bond or the chain's middle bond raised, the others lowered, "
        "given per layer in place of the target; (sep-dis): augttn's disentanglers separable, "
        "on legs of at most 4; (sep-root): the same with a root-heavy tree).",
    ]
    keys = sorted(
        {(k[0], k[1]) for k in summary}, key=lambda k: (k[0], list(UNIT_NAMES).index(k[1]))
    )
    for teacher, unit in keys:
        lines += ["", f"## {teacher}: {UNIT_NAMES[unit]}", ""]
        lines += [
            "| budget | structure | bond_dim | params | ratio | model | top-1 % | Δ | agreement "
            "| SQNR dB | time s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        budgets = sorted({k[2] for k in summary if k[:2] == (teacher, unit)})
        for budget in budgets:
            names = [k[3] for k in summary if k[:3] == (teacher, unit, budget)]
            order = [*ADNTN, *BASELINES]
            names.sort(key=lambda n: (order.index(n.split(" ")[0]), n))
            for s in names:
                v = summary.get((teacher, unit, budget, s))
                if v is None:
                    continue
                if v["status"] == "unreachable":
                    lines.append(f"| {budget:,}x | {s} | | | {_unreachable(v)} | | | | | | |")
                    continue
                lines.append(
                    f"| {budget:,}x | {s} | {v['bond_dim']} | {v['tn_params']:,} | "
                    f"{v['replaced_ratio']:,.0f}x | {v['model_ratio']:,.1f}x | "
                    f"{_pct(v['top1'])} ± {_pct(v['spread'])} (n={v['seeds']}) | "
                    f"{100 * (v['top1'] - v['dense_top1']):+.2f} | {_pct(v['agreement'])} | "
                    f"{v['sqnr_db']:.1f} | {v['seconds']:.0f} |"
                )
        for with_variants in (False, True):
            verdicts = [(b, compare(summary, teacher, unit, b, with_variants)) for b in budgets]
            verdicts = [(b, v) for b, v in verdicts if v]
            has_variants = any(_is_try(k[3]) for k in summary if k[:2] == (teacher, unit))
            if not verdicts or (with_variants and not has_variants):
                continue
            title = "including the tries (variants)" if with_variants else "grid settings"
            lines += ["", f"Best ADNTN against the best baseline, {title}:", ""]
            lines += [f"- {b:,}x: {v}" for b, v in verdicts]
    path.write_text("\n".join(lines) + "\n")


MAX_SERIES = 8  # tries are plotted only when the panel stays readable; the tables have them all
ZOOM_POINTS = 2.0  # the zoomed panel shows dense - 2 .. dense + 2 points


def _series(summary: dict, panel: tuple) -> dict[str, list[tuple[float, float, float]]]:
    """Name -> sorted (ratio, top-1 %, spread %) of one (teacher, unit) panel: the grid's
    structures, and the tries beside them when there are at most MAX_SERIES names in all."""
    names = sorted({k[3] for k in summary if k[:2] == panel})
    if len(names) > MAX_SERIES:
        names = [n for n in names if not _is_try(n)]
    series = {}
    for name in names:
        pts = sorted(
            (v["replaced_ratio"], 100 * v["top1"], 100 * v["spread"])
            for k, v in summary.items()
            if k[:2] == panel and k[3] == name and v["status"] == "done"
        )
        if pts:
            series[name] = pts
    return series


def _draw(ax, series: dict, dense: float, ylim: tuple[float, float], ticks: list[int]) -> None:
    from matplotlib.ticker import NullFormatter

    for name, pts in series.items():
        xs, ys, es = zip(*pts, strict=True)
        style = "--" if _is_try(name) else "-"
        ax.errorbar(xs, ys, yerr=es, label=name, marker="o", linestyle=style, capsize=3)
    ax.axhline(dense, color="black", linewidth=0.8, label="dense")
    ax.set_xscale("log")
    ax.set_xticks(ticks, [f"{t:,}x" for t in ticks])  # the budgets, not powers of ten
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("x fewer parameters (replaced layers, log scale)")
    ax.set_ylabel("top-1 %")
    ax.set_ylim(*ylim)
    ax.grid(True, which="both", alpha=0.3)


def write_plot(doc: dict, path: Path) -> None:
    """Top-1 against "x fewer parameters" per structure (mean and spread over seeds) for each
    teacher and layer set with more than one budget: the whole range, and beside it the band of
    +-2 points around the dense teacher (a line), where the structures differ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(doc["rows"])
    budgets: dict[tuple, set] = defaultdict(set)
    for k in summary:
        budgets[k[:2]].add(k[2])
    panels = sorted(k for k, b in budgets.items() if len(b) > 1)
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 2, figsize=(12, 4.6 * len(panels)), squeeze=False)
    for (full, zoom), panel in zip(axes, panels, strict=True):
        series = _series(summary, panel)
        dense = 100 * doc["teachers"][panel[0]]["top1"]
        ticks = sorted(budgets[panel])
        _draw(full, series, dense, (0, 102), ticks)
        band = (dense - ZOOM_POINTS, min(dense + ZOOM_POINTS, 100.2))  # no room above 100%
        _draw(zoom, series, dense, band, ticks)
        full.set_title(f"{panel[0]}: {UNIT_NAMES[panel[1]]}")
        zoom.set_title(f"the same, within {ZOOM_POINTS:g} points of dense")
        zoom.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
