"""Whole-model throughput and memory, dense against compressed, measured in one run.

For a model and a shipped recipe this measures, on synthetic data at one batch size:

- ``train``: one training step of the student alone (forward + backward + AdamW step);
- ``distill``: one full distillation step (the frozen teacher's forward included);
- ``eval_cached``: eval-mode forward with the generated weights cached (the default);
- ``eval_contract``: eval-mode forward with the cache off, so each layer contracts its input
  through the generator where the cost model prefers it and holds no dense weight between calls;

as images per second (median of ``--repeats`` interleaved timings after warm-up, device synced)
and peak memory (CUDA: ``max_memory_allocated`` of the step; CPU: not measured, 0). The dense
model's row for ``distill`` is its own training step plus the teacher's forward, i.e. what
ordinary knowledge distillation into a dense student costs.

    python benchmarks/bench_pipeline.py --device cuda      # VGG-16, vgg16 recipe, 224, batch 128
    python benchmarks/bench_pipeline.py --arch alexnet --recipe alexnet --size 64 --batch 32 # CPU

Results: benchmarks/results/pipeline.json (rows of other devices and models are kept) and .md.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from adntn_cli import job as stages
from adntn_cli.distill import kd_loss
from adntn_cli.job import CompressJob
from adntn_cli.models import CUSTOM, build_model
from adntn_cli.recipe import load_recipe
from adntn_cli.runtime import resolve_precision, use_weight_cache

OUT = Path(__file__).parent / "results"
MODES = ("train", "distill", "eval_cached", "eval_contract")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device: torch.device) -> tuple[float, int]:
    """Seconds of one call of ``fn`` and the peak memory it allocated (CUDA)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    seconds = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return seconds, peak


