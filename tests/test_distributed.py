"""Several processes: DistributedDataParallel over gloo on the CPU gives one process's result.

The global batch is split over the ranks (rank r takes positions r, r + world, ... of each
epoch's permutation), so with no dropout and no BatchNorm two processes compute the same
gradients as one, up to the order of the floating-point sums: the tolerance below is that
rounding. A run checkpointed by two processes and resumed by one continues at the same place
in the data and ends at the same weights within the same tolerance.
"""

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from adntn_cli.data import Datasets, loaders
from adntn_cli.distill import finetune
from adntn_cli.distributed import Dist, finish, init
from adntn_cli.layers import GeneratedLinear
from adntn_cli.recipe.schema import Finetune
from adntn_cli.tn import StructureSpec

CFG = Finetune(epochs=3, lr=1e-2, warmup=0.1, checkpoint_every=4)
GLOBAL_BATCH = 16
TOL = {"rtol": 1e-4, "atol": 1e-6}  # float32 sums in another order over 12 steps


def _setup():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 3))
    student = nn.Sequential(
        GeneratedLinear.from_module(teacher[0], StructureSpec("ttn", bond_dim=3)),
        nn.ReLU(),
        nn.Linear(32, 3),
    )
    student[2].load_state_dict(teacher[2].state_dict())
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(80, 12, generator=g), torch.randint(0, 3, (80,), generator=g)
    data = Datasets(
        torch.utils.data.TensorDataset(x[:64], y[:64]),
        torch.utils.data.TensorDataset(x[64:], y[64:]),
        3,
        "toy",
    )
    return teacher, student, data


def _run(
    rank: int, world: int, port: int, ckpt: str, out: str, stop: int | None, resume: bool,
    save_delay: float = 0.0,
):  # fmt: skip
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(1)
    d, device = init(torch.device("cpu"))
    _record_exits(Path(out).with_suffix(f".exit{rank}"), Path(out))
    teacher, student, data = _setup()
    train, val = loaders(data, GLOBAL_BATCH // world, seed=3, rank=rank, world=world)
    finetune(
        teacher, student, train, val, CFG, checkpoints=Path(ckpt), device=device,
        resume=resume, stop_after=stop, dist=d,
    )  # fmt: skip
    if d.main:
        time.sleep(save_delay)  # widens the window in which another rank could leave early
        torch.save(student.state_dict(), out)
    finish()  # a barrier, then os._exit: gloo's threads cannot abort the exit


def _record_exits(marker: Path, watched: Path) -> None:
    """Make ``os._exit`` first write to ``marker`` whether ``watched`` exists at that moment."""
    real = os._exit

    def exit_(code: int) -> None:
        marker.write_text(f"{code} {watched.exists()}")
        real(code)

    os._exit = exit_


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(
    world: int, ckpt: Path, out: Path, stop: int | None = None, resume: bool = False,
    save_delay: float = 0.0,
):  # fmt: skip
    args = (world, _free_port(), str(ckpt), str(out), stop, resume, save_delay)
    mp.spawn(_run, args=args, nprocs=world, join=True)  # raises unless every rank exits 0
    return torch.load(out, weights_only=True)


def _one_process(ckpt: Path, stop: int | None = None, resume: bool = False) -> dict:
    teacher, student, data = _setup()
    train, val = loaders(data, GLOBAL_BATCH, seed=3)
    finetune(teacher, student, train, val, CFG, checkpoints=ckpt, resume=resume, stop_after=stop)
    return student.state_dict()


def _assert_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **TOL, msg=k)


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    one = _one_process(tmp_path / "one")
    two = _spawn(2, tmp_path / "two", tmp_path / "two.pt")
    _assert_close(two, one)
    assert not torch.equal(two["2.weight"], _setup()[1].state_dict()["2.weight"])  # it trained


@pytest.mark.slow
def test_a_run_of_two_processes_resumed_by_one_ends_at_the_same_weights(tmp_path):
    one = _one_process(tmp_path / "one")
    _spawn(2, tmp_path / "cut", tmp_path / "cut.pt", stop=6)  # mid-epoch (4 steps per epoch)
    assert (tmp_path / "cut" / "last.pt").exists()
    resumed = _one_process(tmp_path / "cut", resume=True)
    _assert_close(resumed, one)


@pytest.mark.slow
def test_no_rank_leaves_before_rank_0_has_written(tmp_path):
    out = tmp_path / "two.pt"
    _spawn(2, tmp_path / "two", out, save_delay=2.0)
    for rank in (0, 1):  # each rank left through finish, after rank 0's file existed
        assert out.with_suffix(f".exit{rank}").read_text() == "0 True"


def test_one_process_is_the_default():
    assert Dist().main and not Dist().enabled
