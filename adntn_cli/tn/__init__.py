"""Tensor-network weight generators: pure maths on torch and opt_einsum.

Nothing here knows about files, recipes, models or the command line.
"""

from .activations import ACTIVATIONS, get_activation, register_activation
from .cost import default_memory_budget, device_profile, format_bytes
from .errors import MemoryBudgetError, TNConfigError
from .factorize import Tensorization, tensorize
from .generator import TNGenerator, default_target_std
from .precision import autocast_dtype, without_autocast
from .program import Network, Program
from .spec import StructureSpec
from .structures import STRUCTURES, get_structure, register_structure

__all__ = [
    "ACTIVATIONS",
    "STRUCTURES",
    "MemoryBudgetError",
    "Network",
    "Program",
    "StructureSpec",
    "TNConfigError",
    "TNGenerator",
    "Tensorization",
    "autocast_dtype",
    "default_memory_budget",
    "default_target_std",
    "device_profile",
    "format_bytes",
    "get_activation",
    "get_structure",
    "register_activation",
    "register_structure",
    "tensorize",
    "without_autocast",
]