def steps(model, teacher, x, y, device, channels_last: bool) -> dict[str, Callable[[], None]]:
    """The four measured operations on ``model`` (dense or compressed)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    amp = resolve_precision("auto", device)  # compress's default: bf16 on CUDA, fp32 elsewhere
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def step(loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def train() -> None:
        model.train()
        with amp.autocast():
            loss = F.cross_entropy(model(x).float(), y)
        step(loss)

    def distill() -> None:
        model.train()
        with torch.no_grad(), amp.autocast():
            t_logits = teacher(x)
        with amp.autocast():
            logits = model(x)
        step(kd_loss(logits, t_logits, y, 4.0, 0.9))

    def evaluate() -> None:
        model.eval()
        with torch.no_grad(), amp.autocast():
            model(x)

    return {"train": train, "distill": distill, "eval_cached": evaluate, "eval_contract": evaluate}


def held_bytes(model: torch.nn.Module) -> int:
    """Memory the model holds between calls: parameters, buffers and cached generated weights."""
    tensors = [*model.parameters(), *model.buffers()]
    for m in model.modules():
        for cache in m.__dict__.get("_caches", {}).values():
            if cache.held:
                tensors.append(cache.value)
    return sum(t.numel() * t.element_size() for t in tensors)


def models(args: argparse.Namespace, tmp: Path) -> tuple[Any, Any, Any]:
    """The job's teacher and student, built by the stages ``adntn compress`` runs (start,
    load_inputs, build_student: plan, apply, device, channels-last); and the plan."""
    model = f"torchvision:{args.arch}"
    if args.arch in CUSTOM:  # not a torchvision name: a state-dict file, as a user has
        model = str(tmp / "teacher.pt")
        torch.manual_seed(0)
        torch.save(build_model(args.arch, load_recipe(args.recipe)[0].model.num_classes)
                   .state_dict(), model)  # fmt: skip
    job = CompressJob.create(
        model, args.recipe, data="synthetic:8", out=tmp / "run", device=args.device,
        arch=args.arch, channels_last=args.channels_last,
    )  # fmt: skip
    run = stages.start(job)
    stages.load_inputs(job, run)
    stages.build_student(job, run)
    return run.teacher, run.student, run.plan


def measure(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    recipe, source = load_recipe(args.recipe)
    classes = recipe.model.num_classes
    with tempfile.TemporaryDirectory() as tmp:
        teacher, compressed, the_plan = models(args, Path(tmp))
    teacher.requires_grad_(False)
    dense = copy.deepcopy(teacher).requires_grad_(True)  # the dense student, trained alike
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, classes, (args.batch,), device=device)
    ops = {
        "dense": steps(dense, teacher, x, y, device, args.channels_last),
        "compressed": steps(compressed, teacher, x, y, device, args.channels_last),
    }
    rows = []
    for mode in MODES:
        times: dict[str, list[float]] = {"dense": [], "compressed": []}
        peaks: dict[str, int] = {"dense": 0, "compressed": 0}
        use_weight_cache(compressed, mode != "eval_contract")  # the cache is on by default
        for which in ops:
            for _ in range(args.warmup):
                ops[which][mode]()
        for _ in range(args.repeats):  # interleaved: drift hits both alike
            for which in ops:
                seconds, peak = timed(ops[which][mode], device)
                times[which].append(seconds)
                peaks[which] = max(peaks[which], peak)
        d, c = statistics.median(times["dense"]), statistics.median(times["compressed"])
        row = {
            "model": args.arch,
            "recipe": source,
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or platform.machine(),
            "batch": args.batch,
            "size": args.size,
            "mode": mode,
            "channels_last": args.channels_last,
            "dense_ips": args.batch / d,
            "compressed_ips": args.batch / c,
            "throughput_ratio": d / c,
            "dense_peak_bytes": peaks["dense"],
            "compressed_peak_bytes": peaks["compressed"],
            "dense_held_bytes": held_bytes(dense),
            "compressed_held_bytes": held_bytes(compressed),
            "dense_params": sum(p.numel() for p in dense.parameters()),
            "compressed_params": sum(p.numel() for p in compressed.parameters()),
            "replaced_ratio": the_plan.totals.replaced_ratio,
            "repeats": args.repeats,
            "torch": torch.__version__,
        }
        rows.append(row)
        print(
            f"{mode:14s} dense {row['dense_ips']:9.1f} img/s  compressed "
            f"{row['compressed_ips']:9.1f} img/s  ratio {row['throughput_ratio']:.2f}  peak "
            f"{peaks['dense'] / 2**20:,.0f} / {peaks['compressed'] / 2**20:,.0f} MiB  held "
            f"{row['dense_held_bytes'] / 2**20:,.1f} / {row['compressed_held_bytes'] / 2**20:,.1f} "
            "MiB",
            flush=True,
        )
    return rows


def to_markdown(doc: dict) -> str:
    lines = [
        "# Pipeline throughput: dense against compressed",
        "",
        "Images per second (median of interleaved repeats after warm-up, device synced) and "
        "peak memory of the step (CUDA only). `train`: student step (forward, backward, AdamW); "
        "`distill`: the same plus the frozen teacher's forward; `eval_cached`: eval forward with "
        "cached generated weights; `eval_contract`: eval forward with the cache off (contractible "
        "layers never form their weight). Peak: the step's largest allocation (CUDA only; 0 on "
        "the CPU, where it is not measured). Held: what the model keeps between calls "
        "(parameters, buffers, cached generated weights), after the mode ran. Commands:",
        "",
        *[f"- `{c}`" for c in doc["commands"]],
        "",
        "| model | recipe | device | input | batch | mode | dense img/s | compressed img/s | "
        "ratio | dense peak MiB | compressed peak MiB | dense held MiB | compressed held MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        lines.append(
            f"| {r['model']} | {r['recipe']} | {r['device_name']} | {r['size']} | {r['batch']} | "
            f"{r['mode']} | {r['dense_ips']:,.1f} | {r['compressed_ips']:,.1f} | "
            f"{r['throughput_ratio']:.2f}x | {r['dense_peak_bytes'] / 2**20:,.0f} | "
            f"{r['compressed_peak_bytes'] / 2**20:,.0f} | {r['dense_held_bytes'] / 2**20:,.1f} | "
            f"{r['compressed_held_bytes'] / 2**20:,.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--arch", default="vgg16")
    ap.add_argument("--recipe", default="vgg16")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT / "pipeline.json")
    args = ap.parse_args(argv)
    rows = measure(args)
    command = "python benchmarks/bench_pipeline.py " + " ".join(argv or sys.argv[1:])
    doc = json.loads(args.out.read_text()) if args.out.exists() else {"commands": [], "rows": []}
    key = ("model", "recipe", "device_name", "size", "batch", "mode", "channels_last")
    new = {tuple(r[k] for k in key) for r in rows}
    doc["rows"] = [r for r in doc["rows"] if tuple(r.get(k) for k in key) not in new] + rows
    doc["commands"] = [c for c in doc["commands"] if c != command] + [command]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(to_markdown(doc))


if __name__ == "__main__":
    main()
