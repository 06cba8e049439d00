"""Shared builders for the tn tests: small generators and a naive one-einsum oracle."""

from __future__ import annotations

import opt_einsum as oe
import torch

from adntn_cli.tn import StructureSpec, TNGenerator

STRUCTURE_NAMES = ["ttn", "augttn", "mera", "tt", "lowrank"]

# (structure, extra spec kwargs) covering each structure and its options.
VARIANTS = [
    ("ttn", {}),
    ("ttn", {"options": {"mixing": "siblings"}}),
    ("augttn", {}),
    ("augttn", {"options": {"disentangler": "separable"}}),
    ("mera", {}),
    ("mera", {"options": {"top_legs": 3}}),
    ("tt", {}),
    ("lowrank", {}),
]


def variant_id(v) -> str:
    name, kw = v
    opts = kw.get("options", {})
    return name + "".join(f"-{k}={val}" for k, val in opts.items())


GEN_KWARGS = ("target_std", "generator", "memory_budget", "device")


def make(structure, shape, bond_dim=3, activation=None, dtype=torch.float64, **kw):
    """A generator; ``kw`` goes to the StructureSpec except TNGenerator's own keywords."""
    nonlinear = structure not in ("tt", "lowrank")
    act = activation if nonlinear else None
    gen_kw = {k: kw.pop(k) for k in GEN_KWARGS if k in kw}
    spec = StructureSpec(structure, bond_dim=bond_dim, activation=act, **kw)
    return TNGenerator(spec, shape, dtype=dtype, **gen_kw)


def naive_weight(gen: TNGenerator) -> torch.Tensor:
    """All cores in one einsum (no path, no merging): the padded weight times the scale."""
    net = gen.network
    names = sorted(net.index_sizes)
    assert len(names) <= 52, "oracle einsum needs at most 52 indices: use a smaller instance"
    sym = {n: oe.get_symbol(k) for k, n in enumerate(names)}
    terms = ["".join(sym[i] for i in c.indices) for c in net.cores]
    out = "".join(sym[i] for i in net.w_out + net.w_in)
    eq = ",".join(terms) + "->" + out
    ops = [gen.cores[c.name] for c in net.cores]
    return torch.einsum(eq, *ops) * gen.scale  # torch.einsum contracts left to right
