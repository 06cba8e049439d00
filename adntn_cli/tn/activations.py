"""Elementwise activations applied between the levels of a generator, registered by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import TNConfigError

__all__ = ["ACTIVATIONS", "Activation", "get_activation", "register_activation"]


@dataclass(frozen=True)
class Activation:
    """A named elementwise function. ``linear`` marks the identity, which programs merge across."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    linear: bool = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.linear else self.fn(x)


ACTIVATIONS: dict[str, Activation] = {}


def register_activation(name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Activation:
    """Register ``fn`` under ``name``; a duplicate name is an error."""
    if name in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is already registered")
    act = Activation(name, fn, linear=name == "identity")
    ACTIVATIONS[name] = act
    return act


def get_activation(name: str) -> Activation:
    """The activation called ``name``; an unknown name lists the known ones."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        known = ", ".join(sorted(ACTIVATIONS))
        raise TNConfigError(f"unknown activation {name!r}; known: {known}") from None


register_activation("identity", lambda x: x)
register_activation("tanh", torch.tanh)
register_activation("relu", F.relu)
register_activation("gelu", F.gelu)
register_activation("silu", F.silu)
register_activation("sigmoid", torch.sigmoid)
register_activation("elu", F.elu)
register_activation("leaky_relu", F.leaky_relu)
register_activation("softplus", F.softplus)
