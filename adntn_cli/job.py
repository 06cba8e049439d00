"""The compress job: ``CompressJob`` (everything a run depends on) and the stages that
``compress(job)`` composes.

    start -> load_inputs -> build_student -> fit_layers -> distil -> evaluate -> write

Each stage takes the job and the ``Run`` (what the stages so far made) and adds to it, so each
can be called, and tested, alone. Everything a user can get wrong is checked before the run
directory is touched: by ``CompressJob.create`` (flags and recipe) and ``load_inputs`` (model,
plan, data). Under torchrun every rank runs every stage up to ``distil``; rank 0 alone
evaluates and writes, and every rank returns rank 0's report once the files exist.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from . import __version__, distributed
from .atomic import write_text
from .checkpoints import (
    layerwise_checkpoint,
    load_checkpoint,
    restore,
    restore_layerwise,
    save_atomic,
)
from .data import Datasets, make_datasets, ordered_loader, train_loader
from .devices import resolve_device
from .distill import Callback, Event, finetune, layerwise_fit, recalibrate_batchnorm
from .errors import AdntnError, DataError, RunDirError
from .evaluate import compare
from .io import save_compressed
from .models import load_model, load_source
from .plan import Plan, apply_plan, model_source, plan
from .prefix import FrozenPrefix, PrefixCache, cache_frozen_prefix
from .recipe import Recipe, load_recipe
from .report import Accuracy, CompressionReport, Scores, metrics_csv, to_markdown
from .resolved import relative_to_recipe, resolved_recipe
from .rundir import check_run_dir, new_run_dir, prepare_run_dir
from .runtime import (
    PRECISIONS,
    MixedPrecision,
    compile_generators,
    resolve_precision,
    use_channels_last,
)

__all__ = ["CompressJob", "Run", "compress"]

CORES_DTYPES = {"float32": None, "bfloat16": torch.bfloat16}
log = logging.getLogger("adntn")


@dataclass(frozen=True)
class CompressJob:
    """Everything a compress run depends on, the command line and the recipe merged once.

    ``model`` is ``torchvision:NAME`` or a state-dict file (architecture from ``arch`` or the
    recipe's ``model.arch``); ``data`` is the data spec in use (``--data``, else the recipe's,
    read beside its file); ``compile_mode`` and ``precision`` are the recipe's unless a flag
    said otherwise; ``cores_dtype`` is how the cores are stored; ``prefix_cache`` is a folder
    keeping the frozen prefix's outputs between runs (prefixstore.py); ``stop_after`` ends the
    end-to-end step early, checkpointed (an interruption, for tests), and ``resume`` continues.
    """

    model: str
    recipe: Recipe
    source: str
    data: str
    out: Path | None = None
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    force: bool = False
    arch: str | None = None
    allow_pickle: bool = False
    allow_class_mismatch: bool = False
    allow_schedule_change: bool = False
    cores_dtype: str = "float32"
    compile_mode: str = "off"
    precision: str = "auto"
    channels_last: bool | None = None
    stop_after: int | None = None
    prefix_cache: Path | None = None
    argv: tuple[str, ...] = ()

    @classmethod
    def create(
        cls,
        model: str,
        recipe: str | Path,
        *,
        data: str | None = None,
        out: str | Path | None = None,
        compile_mode: str | None = None,
        precision: str | None = None,
        argv: list[str] | None = None,
        **flags: Any,
    ) -> CompressJob:
        """The job of ``adntn compress`` with these arguments; bad ones raise ``AdntnError``."""
        _check_flags(flags.get("cores_dtype", "float32"), compile_mode, precision)
        store = flags.get("prefix_cache")
        if store is not None:
            if Path(store).exists() and not Path(store).is_dir():
                raise AdntnError(
                    f"--prefix-cache {store}: not a folder (give a folder, new or not)"
                )
            flags["prefix_cache"] = Path(store).expanduser()
        seed = flags.get("seed", 0)
        if not 0 <= seed < 2**32:
            raise AdntnError(f"--seed {seed}: a seed is a whole number from 0 to {2**32 - 1}")
        rec, source = load_recipe(recipe)
        world = distributed.from_env().world
        if rec.data.batch_size % world:
            raise AdntnError(
                f"data.batch_size {rec.data.batch_size} does not split evenly over {world} "
                f"processes; use a multiple of {world} (it is the global batch)"
            )
        spec = data or rec.data.train
        if not spec:
            raise DataError(
                "no data: pass --data (e.g. digits, imagefolder:PATH) or set data.train"
            )
        if data is None and Path(recipe).is_file():
            spec = relative_to_recipe(spec, Path(recipe))
        return cls(
            model=model, recipe=rec, source=source, data=spec,
            out=Path(out) if out is not None else None,
            compile_mode=compile_mode or rec.distill.compile,
            precision=precision or rec.distill.precision,
            argv=tuple(argv if argv is not None else sys.argv), **flags,
        )  # fmt: skip


def _check_flags(cores_dtype: str, compile_mode: str | None, precision: str | None) -> None:
    if cores_dtype not in CORES_DTYPES:
        raise AdntnError(f"cores dtype {cores_dtype!r} is not offered; valid: float32, bfloat16")
    if compile_mode not in (None, "auto", "on", "off"):
        raise AdntnError(f"--compile {compile_mode!r}: valid: auto, on, off")
    if precision not in (None, *PRECISIONS):
        raise AdntnError(f"--precision {precision!r}: valid: {', '.join(PRECISIONS)}")


@dataclass
class Run:
    """What the stages of one job have made so far."""

    dist: distributed.Dist
    device: torch.device
    amp: MixedPrecision
    out: Path
    callback: Callback
    started: float = field(default_factory=time.time)
    teacher: nn.Module | None = None
    arch: str = ""
    num_classes: int = 0
    command: list[str] = field(default_factory=list)  # the command that started the run
    resumes: list[dict[str, Any]] | None = None
    origin: dict[str, Any] = field(default_factory=dict)  # run.json
    plan: Plan | None = None
    datasets: Datasets | None = None
    student: nn.Module | None = None
    channels_last: bool = False
    compiled: dict[str, str] = field(default_factory=dict)
    fit: dict[str, dict[str, float]] = field(default_factory=dict)
    recalibrated: bool = False
    prefix: FrozenPrefix | None = None
    prefix_cache: PrefixCache | None = None
    history: dict[str, Any] = field(default_factory=dict)

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    @property
    def names(self) -> list[str]:
        assert self.plan is not None, "load_inputs runs first"
        return [lp.layer for lp in self.plan.layers]


def _quiet(_: Event) -> None:
    pass


# -- the stages ------------------------------------------------------------------------------
def start(job: CompressJob, callback: Callback | None = None) -> Run:
    """Join the process group (torchrun), pick the device, name the run directory (rank 0's
    choice) and check that it may be used; nothing is written."""
    dist, dev = distributed.init(resolve_device(job.device))
    out = job.out if job.out is not None else new_run_dir(job.source)
    out = Path(distributed.broadcast(dist, str(out)))
    check_run_dir(out, resume=job.resume, force=job.force)
    cb = (callback or _quiet) if dist.main else _quiet  # rank 0 alone reports progress
    return Run(dist, dev, resolve_precision(job.precision, dev), out, cb)


def load_inputs(job: CompressJob, run: Run) -> None:
    """The teacher, the plan (pure) and the data: every input is checked; then the run
    directory is made (emptied with ``--force``)."""
    torch.manual_seed(job.seed)
    if job.allow_pickle and not job.model.startswith("torchvision:"):
        run.teacher, run.arch, run.num_classes = _unpickled_teacher(job, run.device)
    else:
        found = model_source(job.model, job.recipe, arch=job.arch)
        run.arch, run.num_classes = found.arch, found.num_classes
        run.teacher = load_source(found, run.device)  # checked once, read once
    run.teacher.eval()
    run.plan = plan(run.teacher, job.recipe, source=job.source, batch=job.recipe.data.batch_size)
    run.datasets = make_datasets(
        job.data, job.recipe.model.input_size, run.num_classes,
        preprocess=job.recipe.data.preprocessing(), holdout=job.recipe.data.holdout,
    )  # fmt: skip
    check_classes(run.datasets, run.num_classes, job.data, allowed=job.allow_class_mismatch)
    origin = run_origin(job, run.out)  # checked before anything in the folder changes
    run.command, run.resumes = origin["command"], origin.get("resumes")
    run.origin = origin
    if run.dist.main:
        prepare_run_dir(run.out, resume=job.resume, force=job.force)
        if not job.resume:  # a resume's record is written with its results (see write)
            write_text(run.out / RUN_FILE, json.dumps(origin, indent=1) + "\n")
    distributed.barrier(run.dist)


RUN_FILE = "run.json"  # the command that started a run and the schedule it ran with


def schedule_of(recipe: Recipe) -> dict[str, Any]:
    """What a resumed run must keep: the distillation schedule, the batch and preprocessing."""
    return {
        "distill": recipe.distill.model_dump(mode="json"),
        "data": recipe.data.model_dump(mode="json", exclude={"train", "workers"}),
    }


def _changes(old: Any, new: Any, where: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [*old, *(k for k in new if k not in old)]
        return [c for k in keys for c in _changes(old.get(k), new.get(k), f"{where}{k}.")]
    return [] if old == new else [f"{where.rstrip('.')}: {old} -> {new}"]


def run_origin(job: CompressJob, out: Path) -> dict[str, Any]:
    """run.json as it will be: a new run's command and schedule, or with ``--resume`` the
    original one with this resume appended. A schedule changed since is refused unless
    ``--allow-schedule-change`` (then said, and recorded)."""
    path, schedule = out / RUN_FILE, schedule_of(job.recipe)
    if not (job.resume and path.is_file()):
        return {"command": list(job.argv), "schedule": schedule}
    try:
        origin = json.loads(path.read_text())
        changed = _changes(origin["schedule"], schedule)
    except (ValueError, KeyError, TypeError):
        raise RunDirError(
            f"{path}: damaged (not adntn's run record); start over with --force"
        ) from None
    if changed and not job.allow_schedule_change:
        raise RunDirError(
            f"--resume with another schedule than the run's ({'; '.join(changed[:3])}): resume "
            "with the recipe it started with, pass --allow-schedule-change to continue under "
            "the new one (the learning-rate schedule is not replanned), or --force to start over"
        )
    if changed:
        log.warning("resuming under a changed schedule: %s", "; ".join(changed))
    resume = {"command": list(job.argv), "schedule_changed": changed}
    return {**origin, "schedule": schedule, "resumes": [*origin.get("resumes", []), resume]}


def check_classes(data: Datasets, num_classes: int, spec: str, *, allowed: bool) -> None:
    """Refuse data whose class count is not the classifier's, unless the user says it is meant."""
    if data.num_classes != num_classes and not allowed:
        raise DataError(
            f"{spec} has {data.num_classes} classes, the model's classifier {num_classes}: use "
            f"data of {num_classes} classes, or pass --allow-class-mismatch if this is meant "
            f"(labels must be below {num_classes})"
        )


