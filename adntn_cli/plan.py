"""Resolving a recipe against a model: the per-layer plan, and applying it.

``plan(model, recipe)`` is pure: it builds every generator on the meta device (no memory, no
init) to report what would change. ``apply_plan(model, plan)`` builds all replacements first and
swaps them in only when every one of them was built, so a bad layer leaves the model untouched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import RecipeError
from .featuremaps import linear_input_maps
from .layers import GeneratedModule, from_module
from .models import ModelSource, compressible_layers, inspect_model, set_submodule
from .recipe import Candidate, Recipe, select_layers
from .recipe.schema import StructureFields
from .report import CompressionReport, LayerRecord, Totals
from .tn import StructureSpec, TNConfigError
from .tn.search import bond_dim_for_ratio

__all__ = [
    "LayerPlan",
    "Plan",
    "apply_plan",
    "compress_",
    "densify_",
    "model_source",
    "plan",
    "plan_from_specs",
    "spec_of",
]

BASELINES = ("tt", "lowrank")
DEFAULT_INPUT_LEGS = "flat"  # recipe key input_legs: map or flat (docs/recipes.md)
SPEC_FIELDS = ("structure", "bond_dim", "activation", "output_activation", "n_legs", "options")


@dataclass(frozen=True)
class LayerPlan:
    """One replaced layer: its name, generator spec and the plan's numbers (DESIGN.md §9 keys)."""

    layer: str
    kind: str
    spec: StructureSpec | dict[str, StructureSpec]  # one per generator when read from a file
    record: LayerRecord


@dataclass(frozen=True)
class Plan:
    layers: list[LayerPlan]
    totals: Totals
    memory_budget: int | None = None
    source: str = ""

    @property
    def report(self) -> CompressionReport:
        """The plan's part of a report: its layer records and totals (``plan --json``)."""
        return CompressionReport(layers=[lp.record for lp in self.layers], totals=self.totals)

    def to_dict(self) -> dict[str, Any]:
        return self.report.to_dict()


def _merge(defaults: StructureFields, rule: StructureFields) -> dict[str, Any]:
    out = defaults.model_dump(exclude_none=True)
    explicit = rule.model_dump(exclude_none=True, exclude={"select", "exclude"})
    if explicit.get("options") == {}:
        explicit.pop("options")
    if "bond_dim" in explicit:
        out.pop("target_ratio", None)
    if "target_ratio" in explicit:
        out.pop("bond_dim", None)
    out.update(explicit)
    default_structure = out.get("structure", "ttn")
    structure = out.setdefault("structure", "ttn")
    if structure in BASELINES:  # defaults' activations are for the ADNTN structures only
        for key in ("activation", "output_activation"):
            if key not in explicit:
                out.pop(key, None)
    if "options" not in explicit and structure != default_structure:
        out.pop("options", None)  # options are structure-specific
    return out


