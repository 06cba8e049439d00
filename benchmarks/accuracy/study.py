"""The accuracy study: ADNTN structures against TT and low-rank at matched parameter budgets.

    python benchmarks/accuracy/study.py --grid fashion     # the headline: Fashion-MNIST, 224x224
    python benchmarks/accuracy/study.py --grid fashion --variant lr-3e-3 --only /2000/  # a try
    python benchmarks/accuracy/study.py                    # the digits CPU grid (smoke test)
    python benchmarks/accuracy/study.py --shard 1/4        # a quarter of it (run 1/4 .. 4/4)
    python benchmarks/accuracy/study.py --grid gpu --device cuda   # the full grid, 224x224

The ``fashion`` grid needs the Debian package ``dataset-fashion-mnist``; its teacher is trained
and cached by fashion_teacher.py. Its cells are ``adntn compress`` with a recipe that has no
``distill:`` section (adntn's defaults; a ``--variant`` from cells.TUNING adds one setting, one
from cells.STRUCTURE_TRIES a structure option to the layer rules, and runs only the structures
that have it),
``--precision bf16`` (fp32 on a CPU that would emulate bf16: ``_precision``) and
``--prefix-cache`` (benchmarks/accuracy/.cache/prefix: the conv prefix of the 60,000 training
images is computed once for the whole grid), evaluated on all 10,000 test images; results go to
accuracy-fashion.json/.md/.png.

Every finished cell is appended to benchmarks/results/accuracy.json at once (atomically), and a
cell already there is skipped, so shards and interrupted runs add up to one results file; a
fashion cell that was stopped (a kill, a session's end) resumes from its last checkpoint, kept
in benchmarks/accuracy/.cache/runs until its row is written (its time counts every attempt);
accuracy.md is rewritten from the JSON after every cell (``--tables`` rewrites it alone). A
fashion results file records the adntn defaults its cells ran under (``adntn_defaults``: the
grid's schedule is "no ``distill:`` section"), and the study refuses to add cells to one that
ran under others, or records none, so a change of the defaults cannot mix two schedules in one
table: write to another ``--out``, rerun, or name its rows again against the present defaults
(relabel.py, which keeps what each row measured).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from adntn_cli.plan import DEFAULT_INPUT_LEGS
from adntn_cli.recipe.schema import DEFAULT_EPOCHS, MAX_STEPS, MIN_STEPS, Distill
from adntn_cli.runtime import cpu_has_native_bf16

sys.path.insert(0, str(Path(__file__).parent))

from cells import (
    GRID,
    SIZES,
    STRUCTURE_TRIES,
    TUNING,
    WHOLE_MODEL_SCHEDULE,
    Cell,
    Runner,
    Schedule,
    applies,
    run_cell,
    schedule_for,
)
from fashion_teacher import CACHE, FASHION, fashion_teacher
from tables import write_markdown, write_plot
from teachers import teacher_file

RESULTS = Path(__file__).parents[1] / "results"
STRUCTURES = ["ttn", "augttn", "mera", "tt", "lowrank"]
BUDGETS = [2000, 20000, 77000]
SEEDS = [0, 1, 2]
FASHION_STRUCTURES = ["ttn", "tt", "augttn", "lowrank"]
PREFIX_STORE = CACHE / "prefix"  # the fashion grid's frozen-prefix store
RUNS = CACHE / "runs"  # the fashion grid's unfinished cells, each resumed where it stopped


def grid(
    name: str, structures: list[str] | None = None, budgets: list[int] | None = None
) -> list[Cell]:
    """The cells of a grid in priority order, so that a partial run holds what the targets need
    first (shards split this list). The fashion grid takes its structures and budgets in the
    order given (a GPU run puts the budgets a target names first).

    GPU: AlexNet's and VGG-16's FC layers together, alone, and whole VGG-16, every structure.
    CPU (2 cores): augttn and mera cost several times ttn's step (on the digits grid's shapes
    they materialised a weight of |W| entries at every step; on Fashion-MNIST's AlexNet they
    contract, 2.1x ttn's median time for augttn at 20,000x, 9x for mera), so they come after the
    lighter structures: AlexNet's FC layers
    together with ttn, tt and lowrank; whole VGG-16 with ttn; AlexNet's FC7 alone with every
    structure; AlexNet's FC layers together with augttn and mera; FC6 alone; VGG-16's FC layers
    together with ttn, tt and lowrank; whole VGG-16 with tt.
    """
    light, heavy = ["ttn", "tt", "lowrank"], ["augttn", "mera"]

    def fc(teacher: str, unit: str, structures: list[str]) -> list[Cell]:
        return [
            Cell(teacher, unit, b, s, seed)
            for b, s, seed in itertools.product(BUDGETS, structures, SEEDS)
        ]

    def whole(structure: str) -> list[Cell]:
        return [Cell("vgg16_bn", "all", 200, structure, seed) for seed in SEEDS]

    if name == "fashion":  # every structure at seed 0 first, then the other seeds
        return [
            Cell("alexnet", "fc", b, s, seed)
            for seed, b, s in itertools.product(
                SEEDS, budgets or BUDGETS, structures or FASHION_STRUCTURES
            )
        ]
    if name == "gpu":
        cells = [*whole("ttn"), *whole("tt")]
        for unit, t in itertools.product(("fc", "fc7", "fc6"), ("alexnet", "vgg16_bn")):
            cells += fc(t, unit, STRUCTURES)
        return cells
    return [
        *fc("alexnet", "fc", light),
        *whole("ttn"),
        *fc("alexnet", "fc7", STRUCTURES),
        *fc("alexnet", "fc", heavy),
        *fc("alexnet", "fc6", STRUCTURES),
        *fc("vgg16_bn", "fc", light),
        *whole("tt"),
    ]


def _group(row: dict) -> str:
    return Cell(*(row[k] for k in ("teacher", "unit", "budget", "structure", "seed")),
                variant=row.get("variant", "")).group  # fmt: skip


def load_rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())["rows"] if path.exists() else []


def save_rows(path: Path, meta: dict, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    os.replace(tmp, path)


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--grid", choices=["cpu", "gpu", "fashion"], default="cpu")
    ap.add_argument("--shard", default="1/1", help="i/n: run every n-th cell starting at the i-th")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", default="", help="run cells whose key contains this text")
    ap.add_argument(
        "--variant",
        default="",
        help="run the grid's cells with a variant: long, linear, long-linear (cells.schedule_for)"
        f" or, for the fashion grid, one of {', '.join([*TUNING, *STRUCTURE_TRIES])} (joined by +)",
    )
    ap.add_argument("--data", type=Path, default=FASHION, help="the Fashion-MNIST IDX folder")
    ap.add_argument(
        "--structures",
        nargs="+",
        choices=STRUCTURES,
        default=None,
        help=f"the fashion grid's structures (default: {' '.join(FASHION_STRUCTURES)})",
    )
    ap.add_argument(
        "--budgets",
        nargs="+",
        type=int,
        choices=BUDGETS,
        default=None,
        help=f"the fashion grid's budgets, in the order to run them (default: {BUDGETS})",
    )
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--tables", action="store_true", help="only rewrite the Markdown and plot")
    args = ap.parse_args(argv)
    fashion = args.grid == "fashion"
    valid = [*TUNING, *STRUCTURE_TRIES] if fashion else ["long", "linear", "long-linear"]
    names = args.variant.split("+") if fashion else [args.variant]
    if args.variant and (not all(v in valid for v in names) or len(set(names)) < len(names)):
        ap.error(
            f"--variant {args.variant!r} (grid {args.grid}): valid: {', '.join(valid)}"
            + (", joined by + (each once)" if fashion else "")
        )
    for option in ("structures", "budgets"):
        if getattr(args, option) and not fashion:
            ap.error(f"--{option} is for --grid fashion (the other grids name their own)")
        if getattr(args, option):
            setattr(args, option, list(dict.fromkeys(getattr(args, option))))  # each once
    if args.out is None:
        name = "accuracy-fashion.json" if args.grid == "fashion" else "accuracy.json"
        args.out = RESULTS / name
    return args


def _meta(args: argparse.Namespace, argv: list[str] | None) -> dict:
    device = torch.device(args.device)
    fashion = args.grid == "fashion"
    meta = {
        "command": "python benchmarks/accuracy/study.py " + " ".join(argv or sys.argv[1:]),
        "grid": args.grid,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "schedule": _defaults_line() if fashion else Schedule().__dict__,
        "schedule_all": None if fashion else WHOLE_MODEL_SCHEDULE.__dict__,
        "teachers": {},
    }
    if fashion:
        meta["data"] = f"fashion-mnist:{args.data}"
        meta["flags"] = f"--precision {_precision(args)} --prefix-cache {PREFIX_STORE}"
        meta["defaults"] = adntn_defaults()
    if args.out.exists():
        recorded = json.loads(args.out.read_text())
        meta["teachers"] = recorded.get("teachers", {})
        if fashion and recorded.get("rows"):
            _same_defaults(args.out, recorded.get("defaults"), meta["defaults"])
    return meta


def adntn_defaults() -> dict:
    """What a recipe with no ``distill:`` section runs with (the fashion grid's schedule): the
    schema's defaults, the default end-to-end length (passes, clamped to a step range), and the
    default legs of a Linear that reads a feature map (``input_legs``)."""
    length = {"epochs": DEFAULT_EPOCHS, "min_steps": MIN_STEPS, "max_steps": MAX_STEPS}
    return {
        "distill": Distill().model_dump(mode="json"),
        "finetune_length": length,
        "input_legs": DEFAULT_INPUT_LEGS,  # FC6's legs (a layer setting, not a distill: one)
    }


def _defaults_line() -> str:
    lr = Distill().finetune.lr
    passes = f"{DEFAULT_EPOCHS:g} passes at a peak lr of {lr:g}"
    return f"adntn's defaults (no distill: section): {passes}"


def _flat(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def _same_defaults(out: Path, recorded: dict | None, current: dict) -> None:
    """Refuse to add cells to ``out`` when its rows ran under other adntn defaults (a file
    without the record predates it): a grid row and a try would not compare."""
    if recorded == current:
        return
    if recorded is None:
        why = "records no defaults (it predates the record)"
    else:
        old, new = _flat(recorded), _flat(current)
        changed = [f"{k} {old.get(k)} -> {new.get(k)}" for k in new if old.get(k) != new.get(k)]
        why = "ran under other defaults: " + ", ".join(changed or ["(a removed setting)"])
    raise SystemExit(
        f"error: {out} {why}; write to another --out, or relabel its rows (relabel.py)"
    )


def _teacher_for(args, cell: Cell, meta: dict) -> Path:
    size = SIZES[args.grid][cell.teacher]
    if args.grid == "fashion":
        path, info = fashion_teacher(args.data, device=args.device)
    else:
        path, info = teacher_file(cell.teacher, size, torch.device(args.device))
    _same_teacher(args.out, meta["teachers"].get(cell.teacher), info)
    meta["teachers"][cell.teacher] = {**info, "input_size": size}
    return path


SAME = ("top1", "top5", "loss")  # what a retrained teacher must reproduce to share a results file


def _same_teacher(out: Path, recorded: dict | None, info: dict) -> None:
    """Refuse to add cells to ``out`` when its rows were measured against another teacher (a
    retrained one that came out different): their numbers would not compare."""
    if not recorded or not all(k in recorded and k in info for k in SAME):
        return
    if any(recorded[k] != info[k] for k in SAME):
        raise SystemExit(
            f"error: the cached teacher (top-1 {info['top1']:.4f}, test loss {info['loss']:.6f})"
            f" is not the one {out} was measured against (top-1 {recorded['top1']:.4f}, test "
            f"loss {recorded['loss']:.6f}); write to another --out, or restore that teacher"
        )


def _precision(args) -> str:
    """The fashion grid's precision: bf16, except on a CPU that would emulate it (25x slower)."""
    emulated = args.device == "cpu" and cpu_has_native_bf16() is False
    return "fp32" if emulated else "bf16"


def _runner(args) -> Runner:
    if args.grid != "fashion":
        return Runner(args.device)
    data = f"fashion-mnist:{args.data}"
    return Runner(args.device, data, _precision(args), PREFIX_STORE, sqnr_images=1000, runs=RUNS)


def _todo(args, rows: list[dict]) -> tuple[list[Cell], set[str]]:
    i, n = (int(v) for v in args.shard.split("/"))
    done = {r["key"] for r in rows}
    cells = [
        replace(c, variant=args.variant) for c in grid(args.grid, args.structures, args.budgets)
    ]
    todo = [c for k, c in enumerate(cells) if k % n == i - 1]
    todo = [c for c in todo if c.key not in done and args.only in c.key]
    todo = [c for c in todo if applies(c.variant, c.structure, c.budget)]  # a try's cells only
    # an unreachable budget needs one row, not one per seed
    unreachable = {_group(r) for r in rows if r["status"] == "unreachable"}
    return [c for c in todo if c.group not in unreachable], unreachable


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    md = args.out.with_suffix(".md")
    if args.tables:
        doc = json.loads(args.out.read_text())
        write_markdown(doc, md)
        write_plot(doc, args.out.with_suffix(".png"))
        return
    meta, rows = _meta(args, argv), load_rows(args.out)
    todo, unreachable = _todo(args, rows)
    print(f"{len(todo)} cells to run ({len(rows)} already in {args.out})", flush=True)
    GRID["name"] = args.grid
    files: dict = {}
    for cell in todo:
        if cell.group in unreachable:
            continue
        if cell.teacher not in files:
            files[cell.teacher] = _teacher_for(args, cell, meta)
        t = time.time()
        schedule = None if args.grid == "fashion" else schedule_for(cell)
        row = run_cell(cell, files[cell.teacher], schedule, _runner(args))
        row["dense_top1"] = meta["teachers"][cell.teacher]["top1"]
        row["command"] = meta["command"]
        row["threads"] = torch.get_num_threads()  # a cell repeats exactly only at its count
        rows = [r for r in load_rows(args.out) if r["key"] != row["key"]] + [row]
        save_rows(args.out, meta, rows)
        write_markdown({**meta, "rows": rows}, md)
        write_plot({**meta, "rows": rows}, args.out.with_suffix(".png"))
        if row["status"] == "unreachable":
            unreachable.add(cell.group)
            print(f"{cell.key}: unreachable", flush=True)
        else:
            print(
                f"{cell.key}: top-1 {row['top1']:.4f} (dense {row['dense_top1']:.4f}), "
                f"{row['replaced_ratio']:,.0f}x, {time.time() - t:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
