"""The embedded demo: a small VGG-style teacher on scikit-learn's digits, compressed >= 1,000x.

Trains ``demo_vgg`` (two large fully connected layers) on the bundled digits at 32x32, saves it as
a state dict, then runs the same ``compress`` a user runs with the shipped ``demo`` recipe. Minutes
on a laptop CPU; nothing is downloaded.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoints import save_atomic
from .data import loaders, make_datasets
from .devices import resolve_device
from .distill import Callback, Event
from .evaluate import accuracy
from .job import CompressJob, compress
from .models import build_model
from .recipe import load_recipe
from .report import CompressionReport
from .rundir import prepare_run_dir

__all__ = ["run_demo", "train_teacher"]

TEACHER_EPOCHS = 12


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


def run_demo(
    out: Path,
    *,
    device: str = "auto",
    seed: int = 0,
    callback: Callback | None = None,
) -> CompressionReport:
    """Train the teacher into ``out/teacher.pt`` and compress it into ``out/compressed``."""
    dev = resolve_device(device)
    out = prepare_run_dir(Path(out), resume=False, force=True)
    recipe, _ = load_recipe("demo")
    torch.manual_seed(seed)
    data = make_datasets("digits", recipe.model.input_size)
    train, val = loaders(data, recipe.data.batch_size, seed=seed)
    teacher = build_model("demo_vgg", recipe.model.num_classes).to(dev)
    acc = train_teacher(teacher, train, val, epochs=TEACHER_EPOCHS, device=dev, callback=callback)
    if not math.isfinite(acc["loss"]):
        raise RuntimeError("the demo teacher did not train")
    save_atomic(teacher.state_dict(), out / "teacher.pt")
    job = CompressJob.create(
        str(out / "teacher.pt"),
        "demo",
        data="digits",
        out=out / "compressed",
        device=str(dev),
        seed=seed,
        force=True,
        arch="demo_vgg",
        argv=["adntn", "demo", "--out", str(out)],
    )
    return compress(job, callback)
