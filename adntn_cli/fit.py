"""Whether a state dict fits an architecture, and if not, the likely reason.

Everything here works on keys and shapes (``{key: shape}``) and architectures built on the meta
device, so ``layers`` and ``plan`` check a file as ``compress`` does without reading its weights.
A mismatch is explained by its likely cause: another architecture (the closest ones by keys and
shapes, among every architecture adntn builds), a classifier of another size, or a file that is
already compressed.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from .errors import ModelError

__all__ = ["check_fit", "classes_in", "likely_archs", "signature"]

Shapes = Mapping[str, tuple[int, ...]]


@functools.cache
def signature(arch: str, num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of ``arch``'s state dict (built on the meta device)."""
    from .models import build_model

    model = build_model(arch, num_classes, device="meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def classes_in(shapes: Shapes, arch: str) -> int | None:
    """The classifier size ``shapes`` has as ``arch``: the entry of the keys that change with
    ``num_classes`` (found by building the architecture with 1 and 2 classes)."""
    one, two = signature(arch, 1), signature(arch, 2)
    for key, shape in one.items():
        if shape != two[key] and key in shapes and len(shapes[key]) == len(shape):
            dim = next(d for d, (a, b) in enumerate(zip(shape, two[key], strict=True)) if a != b)
            return int(shapes[key][dim])
    return None


@functools.cache
def _all_signatures() -> dict[str, dict[str, tuple[int, ...]]]:
    """Every architecture that builds on the meta device (a few seconds, once per process)."""
    import warnings

    from .models import known_archs

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's init-change FutureWarnings
        for arch in known_archs():
            try:
                out[arch] = signature(arch)
            except Exception:  # an architecture that cannot be built is no guess
                continue
    return out


def _similarity(shapes: Shapes, sig: Mapping[str, tuple[int, ...]]) -> float:
    """Keys with equal shapes count 1, keys with other shapes 1/2, over the larger key set."""
    same = sum(1.0 if sig[k] == s else 0.5 for k, s in shapes.items() if k in sig)
    return same / max(len(shapes), len(sig), 1)


def likely_archs(
    shapes: Shapes, n: int = 3, *, exclude: str | None = None, above: float = 0.2
) -> list[str]:
    """The ``n`` architectures whose state dicts look most like ``shapes``, best first; only
    those more alike than ``above``."""
    scores = {a: _similarity(shapes, s) for a, s in _all_signatures().items() if a != exclude}
    best = sorted(scores, key=lambda a: (-scores[a], a))[:n]
    return [a for a in best if scores[a] > max(above, 0.2)]


def check_fit(
    shapes: Shapes, arch: str, num_classes: int, *, where: str, classes_said_by: str = ""
) -> None:
    """Raise a ModelError naming the likely cause unless ``shapes`` is ``arch`` with
    ``num_classes`` classes; ``classes_said_by`` says where that number came from."""
    if any(".generator." in k for k in shapes):
        raise ModelError(
            f"{where} is already compressed (it holds generator cores): eval, report or export "
            "it; compress starts from a dense model"
        )
    expected = signature(arch, num_classes)
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(shapes) & set(expected) if shapes[k] != expected[k])
    if not (missing or unexpected or wrong):
        return
    actual = classes_in(shapes, arch)
    other_head = actual is not None and actual != num_classes and not (missing or unexpected)
    if other_head and signature(arch, actual) == dict(shapes):
        said = classes_said_by or "--num-classes"
        raise ModelError(
            f"{where}: the classifier has {actual} outputs, {said} says {num_classes}: set "
            f"model.num_classes: {actual} in the recipe or pass --num-classes {actual}"
        )
    guesses = likely_archs(shapes, exclude=arch, above=_similarity(shapes, expected))
    if not guesses:  # nothing fits better: list what differs
        diff = _diff(missing, unexpected, wrong, shapes, expected)
        raise ModelError(f"{where} does not fit {arch}: {diff}")
    tally = ((missing, "missing"), (unexpected, "unexpected"), (wrong, "of other shapes"))
    counts = ", ".join(f"{len(keys)} keys {what}" for keys, what in tally if keys)
    alts = f" (or {', '.join(guesses[1:])})" if guesses[1:] else ""
    raise ModelError(
        f"{where} does not fit {arch} ({counts}); the keys look like {guesses[0]}'s{alts}: "
        f"pass --arch {guesses[0]}"
    )


def _diff(missing, unexpected, wrong, shapes: Shapes, expected: Shapes) -> str:
    parts = []
    if missing:
        parts.append(f"missing keys {_few(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {_few(unexpected)}")
    for key in wrong[:2]:
        parts.append(
            f"size mismatch for {key}: {list(shapes[key])} in the file, {list(expected[key])} "
            "in the architecture"
        )
    return ", ".join(parts)


def _few(keys: list[str], n: int = 4) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return f"{keys[:n]}{more}"
