"""Reading the model files people have, without running their code.

A model file is a state dict (.safetensors, or .pt/.pth/.pth.tar from ``torch.save``), bare or
inside a training checkpoint: torchvision's reference scripts save ``{"model", "optimizer",
"lr_scheduler", "epoch", "args": Namespace}``, timm's ``train.py`` ``{"state_dict", "arch",
"args": Namespace, ...}``. ``torch.load`` runs with ``weights_only=True`` and an allow-list of
harmless globals (``argparse.Namespace``, numpy scalars); any other global is named, and a whole
pickled model stays behind ``--allow-pickle``. Prefixes left by DDP (``module.``) and
``torch.compile`` (``_orig_mod.``) are stripped. ``lazy=True`` reads keys and shapes only (the
safetensors header, an mmap of a zip file, or meta tensors for a legacy file).
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ModelError

__all__ = ["STATE_KEYS", "ModelFile", "read_model_file", "state_of"]

log = logging.getLogger("adntn")

# Where checkpoints keep the weights, in the order they are looked for.
STATE_KEYS = ("state_dict", "model", "module", "model_state_dict", "model_ema", "state_dict_ema")
PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile
EMA_COUNTERS = ("n_averaged",)  # torch.optim.swa_utils.AveragedModel's step counter
DESCRIPTIVE = ("arch", "num_classes", "input_size")  # facts a checkpoint may record


def _note(message: str) -> None:
    """A note for the user (the CLI prints each once per command: a file is read twice)."""
    log.info("%s", message)


def _safe_globals() -> list[Any]:
    """Globals a checkpoint may hold that construct plain data and run nothing else."""
    import numpy as np

    # torch.__version__ is a TorchVersion (a str): scripts that record it pickle that class
    allowed: list[Any] = [argparse.Namespace, np.dtype, torch.torch_version.TorchVersion]
    try:  # numpy >= 1.25 moved the scalar reconstructor; the old path stays importable
        from numpy._core.multiarray import scalar
    except ImportError:  # pragma: no cover - old numpy
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    allowed.append(scalar)
    allowed += [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64")]
    return allowed


@dataclass(frozen=True)
class ModelFile:
    """A model file's weights and what it says of itself (``arch`` and so on, where recorded).

    ``state`` holds real tensors, or with ``lazy`` tensors whose shapes alone are to be read.
    """

    path: Path
    state: dict[str, torch.Tensor]
    arch: str | None = None
    num_classes: int | None = None
    input_size: int | None = None
    adntn_format: str | None = None  # "adntn/N" for a file adntn compressed

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.state.items()}

    @property
    def compressed(self) -> bool:
        """Written by ``adntn compress``, or a state dict of generator cores."""
        return self.adntn_format is not None or any(".generator." in k for k in self.state)


def read_model_file(path: Path, *, lazy: bool = False) -> ModelFile:
    """The state dict in ``path`` and the facts recorded beside it (see the module doc)."""
    from .models import check_readable

    path = Path(path)
    check_readable(path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path, lazy)
    obj = _torch_load(path, lazy)
    facts = _facts(obj, path) if isinstance(obj, Mapping) else {}
    return ModelFile(path, state_of(obj, path), **facts)


def _read_safetensors(path: Path, lazy: bool) -> ModelFile:
    from safetensors import safe_open

    from .models import check_safetensors_header

    check_safetensors_header(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
            names = list(f.keys())  # a safe_open handle is not a dict
            if lazy:  # shapes from the header alone; no tensor is read
                state = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in names}
            else:
                state = {k: f.get_tensor(k) for k in names}
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise ModelError(f"{path}: not a readable safetensors file ({err})") from None
    fmt = meta.get("format", "")
    facts = _facts(meta, path)
    return ModelFile(
        path, _strip(state), **facts, adntn_format=fmt if fmt.startswith("adntn/") else None
    )


def _torch_load(path: Path, lazy: bool) -> Any:
    """``torch.load`` with weights only and the allow-list; lazily by mmap (zip files) or onto
    the meta device (legacy files)."""
    import zipfile

    kwargs: dict[str, Any] = {"map_location": "cpu"}
    if lazy:
        kwargs.update(mmap=True) if zipfile.is_zipfile(path) else kwargs.update(map_location="meta")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, weights_only=True, **kwargs)
    except OSError as err:
        from .models import unreadable

        raise unreadable(path, err) from None
    except Exception as err:  # torch raises many types for a bad or pickled file
        raise load_error(path, err) from None


def state_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a loaded object: itself, or under one of ``STATE_KEYS``; prefixes
    stripped, an EMA wrapper's counter dropped."""
    if isinstance(obj, Mapping) and not _is_state(obj):
        keys = [k for k in STATE_KEYS if isinstance(obj.get(k), Mapping)]
        if not keys:
            found = ", ".join(sorted(map(str, obj))[:8])
            raise ModelError(
                f"{path} holds no state dict: its keys are {found}; adntn looks for a state dict "
                f"of tensors, bare or under {', '.join(STATE_KEYS)}"
            )
        if keys[1:]:  # a choice was made: say which
            _note(f"{path}: the weights under {keys[0]!r} (it also holds {', '.join(keys[1:])})")
        obj = {k: v for k, v in obj[keys[0]].items() if k not in EMA_COUNTERS}
    if not isinstance(obj, Mapping) or not _is_state(obj):
        raise ModelError(f"{path}: expected a state dict of tensors")
    return _strip(dict(obj), path)


