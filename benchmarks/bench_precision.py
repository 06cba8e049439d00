"""How much bf16 costs each structure: the generated weight and the layer output against float32.

Per structure on one layer shape (default VGG-16 FC7, 4096 x 4096), relative Frobenius errors:

- ``w_once``: the float32 weight rounded to bf16 once (what adntn's layers do under autocast);
- ``w_chain``: the weight generated in bf16 through the whole chain (cores and every intermediate
  in bf16; what running the generator under autocast would give);
- ``y_layer``: the generated layer's output under bf16 autocast (the path ``compress`` trains on)
  against its float32 output, beside ``y_dense``: a dense layer with the same weight under the
  same autocast.

    python benchmarks/bench_precision.py [--device cpu|cuda] [--shape 4096x4096] [--batch 64]

Writes benchmarks/results/precision{,_cuda}.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from torch import nn

from adntn_cli.layers import GeneratedLinear
from adntn_cli.runtime import resolve_precision
from adntn_cli.tn import StructureSpec

STRUCTURES = {  # the shipped recipes' choices at about 2,000-90,000x on FC-sized layers
    "ttn": StructureSpec("ttn", bond_dim=12),
    "augttn": StructureSpec("augttn", bond_dim=8),
    "augttn-separable": StructureSpec("augttn", bond_dim=8, options={"disentangler": "separable"}),
    "mera": StructureSpec("mera", bond_dim=2),
    "tt": StructureSpec("tt", bond_dim=8),
    "lowrank": StructureSpec("lowrank", bond_dim=8),
}
RESULTS = Path(__file__).resolve().parent / "results"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


@torch.no_grad()
def measure(name: str, spec: StructureSpec, shape: tuple[int, int], batch: int, device) -> dict:
    torch.manual_seed(0)
    out_f, in_f = shape
    layer = GeneratedLinear.from_module(nn.Linear(in_f, out_f, device=device), spec).train()
    amp = resolve_precision("bf16", device)
    w32 = layer.generator()
    w_chain = copy.deepcopy(layer.generator).to(torch.bfloat16)()
    x = torch.randn(batch, in_f, device=device)
    dense = layer.to_dense()
    y32 = dense(x)
    with amp.autocast():
        y_layer, y_dense = layer(x), dense(x)
    return {
        "structure": name,
        "shape": list(shape),
        "tn_params": layer.tn_params,
        "ratio": round(layer.generator.ratio, 1),
        "schedule": layer.last_schedule,
        "w_once": rel(w32.to(torch.bfloat16), w32),
        "w_chain": rel(w_chain, w32),
        "y_layer": rel(y_layer, y32),
        "y_dense": rel(y_dense, y32),
        "device": torch.device(device).type,
    }


def markdown(rows: list[dict], command: str) -> str:
    lines = [
        "# bf16 against float32, per structure",
        "",
        f"`{command}` (relative Frobenius errors; one run, deterministic for the seed)",
        "",
        "| structure | shape | ratio | schedule | W rounded once | W generated in bf16 "
        "| layer output (autocast) | dense output (autocast) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['structure']} | {'x'.join(map(str, r['shape']))} | {r['ratio']:,.0f}x "
            f"| {r['schedule']} | {r['w_once']:.2%} | {r['w_chain']:.2%} | {r['y_layer']:.2%} "
            f"| {r['y_dense']:.2%} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", default="4096x4096")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--structures", default=",".join(STRUCTURES))
    parser.add_argument("--out", type=Path, default=None, help="results stem (default: results/)")
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split("x"))
    rows = []
    for name in args.structures.split(","):
        rows.append(measure(name, STRUCTURES[name], shape, args.batch, args.device))
        print(json.dumps(rows[-1]), flush=True)
    suffix = "" if torch.device(args.device).type == "cpu" else f"_{torch.device(args.device).type}"
    stem = args.out or RESULTS / f"precision{suffix}"
    command = "python benchmarks/bench_precision.py " + " ".join(sys.argv[1:])
    stem.with_suffix(".json").write_text(
        json.dumps({"command": command.strip(), "rows": rows}, indent=1) + "\n"
    )
    stem.with_suffix(".md").write_text(markdown(rows, command.strip()))


if __name__ == "__main__":
    main()
