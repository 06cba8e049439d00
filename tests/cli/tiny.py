"""The tiny compress job the CLI tests run: demo_vgg with one generated layer, synthetic data."""

import sys
from pathlib import Path

import torch

from adntn_cli.models import build_model


def tiny_recipe(epochs: float, checkpoint_every: int, layerwise_steps: int = 5) -> str:
    """A recipe replacing classifier.3 of demo_vgg (32x32, 10 classes), batch 16."""
    return f"""\
version: 1
model: {{arch: demo_vgg, num_classes: 10, input_size: 32}}
layers:
  - select: classifier.3
    bond_dim: 3
distill:
  layerwise: {{steps: {layerwise_steps}, batches: 1}}
  finetune: {{epochs: {epochs}, lr: 1.0e-3, checkpoint_every: {checkpoint_every}}}
data: {{batch_size: 16}}
"""


def write_job(folder: Path, recipe: str) -> None:
    """A seeded demo_vgg teacher (t.pt) and ``recipe`` (r.yaml) in ``folder``."""
    torch.manual_seed(0)
    torch.save(build_model("demo_vgg", 10).state_dict(), folder / "t.pt")
    (folder / "r.yaml").write_text(recipe)


def compress_command(folder: Path, out: Path, *extra: str, seed: int) -> list[str]:
    """``adntn compress`` of the job in ``folder`` as a subprocess argument list."""
    return [sys.executable, "-m", "adntn_cli.cli", "compress", str(folder / "t.pt"), "--recipe",
            str(folder / "r.yaml"), "--data", "synthetic:64", "--device", "cpu", "--seed",
            str(seed), "--out", str(out), *extra]  # fmt: skip


def cli_ok(result) -> str:
    """A CliRunner result that exited 0: its stdout (notes go to stderr)."""
    assert result.exit_code == 0, result.output
    return result.stdout


def cli_error(result) -> str:
    """A CliRunner result that exited 2 without a traceback: its last ``error:`` line."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: "), result.stderr
    return lines[-1]
