"""The study's teachers: torchvision AlexNet and VGG-16 (BN) with 10 classes, trained on digits.

Plain torchvision ``vgg16`` does not train from scratch on 1,438 digit images (it stays near chance:
no BatchNorm, 13 conv layers); ``vgg16_bn`` does, and its classifier (FC6 25088 -> 4096, FC7 4096 ->
4096, FC8 4096 -> 10) is exactly plain VGG-16's, so the compressed layers are the same shapes.

Teachers are trained once per (arch, input size, seed) and cached in ``.cache/`` beside this file
(state dicts are hundreds of MB: never committed; rebuilding one is deterministic).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from adntn_cli.data import loaders, make_datasets
from adntn_cli.demo import train_teacher
from adntn_cli.models import build_model

CACHE = Path(os.environ.get("ADNTN_STUDY_CACHE") or Path(__file__).parent / ".cache")

# arch -> (epochs, peak lr): AdamW with a one-cycle schedule (adntn_cli.demo.train_teacher).
RECIPES = {"alexnet": (20, 1e-3), "vgg16_bn": (6, 1e-3)}


def teacher(
    arch: str, size: int, device: torch.device, seed: int = 0, log=print
) -> tuple[torch.nn.Module, dict]:
    """The trained teacher (cached) and its validation accuracy and training time."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{arch}-{size}-s{seed}.pt"
    model = build_model(arch, 10).to(device)
    if path.exists():
        saved = torch.load(path, map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        return model.eval(), {k: v for k, v in saved.items() if k != "model"}
    epochs, lr = RECIPES[arch]
    torch.manual_seed(seed)
    model = build_model(arch, 10).to(device)
    train, val = loaders(make_datasets("digits", size), 64, seed=seed)
    started = time.time()
    acc = train_teacher(model, train, val, epochs=epochs, lr=lr, device=device)
    info = {
        "top1": acc["top1"],
        "top5": acc["top5"],
        "loss": acc["loss"],
        "epochs": epochs,
        "lr": lr,
        "seconds": round(time.time() - started, 1),
    }
    log(f"teacher {arch}@{size} seed {seed}: top-1 {acc['top1']:.4f} in {info['seconds']} s")
    torch.save({"model": model.state_dict(), **info}, path)
    return model.eval(), info


def teacher_file(arch: str, size: int, device: torch.device, seed: int = 0, log=print):
    """The trained teacher as a plain state-dict file (what ``adntn compress`` reads), and its
    validation accuracy and training time."""
    model, info = teacher(arch, size, device, seed, log)
    path = CACHE / f"{arch}-{size}-s{seed}.state.pt"
    if not path.exists():
        torch.save(model.state_dict(), path)
    return path, info