def _unpickled_teacher(job: CompressJob, device: torch.device) -> tuple[nn.Module, str, int]:
    """``--allow-pickle``: the model as unpickled; its architecture from ``--arch``, the recipe
    or its class, its classes from its classifier where the architecture is known."""
    from .fit import classes_in
    from .models import known_archs

    arch = job.arch or job.recipe.model.arch
    teacher = load_model(job.model, arch, allow_pickle=True, device=device)
    arch = arch or type(teacher).__name__.lower()
    shapes = {k: tuple(v.shape) for k, v in teacher.state_dict().items()}
    found = classes_in(shapes, arch) if arch in known_archs() else None
    return teacher, arch, found or job.recipe.model.num_classes


def build_student(job: CompressJob, run: Run) -> None:
    """A copy of the teacher with the plan applied, on the device, frozen as ``distill.train``
    says (``freeze``); channels-last and torch.compile as asked."""
    student = copy.deepcopy(run.teacher)
    apply_plan(student, run.plan, generator=torch.Generator().manual_seed(job.seed))
    student.to(run.device)
    freeze(student, run.names, job.recipe.distill.train)
    run.channels_last = use_channels_last([run.teacher, student], run.device, job.channels_last)
    run.compiled = compile_generators(student, job.compile_mode)
    run.student = student


