"""Security: adntn runs no code it was not asked to run.

Recipes name registered structures, activations, architectures and data sources, never Python
import paths; no file is unpickled without --allow-pickle (model files, and checkpoints on
--resume); safetensors headers and metadata have size limits; recipes have size and depth limits.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from adntn_cli.cli.app import app, register_commands
from adntn_cli.errors import ModelError, UnsafeFileError
from adntn_cli.io import MAX_METADATA_BYTES, load_compressed, read_metadata
from adntn_cli.models import build_model

register_commands()
runner = CliRunner()
PKG = Path(__file__).resolve().parents[1] / "adntn_cli"

EVIL = "adntn_sentinel_evil"
SENTINEL = """\
import pathlib
pathlib.Path({marker!r}).write_text("imported")
def boom(*args, **kwargs):
    pathlib.Path({marker!r}).write_text("called")
class Boom:
    def __reduce__(self):
        return (boom, ())
"""


@pytest.fixture()
def evil(tmp_path, monkeypatch):
    """An importable module that leaves a marker file when imported or called."""
    marker = tmp_path / "marker"
    (tmp_path / f"{EVIL}.py").write_text(SENTINEL.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(EVIL, None)
    yield marker
    sys.modules.pop(EVIL, None)


RECIPE = {
    "version": 1,
    "model": {"arch": "demo_vgg", "num_classes": 10, "input_size": 32},
    "layers": [{"select": "classifier.3", "bond_dim": 3}],
}
NAME = f"{EVIL}.boom"
# Every recipe field that names something, set to an import path.
PLACES = [
    ("layers", 0, "structure"),
    ("layers", 0, "activation"),
    ("layers", 0, "output_activation"),
    ("defaults", "structure"),
    ("defaults", "activation"),
    ("layers", 0, "options", "mixing_activation"),
    ("layers", 0, "options", "mixing"),
    ("layers", 0, "options", "disentangler"),
    ("layers", 0, "select"),
    ("model", "arch"),
]


def _with(path: tuple, value: str) -> dict:
    doc = json.loads(json.dumps(RECIPE))
    node = doc
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(node, dict) else node[key]
    node[path[-1]] = value
    if path[-1] == "disentangler":
        doc["layers"][0]["structure"] = "augttn"
    return doc


def _demo_vgg_state() -> dict:
    from adntn_cli.models import build_model

    return build_model("demo_vgg", 10).state_dict()


CASES = [(p, v) for p in PLACES for v in (NAME, "os.system", "torch.nn.Linear")]
CASES.append((("layers", 0, "select"), f"type:{EVIL}.Boom"))


@pytest.mark.parametrize(
    "place,value", CASES, ids=[f"{'.'.join(map(str, p))}={v}" for p, v in CASES]
)
def test_recipes_never_import_what_they_name(tmp_path, evil, place, value):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(_with(place, value)))  # JSON is YAML
    weights = tmp_path / "t.safetensors"  # plan reads its keys and shapes, never code
    from safetensors.torch import save_file

    save_file(_demo_vgg_state(), str(weights))
    result = runner.invoke(app, ["plan", str(weights), "--recipe", str(recipe)])
    assert result.exit_code == 2, result.output
    assert not evil.exists() and EVIL not in sys.modules
    line = result.stderr.strip()
    assert line.startswith("error: ") and "\n" not in line
    assert any(
        hint in line
        for hint in ("Input should be", "has no option", "matches no", "unknown", "valid:")
    ), line


@pytest.mark.parametrize(
    "args",
    [
        ["plan", f"torchvision:{NAME}", "--recipe", "demo"],
        ["layers", "torchvision:demo_vgg", "--arch", NAME, "--template"],
        ["compress", "torchvision:demo_vgg", "--recipe", "demo", "--data", f"{EVIL}:boom"],
        ["compress", "torchvision:demo_vgg", "--recipe", "demo", "--device", NAME],
    ],
    ids=["model", "arch", "data", "device"],
)
def test_command_line_names_are_not_imported_either(tmp_path, evil, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "o")] if "compress" in args
                           else args)  # fmt: skip
    assert not evil.exists() and EVIL not in sys.modules
    assert result.exit_code in (0, 2), result.output  # `layers` ignores --arch for torchvision:
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_a_pickled_model_is_not_unpickled_without_the_flag(tmp_path, evil):
    from adntn_cli.models import load_model

    sys.path.insert(0, str(tmp_path))
    import adntn_sentinel_evil as mod

    path = tmp_path / "m.pt"
    torch.save({"x": mod.Boom()}, path)
    evil.unlink()  # importing it above left the marker; what matters is what loading does
    del sys.modules[EVIL]
    with pytest.raises(ModelError, match="--allow-pickle"):
        load_model(str(path), "demo_vgg")
    assert not evil.exists() and EVIL not in sys.modules
    # the control: with the flag the file's code does run, which the marker shows
    with pytest.raises(ModelError, match=r"expects a pickled nn\.Module"):
        load_model(str(path), "demo_vgg", allow_pickle=True)
    assert evil.read_text() == "called"


def test_resume_never_unpickles_a_checkpoint(tmp_path, evil):
    """A run directory from elsewhere cannot run code through --resume: checkpoints are read
    with weights_only (tensors, numbers, strings, containers)."""
    sys.path.insert(0, str(tmp_path))
    import adntn_sentinel_evil as mod

    teacher = tmp_path / "t.pt"
    torch.save(build_model("demo_vgg", 10).state_dict(), teacher)
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    torch.save({"model": {}, "payload": mod.Boom()}, out / "checkpoints" / "layerwise.pt")
    evil.unlink()
    del sys.modules[EVIL]
    result = runner.invoke(app, ["compress", str(teacher), "--recipe", "demo", "--data",
                                 "synthetic:32", "--out", str(out), "--resume", "--device",
                                 "cpu", "-q"])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "not a readable adntn checkpoint" in result.stderr and "--force" in result.stderr
    assert not evil.exists() and EVIL not in sys.modules


# -- size limits ----------------------------------------------------------------------------------
def _adntn_file(tmp_path: Path, recipe: str, extra: dict[str, str] | None = None) -> Path:
    path = tmp_path / "m.safetensors"
    meta = {"format": "adntn/1", "arch": "demo_vgg", "num_classes": "10", "recipe": recipe}
    save_file({"w": torch.zeros(2)}, str(path), metadata={**meta, **(extra or {})})
    return path


def test_metadata_over_the_limit_is_refused(tmp_path):
    path = _adntn_file(tmp_path, "{}", {"padding": "x" * (MAX_METADATA_BYTES + 1)})
    assert path.stat().st_size < 64 * 2**20  # under the header limit: the metadata limit bites
    with pytest.raises(UnsafeFileError, match=r"metadata holds 1,048,6\d\d bytes, over the limit"):
        read_metadata(path)
    for args in (["report", str(path)], ["eval", str(path), "--data", "synthetic:8",
                                         "--device", "cpu"]):  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "over the limit of 1,048,576" in result.stderr


def test_an_embedded_recipe_nested_too_deeply_is_refused(tmp_path):
    path = _adntn_file(tmp_path, "[" * 200_000 + "]" * 200_000)
    with pytest.raises(ModelError, match="damaged adntn metadata"):
        load_compressed(path)
    deep = '{"version": 1, "layers": ' + "[" * 500 + "]" * 500 + "}"
    with pytest.raises(ModelError, match="too large or too deeply nested"):
        load_compressed(_adntn_file(tmp_path, deep))


# -- the source: no dynamic imports or evaluation of user strings -----------------------------
FORBIDDEN_CALLS = {"eval", "exec", "__import__", "compile"}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = (
                f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            )
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(
                f.value, ast.Name) else ""  # fmt: skip
            yield node, owner, name


def test_the_source_imports_nothing_by_a_name_it_is_given():
    """No eval/exec/__import__/compile, no importlib outside the package's fixed lazy table,
    yaml only through safe_load, torch.load only with weights_only=True except under
    --allow-pickle."""
    unsafe_loads = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        for node, owner, name in _calls(ast.parse(path.read_text())):
            where = f"{rel}:{node.lineno}"
            if isinstance(node.func, ast.Name):
                assert name not in FORBIDDEN_CALLS, f"{where} calls {name}()"
            assert owner != "pickle", f"{where} uses pickle.{name}"
            assert not (owner == "yaml" and name in ("load", "unsafe_load", "full_load")), where
            if name == "import_module":
                assert rel == "__init__.py", f"{where} imports by name"
            if owner == "torch" and name == "load":
                safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True
                           for k in node.keywords)  # fmt: skip
                if not safe:
                    unsafe_loads.append(where)
    assert [w.split(":")[0] for w in unsafe_loads] == ["models.py"], unsafe_loads


def test_the_lazy_table_is_fixed_and_points_inside_the_package():
    import adntn_cli

    targets = [*adntn_cli._LAZY.values(), *(m for m, _ in adntn_cli._RENAMED.values())]
    assert all(t.startswith("adntn_cli.") for t in targets)
    with pytest.raises(AttributeError):
        getattr(adntn_cli, "os")  # noqa: B009


def test_data_paths_in_a_recipe_resolve_beside_the_recipe_not_the_shell(tmp_path, monkeypatch):
    """End to end: the recipe's ``imagefolder:imgs`` is read from the recipe's folder (here a
    folder without class folders, so the error shows which path was read)."""
    sub = tmp_path / "sub"
    for split in ("train", "val"):
        (sub / "imgs" / split).mkdir(parents=True)
    text = json.dumps({**RECIPE, "data": {"train": "imagefolder:imgs", "batch_size": 4}})
    (sub / "r.yaml").write_text(text)
    teacher = tmp_path / "t.pt"
    torch.save(build_model("demo_vgg", 10).state_dict(), teacher)
    monkeypatch.chdir(tmp_path)  # ./imgs does not exist here
    result = runner.invoke(app, ["compress", str(teacher), "--recipe", "sub/r.yaml", "--out",
                                 str(tmp_path / "o"), "--device", "cpu", "-q"])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert f"Couldn't find any class folder in {sub / 'imgs' / 'train'}" in result.stderr
