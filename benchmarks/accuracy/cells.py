"""One cell of the accuracy study: a teacher, the layers replaced, a budget, a structure, a seed.

A cell is a ``CompressJob`` (the recipe a user would write for it, the teacher's state-dict file,
the data and the seed) plus what the study varies; it runs through ``adntn_cli.job.compress``,
the function ``adntn compress`` runs, and is measured on the model file that run wrote. So a
cell's numbers are what a user gets (tests/test_study.py checks that a cell and ``adntn
compress`` with the same recipe write the same file, byte for byte).

Fully connected cells train the replaced layers only (``distill.train: replaced``) on the cached
frozen prefix (``distill.cache_frozen_prefix: auto``): the convolutional part runs once per
image, as a user's FC-only run does. The ``all`` cell (every conv and FC layer of VGG-16) trains
every parameter on images.

Reported per cell: compressed top-1 and top-5 of the model ``adntn compress`` writes (the best
checkpoint by validation top-1, as the command restores it), top-1 agreement with the teacher,
each replaced layer's output SQNR in dB on the validation inputs, parameters, ratios, wall time.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.utils.data import Subset

from adntn_cli.data import make_datasets, ordered_loader
from adntn_cli.errors import RecipeError
from adntn_cli.io import load_compressed
from adntn_cli.job import CompressJob, compress

# Layer names per teacher; "fc" is every fully connected layer with >= 1M parameters.
UNITS = {
    "alexnet": {"fc6": ["classifier.1"], "fc7": ["classifier.4"]},
    "vgg16_bn": {"fc6": ["classifier.0"], "fc7": ["classifier.3"]},
}
for _u in UNITS.values():
    _u["fc"] = _u["fc6"] + _u["fc7"]
MEMORY_GB = 16


@dataclass(frozen=True)
class Cell:
    teacher: str  # alexnet | vgg16_bn
    unit: str  # fc6 | fc7 | fc | all
    budget: int  # target "x fewer parameters" per replaced layer (unit "all": whole model)
    structure: str
    seed: int
    variant: str = ""  # "" (the grid's settings) or a name in VARIANTS

    @property
    def key(self) -> str:
        key = f"{self.teacher}/{self.unit}/{self.budget}/{self.structure}/s{self.seed}"
        return f"{key}/{self.variant}" if self.variant else key

    @property
    def group(self) -> str:
        """The key without the seed: the cells whose numbers are averaged together."""
        return f"{self.teacher}/{self.unit}/{self.budget}/{self.structure}/{self.variant}"


@dataclass(frozen=True)
class Schedule:
    """Distillation settings shared by every cell of a grid (stated in the results)."""

    layerwise_steps: int = 100
    layerwise_lr: float = 1e-2
    calib_batches: int = 4
    epochs: float = 4
    lr: float = 3e-3
    batch: int = 128
    temperature: float = 4.0
    kd_weight: float = 0.9
    # FC cells train the replaced layers only (generator cores, output scale, bias): the rest of
    # the model is the teacher's, so a cell measures the replaced layers. The "all" cell trains
    # every parameter (all that is left besides the generators is BatchNorm and biases).
    train_replaced_only: bool = True


# The whole-model cell runs every image through VGG-16 at each step: a shorter schedule.
WHOLE_MODEL_SCHEDULE = Schedule(
    layerwise_steps=60, calib_batches=2, epochs=2, lr=2e-3, batch=64, train_replaced_only=False
)


# Tries of a structure's own settings (layer-rule fields; ``options`` merge), by the structures
# that have them: the paper's lateral mixing tensors for the trees, the activation between
# levels (tanh by default) for the trees with one.
TREES = ("ttn", "augttn", "mera")
STRUCTURE_TRIES: dict[str, dict[str, dict]] = {
    "mixing": {s: {"options": {"mixing": "siblings"}} for s in ("ttn", "augttn")},
    **{f"act-{a}": {s: {"activation": a} for s in TREES} for a in ("gelu", "relu", "identity")},
    # the number of physical legs (adntn picks legs near 10: 8 on AlexNet's FC layers); 12 gives
    # the tree 4 levels over 2x2 leaves, 6 gives it 3 levels over 4x4 leaves
    **{f"legs-{n}": {s: {"n_legs": n} for s in ("ttn", "tt")} for n in (6, 12)},
    # FC6's legs follow the 256 x 6 x 6 map it reads (input_legs: map; FC7 reads a vector and
    # keeps its legs): channel digits first, the map's rows and columns as the last two legs
    "map-legs": {s: {"input_legs": "map"} for s in ("ttn", "tt", "augttn", "mera")},
    # augttn's disentanglers in their separable form, U^o on a pair's output factors and U^i on
    # its input factors: (o_a o_b)^2 + (i_a i_b)^2 parameters in place of (d_a d_b)^2. At
    # 20,000x the full ones are 1,424 of FC6's 1,881 parameters; separable ones on legs of at
    # most 4 are 236 of 1,870 (FC6, bonds [8, 6, 5, 4]) and 160 of 833 (FC7, [6, 4, 4, 3]).
    # (The separable form's own legs, up to 16, would give them 1,296 and 672.)
    "sep-dis": {"augttn": {"options": {"disentangler": "separable", "leg_dim": 4}}},
    # the same with the tree's root about twice the level below it, as root-bonds (below) does
    # for ttn: FC6 [14, 5, 4, 4] and FC7 [12, 4, 3, 3] in place of [8, 6, 5, 4] and [6, 4, 4, 3]
    "sep-root": {
        "augttn": {
            "options": {"disentangler": "separable", "leg_dim": 4},
            "bond_dim": {20000: {"classifier.1": [14, 5, 4, 4], "classifier.4": [12, 4, 3, 3]}},
        }
    },
    # the tree's bonds root-heavy, given per budget and layer in place of the target (adntn's
    # fill gives FC6 [18, 18, 12] and FC7 [13, 12, 13] at 2,000x, [7, 6, 6] and [5, 5, 4] at
    # 20,000x, [6, 3, 3] and [2, 2, 2] at 77,000x, root first): a root bond about twice the
    # level below it (the rank across the middle cut: tt's middle bond is 6 at 20,000x) for
    # smaller lower bonds; at 77,000x FC6's root at its cap (9: the 3 x 3 bonds below it), and
    # FC7 as adntn has it (a larger root leaves bonds of 1 below)
    "root-bonds": {
        "ttn": {
            "bond_dim": {
                2000: {"classifier.1": [31, 14, 12], "classifier.4": [20, 10, 13]},
                20000: {"classifier.1": [14, 5, 5], "classifier.4": [12, 4, 3]},
                77000: {"classifier.1": [9, 3, 2], "classifier.4": [2, 2, 2]},
            }
        }
    },
    # the chain's counterpart: FC6's middle bond (the same cut as the tree's root) raised from 6
    # to 14, the others lowered to fit; FC7 keeps adntn's bonds, as a middle bond above 4 there
    # leaves its neighbours at 2 (the chain pays d * chi * M for it on each side)
    "mid-bonds": {
        "tt": {
            "bond_dim": {
                20000: {"classifier.1": [3, 5, 5, 14, 5, 5, 3], "classifier.4": [3, 3, 4, 4, 3, 3]}
            }
        }
    },
}


def applies(variant: str, structure: str, budget: int | None = None) -> bool:
    """Whether every structure try in ``variant`` (tries joined by +) has ``structure`` and,
    for a try that gives bonds per budget, ``budget`` (when given)."""
    for v in variant.split("+"):
        fields = STRUCTURE_TRIES.get(v, {structure: {}}).get(structure)
        if fields is None:
            return False
        bonds = fields.get("bond_dim")
        if budget is not None and bonds is not None and budget not in bonds:
            return False
    return True


def layer_recipe(cell: Cell, names: list[str]) -> dict:
    rules = [{"select": n, "structure": cell.structure, "target_ratio": cell.budget} for n in names]
    if cell.variant in ("linear", "long-linear") and cell.structure in ("ttn", "augttn", "mera"):
        for rule in rules:
            rule["activation"] = "identity"
    for v in cell.variant.split("+"):
        if v not in STRUCTURE_TRIES:
            continue
        if not applies(v, cell.structure):
            has = ", ".join(STRUCTURE_TRIES[v])
            raise ValueError(f"try {v!r} is for {has}, not {cell.structure}")
        for rule in rules:
            for key, value in STRUCTURE_TRIES[v][cell.structure].items():
                if key == "options":
                    rule.setdefault("options", {}).update(value)
                elif key == "bond_dim":  # per budget and layer, in place of the target
                    if cell.budget not in value:
                        raise ValueError(f"try {v!r} has bonds for {list(value)}x only")
                    layers = value[cell.budget]
                    if rule["select"] not in layers:
                        raise ValueError(f"try {v!r} has bonds for {', '.join(layers)} only")
                    rule.pop("target_ratio")
                    rule[key] = layers[rule["select"]]
                else:
                    rule[key] = value
    return {"version": 1, "layers": rules, "limits": {"memory_gb": MEMORY_GB}}


def schedule_for(cell: Cell) -> Schedule:
    """The grid's schedule, or the variant's: ``long`` fits 4x longer layer-wise and distils
    4x (FC) or 3x (whole model) longer; ``linear`` keeps the schedule and drops the
    activations (a multilinear tree, for the ablation)."""
    base = WHOLE_MODEL_SCHEDULE if cell.unit == "all" else Schedule()
    if "long" not in cell.variant.split("-"):
        return base
    factor = 3 if cell.unit == "all" else 4
    return replace(base, layerwise_steps=4 * base.layerwise_steps, epochs=factor * base.epochs)


def whole_vgg_recipe(cell: Cell) -> dict:
    """Every conv and FC layer of vgg16_bn; per-layer targets chosen so the whole model reaches
    at least ``cell.budget`` x fewer parameters (checked by the plan, recorded in the row)."""
    fc = {"structure": cell.structure, "target_ratio": 2000}
    convs = [
        ("features.0", 2), ("features.3", 4), ("features.7", 6), ("features.10", 8),
        ("features.14", 12), ("features.17", 16), ("features.20", 16),
        ("features.24", 24), ("features.27", 32), ("features.30", 32),
        ("features.34", 32), ("features.37", 32), ("features.40", 32),
    ]  # fmt: skip
    rules = [{"select": n, "structure": cell.structure, "target_ratio": r} for n, r in convs]
    rules += [{"select": n, **fc} for n in ("classifier.0", "classifier.3")]
    rules.append({"select": "classifier.6", "structure": cell.structure, "target_ratio": 20})
    return {"version": 1, "layers": rules, "limits": {"memory_gb": MEMORY_GB}}


@torch.no_grad()
def sqnr_db(teacher: nn.Module, student: nn.Module, names: list[str], batches) -> dict[str, float]:
    """Per replaced layer: 10 log10(|y|^2 / |y - y_hat|^2) on the teacher's own layer inputs."""
    teacher.eval()
    student.eval()
    sig = dict.fromkeys(names, 0.0)
    err = dict.fromkeys(names, 0.0)
    captured: dict[str, tuple] = {}
    hooks = [
        teacher.get_submodule(n).register_forward_hook(
            lambda _m, i, o, n=n: captured.__setitem__(n, (i[0], o))
        )
        for n in names
    ]
    try:
        for x in batches:
            teacher(x)
            for n in names:
                inp, out = captured[n]
                sig[n] += float(out.double().pow(2).sum())
                err[n] += float((student.get_submodule(n)(inp) - out).double().pow(2).sum())
    finally:
        for h in hooks:
            h.remove()
    return {n: 10 * math.log10(sig[n] / max(err[n], 1e-300)) for n in names}


