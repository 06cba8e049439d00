"""The Fashion-MNIST study's teacher: a torchvision AlexNet, 10 classes, at 224x224.

    python benchmarks/accuracy/fashion_teacher.py [--data /usr/share/datasets/fashion-mnist]

Needs the Debian package ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``).
At 224x224 AlexNet's FC6 sees a real 6x6x256 feature map (at 64x64 the 1x1 map is copied 36
times, which makes FC6 easy to compress).

Training, on all 60,000 training images, seeded (``torch.manual_seed(seed)``; the data order and
augmentation come from one seeded generator), so a missing checkpoint is rebuilt the same way:

- progressive resizing, to fit a 2-core CPU: ``PHASES`` epochs at 112x112 (a 2x2 map before the
  classifier, about 3x cheaper per image), then at 224x224, where the classifier learns the
  6x6 map it is compressed at;
- augmentation on the 28x28 image (a random 2-pixel shift and a horizontal flip), then the
  bilinear upsampling and normalisation of adntn's ``fashion-mnist`` source (preprocess.py);
- AdamW (weight decay 5e-4), one-cycle cosine learning rate over all phases, label smoothing
  0.05, batch 128, bf16 autocast on a CPU that computes bf16 natively (AMX or AVX512-BF16; the
  weights stay float32), float32 on one that would emulate it (25x slower: see
  ``adntn_cli.runtime.cpu_has_native_bf16``); the record says which. The two are different
  teachers: ``--precision fp32`` (or ``bf16``) retrains the one a results file names, on any
  CPU; ``--device cuda`` trains one on a GPU, cached apart (``teacher_path``);
- then ``polish``: one more epoch at 224x224, cosine from 3e-4 (one epoch at 224 left it at
  89.2%, short of the study's 90%).

The checkpoint is written as ``{"state_dict", "arch", "num_classes", "input_size", "record"}``
(timm's layout, what ``adntn compress`` reads with no ``--arch``; the record is also copied to a
.json beside it) to ``.cache/`` beside this file, never to git; its top-1 on the official
10,000-image test split is measured by adntn's own evaluation (``adntn_cli.evaluate.accuracy``,
float32, the ``fashion-mnist:PATH`` source at 224x224).

Each stage saves its progress to ``.cache/`` every 5 minutes, at its last step and on SIGTERM,
and a rerun resumes it with the steps an uninterrupted run takes (on an AVX2 CPU in fp32 the
whole takes about 2.5 hours, longer than some sessions); progress saved under other settings
(schedule, seed, precision) is not resumed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from adntn_cli.atomic import torch_bytes, write_bytes, write_text
from adntn_cli.data import make_datasets
from adntn_cli.evaluate import accuracy
from adntn_cli.idx import IdxImages
from adntn_cli.models import build_model
from adntn_cli.preprocess import DEFAULTS
from adntn_cli.runtime import cpu_has_native_bf16

# the study's cache (teachers, prefix stores); ADNTN_STUDY_CACHE moves it (a rehearsal's)
CACHE = Path(os.environ.get("ADNTN_STUDY_CACHE") or Path(__file__).parent / ".cache")
FASHION = Path("/usr/share/datasets/fashion-mnist")
SIZE = 224
PHASES = ((112, 4), (224, 1))  # (input size, epochs), in order
BATCH, LR, WEIGHT_DECAY, SMOOTHING = 128, 1e-3, 5e-4, 0.05
POLISH_LR = 3e-4  # then one more epoch at 224x224, cosine from this to 0 (89.2% -> see .json)
SAVE_EVERY = 300  # seconds between progress saves (a stopped run resumes from the last)


PRECISION = "auto"  # or bf16, fp32 (--precision): auto is bf16 where the device computes it


def _bf16(device: torch.device) -> bool:
    """Train in bf16 autocast where the device has it natively (an unknown CPU: as before,
    bf16), unless ``PRECISION`` says which."""
    if PRECISION != "auto":
        return PRECISION == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return cpu_has_native_bf16() is not False


def teacher_path(seed: int = 0, device: torch.device | str = "cpu") -> Path:
    """The checkpoint's file: a teacher trained on a GPU is another teacher (other arithmetic),
    so it has its own (``...-cuda.pt``)."""
    kind = torch.device(device).type
    return CACHE / f"alexnet-fashion-{SIZE}-s{seed}{'' if kind == 'cpu' else '-' + kind}.pt"


def _progress_path(seed: int, stage: str, device: torch.device | str = "cpu") -> Path:
    return CACHE / f"{teacher_path(seed, device).stem}.{stage}.progress.pt"


def _augmented_batch(images: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """uint8 (B, 1, 28, 28) -> shifted, flipped, upsampled, normalised float (B, 3, S, S)."""
    b = images.shape[0]
    padded = F.pad(images.float(), (2, 2, 2, 2))  # (B, 1, 32, 32)
    dx, dy = torch.randint(0, 5, (2, b), generator=g).tolist()  # drawn on the CPU generator
    shifted = torch.stack(
        [padded[i, :, dy[i] : dy[i] + 28, dx[i] : dx[i] + 28] for i in range(b)]
    )  # (B, 1, 28, 28)
    flip = (torch.rand(b, generator=g) < 0.5).to(images.device)
    shifted[flip] = shifted[flip].flip(-1)
    up = F.interpolate(shifted, size=(size, size), mode="bilinear", align_corners=False)
    p = DEFAULTS["fashion-mnist"]
    x = (up.round().clamp(0, 255) / 255 - p.mean[0]) / p.std[0]  # (B, 1, S, S)
    return x.expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)


class _Progress:
    """Where a training stage is, saved to ``.cache/`` every ``SAVE_EVERY`` seconds and on
    SIGTERM: the model, optimiser, scheduler, the data generator's and the global RNG's state
    (dropout), the epoch's order and the next batch. A stage resumed from it takes the same
    steps on the same batches as one never stopped (same machine, same threads)."""

    def __init__(self, path: Path, stage: str, settings: dict) -> None:
        self.path, self.stage, self.settings, self.stop = path, stage, settings, False
        self.saved_at = time.time()

    def load(self, log=print) -> dict | None:
        """The saved state, or None: none saved, or saved under other settings (the schedule,
        the seed or the precision changed: it is started over, and the file replaced)."""
        if not self.path.exists():
            return None
        state = torch.load(self.path, weights_only=False)
        # a file saved before settings were recorded comes from this schedule (issue 15's run)
        if state["stage"] == self.stage and state.get("settings", self.settings) == self.settings:
            return state
        log(f"{self.stage}: {self.path} was saved under other settings; starting over")
        return None

    def save(self, **state) -> None:
        state = {"stage": self.stage, "settings": self.settings, "rng": torch.get_rng_state(),
                 **state}  # fmt: skip
        write_bytes(self.path, torch_bytes(state))  # atomic: a kill mid-write keeps the last
        self.saved_at = time.time()

    def due(self) -> bool:
        return self.stop or time.time() - self.saved_at > SAVE_EVERY


def _settings(stage: str, seed: int, device: torch.device) -> dict:
    """What a stage's steps depend on: a progress file saved under other settings is not resumed."""
    common = {"batch": BATCH, "weight_decay": WEIGHT_DECAY, "label_smoothing": SMOOTHING,
              "seed": seed, "precision": "bf16" if _bf16(device) else "fp32"}  # fmt: skip
    if device.type != "cpu":  # a CPU's progress files from before devices were recorded resume
        common["device"] = device.type
    if stage == "main":
        return {**common, "phases": [list(p) for p in PHASES], "lr": LR}
    return {**common, "size": SIZE, "lr": POLISH_LR}


