"""``torchrun -m adntn_cli compress``: two CPU processes (gloo) run one job; rank 0 alone
prints and writes."""

import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from adntn_cli.cli.app import app, register_commands
from adntn_cli.models import build_model
from tests.cli.tiny import tiny_recipe

register_commands()

RECIPE = tiny_recipe(2, 3)


def _files(tmp_path):
    torch.manual_seed(0)
    torch.save(build_model("demo_vgg", 10).state_dict(), tmp_path / "t.pt")
    (tmp_path / "r.yaml").write_text(RECIPE)


COMPRESS = ["compress", "t.pt", "--recipe", "r.yaml", "--data", "synthetic:64", "--device", "cpu",
            "--out", "run"]  # fmt: skip
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]

# Runs the adntn command with rank 0's model write delayed, and each rank's os._exit recording
# whether the model file existed when that rank left.
SLOW_SAVE = """\
import os, sys, time
from pathlib import Path
import adntn_cli.job as pipeline
real_save, real_exit = pipeline.save_compressed, os._exit
def slow_save(*args, **kwargs):
    time.sleep(3)
    return real_save(*args, **kwargs)
def exit_(code):
    seen = Path("run/model.safetensors").exists()
    Path(f"exit{os.environ['RANK']}").write_text(f"{code} {seen}")
    real_exit(code)
pipeline.save_compressed, os._exit = slow_save, exit_
from adntn_cli.cli import main
main()
"""


def _torchrun(tmp_path, *cmd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*TORCHRUN, *cmd], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.slow
def test_torchrun_two_processes_write_one_run(tmp_path):
    _files(tmp_path)
    done = _torchrun(tmp_path, "-m", "adntn_cli", *COMPRESS)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("replaced layers") == 1  # one summary: rank 0's
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["processes"] == 2
    assert report["finetune"] == {"step": 6, "total": 6, "interrupted": False}  # 48 / 16 x 2
    assert (tmp_path / "run" / "model.safetensors").exists()
    assert not list((tmp_path / "run").glob("**/.*.tmp*"))


def test_a_global_batch_that_does_not_split_is_refused_before_any_process_group(
    tmp_path, monkeypatch
):
    _files(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    result = CliRunner().invoke(
        app,
        ["compress", str(tmp_path / "t.pt"), "--recipe", str(tmp_path / "r.yaml"),
         "--data", "synthetic:64", "--device", "cpu", "--out", str(tmp_path / "run")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "data.batch_size 16 does not split evenly over 3 processes" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_no_torchrun_rank_exits_before_rank_0_has_written_the_model(tmp_path):
    _files(tmp_path)
    (tmp_path / "slow_save.py").write_text(SLOW_SAVE)
    done = _torchrun(tmp_path, "slow_save.py", *COMPRESS)
    assert done.returncode == 0, done.stderr[-2000:]
    for rank in (0, 1):  # both left through distributed.finish, after the file existed
        assert (tmp_path / f"exit{rank}").read_text() == "0 True"
