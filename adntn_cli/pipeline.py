"""``compress``: the whole job a user runs, as one function the CLI (or a notebook) calls.

load the teacher -> plan and apply the recipe -> layer-wise fit -> BatchNorm recalibration ->
end-to-end distillation (checkpointed, resumable) -> evaluate -> write the run directory:
model.safetensors, report.json, report.md, metrics.csv, recipe.resolved.yaml, checkpoints/.
"""

from __future__ import annotations

import copy
import json
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from . import __version__, distributed
from .atomic import write_text
from .data import loaders, make_datasets
from .distill import (
    Callback,
    Progress,
    finetune,
    layerwise_fit,
    load_checkpoint,
    recalibrate_batchnorm,
    restore,
    save_atomic,
)
from .errors import AdntnError, DataError, RunDirError
from .evaluate import accuracy, agreement
from .io import save_compressed
from .models import load_model
from .plan import Plan, apply_plan, plan
from .recipe import Recipe, load_recipe
from .report import metrics_csv, to_markdown
from .runtime import PRECISIONS, compile_generators, resolve_precision, use_channels_last

__all__ = ["check_run_dir", "compress", "new_run_dir", "prepare_run_dir", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else MPS, else CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AdntnError(f"--device {name}: no CUDA device here; valid: auto, cpu")
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise AdntnError("--device mps: no MPS device here; valid: auto, cpu")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise AdntnError(f"--device {name!r} is not a device; valid: auto, cpu, cuda, cuda:N, mps")
    return torch.device(name)


def relative_to_recipe(spec: str, recipe_file: Path) -> str:
    """A data path written in a recipe is relative to the recipe file, not to the shell."""
    kind, sep, path = spec.partition(":")
    if sep and kind in ("imagefolder", "cifar10", "cifar100") and not Path(path).is_absolute():
        return f"{kind}:{(recipe_file.parent / path).resolve()}"
    return spec


def new_run_dir(name: str, root: Path = Path("runs")) -> Path:
    """``runs/<name>-<n>`` with the first unused ``n``."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).stem)
    n = 1
    while (root / f"{stem}-{n}").exists():
        n += 1
    return root / f"{stem}-{n}"


def check_run_dir(out: Path, *, resume: bool, force: bool) -> bool:
    """Refuse a non-empty directory unless resuming it or starting it over; changes nothing.
    Returns whether ``out`` holds files."""
    if resume and force:
        raise RunDirError("--resume and --force contradict each other: pick one")
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file: name a directory")
    busy = out.exists() and any(out.iterdir())
    if busy and not (resume or force):
        raise RunDirError(
            f"{out} is not empty: pass --resume to continue that run or --force to start over"
        )
    return busy


def prepare_run_dir(out: Path, *, resume: bool, force: bool) -> Path:
    """``check_run_dir``, then empty it (``force``) or drop the temporary files of a killed
    run (``resume``), and create it."""
    busy = check_run_dir(out, resume=resume, force=force)
    if busy and force:
        shutil.rmtree(out)
    if busy and resume:
        for stale in [*out.glob(".*.tmp*"), *out.glob("checkpoints/.*.tmp*")]:
            stale.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        return done.stdout.strip() or None if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def resolved_recipe(recipe: Recipe, p: Plan) -> dict[str, Any]:
    """The recipe with every selector resolved to exact layers and every bond dimension fixed."""
    layers = []
    for lp in p.layers:
        s = lp.spec
        entry: dict[str, Any] = {"select": lp.layer, "structure": s.structure}
        entry["bond_dim"] = list(s.bond_dim) if isinstance(s.bond_dim, tuple) else s.bond_dim
        if s.activation is not None:
            act = s.activation
            entry["activation"] = list(act) if isinstance(act, tuple) else act
        if s.output_activation != "identity":
            entry["output_activation"] = s.output_activation
        if s.factors is not None:
            entry["factors"] = {"out": list(s.factors[0]), "in": list(s.factors[1])}
        if s.n_legs is not None:
            entry["n_legs"] = s.n_legs
        if s.options:
            entry["options"] = dict(s.options)
        layers.append(entry)
    data = recipe.model_dump(by_alias=True, exclude_none=True)
    data["layers"] = layers
    data.pop("defaults", None)
    return data


def _calibration(train, n: int) -> list[torch.Tensor]:
    out = []
    for x, _ in train:
        out.append(x)
        if len(out) >= n:
            break
    return out


def compress(
    model: str,
    recipe: str | Path,
    *,
    data: str | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    seed: int = 0,
    resume: bool = False,
    force: bool = False,
    arch: str | None = None,
    allow_pickle: bool = False,
    stop_after: int | None = None,
    callback: Callback | None = None,
    argv: list[str] | None = None,
    cores_dtype: str = "float32",
    compile_mode: str | None = None,
    precision: str | None = None,
    channels_last: bool | None = None,
) -> dict[str, Any]:
    """Compress ``model`` with ``recipe``; returns the report (also written to the run directory).

    ``model`` is ``torchvision:NAME`` or a state-dict file (architecture from ``arch`` or the
    recipe's ``model.arch``); ``data`` overrides the recipe's ``data.train``; ``cores_dtype``
    (float32 or bfloat16) is how the generator cores are stored in model.safetensors;
    ``compile_mode`` (auto, on, off) overrides the recipe's ``distill.compile`` and
    ``precision`` (auto, bf16, fp32) its ``distill.precision``; ``channels_last`` lays
    convolutional models out as NHWC (None: on CUDA only).
    ``stop_after`` ends the end-to-end step early, checkpointed (an interruption, for tests);
    ``resume`` continues it.

    Under torchrun every rank returns once rank 0 has written the run directory; the process
    group stays joined, and a process that ends then should leave through
    ``distributed.finish()`` (the CLI does).
    """
    started = time.time()
    cb = callback or (lambda _: None)
    dtypes = {"float32": None, "bfloat16": torch.bfloat16}
    if cores_dtype not in dtypes:
        raise AdntnError(f"cores dtype {cores_dtype!r} is not offered; valid: float32, bfloat16")
    if compile_mode not in (None, "auto", "on", "off"):
        raise AdntnError(f"--compile {compile_mode!r}: valid: auto, on, off")
    if precision not in (None, *PRECISIONS):
        raise AdntnError(f"--precision {precision!r}: valid: {', '.join(PRECISIONS)}")
    if not 0 <= seed < 2**32:
        raise AdntnError(f"--seed {seed}: a seed is a whole number from 0 to {2**32 - 1}")
    rec, source = load_recipe(recipe)
    world = distributed.from_env().world
    if rec.data.batch_size % world:
        raise AdntnError(
            f"data.batch_size {rec.data.batch_size} does not split evenly over {world} "
            f"processes; use a multiple of {world} (it is the global batch)"
        )
    dist, dev = distributed.init(resolve_device(device))
    if not dist.main:  # rank 0 alone reports progress and writes
        cb = _quiet
    report = _compress(
            model, rec, source, recipe, dist=dist, dev=dev, data=data, out=out, seed=seed,
            resume=resume, force=force, arch=arch, allow_pickle=allow_pickle,
            stop_after=stop_after, cb=cb, argv=argv, dtype=dtypes[cores_dtype], started=started,
            compile_mode=compile_mode or rec.distill.compile,
            precision=precision or rec.distill.precision, channels_last=channels_last,
        )  # fmt: skip
    distributed.barrier(dist)  # no rank returns before rank 0 has written the run directory
    return report


def _quiet(_: Progress) -> None:
    pass


def _compress(
    model: str,
    rec: Recipe,
    source: str,
    recipe: str | Path,
    *,
    dist: distributed.Dist,
    dev: torch.device,
    data: str | None,
    out: str | Path | None,
    seed: int,
    resume: bool,
    force: bool,
    arch: str | None,
    allow_pickle: bool,
    stop_after: int | None,
    cb: Callback,
    argv: list[str] | None,
    dtype: torch.dtype | None,
    started: float,
    compile_mode: str,
    precision: str,
    channels_last: bool | None,
) -> dict[str, Any]:
    out_dir = Path(out) if out is not None else new_run_dir(source)
    out_dir = Path(distributed.broadcast(dist, str(out_dir)))  # rank 0 picks runs/<name>-<n>
    check_run_dir(out_dir, resume=resume, force=force)
    data_spec = data or rec.data.train
    if not data_spec:
        raise DataError("no data: pass --data (e.g. digits, imagefolder:PATH) or set data.train")
    if data is None and Path(recipe).is_file():
        data_spec = relative_to_recipe(data_spec, Path(recipe))

    # Everything a user can get wrong is checked before the run directory is touched.
    torch.manual_seed(seed)
    arch_name = arch or rec.model.arch
    from_file = not model.startswith("torchvision:")
    teacher = load_model(
        model,
        arch_name,
        None if from_file else rec.model.num_classes,
        allow_pickle=allow_pickle,
        device=dev,
    )
    arch_name = arch_name or model.split(":", 1)[-1]
    amp = resolve_precision(precision, dev)
    teacher.eval()
    the_plan = plan(teacher, rec, source=source, batch=rec.data.batch_size)  # pure
    num_classes = rec.model.num_classes
    datasets = make_datasets(data_spec, rec.model.input_size, num_classes)
    if dist.main:
        prepare_run_dir(out_dir, resume=resume, force=force)
    distributed.barrier(dist)
    run_dir = out_dir
    ckpt_dir = run_dir / "checkpoints"
    train, val = loaders(
        datasets, rec.data.batch_size // dist.world, workers=rec.data.workers, seed=seed,
        pin_memory=dev.type == "cuda", rank=dist.rank, world=dist.world,
    )  # fmt: skip
    calib_loader, _ = loaders(datasets, rec.data.batch_size, seed=seed + 1)
    cb(Progress("eval", 0, 1, message="evaluating the dense model"))
    dense_acc = accuracy(teacher, val, dev, amp)

    student = copy.deepcopy(teacher)
    apply_plan(student, the_plan, generator=torch.Generator().manual_seed(seed))
    student.to(dev)
    names = [lp.layer for lp in the_plan.layers]
    nhwc = use_channels_last([teacher, student], dev, channels_last)
    compiled = compile_generators(student, compile_mode)

    stage = ckpt_dir / "layerwise.pt"
    if resume and stage.exists():
        saved = load_checkpoint(stage, dev)
        restore(student, saved["model"], stage)
        fit, recalibrated = saved["errors"], saved["batchnorm"]
        cb(Progress("layerwise", 1, 1, message=f"resumed after the layer-wise fit ({stage})"))
    else:
        calib = _calibration(calib_loader, rec.distill.layerwise.batches)
        lw = rec.distill.layerwise
        fit = layerwise_fit(
            teacher, student, names, calib, steps=lw.steps, lr=lw.lr, device=dev, callback=cb,
            precision=amp,
        )  # fmt: skip
        recalibrated = recalibrate_batchnorm(student, calib, dev)
        if dist.main:
            save_atomic(
                {"model": student.state_dict(), "errors": fit, "batchnorm": recalibrated}, stage
            )

    history: dict[str, Any] = {"history": [], "step": 0, "total": 0, "interrupted": False}
    if rec.distill.finetune.epochs > 0:
        history = finetune(
            teacher, student, train, val, rec.distill.finetune, checkpoints=ckpt_dir,
            device=dev, resume=resume, stop_after=stop_after, callback=cb, dist=dist,
            precision=amp,
        )  # fmt: skip
        best = ckpt_dir / "best.pt"
        if not history["interrupted"] and best.exists():
            restore(student, load_checkpoint(best, dev)["model"], best)

    if not dist.main:
        return {"rank": dist.rank, "run_dir": str(run_dir)}
    comp_acc = accuracy(student, val, dev, amp)
    resolved = resolved_recipe(rec, the_plan)
    model_path = run_dir / "model.safetensors"
    size = save_compressed(
        student, model_path, arch=arch_name, num_classes=num_classes, recipe=resolved,
        dtype=dtype,
    )  # fmt: skip
    report: dict[str, Any] = {
        "recipe": source,
        "model": model,
        "arch": arch_name,
        "data": data_spec,
        "data_description": datasets.description,
        "seed": seed,
        "device": str(dev),
        "precision": amp.name,
        "channels_last": nhwc,
        "processes": dist.world,
        "command": argv if argv is not None else sys.argv,
        "versions": {
            "adntn": __version__,
            "torch": torch.__version__,
            "torchvision": _torchvision_version(),
            "python": platform.python_version(),
        },
        "git_commit": _git_commit(),
        "layers": [lp.record for lp in the_plan.layers],
        "totals": the_plan.totals,
        "accuracy": {
            "dense": {k: dense_acc[k] for k in ("top1", "top5", "loss")},
            "compressed": {k: comp_acc[k] for k in ("top1", "top5", "loss")},
            "agreement": agreement(teacher, student, val, dev, amp),
            "val_images": comp_acc["n"],
        },
        "layerwise": fit,
        "compiled": compiled,
        "batchnorm_recalibrated": recalibrated,
        "finetune": {k: history[k] for k in ("step", "total", "interrupted")},
        "files": {"model": str(model_path), "model_bytes": size},
        "seconds": round(time.time() - started, 1),
    }
    write_text(run_dir / "report.json", json.dumps(report, indent=1) + "\n")
    write_text(run_dir / "report.md", to_markdown(report))
    write_text(run_dir / "metrics.csv", metrics_csv(history["history"]))
    write_text(run_dir / "recipe.resolved.yaml", yaml.safe_dump(resolved, sort_keys=False))
    report["run_dir"] = str(run_dir)
    return report


def _torchvision_version() -> str:
    import torchvision

    return torchvision.__version__
