"""Registered generator structures: ttn, augttn, mera and the baselines tt and lowrank."""

from . import augttn, lowrank, mera, tt, ttn  # noqa: F401  (registration)
from .base import STRUCTURES, Builder, Structure, get_structure, register_structure

__all__ = ["STRUCTURES", "Builder", "Structure", "get_structure", "register_structure"]
