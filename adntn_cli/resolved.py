"""The recipe as a run resolved it: every selector an exact layer, every bond dimension fixed
(recipe.resolved.yaml and the recipe embedded in the compressed file), and data paths of a recipe
file read beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .plan import Plan
from .recipe import Recipe

__all__ = ["layer_entry", "relative_to_recipe", "resolved_recipe"]


def relative_to_recipe(spec: str, recipe_file: Path) -> str:
    """A data path written in a recipe is relative to the recipe file, not to the shell."""
    kind, sep, path = spec.partition(":")
    if sep and kind in ("imagefolder", "cifar10", "cifar100") and not Path(path).is_absolute():
        return f"{kind}:{(recipe_file.parent / path).resolve()}"
    return spec


def layer_entry(layer: str, s: Any) -> dict[str, Any]:
    """A recipe layer rule selecting exactly ``layer`` with spec ``s``."""
    entry: dict[str, Any] = {"select": layer, "structure": s.structure}
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
    if s.in_map is not None:
        entry["input_legs"] = "map"
    if s.options:
        entry["options"] = dict(s.options)
    return entry


def resolved_recipe(recipe: Recipe, p: Plan, *, data: str | None = None) -> dict[str, Any]:
    """The recipe with every selector resolved to exact layers and every bond dimension fixed,
    and ``data.train`` the data the run actually used (``data``: ``--data`` or the recipe's)."""
    out = recipe.model_dump(mode="json", by_alias=True, exclude_none=True)
    if data is not None:
        out.setdefault("data", {})["train"] = data
    out["layers"] = [layer_entry(lp.layer, lp.spec) for lp in p.layers]
    out.pop("defaults", None)
    return out