# The tries of the Fashion-MNIST study (variants of its cells): each is one setting of the
# cell's ``distill:`` (or ``data:``) section changed from adntn's defaults; "" is no section.
TUNING: dict[str, dict] = {
    "lw-steps-1000": {"layerwise": {"steps": 1000}},
    "lw-steps-0": {"layerwise": {"steps": 0}},
    "lw-lr-3e-3": {"layerwise": {"lr": 3e-3}},
    "lw-batches-32": {"layerwise": {"batches": 32}},
    "lw-start-svd": {"layerwise": {"start": "svd"}},
    "epochs-4": {"finetune": {"epochs": 4}},
    "lr-3e-3": {"finetune": {"lr": 3e-3}},
    "lr-3e-4": {"finetune": {"lr": 3e-4}},
    "warmup-0": {"finetune": {"warmup": 0.0}},
    "kd-1": {"finetune": {"kd_weight": 1.0}},
    "kd-0.5": {"finetune": {"kd_weight": 0.5}},  # the default before 0.25
    "kd-0.25": {"finetune": {"kd_weight": 0.25}},  # the default before 0.1
    "kd-0.1": {"finetune": {"kd_weight": 0.1}},
    "kd-0": {"finetune": {"kd_weight": 0.0}},  # the labels alone: no distillation term
    "kd-0.9": {"finetune": {"kd_weight": 0.9}},  # the default before 0.5, 0.25 and 0.1
    "T-1": {"finetune": {"temperature": 1.0}},
    "T-8": {"finetune": {"temperature": 8.0}},
    "wd-1e-4": {"finetune": {"weight_decay": 1e-4}},
    "dropout-off": {"finetune": {"dropout": False}},  # measured when dropout was on by default
    "dropout-on": {"finetune": {"dropout": True}},
    "feature-1": {"finetune": {"feature_weight": 1.0}},
    "feature-0.1": {"finetune": {"feature_weight": 0.1}},
    "train-all": {"train": "all"},
    "train-head": {"train": "head"},
    "steps-6000": {"finetune": {"steps": 6000}},
    # the defaults before 7 passes at lr 3e-3 and kd_weight 0.5 (the first 3-seed grid's)
    "old-defaults": {"finetune": {"epochs": 2.0, "lr": 1e-3, "kd_weight": 0.9}},
    "epochs-2": {"finetune": {"epochs": 2.0}},  # the old length at the new lr
    "lr-1e-3": {"finetune": {"lr": 1e-3}},  # the old lr
    "lr-1e-2": {"finetune": {"lr": 1e-2}},
    "epochs-14": {"finetune": {"epochs": 14.0}},  # twice the default length
    # augmentation of the training images (the fashion-mnist source's default is none); it
    # turns the prefix cache off, so these cells run the convolutions at every step
    "augment-flip": {"data": {"augment": "flip"}},
    "augment-imagenet": {"data": {"augment": "imagenet", "crop_scale": [0.5, 1.0]}},
}