def freeze(student: nn.Module, replaced: list[str], train: str) -> None:
    """``distill.train``: ``all`` trains every parameter; ``replaced`` the replaced layers only;
    ``head`` the replaced layers and every parameter registered after the first of them (in
    a sequential model: the layers after it, such as the classifier), the ones before frozen."""
    if train == "all":
        return
    student.requires_grad_(False)
    for name in replaced:
        student.get_submodule(name).requires_grad_(True)
    if train == "head":
        first = {id(p) for name in replaced for p in student.get_submodule(name).parameters()}
        after = False
        for p in student.parameters():
            after = after or id(p) in first
            p.requires_grad_(after)


def fit_layers(job: CompressJob, run: Run) -> None:
    """The layer-wise fit and BatchNorm recalibration, checkpointed (or restored on resume)."""
    stage = run.checkpoints / "layerwise.pt"
    if job.resume and stage.exists():
        run.fit, run.recalibrated = restore_layerwise(stage, run.student, run.device)
        run.callback(
            Event("layerwise", 1, 1, message=f"resumed after the layer-wise fit ({stage})")
        )
        return
    lw = job.recipe.distill.layerwise
    calib_loader = train_loader(run.datasets.train, job.recipe.data.batch_size, seed=job.seed + 1)
    calib = [x for _, (x, _) in zip(range(lw.batches), calib_loader, strict=False)]
    run.fit = layerwise_fit(
        run.teacher, run.student, run.names, calib, steps=lw.steps, lr=lw.lr, device=run.device,
        callback=run.callback, precision=run.amp, start=lw.start,
    )  # fmt: skip
    run.recalibrated = recalibrate_batchnorm(run.student, calib, run.device)
    if run.dist.main:
        save_atomic(layerwise_checkpoint(run.student, run.fit, run.recalibrated), stage)