def _run_stage(
    stage: str, model: torch.nn.Module, sizes: list[int], opt, schedule, g: torch.Generator,
    seed: int, data: Path, log, device: torch.device,
) -> dict:  # fmt: skip
    """Train ``model`` (on ``device``) one epoch per entry of ``sizes`` (its input size), with
    the scheduler ``schedule(opt, total_steps)``, resuming where a stopped run of this ``stage``
    saved (the last save is at its last step); returns ``{"seconds", "resumes",
    "train_images"}``. The data order and augmentation are drawn on the CPU generator ``g``."""
    images = IdxImages("fashion-mnist", data, "train", transform=None)
    x_all, y_all = images.images.to(device), images.labels.to(device)  # (60000, 1, 28, 28) u8
    per_epoch = math.ceil(len(y_all) / BATCH)
    total = per_epoch * len(sizes)
    sched = schedule(opt, total)
    progress = _Progress(_progress_path(seed, stage, device), stage, _settings(stage, seed, device))
    at, perm, spent, resumes = 0, None, 0.0, 0
    if (saved := progress.load(log)) is not None:
        model.load_state_dict(saved["model"])  # onto the model's device
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        g.set_state(saved["g"])
        torch.set_rng_state(saved["rng"])
        if device.type == "cuda":  # dropout there draws from the device's generator
            torch.cuda.set_rng_state(saved["cuda_rng"], device)
        at, perm, spent = saved["at"], saved["perm"], saved["seconds"]
        resumes = saved["resumes"] + 1
        log(f"{stage}: resumed at step {at}/{total} ({progress.path})")
    stops = (signal.SIGTERM, signal.SIGINT)  # a kill, ^C, or `timeout --signal=INT`
    previous = [signal.signal(s, lambda *_: setattr(progress, "stop", True)) for s in stops]
    model.to(memory_format=torch.channels_last).train()
    started = time.time()
    try:
        for step in range(at, total):
            epoch, k = divmod(step, per_epoch)
            if k == 0:  # an epoch's order is drawn at its start (and saved with it)
                perm = torch.randperm(len(y_all), generator=g)
            idx = perm[k * BATCH : (k + 1) * BATCH].to(device)
            x = _augmented_batch(x_all[idx], sizes[epoch], g)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=_bf16(device)):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y_all[idx], label_smoothing=SMOOTHING)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seconds = spent + time.time() - started
            if (step + 1) % 50 == 0 or step + 1 == total:
                log(f"{stage} step {step + 1}/{total} at {sizes[epoch]}px: "
                    f"loss {float(loss.detach()):.4f}, {seconds:.0f} s")  # fmt: skip
            if progress.due() or step + 1 == total:  # a stop in the test that follows: done
                cuda = (
                    {"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}
                )
                progress.save(model=model.state_dict(), opt=opt.state_dict(),
                              sched=sched.state_dict(), g=g.get_state(), at=step + 1,
                              perm=perm, seconds=seconds, resumes=resumes, **cuda)  # fmt: skip
                if progress.stop and step + 1 < total:
                    raise SystemExit(f"{stage}: stopped at step {step + 1}/{total}, saved")
    finally:
        for s, handler in zip(stops, previous, strict=True):
            signal.signal(s, handler)
    model.to(memory_format=torch.contiguous_format).eval()
    seconds = round(spent + time.time() - started, 1)
    return {"seconds": seconds, "resumes": resumes, "train_images": len(y_all)}


def train(
    data: Path, seed: int = 0, log=print, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, dict]:
    """The main schedule: ``PHASES``, one-cycle over all of it, on ``device``."""
    device = torch.device(device)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = build_model("alexnet", 10).to(device)
    sizes = [size for size, epochs in PHASES for _ in range(epochs)]
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

    def one_cycle(opt, total):
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=total)

    done = _run_stage("main", model, sizes, opt, one_cycle, g, seed, data, log, device)
    info = {
        "phases": [list(p) for p in PHASES],
        "batch": BATCH,
        "lr": LR,
        "weight_decay": WEIGHT_DECAY,
        "label_smoothing": SMOOTHING,
        "seed": seed,
        "precision": "bf16" if _bf16(device) else "fp32",
        **({"device": torch.cuda.get_device_name(device)} if device.type == "cuda" else {}),
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),  # a TorchVersion would not load weights_only
        **done,
    }
    return model, info