def cell_recipe(cell: Cell, schedule: Schedule | None) -> dict:
    """The recipe a user would write for ``cell``: its layers, the schedule, the data batch.
    Without a schedule it has no ``distill:`` and no ``data:`` section (adntn's defaults), or
    only the one setting of its ``TUNING`` variant."""
    names = None if cell.unit == "all" else UNITS[cell.teacher][cell.unit]
    recipe = whole_vgg_recipe(cell) if names is None else layer_recipe(cell, names)
    recipe["model"] = {"arch": cell.teacher, "num_classes": 10, "input_size": cell_size(cell)}
    if schedule is None:
        for t in (TUNING[v] for v in cell.variant.split("+") if v in TUNING):
            for section, keys in t.items():
                if section == "data":  # a data: setting (augmentation), not a distill: one
                    recipe.setdefault("data", {}).update(keys)
                elif isinstance(keys, dict):
                    recipe.setdefault("distill", {}).setdefault(section, {}).update(keys)
                else:
                    recipe.setdefault("distill", {})[section] = keys
        return recipe
    replaced_only = schedule.train_replaced_only and names is not None
    recipe["distill"] = {
        "layerwise": {"steps": schedule.layerwise_steps, "lr": schedule.layerwise_lr,
                      "batches": schedule.calib_batches},
        "finetune": {"epochs": schedule.epochs, "lr": schedule.lr,
                     "temperature": schedule.temperature, "kd_weight": schedule.kd_weight},
        "train": "replaced" if replaced_only else "all",
    }  # fmt: skip
    recipe["data"] = {"batch_size": schedule.batch}
    return recipe


