"""Every class of bad input, through the real CLI: exit code 2, one line naming the problem and
what would be valid, no traceback, and nothing written (the tree under the test's folder, where
--out points and the command runs, is byte for byte what it was)."""

from __future__ import annotations

import builtins
import errno
import io
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from adntn_cli.cli.app import app, register_commands
from adntn_cli.models import build_model
from tests.cli.tiny import tiny_recipe

register_commands()
runner = CliRunner()

RECIPE = tiny_recipe(0.1, 1, layerwise_steps=2)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A demo_vgg state dict, outside the folder each test watches."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(build_model("demo_vgg", 10).state_dict(), path)
    return path


@dataclass
class Ctx:
    """What a case builds its command from: the watched folder, a good teacher, a monkeypatch."""

    tmp: Path
    teacher: Path
    mp: pytest.MonkeyPatch
    armed: bool = False  # ``deny`` bites only while the command runs

    def recipe(self, text: str = RECIPE, name: str = "r.yaml") -> str:
        path = self.tmp / name
        path.write_text(text)
        return str(path)

    def rule(self, line: str) -> str:
        """The recipe with ``line`` added to its one layer rule."""
        return self.edit("bond_dim: 3", f"bond_dim: 3\n    {line}")

    def edit(self, old: str, new: str) -> str:
        assert old in RECIPE
        return self.recipe(RECIPE.replace(old, new))

    def plan(self, recipe: str, *extra: str) -> list[str]:
        return ["plan", "torchvision:demo_vgg", "--recipe", recipe, *extra]

    def compress(
        self, model: str | Path | None = None, *extra: str, recipe: str = "",
        data: str | None = "synthetic:32",
    ) -> list[str]:  # fmt: skip
        return ["compress", str(model or self.teacher), "--recipe", recipe or self.recipe(),
                *(["--data", data] if data else []), "--device", "cpu", "-q",
                "--out", str(self.out), *extra]  # fmt: skip

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def file(self, name: str, data: bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(data)
        return path

    def deny(self, target: Path) -> None:
        """Reading ``target`` (or anything below it) fails with EACCES, as for a file or folder
        this user may not read; injected because the tests may run as root."""
        target = str(target)

        def denied(path) -> bool:
            if not self.armed:
                return False
            try:
                p = os.fsdecode(path)
            except TypeError:
                return False  # a file descriptor
            return p == target or p.startswith(target + os.sep)

        def guard(real):
            def wrapped(path, *args, **kwargs):
                if denied(path):
                    raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
                return real(path, *args, **kwargs)

            return wrapped

        self.mp.setattr(builtins, "open", guard(builtins.open))
        self.mp.setattr(io, "open", guard(io.open))
        self.mp.setattr(os, "scandir", guard(os.scandir))


FIXTURES = Path(__file__).parents[1] / "fixtures"


class Config:  # a training script's own class, pickled into its checkpoint
    lr = 0.1


def _state(**changes: torch.Tensor | None) -> dict[str, torch.Tensor]:
    state = build_model("demo_vgg", 10).state_dict()
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            state.pop(key)
        else:
            state[key] = value
    return state


def _pt(ctx: Ctx, name: str, obj) -> Path:
    path = ctx.tmp / name
    torch.save(obj, path)
    return path


def _safetensors(ctx: Ctx, name: str) -> bytes:
    from safetensors.torch import save

    return save(build_model("demo_vgg", 10).state_dict())


def _imagefolder(ctx: Ctx, layout: str) -> str:
    root = ctx.tmp / "images"
    if layout in ("no class folders", "no images", "unreadable"):
        for split in ("train", "val"):
            (root / split).mkdir(parents=True)
            if layout != "no class folders":
                (root / split / "cat").mkdir()
    if layout == "unreadable":
        from PIL import Image

        for split in ("train", "val"):
            Image.new("RGB", (8, 8)).save(root / split / "cat" / "0.png")
        ctx.deny(root / "train")
    return f"imagefolder:{root}"


def _resume_with(ctx: Ctx, checkpoint: bytes | dict) -> list[str]:
    """A run directory whose layer-wise checkpoint is damaged or from another recipe."""
    stage = ctx.out / "checkpoints" / "layerwise.pt"
    stage.parent.mkdir(parents=True)
    if isinstance(checkpoint, bytes):
        stage.write_bytes(checkpoint)
    else:
        torch.save(checkpoint, stage)
    return ctx.compress(None, "--resume")


def _busy(ctx: Ctx) -> list[str]:
    ctx.out.mkdir()
    (ctx.out / "keep.txt").write_text("earlier work")
    return ctx.compress()


def _pickled_model(ctx: Ctx) -> list[str]:
    return ctx.compress(_pt(ctx, "whole.pt", build_model("demo_vgg", 10)))


Case = tuple[str, Callable[[Ctx], list[str]], list[str]]

ANCHORS = (  # 10 * 7^7 = 8 million list items from a 300-byte file
    "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
    + "".join(f"{x}: &{x} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
              for p, x in zip("abcdefg", "bcdefgh", strict=True))
    + "version: 1\nlayers: [*h]\n"
)  # fmt: skip
PICKLE_HINT = "--allow-pickle loads it (pickle runs code"
FORCE = "start over with --force"

CASES: list[Case] = [
    # -- the recipe ----------------------------------------------------------------------------
    ("malformed YAML", lambda c: c.plan(c.recipe("version: 1\nlayers: [\n  {select: x\n")),
     ["not valid YAML", "line 4, column 1"]),
    ("recipe is not a mapping", lambda c: c.plan(c.recipe("- 1\n- 2\n")),
     ["a recipe is a YAML mapping"]),
    ("wrong type", lambda c: c.plan(c.edit("bond_dim: 3", "bond_dim: three")),
     ["layers[0].bond_dim", "valid integer"]),
    ("out of range", lambda c: c.plan(c.edit("epochs: 0.1", "epochs: 0.1, kd_weight: 2")),
     ["distill.finetune.kd_weight", "less than or equal to 1"]),
    ("negative", lambda c: c.plan(c.edit("bond_dim: 3", "bond_dim: -4")),
     ["layers[0].bond_dim", "greater than or equal to 1"]),
    ("unknown key", lambda c: c.plan(c.edit("bond_dim: 3", "bondim: 3")),
     ["layers[0].bondim: unknown key; valid keys here: structure, bond_dim"]),
    ("unsupported version", lambda c: c.plan(c.edit("version: 1", "version: 7")),
     ["version: 7 is not supported; this adntn reads version 1"]),
    ("unknown structure", lambda c: c.plan(c.rule("structure: attn")),
     ["layers[0].structure", "'ttn', 'augttn', 'mera', 'tt' or 'lowrank'"]),
    ("unknown activation", lambda c: c.plan(c.rule("activation: swish")),
     ["layers[0].activation", "'tanh'"]),
    ("option of the wrong type (found by the fuzzer)",
     lambda c: c.plan(c.rule("structure: mera\n    options: {leg_dim: '4'}")),
     ["classifier.3", "mera option leg_dim must be a whole number, got '4'"]),
    ("unknown option", lambda c: c.plan(c.rule("options: {foo: 1}")),
     ["classifier.3", "ttn has no option 'foo'; valid: mixing"]),
    ("unknown activation in an option (found by the security test)",
     lambda c: c.plan(c.rule("options: {mixing_activation: swish}")),
     ["classifier.3", "unknown activation 'swish'; known: "]),
    ("selector matches nothing", lambda c: c.plan(c.edit("classifier.3", "classifier.9")),
     ["layers[0].select: 'classifier.9' matches no compressible layer", "closest layers:"]),
    ("invalid regex selector", lambda c: c.plan(c.edit("classifier.3", "'re:classifier.(3'")),
     ["layers[0].select", "is not a valid regex"]),
    ("invalid regex in exclude (found by the fuzzer)",
     lambda c: c.plan(c.rule("exclude: ['re:(']")),
     ["layers[0].exclude: 're:(' is not a valid regex"]),
    ("control characters in an unknown key (found by the fuzzer)",
     lambda c: c.plan(c.edit("model: {arch", 'model: {"a\\x0bb": 1, arch')),
     ["model.'a\\x0bb': unknown key; valid keys here: arch, num_classes"]),
    ("unknown type selector", lambda c: c.plan(c.edit("classifier.3", "type:Conv3d")),
     ["'type:Conv3d' matches no compressible layer", "compressible types here: Conv2d, Linear"]),
    ("factors that do not cover the weight",
     lambda c: c.plan(c.rule("factors: {out: [3, 3], in: [32, 32]}")),
     ["classifier.3", "output factors [3, 3] multiply to 9 < 1024 rows"]),
    ("a tree of one leg", lambda c: c.plan(c.rule("factors: {out: [1024], in: [1024]}")),
     ["ttn needs at least 2 physical legs", "use lowrank or explicit factors"]),
    ("target ratio out of reach", lambda c: c.plan(c.edit("bond_dim: 3", "target_ratio: 1.0e+9")),
     ["ttn cannot reach 1e+09x on 1024x1024", "target_ratio can be at most 14,980 here"]),
    ("bond dims over the memory budget",
     lambda c: c.plan(c.edit("bond_dim: 3", "bond_dim: 200"), "--memory-gb", "0.001"),
     ["needs about 33.7 MiB", "over the memory budget of 1.0 MiB", "taper bond_dim"]),
    ("no contraction order fits the budget",
     lambda c: c.plan(c.edit("bond_dim: 3", "bond_dim: 64\n    structure: mera"),
                      "--memory-gb", "0.001"),
     ["mera", "needs about 13.5 GiB", "over the memory budget of 1.0 MiB"]),
    ("recipe too large", lambda c: c.plan(c.recipe(RECIPE + "#" * 2**20 + "\n")),
     ["over the 1,048,576 a recipe may have"]),
    ("recipe nested too deeply", lambda c: c.plan(c.recipe("[" * 5000 + "]" * 5000)),
     ["nested too deeply"]),
    ("recipe that anchors blow up", lambda c: c.plan(c.recipe(ANCHORS)),
     ["too large or too deeply nested"]),
    # -- models and files ----------------------------------------------------------------------
    ("unknown architecture", lambda c: c.compress(None, "--arch", "vgg99"),
     ["unknown architecture 'vgg99'", "closest: vgg19"]),
    ("num_classes zero", lambda c: c.plan("demo", "--num-classes", "0"),
     ["num_classes 0", "at least 1 class"]),
    ("missing model file", lambda c: c.compress(c.tmp / "nope.pt"),
     ["nope.pt' is neither a file nor torchvision:NAME"]),
    ("missing recipe", lambda c: c.compress(None, recipe=str(c.tmp / "nope.yaml")),
     ["nope.yaml' is neither a file nor a shipped recipe", "demo"]),
    ("model is a directory", lambda c: c.compress((c.tmp / "d").mkdir() or c.tmp / "d"),
     ["is a directory: name the model file itself"]),
    ("unreadable model file", lambda c: c.deny(c.teacher) or c.compress(),
     ["cannot read", "teacher.pt: permission denied"]),
    ("unreadable recipe", lambda c: [*c.compress(recipe=c.recipe()), c.deny(c.tmp / "r.yaml")],
     ["r.yaml: cannot read the recipe (Permission denied)"]),
    ("state dict of other keys",
     lambda c: c.compress(_pt(c, "other.pt", _state(classifier__0__weight=None,
                                                     extra__weight=torch.zeros(2)))),
     ["does not fit demo_vgg: missing keys ['classifier.0.weight'], unexpected keys "
      "['extra.weight']"]),
    ("state dict of other shapes",
     lambda c: c.compress(_pt(c, "shapes.pt", _state(classifier__3__weight=torch.zeros(9, 9)))),
     ["does not fit demo_vgg", "size mismatch for classifier.3.weight"]),
    ("truncated safetensors",
     lambda c: c.compress(c.file("t.safetensors", _safetensors(c, "t")[:5000])),
     ["t.safetensors: not a readable safetensors file"]),
    ("corrupted safetensors header",
     lambda c: c.compress(c.file("c.safetensors", (16).to_bytes(8, "little") + b"{not json!}     "
                                 + bytes(64))),
     ["c.safetensors: not a readable safetensors file", "invalid JSON"]),
    ("absurd safetensors header size",
     lambda c: c.compress(c.file("h.safetensors", (2**62).to_bytes(8, "little") + b"{}")),
     ["not a readable safetensors file (header size", "at most 67108864"]),
    ("truncated .pt",
     lambda c: c.compress(c.file("t.pt", _pt(c, "x.pt", _state()).read_bytes()[:4096])),
     ["t.pt: the file is truncated or corrupted"]),
    ("garbage .pt", lambda c: c.compress(c.file("g.pt", bytes(range(256)) * 8)),
     ["g.pt is not a state dict written by torch.save"]),
    ("pickled whole model without the flag", _pickled_model, ["whole.pt pickles", PICKLE_HINT]),
    ("a checkpoint pickling a class of its training script",
     lambda c: c.compress(_pt(c, "ckpt.pth", {"model": _state(), "cfg": Config()})),
     ["ckpt.pth pickles tests.cli.test_bad_input.Config", PICKLE_HINT]),
    ("state dict of another architecture",
     lambda c: c.compress(_pt(c, "sq.pth", build_model("squeezenet1_1", 10).state_dict())),
     ["sq.pth does not fit demo_vgg", "the keys look like squeezenet1_1's",
      "pass --arch squeezenet1_1"]),
    ("classifier of another size than the recipe's",
     lambda c: c.compress(recipe=c.edit("num_classes: 10", "num_classes: 100")),
     ["the classifier has 10 outputs, the recipe (model.num_classes) says 100",
      "--num-classes 10"]),
    ("an already compressed file", lambda c: c.compress(FIXTURES / "format1.safetensors"),
     ["format1.safetensors is already compressed (format adntn/1)"]),
    ("a bare architecture name", lambda c: c.compress("vgg16"),
     ["'vgg16' is neither a file nor torchvision:NAME; did you mean torchvision:vgg16?"]),
    # -- data ----------------------------------------------------------------------------------
    ("unknown data source", lambda c: c.compress(data="mnist"),
     ["data 'mnist' is not a data source; valid: digits, synthetic[:N], imagefolder:PATH"]),
    ("no data given", lambda c: c.compress(data=None),
     ["no data: pass --data (e.g. digits, imagefolder:PATH) or set data.train"]),
    ("image folder missing", lambda c: c.compress(data=f"imagefolder:{c.tmp / 'none'}"),
     ["no train/ folder (expected train/CLASS/*.jpg)"]),
    ("image folder without class folders",
     lambda c: c.compress(data=_imagefolder(c, "no class folders")),
     ["Couldn't find any class folder", "images/train"]),
    ("image folder without images", lambda c: c.compress(data=_imagefolder(c, "no images")),
     ["Found no valid file for the classes cat", "Supported extensions are: .jpg"]),
    ("unreadable image folder", lambda c: c.compress(data=_imagefolder(c, "unreadable")),
     ["images/train: permission denied"]),
    ("cifar copy missing", lambda c: c.compress(data=f"cifar10:{c.tmp / 'c'}"),
     ["no dataset there (adntn never downloads: put cifar-10-batches-py/"]),
    # -- devices, options, run directories -----------------------------------------------------
    ("cuda without CUDA", lambda c: c.compress(None, "--device", "cuda"),
     ["--device cuda: no CUDA device here; valid: auto, cpu"]),
    ("unknown device", lambda c: c.compress(None, "--device", "tpu"),
     ["--device 'tpu' is not a device; valid: auto, cpu, cuda, cuda:N, mps"]),
    ("unknown cores dtype", lambda c: c.compress(None, "--cores-dtype", "float16"),
     ["cores dtype 'float16' is not offered; valid: float32, bfloat16"]),
    ("unknown precision", lambda c: c.compress(None, "--precision", "fp8"),
     ["--precision 'fp8': valid: auto, bf16, fp32"]),
    ("unknown precision in the recipe",
     lambda c: c.compress(recipe=c.edit("  layerwise:", "  precision: fp8\n  layerwise:")),
     ["distill.precision", "bf16"]),
    ("seed out of range", lambda c: c.compress(None, "--seed", str(2**70)),
     ["a seed is a whole number from 0 to 4294967295"]),
    ("non-empty output directory", _busy, ["out is not empty: pass --resume", "--force"]),
    ("resume and force", lambda c: c.compress(None, "--resume", "--force"),
     ["--resume and --force contradict each other"]),
    ("output is a file", lambda c: c.file("out", b"x") and c.compress(),
     ["--out", "is a file: name a directory"]),
    ("resume from a damaged checkpoint", lambda c: _resume_with(c, b"PK\x03\x04 broken"),
     ["layerwise.pt: not a readable adntn checkpoint (truncated or corrupted)", FORCE]),
    ("resume with another recipe's checkpoint",
     lambda c: _resume_with(c, {"model": {"w": torch.zeros(1)}, "errors": {}, "batchnorm": 0}),
     ["layerwise.pt does not fit the model this recipe builds: missing keys [",
      "unexpected keys ['w']", FORCE]),
]  # fmt: skip


def _tree(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every path below ``root`` with its size and modification time (None for folders)."""
    out: dict[str, tuple[int, int] | None] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(root))] = None if path.is_dir() else (st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("name,build,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    tmp_path, teacher, monkeypatch, name, build, expected
):
    if name == "cuda without CUDA" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # a default runs/ directory would show up in the tree
    ctx = Ctx(work, teacher, monkeypatch)
    args = [a for a in build(ctx) if a is not None]
    out_before = (work / "out").exists()
    before = _tree(work)

    ctx.armed = True
    result = runner.invoke(app, args)
    ctx.armed = False

    monkeypatch.undo()
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert len(lines[0]) < 600, lines[0]
    for part in expected:
        assert part in lines[0], lines[0]
    assert (work / "out").exists() == out_before
    assert _tree(work) == before, "the command changed files"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
@pytest.mark.parametrize("what", ["model", "data"])
def test_files_this_user_may_not_read_exit_2(tmp_path, teacher, what):
    """The same as the injected EACCES cases above, with real file modes (not as root)."""
    ctx = Ctx(tmp_path, teacher, pytest.MonkeyPatch())
    if what == "model":
        model = tmp_path / "locked.pt"
        shutil.copy(teacher, model)
        model.chmod(0)
        args, message = ctx.compress(model), "locked.pt: permission denied"
    else:
        data = _imagefolder(ctx, "no images")
        (tmp_path / "images" / "train").chmod(0)
        args, message = ctx.compress(data=data), "permission denied"
    try:
        result = runner.invoke(app, args)
    finally:
        for p in tmp_path.rglob("*"):
            p.chmod(0o755)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert not ctx.out.exists()
