"""Which feature map each Linear reads: a shape probe of the model on the meta device.

AlexNet's and VGG's first fully connected layer reads a flattened ``C x H x W`` map (AlexNet at
224x224: 256 x 6 x 6 = 9216). The flatten is a function call in ``forward``, not a module, so the
map is found by running the model once on a meta tensor (shapes only: no memory, no arithmetic)
and noting, for each Linear, the last 4-D output of a module before it whose size is the Linear's
input size, with no other Linear in between. A model that cannot run on the meta device (custom
code that reads values) gives no maps, and its Linear layers are factored as flat vectors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["input_channels", "linear_input_maps"]


def input_channels(model: nn.Module) -> int:
    """The image channels the model takes: its first conv's input channels, else 3."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None else 3


def linear_input_maps(
    model: nn.Module, input_size: int, names: Iterable[str] | None = None
) -> dict[str, tuple[int, int, int]]:
    """``{layer: (C, H, W)}`` for the Linear layers (of ``names``, default all) that read a
    flattened feature map with ``H * W > 1``, on an ``input_size`` x ``input_size`` image."""
    wanted = set(names) if names is not None else None
    seen: dict[str, tuple[int, int, int] | None] = {"map": None}
    found: dict[str, tuple[int, int, int]] = {}

    def after(_module: nn.Module, _inputs: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            c, h, w = output.shape[1:]
            seen["map"] = (int(c), int(h), int(w))

    def before(name: str, module: nn.Linear, inputs: tuple) -> None:
        shape = seen["map"]
        x = inputs[0] if inputs else None
        flat = isinstance(x, torch.Tensor) and x.dim() == 2
        fits = bool(shape) and flat and math.prod(shape) == module.in_features
        if fits and shape[1] * shape[2] > 1 and (wanted is None or name in wanted):
            found[name] = shape
        seen["map"] = None  # a Linear in between: the next one reads its output, not the map

    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            hooks.append(
                module.register_forward_pre_hook(lambda m, i, name=name: before(name, m, i))
            )
        elif not list(module.children()):
            hooks.append(module.register_forward_hook(after))
    meta = torch.device("meta")
    tensors = {
        **{n: torch.empty_like(p, device=meta) for n, p in model.named_parameters()},
        **{n: torch.empty_like(b, device=meta) for n, b in model.named_buffers()},
    }
    x = torch.empty(1, input_channels(model), input_size, input_size, device=meta)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            functional_call(model, tensors, (x,))
    except Exception:  # custom code that reads values, or shapes the probe cannot know
        return {}
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return found