def polish(model: torch.nn.Module, data: Path, seed: int = 0, log=print) -> dict:
    """One more epoch at 224x224 (AdamW, cosine from ``POLISH_LR`` to 0, its own seeded data
    order): the one epoch of the main schedule at 224 leaves the classifier short of the
    6x6 map (89.2% top-1)."""
    torch.manual_seed(seed + 1)
    g = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=POLISH_LR, weight_decay=WEIGHT_DECAY)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR
    device = next(model.parameters()).device
    done = _run_stage("polish", model, [SIZE], opt, cosine, g, seed, data, log, device)
    return {"polish": {"size": SIZE, "epochs": 1, "lr": POLISH_LR},
            "polish_seconds": done["seconds"], "polish_resumes": done["resumes"]}  # fmt: skip


def test_accuracy(model: torch.nn.Module, data: Path) -> dict:
    """Top-1/top-5 on the official test split through adntn's own source and evaluation
    (float32, on the model's device)."""
    val = make_datasets(f"fashion-mnist:{data}", SIZE, 10, train=False).val
    return accuracy(model, DataLoader(val, 256), next(model.parameters()).device)


def fashion_teacher(
    data: Path = FASHION, seed: int = 0, log=print, device: torch.device | str = "cpu"
) -> tuple[Path, dict]:
    """The trained teacher's file (trained on ``device`` and cached when missing) and its
    record: the main schedule, then ``polish``. The main schedule's checkpoint is written
    before the polish, so a run stopped there polishes it, not retrains it; a stage stopped
    midway resumes from its progress file (``_Progress``)."""
    path = teacher_path(seed, device)
    record = path.with_suffix(".json")
    _keep_cached_precision(seed, device, log)
    info = _record(path)
    if info is not None and "polish" in info:
        return path, info
    CACHE.mkdir(parents=True, exist_ok=True)
    if info is None:  # the main schedule, then its checkpoint: a stopped polish starts there
        model, info = train(data, seed, log, device)
        info["top1"] = test_accuracy(model, data)["top1"]
        _save(model, path, record, info)
        _progress_path(seed, "main", device).unlink(missing_ok=True)
    model = build_model("alexnet", 10)
    model.load_state_dict(_load(path)["state_dict"])
    model.to(device)
    info["top1_before_polish"] = info.pop("top1")
    info.update(polish(model, data, seed, log))
    acc = test_accuracy(model, data)
    info.update(top1=acc["top1"], top5=acc["top5"], loss=acc["loss"], test_images=acc["n"])
    log(f"teacher alexnet@{SIZE} on Fashion-MNIST: test top-1 {acc['top1']:.4f}")
    _save(model, path, record, info)
    _progress_path(seed, "polish", device).unlink(missing_ok=True)
    return path, info


