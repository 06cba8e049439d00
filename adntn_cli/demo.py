"""The embedded demo: a small VGG-style teacher on scikit-learn's digits, compressed >= 1,000x.

Trains ``demo_vgg`` (two large fully connected layers) on the bundled digits at 32x32, saves it as
a state dict, then runs the same ``compress`` a user runs with the shipped ``demo`` recipe. Minutes
on a laptop CPU; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from .atomic import write_text
from .checkpoints import save_atomic
from .data import loaders, make_datasets
from .devices import resolve_device
from .distill import Callback, Event
from .errors import RunDirError
from .evaluate import accuracy
from .job import CompressJob, compress
from .models import build_model
from .recipe import shipped_recipes
from .report import CompressionReport
from .rundir import prepare_run_dir

__all__ = ["check_demo_dir", "run_demo", "train_teacher"]

TEACHER_EPOCHS = 12
MARKER = ".adntn-demo"  # the demo's first write into --out: it may start this folder over
DEMO_ENTRIES = {MARKER, "teacher.pt", "compressed"}  # all that a demo writes there


def train_teacher(
    model: torch.nn.Module,
    train,
    val,
    *,
    epochs: int,
    lr: float = 3e-3,
    device: torch.device | str = "cpu",
    callback: Callback | None = None,
) -> dict[str, float]:
    """Plain supervised training (AdamW, one-cycle cosine); returns validation accuracy."""
    cb = callback or (lambda _: None)
    total = epochs * len(train)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total)
    step = 0
    model.train()
    for _ in range(epochs):
        for x, y in train:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 10 == 0 or step == total:
                cb(Event("teacher", step, total, {"loss": float(loss.detach())}))
    return accuracy(model, val, device)


def check_demo_dir(out: Path, *, force: bool) -> None:
    """Refuse (``RunDirError``) a non-empty ``out`` that is not an earlier demo run, unless
    ``force``; changes nothing. An earlier run holds the demo's entries alone, and its marker
    or (from an adntn before the marker) a report of the command ``adntn demo``."""
    if force or not out.is_dir() or not any(out.iterdir()):
        return  # a file named by --out is refused by prepare_run_dir
    strays = sorted(
        p.name
        for p in out.iterdir()
        if p.name not in DEMO_ENTRIES and not (p.name.startswith(".") and ".tmp" in p.name)
    )
    if not strays and ((out / MARKER).is_file() or _demo_report(out)):
        return
    more = f" and {len(strays) - 1} more" if len(strays) > 1 else ""
    what = f"holds {strays[0]}{more}, which" if strays else "is not empty and"
    raise RunDirError(
        f"{out} {what} is not from an earlier adntn demo: pass --force to start over "
        f"(deletes everything in {out})"
    )


def _demo_report(out: Path) -> bool:
    try:
        report = json.loads((out / "compressed" / "report.json").read_text())
    except (OSError, ValueError):
        return False
    command = report.get("command") if isinstance(report, dict) else None
    ran_demo = isinstance(command, list) and command[:2] == ["adntn", "demo"]
    return ran_demo and (out / "teacher.pt").is_file()


def run_demo(
    out: Path,
    *,
    device: str = "auto",
    seed: int = 0,
    force: bool = False,
    callback: Callback | None = None,
) -> CompressionReport:
    """Train the teacher into ``out/teacher.pt`` and compress it into ``out/compressed``.

    ``teacher.pt`` describes itself, in timm's layout: ``{"state_dict", "arch",
    "num_classes", "input_size"}``, so ``adntn eval`` needs no ``--arch`` or ``--input-size``.

    ``out`` is started over if it is empty, an earlier demo run, or ``force``; any other folder
    is refused and left as it is."""
    out = Path(out)
    dev = resolve_device(device)
    job = CompressJob.create(
        str(out / "teacher.pt"),
        shipped_recipes()["demo"],  # by path: no file or folder named demo here can shadow it
        data="digits",
        out=out / "compressed",
        device=str(dev),
        seed=seed,
        force=True,  # out (checked below) is emptied first
        arch="demo_vgg",
        argv=["adntn", "demo", "--out", str(out)],
    )
    job = dataclasses.replace(job, source="demo")
    check_demo_dir(out, force=force)
    out = prepare_run_dir(out, resume=False, force=True)
    write_text(out / MARKER, "written by adntn demo, which may start this folder over\n")
    recipe = job.recipe
    torch.manual_seed(seed)
    data = make_datasets("digits", recipe.model.input_size)
    train, val = loaders(data, recipe.data.batch_size, seed=seed)
    teacher = build_model("demo_vgg", recipe.model.num_classes).to(dev)
    acc = train_teacher(teacher, train, val, epochs=TEACHER_EPOCHS, device=dev, callback=callback)
    if not math.isfinite(acc["loss"]):
        raise RuntimeError("the demo teacher did not train")
    described = {"arch": "demo_vgg", "num_classes": recipe.model.num_classes,
                 "input_size": recipe.model.input_size}  # fmt: skip
    save_atomic({"state_dict": teacher.state_dict(), **described}, out / "teacher.pt")
    return compress(job, callback)
