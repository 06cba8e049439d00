"""A process stopped by SIGTERM or Ctrl-C saves, exits 130, and resumes to the same weights."""

import signal
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from tests.cli.tiny import compress_command, tiny_recipe, write_job

RECIPE = tiny_recipe(30, 100000)


def _command(tmp_path, out, *extra):
    return compress_command(tmp_path, out, *extra, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_exits_130_and_resume_matches_an_uninterrupted_run(tmp_path, sig):
    write_job(tmp_path, RECIPE)

    whole = subprocess.run(_command(tmp_path, tmp_path / "whole", "-q"), capture_output=True,
                           text=True)  # fmt: skip
    assert whole.returncode == 0, whole.stderr

    proc = subprocess.Popen(_command(tmp_path, tmp_path / "cut"), stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # plain progress lines: wait until training is under way
        if line.startswith("finetune 20/"):
            proc.send_signal(sig)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, rest
    assert f"{signal.Signals(sig).name} at step" in rest and "--resume" in rest
    assert (tmp_path / "cut" / "checkpoints" / "last.pt").exists()

    resumed = subprocess.run(_command(tmp_path, tmp_path / "cut", "--resume", "-q"),
                             capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