def _spec(fields: dict[str, Any]) -> tuple[StructureSpec, float | None]:
    kwargs = {k: fields[k] for k in SPEC_FIELDS if k in fields}
    for key in ("bond_dim", "activation"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    if "factors" in fields:
        f = fields["factors"]
        kwargs["factors"] = (tuple(f["out"]), tuple(f["in_"]))
    if "bond_dim" not in fields and "target_ratio" not in fields:
        kwargs["bond_dim"] = 8
    return StructureSpec(**kwargs), fields.get("target_ratio")


def model_source(
    model: str, recipe: Recipe, *, arch: str | None = None, num_classes: int | None = None
) -> ModelSource:
    """MODEL checked against the recipe, as ``plan`` and ``compress`` both see it: the
    architecture from ``arch`` or the recipe, the classes from ``num_classes``, else the
    recipe where it sets them (or for ``torchvision:NAME``), else the file's classifier."""
    said_by = "--num-classes"
    if num_classes is None and (
        "num_classes" in recipe.model.model_fields_set or model.startswith("torchvision:")
    ):
        num_classes, said_by = recipe.model.num_classes, "the recipe (model.num_classes)"
    return inspect_model(
        model, arch, num_classes, recipe_arch=recipe.model.arch, classes_said_by=said_by
    )


def _weights(module: nn.Module) -> list[torch.Tensor]:
    if isinstance(module, nn.MultiheadAttention):
        return [module.in_proj_weight, module.out_proj.weight]
    return [module.weight]


def _record(name: str, module: nn.Module, new: GeneratedModule, batch: int | None) -> LayerRecord:
    gens = list(new.generators().values())
    descs = [g.describe(batch) for g in gens]
    first = descs[0]
    dense = sum(d["dense_params"] for d in descs)
    tn = sum(d["tn_params"] for d in descs)
    # F.multi_head_attention_forward takes weights: attention always materialises
    attention = isinstance(module, nn.MultiheadAttention)
    return LayerRecord(
        layer=name,
        kind=type(module).__name__,
        structure=first["structure"],
        shape=list(gens[0].weight_shape),
        legs=first["legs"],
        bond_dim=first["bond_dim"],
        dense_params=dense,
        tn_params=tn,
        flops=sum(d["flops"] for d in descs),
        peak_bytes=max(d["peak_bytes"] for d in descs),
        passes=first["passes"],
        schedule="materialise" if attention else first.get("schedule", "materialise"),
        ratio=dense / tn,
    )


def plan(
    model: nn.Module,
    recipe: Recipe,
    *,
    source: str = "<recipe>",
    memory_budget: int | None = None,
    batch: int | None = None,
) -> Plan:
    """Resolve ``recipe`` on ``model`` (any device; meta is fastest) without changing it."""
    if memory_budget is None and recipe.limits.memory_gb is not None:
        memory_budget = int(recipe.limits.memory_gb * 2**30)
    batch = batch or recipe.data.batch_size
    layers = compressible_layers(model)
    modules = dict(layers)
    chosen = select_layers(
        recipe.layers, [Candidate(n, type(m).__name__) for n, m in layers], source
    )
    fields_of = {n: _merge(recipe.defaults, recipe.layers[i]) for n, i in chosen.items()}
    maps = _input_maps(model, recipe, modules, fields_of)
    out = []
    for name, rule_index in chosen.items():
        module = modules[name]
        where = f"{source}: layers[{rule_index}] ({name})"
        fields = fields_of[name]
        try:
            spec, target = _spec(fields)
            if name in maps:
                spec = dataclasses.replace(spec, in_map=maps[name])
            shape = tuple(_weights(module)[0].shape)
            if target is not None:  # attention: in_proj's bonds serve out_proj too, uniform
                fill = not isinstance(module, nn.MultiheadAttention)
                spec = bond_dim_for_ratio(
                    spec, shape, target, memory_budget=memory_budget, fill=fill
                )
        except TNConfigError as err:
            raise RecipeError(f"{where}: {err}") from None
        out.append(_layer_plan(name, module, spec, batch, memory_budget, where))
    return Plan(out, _totals(model, out), memory_budget, source)


def _input_maps(
    model: nn.Module,
    recipe: Recipe,
    modules: Mapping[str, nn.Module],
    fields_of: Mapping[str, Mapping[str, Any]],
) -> dict[str, tuple[int, int, int]]:
    """The feature maps of the chosen Linear layers whose legs follow their map (``input_legs:
    map``, explicit ``factors`` aside): one shape probe of the model, only where one is wanted."""
    wanted = [
        n
        for n, f in fields_of.items()
        if type(modules[n]) is nn.Linear
        and f.get("input_legs", DEFAULT_INPUT_LEGS) == "map"
        and "factors" not in f
    ]
    return linear_input_maps(model, recipe.model.input_size, wanted) if wanted else {}


def plan_from_specs(
    model: nn.Module,
    specs: Mapping[str, Mapping[str, StructureSpec]],
    *,
    source: str,
    memory_budget: int | None = None,
    batch: int | None = None,
) -> Plan:
    """The plan of generators given exactly (a compressed file's ``layers``): no selector, no
    bond-dimension search, no factorisation heuristic."""
    out = []
    for name, gens in specs.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise RecipeError(f"{source}: layer {name!r} is not in the architecture") from None
        out.append(_layer_plan(name, module, dict(gens), batch, memory_budget, f"{source}: {name}"))
    return Plan(out, _totals(model, out), memory_budget, source)


def _layer_plan(
    name: str,
    module: nn.Module,
    spec: StructureSpec | dict[str, StructureSpec],
    batch: int | None,
    memory_budget: int | None,
    where: str,
) -> LayerPlan:
    try:
        new = from_module(_meta_twin(module), spec, memory_budget=memory_budget)
    except (TNConfigError, KeyError) as err:
        raise RecipeError(f"{where}: {err}") from None
    return LayerPlan(name, type(module).__name__, spec, _record(name, module, new, batch))


def spec_of(entry: Mapping[str, Any], where: str) -> StructureSpec:
    """A spec from a recipe layer entry without ``select`` (validated by the recipe schema)."""
    from pydantic import ValidationError

    try:
        fields = StructureFields.model_validate(dict(entry)).model_dump(exclude_none=True)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(map(str, first["loc"]))
        raise RecipeError(f"{where}: {loc}: {first['msg']}") from None
    if "target_ratio" in fields:
        raise RecipeError(f"{where}: a stored spec has a bond_dim, not a target_ratio")
    fields.setdefault("structure", "ttn")
    return _spec(fields)[0]


def _meta_twin(module: nn.Module) -> nn.Module:
    """A shape-only twin of ``module`` on the meta device (no copy of its weights)."""
    if all(p.device.type == "meta" for p in module.parameters()):
        return module
    m, meta = module, torch.device("meta")
    if isinstance(m, nn.MultiheadAttention):
        return nn.MultiheadAttention(
            m.embed_dim,
            m.num_heads,
            dropout=m.dropout,
            bias=m.in_proj_bias is not None,
            add_bias_kv=m.bias_k is not None,
            add_zero_attn=m.add_zero_attn,
            kdim=m.kdim,
            vdim=m.vdim,
            batch_first=m.batch_first,
            device=meta,
        )
    if isinstance(m, nn.Conv2d):
        return nn.Conv2d(
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            m.stride,
            m.padding,
            m.dilation,
            m.groups,
            m.bias is not None,
            m.padding_mode,
            device=meta,
        )
    return nn.Linear(m.in_features, m.out_features, m.bias is not None, device=meta)


def _totals(model: nn.Module, layers: list[LayerPlan]) -> Totals:
    return Totals.of(sum(p.numel() for p in model.parameters()), [lp.record for lp in layers])


def apply_plan(
    model: nn.Module, plan_: Plan, *, generator: torch.Generator | None = None
) -> nn.Module:
    """Swap every planned layer for its generated twin, initialised from the dense weight's std."""
    built = {}
    for lp in plan_.layers:
        module = model.get_submodule(lp.layer)
        try:
            built[lp.layer] = from_module(
                module, lp.spec, memory_budget=plan_.memory_budget, generator=generator
            )
        except TNConfigError as err:
            raise RecipeError(f"{plan_.source}: {lp.layer}: {err}") from None
    for name, new in built.items():
        set_submodule(model, name, new)
    return model


def compress_(model: nn.Module, recipe: Recipe, **kwargs: Any) -> Plan:
    """Plan ``recipe`` on ``model`` and apply it in place; returns the plan."""
    p = plan(model, recipe, **kwargs)
    apply_plan(model, p)
    return p


def densify_(model: nn.Module) -> nn.Module:
    """The inverse of ``apply_plan``: every generated layer becomes its ordinary twin, in place."""
    generated = [(n, m) for n, m in model.named_modules() if isinstance(m, GeneratedModule)]
    for name, module in generated:
        set_submodule(model, name, module.to_dense())
    return model
