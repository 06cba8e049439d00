"""The compressed file's metadata, and the one versioned reader of it.

A compressed file is safetensors; its ``__metadata__`` (strings only) says what rebuilds it:

- ``adntn/1``: ``format``, ``adntn_version``, ``arch``, ``num_classes`` and ``recipe`` (the
  resolved recipe as JSON). Loading re-plans the recipe, so it re-runs the factorisation.
- ``adntn/2`` (written now) adds ``layers``: per replaced layer, per generator (``generator``,
  or ``in_proj`` / ``out_proj`` of an attention layer), the spec as it was resolved: physical
  legs as explicit factors, bond dimensions, activations and options by name. Loading builds
  those generators and never runs a heuristic, so a later change to factorize.py or to a
  structure's defaults cannot misread the file. It also records ``input_size`` and, where the
  data had them, ``preprocessing`` (what the images were prepared with, which ``eval`` reuses)
  and ``classes`` (the class names, index order).

Every reader returns a ``Header``; keys added later (preprocessing, class names) are read here,
by version, and nowhere else.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ModelError, UnsafeFileError
from .models import check_safetensors_header
from .recipe import Recipe, parse_recipe
from .tn import StructureSpec

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_METADATA_BYTES",
    "Header",
    "LayerSpecs",
    "metadata",
    "read_header",
    "read_metadata",
]

FORMAT_VERSION = 2
FORMAT = f"adntn/{FORMAT_VERSION}"
MAX_METADATA_BYTES = 1 * 2**20  # adntn writes a few KiB: the resolved recipe is the largest part

LayerSpecs = dict[str, dict[str, StructureSpec]]  # layer -> generator name -> spec


@dataclass(frozen=True)
class Header:
    """What an adntn file says of itself. ``layers`` is None for adntn/1 (re-planned from
    ``recipe``); ``input_size`` falls back to the recipe's."""

    path: Path
    version: int
    arch: str
    num_classes: int
    recipe: Recipe
    input_size: int
    layers: LayerSpecs | None = None
    preprocessing: dict[str, Any] | None = None
    classes: list[str] | None = None
    adntn_version: str | None = None
    extra: dict[str, str] = field(default_factory=dict)  # keys this reader does not know


def metadata(
    *,
    arch: str,
    num_classes: int,
    input_size: int,
    recipe: dict[str, Any],
    layers: LayerSpecs,
    preprocessing: dict[str, Any] | None = None,
    classes: list[str] | None = None,
) -> dict[str, str]:
    """The ``__metadata__`` of a file in the current format."""
    optional = {"preprocessing": preprocessing, "classes": classes}
    return {
        **{k: json.dumps(v, sort_keys=True) for k, v in optional.items() if v is not None},
        "format": FORMAT,
        "adntn_version": __version__,
        "arch": arch,
        "num_classes": str(num_classes),
        "input_size": str(input_size),
        "recipe": json.dumps(recipe, sort_keys=True),
        "layers": json.dumps(
            {name: {g: spec_entry(s) for g, s in gens.items()} for name, gens in layers.items()},
            sort_keys=True,
        ),
    }


def spec_entry(s: StructureSpec) -> dict[str, Any]:
    """A spec as a recipe layer entry without ``select`` (the JSON of ``layers``)."""
    from .resolved import layer_entry

    return {k: v for k, v in layer_entry("", s).items() if k != "select"}


