"""What the frozen-prefix cache saves on an FC-only recipe, through the job's own stages.

AlexNet (10 classes) at 64x64 on the bundled digits, FC6 and FC7 replaced by ttn at about
2,000x, ``distill.train: replaced``: the same job twice, with ``distill.cache_frozen_prefix``
``auto`` (the convolutional part runs once per image) and ``off`` (it runs at every step). The
distillation stage (``job.distil``) and the whole job are timed; the two runs must end at the
same weights within float32 rounding.

    python benchmarks/bench_prefix_cache.py [--epochs 2] [--device cpu]

Writes benchmarks/results/prefix_cache.json and .md. The teacher has random weights (speed does
not depend on them).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from adntn_cli import job as stages
from adntn_cli.job import CompressJob
from adntn_cli.models import build_model

RESULTS = Path(__file__).resolve().parent / "results"


def recipe(mode: str, epochs: float) -> dict:
    rule = {"structure": "ttn", "target_ratio": 2000}
    return {
        "version": 1,
        "model": {"arch": "alexnet", "num_classes": 10, "input_size": 64},
        "layers": [{"select": "classifier.1", **rule}, {"select": "classifier.4", **rule}],
        "distill": {
            "layerwise": {"steps": 20, "batches": 2},
            "finetune": {"epochs": epochs, "lr": 3e-3, "checkpoint_every": 10**6},
            "train": "replaced",
            "cache_frozen_prefix": mode,
        },
        "data": {"batch_size": 64},
    }


def run(mode: str, args: argparse.Namespace, tmp: Path) -> dict:
    (tmp / f"{mode}.yaml").write_text(yaml.safe_dump(recipe(mode, args.epochs)))
    job = CompressJob.create(
        str(tmp / "teacher.pt"), tmp / f"{mode}.yaml", data="digits", out=tmp / mode,
        device=args.device, seed=0,
    )  # fmt: skip
    started = time.perf_counter()
    r = stages.start(job)
    for stage in (stages.load_inputs, stages.build_student, stages.fit_layers):
        stage(job, r)
    t0 = time.perf_counter()
    stages.distil(job, r)
    distil_s = time.perf_counter() - t0
    report = stages.write(job, r, stages.evaluate(job, r))
    weights = {k: v.detach().clone() for k, v in r.student.state_dict().items()}
    return {
        "mode": mode,
        "frozen_prefix": report.frozen_prefix,
        "steps": report.finetune["step"],
        "distil_seconds": round(distil_s, 2),
        "job_seconds": round(time.perf_counter() - started, 2),
        "top1": report.accuracy.compressed.top1,
        "weights": weights,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        torch.save(build_model("alexnet", 10).state_dict(), tmp / "teacher.pt")
        rows = [run(mode, args, tmp) for mode in ("auto", "off")]
    cached, plain = (r.pop("weights") for r in rows)
    worst = max(float((cached[k] - plain[k]).abs().max()) for k in cached)
    command = "python benchmarks/bench_prefix_cache.py " + " ".join(sys.argv[1:])
    doc = {
        "command": command.strip(),
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}",
        "device": args.device,
        "rows": rows,
        "speedup_distil": rows[1]["distil_seconds"] / rows[0]["distil_seconds"],
        "speedup_job": rows[1]["job_seconds"] / rows[0]["job_seconds"],
        "max_weight_difference": worst,
    }
    print(json.dumps(doc, indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "prefix_cache.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = [
        "# The frozen-prefix cache on an FC-only recipe",
        "",
        f"`{doc['command']}` on {doc['machine']} ({args.device}); AlexNet at 64x64, digits "
        f"(1,438 training images), FC6 + FC7 ttn at ~2,000x, distill.train: replaced.",
        "",
        "| cache_frozen_prefix | steps | distillation s | whole job s | top-1 | prefix |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['steps']} | {r['distil_seconds']} | {r['job_seconds']} "
            f"| {r['top1']:.2%} | {r['frozen_prefix']['reason']} |"
        )
    lines += [
        "",
        f"Distillation {doc['speedup_distil']:.2f}x faster with the cache, the whole job "
        f"{doc['speedup_job']:.2f}x; the two runs' weights differ by at most "
        f"{worst:.2e} (0 means bitwise equal).",
    ]
    (RESULTS / "prefix_cache.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
