"""Layer selection: which rule of a recipe applies to which layer.

Selectors: an exact module name (``classifier.0``), a glob (``features.*``), a full-match regex
(``re:features\\.(24|26)``) or a type (``type:Linear``, exact class, so MultiheadAttention's
``out_proj`` is not a Linear). Precedence for a layer several rules select: an exact name first,
then globs and regexes in file order, then types in file order. A rule's ``exclude`` removes
layers from that rule only. A selector that matches nothing is an error listing the closest names.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import SelectionError, brief
from .schema import LayerRule

__all__ = ["Candidate", "matches", "select_layers"]


@dataclass(frozen=True)
class Candidate:
    """A compressible layer: qualified name and exact class name."""

    name: str
    kind: str


def _tier(selector: str) -> int:
    if selector.startswith("type:"):
        return 2
    if selector.startswith("re:") or any(c in selector for c in "*?["):
        return 1
    return 0


def matches(selector: str, layer: Candidate) -> bool:
    if selector.startswith("type:"):
        return layer.kind == selector[5:]
    if selector.startswith("re:"):
        return re.fullmatch(selector[3:], layer.name) is not None
    if _tier(selector) == 1:
        return fnmatch.fnmatchcase(layer.name, selector)
    return layer.name == selector


def _no_match(selector: str, where: str, layers: Sequence[Candidate]) -> SelectionError:
    if selector.startswith("type:"):
        kinds = sorted({c.kind for c in layers})
        hint = f"compressible types here: {', '.join(kinds)}"
    else:
        key = selector[3:] if selector.startswith("re:") else selector
        close = difflib.get_close_matches(key, [c.name for c in layers], n=5, cutoff=0.0)
        hint = f"closest layers: {', '.join(close)}"
    return SelectionError(f"{where}: {brief(selector)} matches no compressible layer; {hint}")


def select_layers(
    rules: Sequence[LayerRule], layers: Sequence[Candidate], source: str = "<recipe>"
) -> dict[str, int]:
    """Map each selected layer's name to the index of the rule that applies to it."""
    for i, rule in enumerate(rules):
        for key, sels in (("select", rule.selectors), ("exclude", rule.exclude)):
            for sel in sels:
                if sel.startswith("re:"):
                    try:
                        re.compile(sel[3:])
                    except re.error as err:
                        raise SelectionError(
                            f"{source}: layers[{i}].{key}: {brief(sel)} is not a valid regex "
                            f"({err})"
                        ) from None
    best: dict[str, tuple[int, int]] = {}
    for i, rule in enumerate(rules):
        excluded = set()
        for sel in rule.exclude:
            hit = {c.name for c in layers if matches(sel, c)}
            if not hit:
                raise _no_match(sel, f"{source}: layers[{i}].exclude", layers)
            excluded |= hit
        for sel in rule.selectors:
            hit = [c for c in layers if matches(sel, c)]
            if not hit:
                raise _no_match(sel, f"{source}: layers[{i}].select", layers)
            for c in hit:
                if c.name in excluded:
                    continue
                key = (_tier(sel), i)
                if c.name not in best or key < best[c.name]:
                    best[c.name] = key
    order = {c.name: k for k, c in enumerate(layers)}
    return {name: best[name][1] for name in sorted(best, key=order.__getitem__)}