def _is_state(obj: Mapping) -> bool:
    return bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _strip(state: dict[str, torch.Tensor], path: Path | None = None) -> dict[str, torch.Tensor]:
    """``module.`` and ``_orig_mod.`` taken off every key that has one, said in one line."""
    stripped = []
    for prefix in PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
            stripped.append(prefix)
    if stripped:
        what = " and ".join(f"'{p}'" for p in stripped)
        _note(f"{path or 'the file'}: stripped the prefix {what} from all {len(state)} keys")
    return state


def _facts(record: Mapping, path: Path) -> dict[str, Any]:
    """``arch``, ``num_classes`` and ``input_size`` where the file records them (adntn's
    exports and checkpoints, timm's ``arch``, the ``--model`` in a training script's args)."""
    facts: dict[str, Any] = {}
    args = record.get("args")  # the training script's argparse Namespace (or a dict)
    model_arg = args.get("model") if isinstance(args, Mapping) else getattr(args, "model", None)
    if record.get("arch") is None and isinstance(model_arg, str):
        facts["arch"] = model_arg  # torchvision's references record only args.model
    for key in DESCRIPTIVE:
        value = record.get(key)
        if value is None:
            continue
        if key == "arch":
            facts[key] = str(value)
            continue
        try:
            facts[key] = int(value)
        except (TypeError, ValueError):
            _note(f"{path}: ignored its {key} {value!r} (not a whole number)")
    return facts


def load_error(path: Path, err: Exception) -> ModelError:
    """Why ``torch.load(path, weights_only=True)`` failed, in one line with the way out."""
    import zipfile

    text = " ".join(str(err).split())
    pickled = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if pickled:
        blocked = _unsafe_globals(path) or [pickled.group(1)]
        return ModelError(
            f"{path} pickles {', '.join(blocked[:4])}, beyond tensors and plain data (a whole "
            "model?): --allow-pickle loads it (pickle runs code: only for files you trust)"
        )
    if "central directory" in text or "zip archive" in text:
        return ModelError(f"{path}: the file is truncated or corrupted (its zip archive is broken)")
    if not zipfile.is_zipfile(path):
        return ModelError(
            f"{path} is not a state dict written by torch.save (nor a .safetensors file); a "
            "pickled whole model needs --allow-pickle (pickle runs code: only for trusted files)"
        )
    first = text[:200] or type(err).__name__
    return ModelError(f"{path}: cannot load a state dict ({first})")


def _unsafe_globals(path: Path) -> list[str]:
    """The globals in ``path`` outside torch's and adntn's allow-lists (read, never run)."""
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in _safe_globals()}
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a legacy or damaged file: the error message's global is all there is
        return []
    return [g for g in found if g not in allowed]
