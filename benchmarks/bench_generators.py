"""Generator cost against the dense layer, for the VGG-16 and AlexNet layer shapes.

For each layer shape, structure and budget (~2,000x and ~20,000x fewer parameters) this reports the
plan's numbers (parameters, ratio, generator FLOPs, peak intermediate, passes over |W|, schedule)
and, measured in one run as medians of --repeats timings, the ratio of one training step of the
compressed layer (forward + backward, generator included) to one of the dense layer, at each batch
size. Budgets a structure cannot reach are rows marked unreachable.

    python benchmarks/bench_generators.py                      # CPU, full grid
    python benchmarks/bench_generators.py --device cuda        # adds device: cuda rows
    python benchmarks/bench_generators.py --layers vgg16.fc6 --structures ttn tt --repeats 3

Results: benchmarks/results/generators.json (rows of other devices are kept) and generators.md.
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
from torch import nn

from adntn_cli.layers import GeneratedConv2d, GeneratedLinear
from adntn_cli.tn import StructureSpec, TNConfigError
from adntn_cli.tn.search import bond_dim_for_ratio

LAYERS = {
    "vgg16.fc6": (4096, 25088),
    "vgg16.fc7": (4096, 4096),
    "vgg16.fc8": (1000, 4096),
    "vgg16.conv5": (512, 512, 3, 3),
    "alexnet.fc6": (4096, 9216),
}
CONV_HW = 14  # VGG-16's conv5 block works on 14x14 maps at 224x224 input
STRUCTURES = ["ttn", "augttn", "mera", "tt", "lowrank"]
RATIOS = [2000, 20000]
OUT = Path(__file__).parent / "results"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dense_module(shape, device):
    if len(shape) == 2:
        return nn.Linear(shape[1], shape[0], device=device)
    return nn.Conv2d(shape[1], shape[0], shape[2], padding=1, device=device)


def make_input(shape, batch, device):
    if len(shape) == 2:
        return torch.randn(batch, shape[1], device=device, requires_grad=True)
    return torch.randn(batch, shape[1], CONV_HW, CONV_HW, device=device, requires_grad=True)


def step_seconds(module: nn.Module, x: torch.Tensor, device: torch.device) -> float:
    """One forward + backward (weight, bias and input gradients), synchronised."""
    for p in module.parameters():
        p.grad = None
    x.grad = None
    sync(device)
    t = time.perf_counter()
    y = module(x)
    y.backward(torch.ones_like(y))
    sync(device)
    return time.perf_counter() - t


def measure(dense, compressed, x, device, repeats: int) -> tuple[float, float]:
    """Medians of interleaved repeats (after one warm-up each): dense and compressed seconds."""
    step_seconds(dense, x, device)
    step_seconds(compressed, x, device)
    d, c = [], []
    for _ in range(repeats):
        d.append(step_seconds(dense, x, device))
        c.append(step_seconds(compressed, x, device))
    return statistics.median(d), statistics.median(c)


def resolve(structure: str, shape, ratio: float) -> StructureSpec | str:
    try:
        return bond_dim_for_ratio(StructureSpec(structure), shape, ratio)
    except TNConfigError as err:
        return str(err)


def _schedule_gmacs(layer_mod: nn.Module, batch: int) -> dict[str, float]:
    """The cost model's multiply-adds (G) of each schedule a Linear layer has at ``batch``
    (materialise: generating W plus the matmul); a conv only materialises."""
    gen = layer_mod.generator
    if len(gen.weight_shape) != 2:
        return {"materialise": round(gen.program.cost().macs / 1e9, 3)}
    return {k: round(e.macs / 1e9, 3) for k, e in gen.schedules(batch).items()}


def run(args, save) -> list[dict]:
    """Measure the grid; ``save(rows)`` is called after every row, so a stopped run keeps them."""
    device = torch.device(args.device)
    rows: list[dict] = []
    for layer in args.layers:
        shape = LAYERS[layer]
        dense = dense_module(shape, device)
        for ratio in args.ratios:
            for structure in args.structures:
                spec = resolve(structure, shape, ratio)
                base = {
                    "layer": layer,
                    "shape": list(shape),
                    "structure": structure,
                    "target_ratio": ratio,
                    "device": device.type,
                }
                if isinstance(spec, str):
                    rows.append({**base, "unreachable": True, "reason": spec})
                    save(rows)
                    print(f"{layer} {structure} {ratio}x: unreachable", flush=True)
                    continue
                cls = GeneratedLinear if len(shape) == 2 else GeneratedConv2d
                layer_mod = cls.from_module(dense, spec)
                desc = layer_mod.generator.describe()
                for batch in args.batches:
                    x = make_input(shape, batch, device)
                    t_dense, t_tn = measure(dense, layer_mod, x, device, args.repeats)
                    schedule = getattr(layer_mod, "last_schedule", None) or "materialise"
                    row = {
                        **base,
                        "bond_dim": desc["bond_dim"],
                        "legs": desc["legs"],
                        "dense_params": desc["dense_params"],
                        "tn_params": desc["tn_params"],
                        "ratio": round(desc["ratio"], 1),
                        "flops": desc["flops"],
                        "peak_bytes": desc["peak_bytes"],
                        "passes": round(desc["passes"], 2),
                        "schedule": schedule,
                        "gmacs": _schedule_gmacs(layer_mod, batch),
                        "batch": batch,
                        "dense_ms": round(1e3 * t_dense, 2),
                        "tn_ms": round(1e3 * t_tn, 2),
                        "step_vs_dense": round(t_tn / t_dense, 3),
                    }
                    rows.append(row)
                    save(rows)
                    print(
                        f"{layer} {structure} {ratio}x b={batch}: {row['ratio']}x, "
                        f"{schedule}, step_vs_dense {row['step_vs_dense']}",
                        flush=True,
                    )
                del layer_mod
    return rows


def _sched(row: dict) -> str:
    """The schedule taken, with each schedule's GMACs where recorded (chosen one first)."""
    gmacs = row.get("gmacs")
    if not gmacs:
        return row["schedule"]
    other = [f"{k[:5]}. {v:g}" for k, v in gmacs.items() if k != row["schedule"]]
    mine = f"{row['schedule']} {gmacs.get(row['schedule'], 0):g}"
    return mine + (f" ({', '.join(other)})" if other else "")


