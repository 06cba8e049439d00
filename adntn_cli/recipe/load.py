"""Reading recipes: YAML at the edge, the schema inside, errors that name file and YAML path."""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import RecipeError, brief
from .schema import Recipe

__all__ = ["json_schema", "load_recipe", "parse_recipe", "shipped_recipes"]

log = logging.getLogger("adntn")  # the CLI prints its records as ``note: ...``
MAX_RECIPE_BYTES = 1 * 2**20  # the shipped recipes are under 4 KiB
MAX_NODES, MAX_DEPTH = 100_000, 32  # values in the parsed tree, and its nesting


def shipped_recipes() -> dict[str, Path]:
    """Recipes packaged with adntn, by name (``demo`` -> .../recipes/demo.yaml)."""
    root = resources.files("adntn_cli.recipes")  # recipes/ at the top, packaged under this name
    return {Path(p.name).stem: Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml")}


def _path(loc: tuple[Any, ...], model: type[BaseModel]) -> tuple[str, type[BaseModel] | None]:
    """``('layers', 2, 'bond_dim')`` -> ``'layers[2].bond_dim'`` (union tags dropped) and the
    schema class that holds the last key."""
    out, parent, cls = "", None, model
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        if cls is None:  # a union or validator tag ('int', 'list[int]') below a leaf field
            continue
        fields = cls.model_fields
        by_alias = {f.alias or k: k for k, f in fields.items()}
        name = part if isinstance(part, str) and _plain(part) else brief(part)
        out += f".{name}" if out else name
        parent = cls
        cls = _schema_class(fields[by_alias[part]].annotation) if part in by_alias else None
    return out, parent


def _plain(key: str) -> bool:
    """A key that prints as itself (not empty, no spaces or control characters)."""
    return bool(key) and key.isprintable() and not any(c.isspace() for c in key)


def _schema_class(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _schema_class(arg)
        if found:
            return found
    return None


def _describe(err: ValidationError, source: str) -> str:
    lines: dict[str, list[str]] = {}
    for e in err.errors():
        path, parent = _path(tuple(e["loc"]), Recipe)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            valid = ", ".join(
                f.alias or k for k, f in (parent.model_fields if parent else {}).items()
            )
            msg = f"unknown key; valid keys here: {valid}"
        elif e["type"] == "missing":
            msg = "required key is missing"
        lines.setdefault(path or "(top level)", []).append(msg)

    def join(msgs: list[str]) -> str:
        # For an int-or-list key, "should be a valid list" is noise next to the real complaint.
        specific = [m for m in msgs if not m.startswith("Input should be a valid ")]
        return " or ".join(dict.fromkeys(specific or msgs))

    (first, msgs), *rest = lines.items()
    more = f"; more problems at {', '.join(p for p, _ in rest[:3])}" if rest else ""
    more += ", ..." if len(rest) > 3 else ""
    return f"{source}: {first}: {join(msgs)}{more}"


def _check_size(data: Any, source: str) -> None:
    """Refuse absurd documents (YAML anchors can make a small file a huge tree) before the
    schema walks them."""
    stack, seen = [(data, 0)], 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > MAX_NODES or depth > MAX_DEPTH:
            raise RecipeError(
                f"{source}: the recipe is too large or too deeply nested (at most {MAX_NODES:,} "
                f"values, {MAX_DEPTH} levels); a recipe is a short list of layer rules"
            )
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in (*node.keys(), *node.values()))
        elif isinstance(node, list | tuple):
            stack.extend((v, depth + 1) for v in node)


def parse_recipe(data: Any, source: str = "<recipe>") -> Recipe:
    """Validate already-parsed YAML data."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a YAML mapping with version, model, layers, ...")
    _check_size(data, source)
    if "version" in data and data["version"] != 1:
        raise RecipeError(
            f"{source}: version: {brief(data['version'])} is not supported; this adntn reads "
            "version 1"
        )
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(_describe(err, source)) from None


def load_recipe(path_or_name: str | Path) -> tuple[Recipe, str]:
    """A recipe from a file, or a shipped one by name; returns it and its source label.

    Only a file shadows a shipped recipe's name: with a folder ``demo`` in the working directory,
    ``demo`` is still the shipped recipe (a note on logger ``adntn`` says so)."""
    path, name = Path(path_or_name), str(path_or_name)
    if not path.is_file():
        shipped = shipped_recipes()
        names = ", ".join(sorted(shipped))
        if name in shipped:
            if path.is_dir():
                log.info("./%s is a folder; using the shipped recipe %s", name, name)
            path = shipped[name]
        elif path.is_dir():
            raise RecipeError(
                f"recipe {name!r} is a folder: name a recipe file in it or a shipped recipe "
                f"({names})"
            )
        elif not path.exists():
            raise RecipeError(f"recipe {name!r} is neither a file nor a shipped recipe ({names})")
    source = name
    try:
        if path.is_file() and path.stat().st_size > MAX_RECIPE_BYTES:
            raise RecipeError(
                f"{source}: {path.stat().st_size:,} bytes, over the {MAX_RECIPE_BYTES:,} a recipe "
                "may have; is it a recipe?"
            )
        data = yaml.safe_load(path.read_text())
    except RecursionError:
        raise RecipeError(
            f"{source}: the YAML is nested too deeply to be a recipe (at most {MAX_DEPTH} levels)"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError(f"{source}:{where}: not valid YAML: {problem}") from None
    except (OSError, UnicodeDecodeError) as err:
        why = getattr(err, "strerror", None) or str(err)
        raise RecipeError(f"{source}: cannot read the recipe ({why})") from None
    return parse_recipe(data, source), source


def json_schema() -> str:
    """The recipe's JSON Schema, for editors (``adntn schema > recipe.schema.json``)."""
    schema = Recipe.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "adntn recipe (version 1)"
    return json.dumps(schema, indent=2)