SIZES = {
    "cpu": {"alexnet": 64, "vgg16_bn": 32},
    "gpu": {"alexnet": 224, "vgg16_bn": 224},
    "fashion": {"alexnet": 224},
}
GRID = {"name": "cpu"}  # which grid's input sizes cells use (study.py sets it)


def cell_size(cell: Cell) -> int:
    return SIZES[GRID["name"]][cell.teacher]


@dataclass(frozen=True)
class Runner:
    """How cells run: the device, the data, and the ``adntn compress`` flags besides the
    recipe (``--precision``, ``--prefix-cache``); ``sqnr_images`` validation images measure
    each replaced layer's SQNR. With ``runs``, a cell runs in a folder of its own there and a
    cell that was stopped (a session's end, a kill) resumes where its last checkpoint left it
    (``adntn compress --resume``); without, in a temporary folder."""

    device: str = "cpu"
    data: str = "digits"
    precision: str | None = None
    prefix_cache: Path | None = None
    sqnr_images: int | None = None
    runs: Path | None = None


def run_cell(
    cell: Cell, teacher_file: Path, schedule: Schedule | None, runner: Runner | str = "cpu",
    data: str | None = None,
) -> dict:  # fmt: skip
    """Compress the teacher in ``teacher_file`` as ``cell`` says, through the job ``adntn
    compress`` runs; returns the result row. A budget the structure cannot reach gives a row
    with ``status: unreachable`` and the reason. ``runner`` may be a device name alone."""
    r = Runner(runner) if isinstance(runner, str) else runner
    r = replace(r, data=data) if data is not None else r
    row: dict = {
        "key": cell.key,
        **asdict(cell),
        "schedule": asdict(schedule) if schedule else None,
    }
    with _cell_folder(cell, r.runs) as (folder, attempts):
        recipe = folder / "cell.yaml"
        recipe.write_text(yaml.safe_dump(cell_recipe(cell, schedule), sort_keys=False))
        row["recipe"] = yaml.safe_load(recipe.read_text())
        job = CompressJob.create(
            str(teacher_file), recipe, data=r.data, out=folder / "run", device=r.device,
            seed=cell.seed, argv=["study", cell.key], precision=r.precision,
            prefix_cache=r.prefix_cache, resume=len(attempts) > 1,
        )  # fmt: skip
        row["distill"] = job.recipe.distill.model_dump(mode="json")  # defaults as they were
        try:
            report = compress(job)
        except RecipeError as err:
            if "cannot reach" not in str(err):
                raise
            return {**row, "status": "unreachable", "reason": str(err)}
        sqnr = _sqnr(cell, teacher_file, report, r)
    return {**row, **_measured(report), **_timing(attempts, report.seconds), "sqnr_db": sqnr}


