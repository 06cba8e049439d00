"""Several processes (torchrun): who this process is, and the few collectives the pipeline needs.

``torchrun --nproc_per_node=N -m adntn_cli compress ...`` starts N copies of the command with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set. Each process trains a DistributedDataParallel
replica on its shard of every batch (``data.batch_size`` is the global batch, split evenly);
rank 0 alone prints, checkpoints and writes the run directory. Without those variables
everything here is a no-op for one process.

How a process of such a run ends matters: once DistributedDataParallel has run, gloo's worker
threads outlive ``destroy_process_group()``, and a normal interpreter exit can abort ("terminate
called without an active exception", SIGABRT), on a rank that finished early even while rank 0
is still writing. So every rank waits at a barrier after rank 0 has written (``compress`` ends
with one), flushes its output and leaves through ``os._exit`` (``finish``), which runs no C++
destructor.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as tdist

from .errors import AdntnError

__all__ = ["Dist", "any_true", "barrier", "broadcast", "finish", "from_env", "init", "shutdown"]


@dataclass(frozen=True)
class Dist:
    """This process's place: ``rank`` of ``world`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_env() -> Dist:
    """The process's place as torchrun describes it (one process when nothing is set)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise AdntnError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {err}") from None
    return Dist(rank, world, local)


def init(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group when started by torchrun; returns the place and this rank's
    device (``cuda:LOCAL_RANK`` for a CUDA run, the CPU otherwise, with the gloo backend)."""
    d = from_env()
    if not d.enabled:
        return d, device
    if device.type == "cuda":
        if d.local_rank >= torch.cuda.device_count():
            raise AdntnError(
                f"LOCAL_RANK {d.local_rank} but only {torch.cuda.device_count()} CUDA devices: "
                "start at most that many processes per node"
            )
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise AdntnError(f"several processes run on CUDA or the CPU, not on {device.type}")
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return d, device


def shutdown(d: Dist) -> None:
    """Leave the process group (for a process that goes on; one that ends calls ``finish``)."""
    if d.enabled and tdist.is_initialized():
        tdist.destroy_process_group()


def finish(code: int = 0, *, wait: bool = True) -> NoReturn:
    """End this process of a several-process run: with ``wait``, a barrier first (no rank
    leaves before every rank is done), then flushed output and ``os._exit(code)``, which does
    not depend on gloo finalising (see the module docstring)."""
    if wait and tdist.is_available() and tdist.is_initialized():
        try:
            tdist.barrier()
        except RuntimeError:  # a peer already failed and left: end with a failure too
            code = code or 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say
            stream.flush()
    os._exit(code)


def barrier(d: Dist) -> None:
    if d.enabled:
        tdist.barrier()


def any_true(d: Dist, flags: list[bool], device: torch.device) -> list[bool]:
    """Element-wise OR of ``flags`` over all processes (one small all-reduce)."""
    if not d.enabled:
        return flags
    t = torch.tensor([float(f) for f in flags], device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def broadcast(d: Dist, obj: object) -> object:
    """Rank 0's ``obj`` on every rank (a picklable value: a path, a small dict)."""
    if not d.enabled:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]
