"""Building and loading models: torchvision architectures by name, state dicts, module swaps.

Weights are never downloaded: architectures are built with ``weights=None``. Where no weights are
needed (plans) models are built on the meta device, so even VGG-16 costs no memory or time.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import ModelError
from .modelfile import ModelFile, read_model_file, state_of

__all__ = [
    "COMPRESSIBLE",
    "MAX_HEADER_BYTES",
    "ModelSource",
    "build_model",
    "check_readable",
    "check_safetensors_header",
    "compressible_layers",
    "inspect_model",
    "known_archs",
    "load_model",
    "load_source",
    "set_submodule",
]

COMPRESSIBLE = (nn.Linear, nn.Conv2d, nn.MultiheadAttention)
MAX_HEADER_BYTES = 64 * 2**20  # a safetensors JSON header this large is not a model
log = logging.getLogger("adntn")


def unreadable(path: Path, err: OSError, what: str = "file") -> ModelError:
    """An OSError on reading ``path`` as the user's error: what went wrong and what to do."""
    if isinstance(err, IsADirectoryError) or Path(path).is_dir():
        return ModelError(f"{path} is a directory: name the {what} itself")
    if isinstance(err, PermissionError):
        return ModelError(f"cannot read {path}: permission denied; make the {what} readable")
    return ModelError(f"cannot read {path}: {err.strerror or err}")


def check_readable(path: Path, what: str = "model file") -> None:
    """Raise ``ModelError`` unless ``path`` is a file this process can open and read."""
    try:
        with Path(path).open("rb") as f:
            f.read(1)
    except OSError as err:
        raise unreadable(path, err, what) from None


def check_safetensors_header(path: Path) -> None:
    """Refuse a safetensors file whose declared header is absurd, before anything parses it."""
    try:
        with Path(path).open("rb") as f:
            head = f.read(8)
    except OSError as err:
        raise unreadable(path, err, "safetensors file") from None
    size = int.from_bytes(head, "little") if len(head) == 8 else -1
    if not 0 < size <= min(MAX_HEADER_BYTES, Path(path).stat().st_size - 8):
        raise ModelError(
            f"{path}: not a readable safetensors file (header size {size} bytes; at most "
            f"{MAX_HEADER_BYTES} and within the file)"
        )


def demo_vgg(num_classes: int = 10) -> nn.Module:
    """A small VGG-style network for 32x32 inputs with two large fully connected layers."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]

    model = nn.Sequential()
    model.features = nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 128))
    model.flatten = nn.Flatten()
    model.classifier = nn.Sequential(
        nn.Linear(128 * 4 * 4, 1024),  # classifier.0: 2.1M parameters
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(1024, 1024),  # classifier.3: 1.0M parameters
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(1024, num_classes),
    )
    return model


CUSTOM: dict[str, Callable[..., nn.Module]] = {"demo_vgg": demo_vgg}


@functools.cache
def known_archs() -> list[str]:
    import torchvision

    return sorted({*CUSTOM, *torchvision.models.list_models(module=torchvision.models)})


def build_model(
    arch: str, num_classes: int = 1000, device: str | torch.device = "cpu"
) -> nn.Module:
    """``arch`` (a torchvision classification model or ``demo_vgg``) with random weights."""
    import torchvision

    if not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes {num_classes!r}: the classifier needs at least 1 class")
    if arch in CUSTOM:
        with torch.device(device):
            return CUSTOM[arch](num_classes=num_classes)
    if arch not in torchvision.models.list_models(module=torchvision.models):
        close = difflib.get_close_matches(arch, known_archs(), n=5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise ModelError(f"unknown architecture {arch!r}{hint}")
    try:
        with torch.device(device):
            return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    except NotImplementedError:  # regnet computes its widths with tensors: none on meta
        if torch.device(device).type != "meta":
            raise
    with _parameters_on_meta():
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Every parameter and buffer a module registers is moved to the meta device at once
    (initialisation then writes nothing): a model built on the CPU that holds no memory."""
    from torch.nn.modules import module

    def parameter(_m: nn.Module, _name: str, p: nn.Parameter | None) -> nn.Parameter | None:
        return None if p is None else nn.Parameter(p.to("meta"), p.requires_grad)

    def buffer(_m: nn.Module, _name: str, b: torch.Tensor | None) -> torch.Tensor | None:
        return None if b is None else b.to("meta")

    hooks = [
        module.register_module_parameter_registration_hook(parameter),
        module.register_module_buffer_registration_hook(buffer),
    ]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


@dataclass(frozen=True)
class ModelSource:
    """What a MODEL argument names, decided from keys and shapes alone (no weights read):
    the architecture, the classifier size, and the file (None for ``torchvision:NAME``)."""

    spec: str
    arch: str
    num_classes: int
    file: ModelFile | None = None

    @property
    def input_size(self) -> int | None:
        return self.file.input_size if self.file else None