def to_markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Generator benchmark",
        "",
        "One training step (forward + backward, generator included) of a compressed layer over",
        "one of the dense layer, medians of interleaved repeats measured in one run per device.",
        f"Conv layers run on {CONV_HW}x{CONV_HW} maps. FLOPs: generator multiply-adds x 2 per",
        "forward; peak: largest intermediate of generating W; passes: elements written / |W|.",
        "sched@B: the schedule the cost model chose at batch B and its forward GMACs (generation",
        "plus matmul for materialise), the other schedule's in brackets (rows measured since",
        "#14; older rows give the schedule alone).",
        "",
    ]
    for dev, m in meta.items():
        lines.append(
            f"- **{dev}**: `{m['command']}` on {m['machine']}, torch {m['torch']}, {m['date']}"
        )
    batches = sorted({r["batch"] for r in rows if "batch" in r})
    head = "| layer | target | structure | bond_dim | params | ratio | GFLOP | peak MiB | passes |"
    head += "".join(f" sched@{b} | step/dense@{b} |" for b in batches)
    for dev in sorted({r["device"] for r in rows}):
        lines += ["", f"## {dev}", "", head, "|" + "---|" * (9 + 2 * len(batches))]
        keyed: dict[tuple, dict] = {}
        for r in rows:
            if r["device"] != dev:
                continue
            key = (r["layer"], r["target_ratio"], r["structure"])
            keyed.setdefault(key, {})[r.get("batch")] = r

        def order(item):
            (layer, target, structure), _ = item
            known = layer in LAYERS and structure in STRUCTURES
            pos = (list(LAYERS).index(layer), STRUCTURES.index(structure)) if known else (99, 99)
            return pos[0], target, pos[1]

        for (layer, target, structure), by_batch in sorted(keyed.items(), key=order):
            r = next(iter(by_batch.values()))
            if r.get("unreachable"):
                lines.append(
                    f"| {layer} | {target}x | {structure} | unreachable |"
                    + " |" * (5 + 2 * len(batches))
                )
                continue
            cells = [
                layer,
                f"{target}x",
                structure,
                str(r["bond_dim"]),
                str(r["tn_params"]),
                f"{r['ratio']:.0f}x",
                f"{r['flops'] / 1e9:.2f}",
                f"{r['peak_bytes'] / 2**20:.0f}",
                f"{r['passes']:.1f}",
            ]
            for b in batches:
                rb = by_batch.get(b)
                cells += [_sched(rb), f"{rb['step_vs_dense']:.2f}x"] if rb else ["", ""]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--layers", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    p.add_argument("--structures", nargs="+", default=STRUCTURES, choices=STRUCTURES)
    p.add_argument("--ratios", nargs="+", type=float, default=RATIOS)
    p.add_argument("--batches", nargs="+", type=int, default=[64, 256])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument(
        "--append", action="store_true", help="keep this device's earlier rows (shard a grid)"
    )
    args = p.parse_args()
    args.ratios = [int(r) if r == int(r) else r for r in args.ratios]
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out / "generators.json", args.out / "generators.md"
    old = json.loads(json_path.read_text()) if json_path.exists() else {"meta": {}, "rows": []}
    dev = args.device.split(":")[0]
    machine = platform.processor() or platform.machine()
    if dev == "cuda":
        machine = torch.cuda.get_device_name(0)
    meta = dict(old["meta"])
    command = "python " + " ".join(["benchmarks/bench_generators.py", *sys.argv[1:]])
    if args.append and dev in meta:  # a shard of a grid: keep every command that made it
        command = f"{meta[dev]['command']}` + `{command}"
    meta[dev] = {
        "command": command,
        "machine": f"{machine}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }

    def key(r: dict) -> tuple:
        return (r["layer"], r["structure"], r["target_ratio"], r.get("batch"), r["device"])

    def save(rows: list[dict]) -> None:
        new = {key(r) for r in rows}
        kept = [r for r in old["rows"] if (args.append or r["device"] != dev) and key(r) not in new]
        every = kept + rows
        json_path.write_text(json.dumps({"meta": meta, "rows": every}, indent=1) + "\n")
        md_path.write_text(to_markdown(every, meta))

    run(args, save)
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