def distil(job: CompressJob, run: Run) -> None:
    """End-to-end distillation (checkpointed, resumable), on the cached frozen prefix where it
    applies; then the best checkpoint is restored."""
    d, cfg = job.recipe.distill, job.recipe.distill.finetune
    run.history = {"history": [], "step": 0, "total": 0, "interrupted": False}
    if cfg.steps == 0 or cfg.epochs == 0:
        run.prefix = FrozenPrefix(False, "no end-to-end step (distill.finetune: 0 steps)")
        return
    cache, run.prefix = cache_frozen_prefix(
        run.student, run.teacher, run.datasets, run.names, train=d.train,
        mode=d.cache_frozen_prefix, device=run.device, precision=run.amp,
        batch=job.recipe.data.batch_size, store=job.prefix_cache,
    )  # fmt: skip
    run.prefix_cache = cache
    teacher = cache.teacher_head if cache else run.teacher  # what reads the batches' x
    if cache:
        train_set, select_set, forward = cache.train, cache.select, cache.head
    else:
        train_set, select_set, forward = run.datasets.train, run.datasets.select, None
    dist, data = run.dist, job.recipe.data
    common = {"workers": data.workers, "pin_memory": run.device.type == "cuda"}
    train = train_loader(
        train_set, data.batch_size // dist.world, seed=job.seed, rank=dist.rank,
        world=dist.world, **common,
    )  # fmt: skip
    select = ordered_loader(select_set, data.batch_size, **common) if select_set else None
    run.history = finetune(
        teacher, run.student, train, select, cfg, checkpoints=run.checkpoints,
        device=run.device, resume=job.resume, stop_after=job.stop_after, callback=run.callback,
        dist=dist, precision=run.amp, forward=forward,
    )  # fmt: skip
    best = run.checkpoints / "best.pt"
    if not run.history["interrupted"] and best.exists():
        restore(run.student, load_checkpoint(best, run.device)["model"], best)