def _cached_precision(seed: int, device: torch.device | str) -> str | None:
    """The precision of the teacher cached for ``seed`` on ``device``: trained, or in progress."""
    record = _record(teacher_path(seed, device))
    if record and "precision" in record:
        return record["precision"]
    for stage in ("polish", "main"):
        if (saved := _progress_path(seed, stage, device)).exists():
            return torch.load(saved, weights_only=False, mmap=True)["settings"].get("precision")
    return None


def _keep_cached_precision(seed: int, device: torch.device | str, log) -> None:
    """``PRECISION`` auto takes the cached teacher's (a run resumed on another machine goes on
    as it began); a named one that differs is refused, never trained over the cached one."""
    global PRECISION
    cached = _cached_precision(seed, device)
    if cached is None or cached == PRECISION:
        return
    if PRECISION != "auto":
        raise SystemExit(
            f"error: the teacher cached in {CACHE} for seed {seed} is {cached}, not {PRECISION};"
            f" move it aside to train another (or leave --precision auto to use it)"
        )
    PRECISION = cached
    log(f"teacher: {cached}, as the one cached in {CACHE} began")


def _load(path: Path) -> dict:
    """A checkpoint this script wrote, tensors only (one whose record's torch version was
    written as a TorchVersion, not a str, included)."""
    with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
        return torch.load(path, weights_only=True, mmap=True)


def _record(path: Path) -> dict | None:
    """The record of the checkpoint at ``path`` (None: none yet). It is kept in the checkpoint,
    written with its weights in one atomic write; the .json beside it is a copy to read (and
    the record of a checkpoint written before it held one)."""
    if not path.exists():
        return None
    saved = _load(path)
    if "record" in saved:
        return saved["record"]
    legacy = path.with_suffix(".json")
    return json.loads(legacy.read_text()) if legacy.exists() else None


def _save(model: torch.nn.Module, path: Path, record: Path, info: dict) -> None:
    weights = {k: v.cpu() for k, v in model.state_dict().items()}  # a file any machine reads
    saved = {"state_dict": weights, "arch": "alexnet", "num_classes": 10}
    # atomic: never half a file, and never weights without their record
    write_bytes(path, torch_bytes({**saved, "input_size": SIZE, "record": info}))
    write_text(record, json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=FASHION)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda: a teacher of its own")
    ap.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default=PRECISION,
        help="auto: bf16 where the device computes it natively, else fp32 (the grid's teacher"
        " was trained in fp32: --precision fp32 retrains that one on any CPU)",
    )
    args = ap.parse_args()
    PRECISION = args.precision
    log = lambda m: print(m, flush=True)  # noqa: E731
    print(fashion_teacher(args.data, args.seed, log, args.device))