def read_metadata(path: Path) -> dict[str, str]:
    """The file's string metadata; a file safetensors cannot read is a ModelError."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    check_safetensors_header(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise ModelError(f"{path}: not a readable safetensors file ({err})") from None
    size = sum(len(k.encode()) + len(v.encode()) for k, v in meta.items())
    if size > MAX_METADATA_BYTES:
        raise UnsafeFileError(
            f"{path}: its metadata holds {size:,} bytes, over the limit of "
            f"{MAX_METADATA_BYTES:,} (adntn writes a few KiB); refused unread"
        )
    return meta


def read_header(path: Path) -> Header:
    """The header of an adntn file, by the reader of its format version."""
    path = Path(path)
    meta = read_metadata(path)
    version = _version(path, meta)
    try:
        return READERS[version](path, meta)
    except (ValueError, TypeError, KeyError, RecursionError) as err:
        if isinstance(err, ModelError):
            raise
        detail = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        raise ModelError(f"{path}: damaged adntn metadata ({detail})") from None


def _version(path: Path, meta: Mapping[str, str]) -> int:
    fmt = meta.get("format", "")
    if not fmt.startswith("adntn/"):
        raise ModelError(
            f"{path} was not written by adntn (no 'format: adntn/N' metadata); a plain state "
            "dict loads as MODEL with --arch"
        )
    try:
        version = int(fmt.split("/", 1)[1])
    except ValueError:
        raise ModelError(f"{path}: unknown format {fmt!r}") from None
    if version > FORMAT_VERSION:
        raise ModelError(
            f"{path} is format {fmt}, newer than this adntn ({__version__}) reads ({FORMAT}): "
            "upgrade adntn"
        )
    if version not in READERS:
        raise ModelError(f"{path}: unknown format {fmt!r}")
    return version


def _require(path: Path, meta: Mapping[str, str], keys: tuple[str, ...]) -> None:
    for key in keys:
        if key not in meta:
            raise ModelError(f"{path}: adntn metadata lacks {key!r}; the file is damaged")


def _read_v1(path: Path, meta: Mapping[str, str]) -> Header:
    _require(path, meta, ("arch", "num_classes", "recipe"))
    recipe = parse_recipe(json.loads(meta["recipe"]), f"{path} (embedded recipe)")
    num_classes = int(meta["num_classes"])
    if num_classes < 1:
        raise ModelError(f"{path}: damaged adntn metadata (num_classes {num_classes})")
    known = {"format", "adntn_version", "arch", "num_classes", "recipe"}
    return Header(
        path=path,
        version=1,
        arch=meta["arch"],
        num_classes=num_classes,
        recipe=recipe,
        input_size=recipe.model.input_size,
        adntn_version=meta.get("adntn_version"),
        extra={k: v for k, v in meta.items() if k not in known},
    )


def _read_v2(path: Path, meta: Mapping[str, str]) -> Header:
    _require(path, meta, ("arch", "num_classes", "recipe", "layers", "input_size"))
    base = _read_v1(path, meta)
    input_size = int(meta["input_size"])
    if input_size < 1:
        raise ModelError(f"{path}: damaged adntn metadata (input_size {input_size})")
    known = {"layers", "input_size", "preprocessing", "classes"}
    return Header(
        path=path,
        version=2,
        arch=base.arch,
        num_classes=base.num_classes,
        recipe=base.recipe,
        input_size=input_size,
        layers=_layer_specs(path, json.loads(meta["layers"])),
        preprocessing=_preprocessing(path, meta.get("preprocessing")),
        classes=_classes(path, meta.get("classes"), base.num_classes),
        adntn_version=base.adntn_version,
        extra={k: v for k, v in base.extra.items() if k not in known},
    )


def _preprocessing(path: Path, text: str | None) -> dict[str, Any] | None:
    """``preprocessing``, checked by building it (unknown keys or bad values are damage)."""
    from .preprocess import Preprocess

    if text is None:
        return None
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ModelError(f"{path}: damaged adntn metadata (preprocessing is not a mapping)")
    Preprocess.from_dict(data)
    return data


def _classes(path: Path, text: str | None, num_classes: int) -> list[str] | None:
    if text is None:
        return None
    names = json.loads(text)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ModelError(f"{path}: damaged adntn metadata (classes is not a list of names)")
    if len(names) != num_classes:
        raise ModelError(f"{path}: damaged adntn metadata ({len(names)} class names for "
                         f"{num_classes} classes)")  # fmt: skip
    return names


def _layer_specs(path: Path, data: Any) -> LayerSpecs:
    """``layers`` checked by the recipe schema, entry by entry."""
    from .plan import spec_of

    if not isinstance(data, dict) or not all(isinstance(g, dict) for g in data.values()):
        raise ModelError(f"{path}: damaged adntn metadata (layers is not a mapping of layers)")
    out: LayerSpecs = {}
    for name, gens in data.items():
        out[name] = {g: spec_of(entry, f"{path} (layers.{name}.{g})") for g, entry in gens.items()}
    return out


READERS: dict[int, Callable[[Path, Mapping[str, str]], Header]] = {1: _read_v1, 2: _read_v2}
