"""Property: whatever a user writes in a recipe or on the command line, ``adntn plan`` ends with
exit code 0 or 2, never a traceback; a 2 comes with exactly one short ``error:`` line (or, for
an option Typer itself refuses, Typer's usage message).

Hypothesis mutates a valid recipe (drops and adds keys, puts values of the wrong type, random
strings and numbers, selectors, structures and options anywhere in the tree) and the command's
arguments; ``plan`` is cheap (meta-device model), so each example takes milliseconds to a second.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from adntn_cli.cli.app import app, register_commands
from adntn_cli.models import build_model
from adntn_cli.recipe.schema import ACTIVATION_NAMES, STRUCTURE_NAMES

register_commands()
runner = CliRunner()

BASE: dict[str, Any] = {
    "version": 1,
    "model": {"arch": "demo_vgg", "num_classes": 10, "input_size": 32},
    "defaults": {"structure": "ttn", "activation": "tanh"},
    "layers": [
        {"select": "classifier.0", "target_ratio": 300},
        {"select": "classifier.3", "structure": "tt", "bond_dim": 3},
        {"select": "features.8", "structure": "mera", "bond_dim": [2, 3, 4]},
    ],
    "limits": {"memory_gb": 2},
    "distill": {"layerwise": {"steps": 5}, "finetune": {"epochs": 1, "lr": 0.001}},
    "data": {"train": "synthetic:64", "batch_size": 16},
}
KEYS = ["version", "model", "arch", "num_classes", "input_size", "defaults", "layers", "select",
        "exclude", "structure", "bond_dim", "target_ratio", "activation", "output_activation",
        "factors", "out", "in", "n_legs", "options", "limits", "memory_gb", "distill",
        "layerwise", "finetune", "data", "train", "batch_size", "workers", "mixing",
        "disentangler", "leg_dim", "top_legs", "mixing_activation", "checkpoint_every"]  # fmt: skip
OPTIONS = {"mixing": ["none", "siblings", "boundary", "all", 3],
           "mixing_activation": [*ACTIVATION_NAMES, "os.system", None],
           "disentangler": ["full", "separable", "none", "torch.nn.Linear"],
           "leg_dim": [1, 2, 3, 4, 9, 0, -1, "4"], "top_legs": [1, 2, 3, 8, 0, "two"]}  # fmt: skip
SELECTORS = ["classifier.0", "classifier.*", "classifier.?", "re:classifier\\.(0|3)", "re:(",
             "re:.*", "type:Linear", "type:Conv2d", "type:", "type:MultiheadAttention", "*",
             "features.[0-4]", "features.8", "nope", "", " ", "[",
             "re:features\\.\\d+"]  # fmt: skip

numbers = st.one_of(
    st.integers(-3, 40),
    st.sampled_from([0, 1, 2, 64, 257, 1024, 10**6, 2**40, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
)
scalars = st.one_of(
    numbers, st.booleans(), st.none(), st.text(max_size=12),
    st.sampled_from([*STRUCTURE_NAMES, *ACTIVATION_NAMES, *SELECTORS, "os.system",
                     "torch.nn.Linear", "__import__('os')", "digits", "imagefolder:/nope"]),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in the document: ``()`` is the root, then keys and list indices."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _get(doc: Any, path: tuple) -> Any:
    for p in path:
        doc = doc[p]
    return doc


@st.composite
def recipes(draw: st.DrawFn) -> dict[str, Any]:
    """``BASE`` after one to four random edits."""
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(doc)))
        node = _get(doc, path)
        op = draw(st.sampled_from(["delete", "replace", "add", "selector", "structure",
                                   "option", "bond_dim"]))  # fmt: skip
        rule = _get(doc, path[:2]) if path[:1] == ("layers",) and len(path) >= 2 else None
        if op == "delete" and path:
            parent = _get(doc, path[:-1])
            if isinstance(parent, dict | list) and (not isinstance(parent, list) or parent):
                del parent[path[-1]]
        elif op == "replace" and path:
            _get(doc, path[:-1])[path[-1]] = draw(values)
        elif op == "add" and isinstance(node, dict):
            node[draw(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)))] = draw(values)
        elif op == "add" and isinstance(node, list):
            node.append(draw(values))
        elif isinstance(rule, dict):
            if op == "selector":
                sel = draw(st.one_of(st.sampled_from(SELECTORS), st.text(max_size=10)))
                key = draw(st.sampled_from(["select", "exclude"]))
                rule[key] = [sel] if key == "exclude" or draw(st.booleans()) else sel
            elif op == "structure":
                rule["structure"] = draw(st.sampled_from([*STRUCTURE_NAMES, "attn", "os.system"]))
                if draw(st.booleans()):
                    rule["activation"] = draw(st.sampled_from([*ACTIVATION_NAMES, "swish"]))
            elif op == "option":
                key = draw(st.sampled_from(sorted(OPTIONS)))
                rule.setdefault("options", {})[key] = draw(st.sampled_from(OPTIONS[key]))
            elif op == "bond_dim":
                rule.pop("target_ratio", None)
                rule["bond_dim"] = draw(
                    st.one_of(st.integers(1, 40), st.lists(st.integers(1, 12), max_size=5))
                )
    return doc


@st.composite
def arguments(draw: st.DrawFn, state_dict: str) -> list[str]:
    """MODEL and the options of ``plan``: valid more often than not, sometimes wrong."""
    model = draw(st.sampled_from(["torchvision:demo_vgg"] * 3 + [state_dict] * 3
                                 + ["torchvision:vgg99", "missing.pt"]))  # fmt: skip
    args = [model]
    if model == state_dict or draw(st.booleans()):
        args += ["--arch", draw(st.sampled_from(["demo_vgg"] * 4 + ["alexnet", "os.path"]))]
    if draw(st.booleans()):
        args += [
            "--memory-gb",
            draw(st.sampled_from(["0.5", "2", "8", "0.01", "0.001", "-1", "x"])),
        ]
    if draw(st.booleans()):
        args += ["--batch", str(draw(st.sampled_from([1, 7, 64, 4096, 10**7, 0])))]
    if draw(st.booleans()):
        args += ["--num-classes", str(draw(st.sampled_from([10, 10, 1, 1000, 0, -2])))]
    if draw(st.booleans()):
        args.append("--json")
    return args


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    torch.save(build_model("demo_vgg", 10).state_dict(), root / "teacher.pt")
    return root


def _check(result, args: list[str]) -> None:
    assert result.exit_code in (0, 2), f"exit {result.exit_code} for {args}:\n{result.output}"
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), args
    if result.exit_code == 0:
        if "--json" in args:
            assert json.loads(result.stdout)["layers"] is not None
        return
    lines = result.stderr.strip().splitlines()
    if lines and lines[0].startswith("Usage: adntn plan"):  # Typer's own refusal of an option
        assert "Error" in result.stderr and "Invalid value" in result.stderr, result.stderr
        return
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{args}\n{result.stderr}"
    assert len(lines[0]) < 600, lines[0]


@settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(doc=recipes(), data=st.data())
def test_plan_never_ends_in_a_traceback(files, doc, data):
    _check(*run_plan(files, doc, data))


def run_plan(files: Path, doc: dict[str, Any], data: st.DataObject):
    """``adntn plan`` on ``doc`` (written to a file) with drawn arguments: (result, argv)."""
    args = data.draw(arguments(str(files / "teacher.pt")))
    recipe = files / "r.yaml"
    if data.draw(st.integers(0, 9)) == 0:  # now and then, text that is not YAML at all
        text = yaml.safe_dump(doc, sort_keys=False)
        cut = data.draw(st.integers(0, len(text)))
        recipe.write_text(text[:cut] + data.draw(st.text(max_size=6)) + text[cut:])
    else:
        recipe.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    args = ["plan", args[0], "--recipe", str(recipe), *args[1:]]
    return runner.invoke(app, args), args