ATTEMPTS = "attempts.json"  # a resumable cell's starts, and how far each earlier one got


@contextmanager
def _cell_folder(cell: Cell, runs: Path | None) -> Iterator[tuple[Path, list[dict]]]:
    """The folder a cell runs in, and its attempts so far, this one last. In ``runs``: kept
    while the cell is unfinished (an exception leaves it for the next attempt to resume) and
    removed once its row is made; an earlier attempt ``until`` its last write there."""
    if runs is None:
        with tempfile.TemporaryDirectory() as tmp:
            yield Path(tmp), [{"started": time.time()}]
        return
    folder = runs / re.sub(r"[^\w.+-]", "_", cell.key)  # alexnet/fc/2000/ttn/s0 -> alexnet_fc_..
    log = folder / ATTEMPTS
    attempts = json.loads(log.read_text()) if log.is_file() else []
    if attempts and (folder / "run").is_dir():
        written = [f.stat().st_mtime for f in (folder / "run").rglob("*") if f.is_file()]
        attempts[-1]["until"] = max(written, default=attempts[-1]["started"])
    elif attempts:  # stopped before its run folder existed: start over
        attempts = []
    attempts.append({"started": time.time()})
    folder.mkdir(parents=True, exist_ok=True)
    log.write_text(json.dumps(attempts, indent=1) + "\n")
    yield folder, attempts
    shutil.rmtree(folder)


def _timing(attempts: list[dict], seconds: float) -> dict:
    """A resumed cell's time: each earlier attempt up to its last write (work after that was
    lost and done again), and this one's; one attempt's is the run's own."""
    earlier = sum(a["until"] - a["started"] for a in attempts[:-1])
    return {"seconds": round(earlier + seconds, 1), "attempts": len(attempts)}


def _sqnr(cell: Cell, teacher_file: Path, report, r: Runner) -> dict[str, float]:
    model = load_compressed(Path(report.run_dir) / "model.safetensors", r.device)
    teacher = _teacher(cell, teacher_file, r.device)
    val = make_datasets(r.data, cell_size(cell), train=False).val
    if r.sqnr_images is not None:
        val = Subset(val, range(min(r.sqnr_images, len(val))))
    names = [rec.layer for rec in report.layers]
    return sqnr_db(teacher, model, names, [x.to(r.device) for x, _ in ordered_loader(val, 128)])


def _measured(report) -> dict:
    acc, t = report.accuracy, report.totals
    return {
        "status": "done",
        "top1": acc.compressed.top1,
        "top5": acc.compressed.top5,
        "loss": acc.compressed.loss,
        "dense_top1_run": acc.dense.top1,  # the teacher as this run measured it (its precision)
        "agreement": acc.agreement,
        "selection": report.selection,
        "layerwise_rel_error": {n: v["final"] for n, v in report.layerwise.items()},
        # the error before the fit, and which start was kept (with ``layerwise.start: svd``)
        "layerwise": report.layerwise,
        "layers": [
            {k: r[k] for k in ("layer", "legs", "bond_dim", "dense_params", "tn_params", "ratio")}
            for r in report.layers
        ],
        "replaced_ratio": t.replaced_ratio,
        "model_params": t.compressed_params,
        "model_ratio": t.ratio,
        "frozen_prefix": report.frozen_prefix,
        "finetune": report.finetune,
        "precision": report.precision,
        "val_images": acc.val_images,
    }


def _teacher(cell: Cell, teacher_file: Path, device: str) -> nn.Module:
    from adntn_cli.models import load_model

    return load_model(str(teacher_file), cell.teacher, 10, device=torch.device(device)).eval()
