"""A run killed with SIGKILL (no handler, no last save) and started again with --resume ends with
the weights of an uninterrupted run, bitwise: the steps after the last checkpoint are redone
exactly, and what the killed process was writing is never taken for a checkpoint."""

from __future__ import annotations

import re
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from adntn_cli.checkpoints import load_checkpoint
from tests.cli.tiny import compress_command, tiny_recipe, write_job

# synthetic:64 -> 48 training images, 3 steps an epoch: 15 steps, last.pt every 2 steps, an
# evaluation (and maybe best.pt) at the end of every epoch
RECIPE = tiny_recipe(5, 2)
TOTAL, EVERY = 15, 2


def _command(tmp_path, out, *extra):
    return compress_command(tmp_path, out, *extra, seed=4)


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run_bitwise(tmp_path):
    write_job(tmp_path, RECIPE)

    whole = subprocess.run(_command(tmp_path, tmp_path / "whole", "-q"), capture_output=True,
                           text=True)  # fmt: skip
    assert whole.returncode == 0, whole.stderr

    cut = tmp_path / "cut"
    proc = subprocess.Popen(_command(tmp_path, cut), stderr=subprocess.PIPE, text=True)
    checkpointed = False
    for line in proc.stderr:  # plain progress lines
        if line.startswith(f"checkpoint {2 * EVERY}/"):
            checkpointed = True
        step = re.match(r"eval (\d+)/", line)
        if checkpointed and step and int(step.group(1)) % EVERY:  # between two checkpoints
            proc.kill()
            break
    proc.stderr.close()
    assert proc.wait(timeout=120) == -9, "the run ended before it could be killed"

    last = cut / "checkpoints" / "last.pt"
    saved = load_checkpoint(last)["step"]
    assert saved % EVERY == 0 and 2 * EVERY <= saved < TOTAL, saved
    assert not (cut / "model.safetensors").exists()

    resumed = subprocess.run(_command(tmp_path, cut, "--resume", "-q"), capture_output=True,
                             text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert not [p for p in cut.rglob("*") if ".tmp" in p.name], "temporary files left"
    assert len(load_checkpoint(last)["history"]) == TOTAL  # the redone steps are not doubled
    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(cut / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