def inspect_model(
    source: str,
    arch: str | None = None,
    num_classes: int | None = None,
    *,
    recipe_arch: str | None = None,
    classes_said_by: str = "--num-classes",
) -> ModelSource:
    """Check ``source`` (``torchvision:NAME`` or a model file) as ``load_model`` would, without
    reading weights. The architecture is ``arch``, else ``recipe_arch``, else what the file
    records; ``num_classes`` (said by ``classes_said_by``) must match the file's classifier,
    which it defaults to. A mismatch names its likely cause (see fit.py)."""
    from .fit import check_fit, classes_in

    if source.startswith("torchvision:"):
        name = source.split(":", 1)[1]
        build_model(name, 1, device="meta")  # an unknown name fails here, with the closest
        return ModelSource(source, name, 1000 if num_classes is None else num_classes)
    path = _existing(source)
    file = read_model_file(path, lazy=True)
    if file.adntn_format is not None:
        raise ModelError(
            f"{path} is already compressed (format {file.adntn_format}): eval, report or export "
            "it; compress and plan start from a dense model"
        )
    name = arch or recipe_arch or _recorded_arch(file)
    shapes = file.shapes
    if name is None:
        raise ModelError(
            f"{path} holds weights only: name the architecture with --arch{_hint(shapes)}"
        )
    found = classes_in(shapes, name) if name in known_archs() else None
    classes = num_classes if num_classes is not None else found or file.num_classes or 1000
    check_fit(shapes, name, classes, where=str(path), classes_said_by=classes_said_by)
    return ModelSource(source, name, classes, file)


def _existing(source: str) -> Path:
    path = Path(source)
    if not path.exists():
        hint = f"; did you mean torchvision:{source}?" if source in known_archs() else ""
        raise ModelError(f"model {source!r} is neither a file nor torchvision:NAME{hint}")
    check_readable(path)
    return path


def _recorded_arch(file: ModelFile) -> str | None:
    """The architecture the file records, if adntn can build it (timm's ``arch`` may be a
    model torchvision does not have)."""
    if file.arch is None or file.arch in known_archs():
        return file.arch
    log.info("%s records arch %r, which torchvision does not build; ignored", file.path, file.arch)
    return None


def _hint(shapes: dict[str, tuple[int, ...]]) -> str:
    from .fit import likely_archs

    guesses = likely_archs(shapes)
    return f" (the keys look like {', '.join(guesses)})" if guesses else ""


def load_model(
    source: str,
    arch: str | None = None,
    num_classes: int | None = None,
    *,
    allow_pickle: bool = False,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """A model from ``torchvision:NAME`` (random weights) or a model file (see modelfile.py):
    checked by ``inspect_model``, then loaded. A pickled whole model is loaded only with
    ``allow_pickle`` (pickle runs code)."""
    if allow_pickle and not source.startswith("torchvision:"):
        return _unpickle(_existing(source), arch, device)
    return load_source(inspect_model(source, arch, num_classes), device)


def load_source(found: ModelSource, device: str | torch.device = "cpu") -> nn.Module:
    """The model ``inspect_model`` checked, its weights read now (random for torchvision:)."""
    return _build(found, read_model_file(found.file.path).state if found.file else None, device)


def _build(
    found: ModelSource, state: dict[str, torch.Tensor] | None, device: str | torch.device
) -> nn.Module:
    if state is None:
        return build_model(found.arch, found.num_classes, device)
    model = build_model(found.arch, found.num_classes, device="meta")
    model.load_state_dict(state, assign=True, strict=True)
    return model.to(device)


def _unpickle(path: Path, arch: str | None, device: str | torch.device) -> nn.Module:
    """``--allow-pickle``: a whole pickled model, or a checkpoint with any globals."""
    try:
        obj = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # unpickling fails in many ways; say which
        first = " ".join(str(err).split())[:200] or type(err).__name__
        raise ModelError(f"{path}: cannot unpickle a model ({first})") from None
    if isinstance(obj, nn.Module):
        return obj
    try:
        state = state_of(obj, path)
    except ModelError:
        raise ModelError(
            f"{path}: --allow-pickle expects a pickled nn.Module or a checkpoint holding a "
            "state dict"
        ) from None
    record = obj if isinstance(obj, dict) else {}
    name = arch or (record.get("arch") if isinstance(record.get("arch"), str) else None)
    if name is None:
        raise ModelError(f"{path} holds weights only: name the architecture with --arch")
    from .fit import check_fit, classes_in

    shapes = {k: tuple(v.shape) for k, v in state.items()}
    classes = classes_in(shapes, name) or 1000
    check_fit(shapes, name, classes, where=str(path))
    found = ModelSource(str(path), name, classes)
    return _build(found, state, device)


def compressible_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Layers adntn can replace (exact classes Linear, Conv2d, MultiheadAttention), in order.

    Sub-layers of a MultiheadAttention (its out_proj) are part of that layer, not separate.
    """
    out, inside = [], set()
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        if type(module) in COMPRESSIBLE:
            out.append((name, module))
            if isinstance(module, nn.MultiheadAttention):
                inside.add(name)
    return out


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path ``name``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
