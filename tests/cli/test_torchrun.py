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


@pytest.mark.slow
def test_torchrun_two_processes_write_one_run(tmp_path):
    _files(tmp_path)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "adntn_cli",
        "compress", "t.pt", "--recipe", "r.yaml", "--data", "synthetic:64", "--device", "cpu",
        "--out", "run",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
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
