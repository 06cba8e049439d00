"""Planning time: ``adntn plan`` of every shipped recipe, and a new batch size afterwards.

For each shipped recipe this times what ``adntn plan torchvision:ARCH --recipe NAME`` does (the
architecture on the meta device, the plan: every generator laid out and its paths searched), as
the median of --repeats runs in one process, each from a fresh model (nothing cached between
runs). Then, on the planned generators, the extra time of the cost model at a batch size the plan
did not see (the contract path's search, once per power-of-two bucket of batch sizes).
Target (issue #14): no plan of a shipped recipe spends more than 2 s.

    python benchmarks/bench_plan.py                 # results/plan.json and plan.md

CPU only; no weights, no data.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from adntn_cli.layers import GeneratedLinear
from adntn_cli.models import build_model
from adntn_cli.plan import apply_plan, plan
from adntn_cli.recipe import load_recipe, shipped_recipes

OUT = Path(__file__).parent / "results"


def time_plan(name: str) -> tuple[float, object]:
    recipe, _ = load_recipe(name)
    arch = recipe.model.arch or "demo_vgg"
    t = time.perf_counter()
    model = build_model(arch, recipe.model.num_classes, device="meta")
    p = plan(model, recipe, source=name)
    return time.perf_counter() - t, (model, p)


def time_new_batch(model, p, batch: int) -> float:
    apply_plan(model, p)
    layers = [m for m in model.modules() if isinstance(m, GeneratedLinear)]
    t = time.perf_counter()
    for layer in layers:
        layer.generator.schedules(batch)
    return time.perf_counter() - t


HARD = {  # the slow searches issue #14 reported: dp over 23 operands, mera's contract path
    "augttn, identity activations, 1024x1024": ("augttn", (1024, 1024), {"activation": "identity"}),
    "mera, vgg16.fc6 at 2,000x (bond 10)": ("mera", (4096, 25088), {"bond_dim": 10}),
    "augttn, vgg16.fc6 at 2,000x": ("augttn", (4096, 25088), {"bond_dim": [26, 26, 12, 4]}),
}


def time_generator(structure: str, shape: tuple[int, int], kwargs: dict, batch: int) -> dict:
    """Laying out one generator (its paths searched), then its contract path at 64 and at
    ``batch``."""
    from adntn_cli.tn import StructureSpec, TNGenerator

    t = time.perf_counter()
    gen = TNGenerator(StructureSpec(structure, **kwargs), shape, device="meta")
    build = time.perf_counter() - t
    out = {"build_s": round(build, 3)}
    for b in (64, batch):
        t = time.perf_counter()
        gen.schedules(b)
        out[f"schedules@{b}_s"] = round(time.perf_counter() - t, 3)
    out["schedule@64"] = gen.choose_schedule(64)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-batch", type=int, default=200)
    args = ap.parse_args()
    rows = []
    for name in sorted(shipped_recipes()):
        times = []
        for _ in range(args.repeats):
            seconds, (model, p) = time_plan(name)
            times.append(seconds)
        extra = time_new_batch(model, p, args.new_batch)
        median = round(statistics.median(times), 3)
        rows.append({"recipe": name, "layers": len(p.layers), "plan_s": median,
                     "new_batch": args.new_batch, "new_batch_s": round(extra, 3)})  # fmt: skip
        print(rows[-1], flush=True)
    hard = {name: time_generator(*spec, args.new_batch) for name, spec in HARD.items()}
    for name, r in hard.items():
        print(name, r, flush=True)
    meta = {
        "command": "python " + " ".join(["benchmarks/bench_plan.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "plan.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "generators": hard}, indent=1) + "\n"
    )
    lines = ["# Planning time", "", f"`{meta['command']}` on {meta['machine']}, torch "
             f"{meta['torch']}, {meta['date']}; medians of {args.repeats} plans in one process.",
             "", "| recipe | layers | plan (s) | a new batch size (s) |",
             "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['recipe']} | {r['layers']} | {r['plan_s']:.3f} | {r['new_batch_s']:.3f} |"
              for r in rows]  # fmt: skip
    lines += ["", "Single generators (meta device): layout with every path searched, then the cost",
              "model at batch 64 and at a new batch size.", "",
              f"| generator | layout (s) | schedules@64 (s) | schedules@{args.new_batch} (s) | "
              "chosen@64 |", "|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {n} | {r['build_s']:.3f} | {r['schedules@64_s']:.3f} | "
              f"{r[f'schedules@{args.new_batch}_s']:.3f} | {r['schedule@64']} |"
              for n, r in hard.items()]  # fmt: skip
    (OUT / "plan.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT / 'plan.json'} and {OUT / 'plan.md'}")


if __name__ == "__main__":
    main()
