"""The wheel holds every module and the shipped recipes, which live in recipes/ at the top of the
repository and install as ``adntn_cli.recipes``: ``--recipe vgg16`` works from any folder."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (path,) = out.glob("adntn-*.whl")
    return path


@pytest.mark.slow
def test_the_wheel_holds_every_module_and_every_shipped_recipe(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "adntn_cli").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    recipes = {f"adntn_cli/recipes/{p.name}" for p in (ROOT / "recipes").glob("*.yaml")}
    assert {"adntn_cli/recipes/vgg16.yaml", "adntn_cli/recipes/demo.yaml"} <= recipes <= names


@pytest.mark.slow
def test_an_installed_wheel_finds_the_shipped_recipes_from_another_folder(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
         str(site), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    code = (
        "import adntn_cli; from adntn_cli.recipe import load_recipe; "
        "rec, src = load_recipe('vgg16'); print(adntn_cli.__file__, src, len(rec.layers))"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    where, source, _ = done.stdout.split()
    assert where.startswith(str(site)) and source == "vgg16"
