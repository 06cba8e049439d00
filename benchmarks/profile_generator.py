"""Where a generator's time goes: torch.profiler over one forward + backward of the weight.

    python benchmarks/profile_generator.py 4096x25088 mera --ratio 2000
    python benchmarks/profile_generator.py 4096x25088 augttn --ratio 2000 --rows 15

Prints the merged steps with their planned cost and pairwise kernels, the median forward and
forward+backward times, and the profiler's top operators by self CPU time, grouped by shape.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from adntn_cli.tn import StructureSpec, TNGenerator
from adntn_cli.tn.search import bond_dim_for_ratio


def median_seconds(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("shape", help="weight shape, e.g. 4096x25088 or 512x512x3x3")
    p.add_argument("structure")
    p.add_argument("--ratio", type=float, default=2000)
    p.add_argument("--rows", type=int, default=12)
    args = p.parse_args()
    shape = tuple(int(s) for s in args.shape.split("x"))
    spec = bond_dim_for_ratio(StructureSpec(args.structure), shape, args.ratio)
    gen = TNGenerator(spec, shape)
    print(gen.extra_repr())
    for c in gen.program.steps:
        print(f"  {c.step.label}: {len(c.shapes)} operands, {c.cost}, {[q.kind for q in c.plans]}")

    def fwd_bwd() -> None:
        w = gen.padded_matrix()
        w.backward(torch.randn_like(w))

    with torch.no_grad():
        print(f"forward {median_seconds(gen.padded_matrix):.3f} s")
    print(f"forward + backward {median_seconds(fwd_bwd):.3f} s")
    with torch.profiler.profile(record_shapes=True) as prof:
        fwd_bwd()
    table = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=args.rows, max_shapes_column_width=70
    )
    print(table)


if __name__ == "__main__":
    main()