def evaluate(job: CompressJob, run: Run) -> Accuracy:
    """Dense and compressed top-1/top-5 on the validation split, and their agreement: the one
    stage that reads it (the checkpoint was chosen on the held-out ``select`` split). On a
    cached frozen prefix the prefix runs once per image (or not at all: ``--prefix-cache``)
    and the two heads on its outputs: what the whole models compute."""
    run.callback(Event("eval", 0, 1, message="evaluating the dense and the compressed model"))
    a, b, items = run.teacher, run.student, run.datasets.val
    if (cache := run.prefix_cache) is not None:
        cached, how = cache.validation(job.prefix_cache)
        run.prefix = dataclasses.replace(run.prefix, validation=how)
        if cached is not None:
            a, b, items = cache.teacher_head, cache.head, cached
    val = ordered_loader(items, job.recipe.data.batch_size)
    dense, comp, agree = compare(a, b, val, run.device, run.amp)
    return Accuracy(Scores.of(dense), Scores.of(comp), agree, comp["n"])


def selection(run: Run) -> dict[str, Any] | None:
    """report.json's ``selection``: where the checkpoint was chosen, or None (the final model)."""
    select = run.datasets.select
    if select is None:
        return None
    return {
        "split": "select",
        "images": len(select),
        "best_step": run.history.get("best_step"),
        "top1": run.history.get("best_top1"),
    }


def write(job: CompressJob, run: Run, acc: Accuracy) -> CompressionReport:
    """model.safetensors, report.json, report.md, metrics.csv and recipe.resolved.yaml (rank 0)."""
    resolved = resolved_recipe(job.recipe, run.plan, data=job.data)
    model_path = run.out / "model.safetensors"
    pre, names = run.datasets.preprocess, run.datasets.classes
    size = save_compressed(
        run.student, model_path, arch=run.arch, num_classes=run.num_classes,
        recipe=resolved, dtype=CORES_DTYPES[job.cores_dtype],
        preprocess=pre.at(job.recipe.model.input_size).to_dict() if pre else None,
        classes=names if names and len(names) == run.num_classes else None,
    )  # fmt: skip
    report = CompressionReport(
        recipe=job.source,
        model=job.model,
        arch=run.arch,
        data=job.data,
        data_description=run.datasets.description,
        seed=job.seed,
        device=str(run.device),
        precision=run.amp.name,
        channels_last=run.channels_last,
        processes=run.dist.world,
        command=run.command,
        resumes=run.resumes,
        versions=_versions(),
        git_commit=_git_commit(),
        layers=[lp.record for lp in run.plan.layers],
        totals=run.plan.totals,
        accuracy=acc,
        selection=selection(run),
        layerwise=run.fit,
        compiled=run.compiled,
        frozen_prefix=dataclasses.asdict(run.prefix) if run.prefix else None,
        batchnorm_recalibrated=run.recalibrated,
        finetune={k: run.history[k] for k in ("step", "total", "interrupted")},
        files={"model": str(model_path), "model_bytes": size},
        seconds=round(time.time() - run.started, 1),
        run_dir=str(run.out),
    )
    write_text(run.out / RUN_FILE, json.dumps(run.origin, indent=1) + "\n")
    write_text(run.out / "report.json", json.dumps(report.to_dict(), indent=1) + "\n")
    write_text(run.out / "report.md", to_markdown(report))
    write_text(run.out / "metrics.csv", metrics_csv(run.history["history"]))
    write_text(run.out / "recipe.resolved.yaml", yaml.safe_dump(resolved, sort_keys=False))
    return report


def compress(job: CompressJob, callback: Callback | None = None) -> CompressionReport:
    """Run ``job`` through every stage; returns the report written to its run directory.

    Under torchrun every rank returns rank 0's report once the run directory is written; the
    process group stays joined, and a process that ends then should leave through
    ``distributed.finish()`` (the CLI does).
    """
    run = start(job, callback)
    load_inputs(job, run)
    build_student(job, run)
    fit_layers(job, run)
    distil(job, run)
    report = write(job, run, evaluate(job, run)) if run.dist.main else None
    report = distributed.broadcast(run.dist, report)  # after rank 0 has written
    return report


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        return done.stdout.strip() or None if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    import torchvision

    return {
        "adntn": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }
