"""One cell of the accuracy study: a teacher, the layers replaced, a budget, a structure, a seed.

Fully connected cells train on cached features: the teacher's convolutional part is frozen, so its
output (the classifier's input) is computed once per image and the classifier head alone is
distilled. This is the same computation as compressing the whole model with the convolutions
frozen, at a fraction of the cost. The ``all`` cell (every conv and FC layer of VGG-16) distils the
whole network on images.

Reported per cell: compressed top-1 and top-5 of the final model (not the best epoch: picking
the best on the validation split would flatter it), top-1 agreement with the teacher, each
replaced layer's output SQNR in dB on the validation inputs, parameters, ratios, wall time.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from adntn_cli.data import Datasets, loaders, make_datasets
from adntn_cli.distill import finetune, layerwise_fit, recalibrate_batchnorm
from adntn_cli.errors import RecipeError
from adntn_cli.evaluate import accuracy, agreement, count_params
from adntn_cli.plan import apply_plan, plan
from adntn_cli.recipe import parse_recipe
from adntn_cli.recipe.schema import Finetune
from adntn_cli.tn import TNConfigError

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
    # the head is the teacher's, so a cell measures the replaced layers. The "all" cell trains
    # every parameter (all that is left besides the generators is BatchNorm and biases).
    train_replaced_only: bool = True


# The whole-model cell runs every image through VGG-16 at each step: a shorter schedule.
WHOLE_MODEL_SCHEDULE = Schedule(
    layerwise_steps=60, calib_batches=2, epochs=2, lr=2e-3, batch=64, train_replaced_only=False
)


def head_of(model: nn.Module) -> nn.Module:
    """The classifier as a model whose layer names match the full model's (``classifier.0``)."""
    return nn.Sequential(OrderedDict(classifier=copy.deepcopy(model.classifier)))


@torch.no_grad()
def features(model: nn.Module, data: Datasets, device: torch.device) -> Datasets:
    """The classifier's inputs for every image: flatten(avgpool(features(x)))."""

    def run(ds) -> torch.utils.data.TensorDataset:
        xs, ys = [], []
        for x, y in torch.utils.data.DataLoader(ds, batch_size=256):
            f = model.avgpool(model.features(x.to(device)))  # (B, C, 7, 7) or (B, C, 6, 6)
            xs.append(torch.flatten(f, 1).cpu())  # (B, C*h*w)
            ys.append(y)
        return torch.utils.data.TensorDataset(torch.cat(xs), torch.cat(ys))

    model.eval()
    return Datasets(run(data.train), run(data.val), data.num_classes, data.description)


def layer_recipe(cell: Cell, names: list[str]) -> dict:
    rules = [{"select": n, "structure": cell.structure, "target_ratio": cell.budget} for n in names]
    if "linear" in cell.variant.split("-") and cell.structure in ("ttn", "augttn", "mera"):
        for rule in rules:
            rule["activation"] = "identity"
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


def run_cell(
    cell: Cell,
    teacher: nn.Module,
    data: Datasets,
    schedule: Schedule,
    device: torch.device,
) -> dict:
    """Compress and distil ``teacher`` as ``cell`` says; returns the result row.

    ``data`` holds cached features for FC cells and images for the ``all`` cell. A budget the
    structure cannot reach gives a row with ``status: unreachable`` and the reason.
    """
    started = time.time()
    whole = cell.unit == "all"
    base = teacher if whole else head_of(teacher)
    recipe = parse_recipe(
        whole_vgg_recipe(cell) if whole else layer_recipe(cell, UNITS[cell.teacher][cell.unit])
    )
    row: dict = {"key": cell.key, **asdict(cell), "schedule": asdict(schedule)}
    student = copy.deepcopy(base)
    try:
        the_plan = plan(student, recipe, batch=schedule.batch)
    except (TNConfigError, RecipeError) as err:
        if "cannot reach" not in str(err):
            raise
        return {**row, "status": "unreachable", "reason": str(err)}
    torch.manual_seed(cell.seed)
    apply_plan(student, the_plan, generator=torch.Generator().manual_seed(cell.seed))
    student.to(device)
    names = [lp.layer for lp in the_plan.layers]
    if schedule.train_replaced_only and not whole:
        student.requires_grad_(False)
        for n in names:
            student.get_submodule(n).requires_grad_(True)

    train, val = loaders(data, schedule.batch, seed=cell.seed)
    calib_loader, _ = loaders(data, schedule.batch, seed=cell.seed + 1000)
    calib = [x.to(device) for x, _ in list(calib_loader)[: schedule.calib_batches]]
    t_fit = time.time()
    fit = layerwise_fit(
        base, student, names, calib, steps=schedule.layerwise_steps, lr=schedule.layerwise_lr,
        device=device,
    )  # fmt: skip
    recalibrate_batchnorm(student, calib, device)
    t_finetune = time.time()
    cfg = Finetune(
        epochs=schedule.epochs, lr=schedule.lr, temperature=schedule.temperature,
        kd_weight=schedule.kd_weight, checkpoint_every=10**9,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        finetune(base, student, train, val, cfg, checkpoints=Path(tmp), device=device)
    t_eval = time.time()
    acc = accuracy(student, val, device)
    val_inputs = [x.to(device) for x, _ in val]
    dense_total = count_params(teacher)
    saved = the_plan.totals["replaced_dense_params"] - the_plan.totals["replaced_tn_params"]
    return {
        **row,
        "status": "done",
        "top1": acc["top1"],
        "top5": acc["top5"],
        "loss": acc["loss"],
        "agreement": agreement(base, student, val, device),
        "sqnr_db": sqnr_db(base, student, names, val_inputs),
        "layerwise_rel_error": {n: v["final"] for n, v in fit.items()},
        "layers": [
            {
                k: lp.record[k]
                for k in ("layer", "legs", "bond_dim", "dense_params", "tn_params", "ratio")
            }
            for lp in the_plan.layers
        ],
        "replaced_ratio": the_plan.totals["replaced_ratio"],
        "model_params": dense_total - saved,
        "model_ratio": dense_total / (dense_total - saved),
        "val_images": acc["n"],
        "seconds": round(time.time() - started, 1),
        "seconds_layerwise": round(t_finetune - t_fit, 1),
        "seconds_finetune": round(t_eval - t_finetune, 1),
    }


def cell_data(teacher: nn.Module, unit: str, size: int, device: torch.device) -> Datasets:
    """Digits at ``size`` for the ``all`` cell, cached classifier inputs otherwise."""
    images = make_datasets("digits", size)
    return images if unit == "all" else features(teacher, images, device)
