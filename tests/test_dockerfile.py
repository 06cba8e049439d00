"""The Dockerfile, checked without a Docker engine: rules hadolint would hold us to, and ours."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
LINES = [
    line.strip()
    for line in (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    if line.strip() and not line.strip().startswith("#")
]


def instructions(name):
    return [line.split(None, 1)[1] for line in LINES if line.split(None, 1)[0].upper() == name]


def _version(text):
    return tuple(int(x) for x in text.split(".")[:2])


def test_base_image_is_pinned_and_its_torch_satisfies_our_pins():
    (arg,) = [a for a in instructions("ARG") if a.startswith("BASE=")]
    image = arg.split("=", 1)[1]
    assert ":" in image and not image.endswith(":latest")
    torch_version = re.match(r"pytorch/pytorch:(\d+\.\d+)\.\d+-cuda", image).group(1)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if d.startswith("torch>=")]
    low, high = re.match(r"torch>=([\d.]+),<([\d.]+)", pin).groups()
    assert _version(low) <= _version(torch_version) < _version(high)
    assert _version(torch_version) >= (2, 6)  # adntn export --onnx needs it


def test_runs_as_a_non_root_user_with_volumes_and_an_exec_form_entrypoint():
    users = instructions("USER")
    assert users and users[-1] not in ("root", "0")
    assert LINES.index(f"USER {users[-1]}") < next(
        i for i, line in enumerate(LINES) if line.startswith("ENTRYPOINT")
    )
    (entry,) = instructions("ENTRYPOINT")
    assert json.loads(entry) == ["adntn"]
    volumes = json.loads(instructions("VOLUME")[0])
    assert "/data" in volumes and "/runs" in volumes


def test_install_keeps_the_base_torch_and_caches_nothing():
    runs = " ".join(instructions("RUN"))
    assert re.search(r'pip install --no-cache-dir "\.\[onnx\]"', runs)  # adntn and its onnx extra
    assert not re.search(r"pip install[^&]*\btorch\b", runs)
    assert not instructions("ADD")  # COPY only: no remote fetches at build time


def test_dockerignore_keeps_the_context_small():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "runs"} <= set(ignored)


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not installed")
def test_hadolint():
    subprocess.run(["hadolint", str(ROOT / "Dockerfile")], check=True)
