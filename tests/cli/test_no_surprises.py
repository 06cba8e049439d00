"""The CLI does what it says and nothing else: the demo deletes no folder it did not write, a
folder never shadows a shipped recipe, user text prints verbatim, and ``-h`` is ``--help``."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import adntn_cli.demo
import adntn_cli.recipe.load
from adntn_cli.cli.app import app, register_commands
from adntn_cli.recipe import load_recipe, parse_recipe
from tests.cli.tiny import tiny_recipe

register_commands()
runner = CliRunner()

FOLDER_NOTE = "note: ./demo is a folder; using the shipped recipe demo"


def _one_error(result) -> str:
    """The single ``error:`` line of a refused command (exit 2)."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _no_training(*_args, **_kwargs):
    raise AssertionError("the demo trained although it should have refused its --out")


@pytest.fixture
def fast_demo(monkeypatch):
    """The demo with a one-epoch teacher and a tiny distillation (seconds, not minutes)."""
    real = adntn_cli.demo.compress
    tiny = parse_recipe(yaml.safe_load(tiny_recipe(0.1, 1, layerwise_steps=2)), "tiny")

    def compress(job, callback=None):
        return real(dataclasses.replace(job, recipe=tiny), callback)

    monkeypatch.setattr(adntn_cli.demo, "TEACHER_EPOCHS", 1)
    monkeypatch.setattr(adntn_cli.demo, "compress", compress)

    def run(out: Path | str, *extra: str):
        return runner.invoke(app, ["demo", "--out", str(out), "--device", "cpu", "-q", *extra])

    return run


# 1. adntn demo --out DIR: a folder the demo did not write is refused unless --force


def test_demo_refuses_a_folder_it_did_not_write_and_leaves_it_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(adntn_cli.demo, "train_teacher", _no_training)
    out = tmp_path / "mine"
    out.mkdir()
    keep = bytes(range(256)) * 3
    (out / "keep.txt").write_bytes(keep)
    line = _one_error(runner.invoke(app, ["demo", "--out", str(out), "--device", "cpu", "-q"]))
    assert str(out) in line and "--force" in line and "keep.txt" in line, line
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_bytes() == keep


def test_demo_refuses_an_earlier_demo_that_holds_a_users_file(tmp_path, fast_demo, monkeypatch):
    out = tmp_path / "demo"
    assert fast_demo(out).exit_code == 0
    (out / "notes.txt").write_text("mine")
    monkeypatch.setattr(adntn_cli.demo, "train_teacher", _no_training)
    line = _one_error(fast_demo(out))
    assert str(out) in line and "--force" in line and "notes.txt" in line, line
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "teacher.pt").is_file() and (out / "compressed" / "report.json").is_file()


def test_demo_with_force_starts_a_users_folder_over(tmp_path, fast_demo):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = fast_demo(out, "--force")
    assert result.exit_code == 0, result.output
    assert not (out / "keep.txt").exists()
    assert (out / "teacher.pt").is_file() and (out / "compressed" / "model.safetensors").is_file()


def test_demo_out_demo_runs_twice_and_recognises_an_older_demo(tmp_path, fast_demo, monkeypatch):
    """``--out demo`` creates ./demo, which must not shadow the shipped recipe ``demo``; an
    earlier demo folder is started over, also one written before the demo left a marker."""
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        result = fast_demo("demo")
        assert result.exit_code == 0, result.output
        assert "note:" not in result.stderr  # the demo names its recipe by path: no ambiguity
    report = json.loads((tmp_path / "demo" / "compressed" / "report.json").read_text())
    assert report["command"][:2] == ["adntn", "demo"] and report["recipe"] == "demo"
    (tmp_path / "demo" / adntn_cli.demo.MARKER).unlink()  # as a demo of an older adntn left it
    result = fast_demo("demo")
    assert result.exit_code == 0, result.output


# 2. a shipped recipe's name is shadowed by a file of that name, never by a folder


def test_a_folder_named_like_a_shipped_recipe_does_not_shadow_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    result = runner.invoke(app, ["plan", "torchvision:demo_vgg", "--recipe", "demo", "--json"])
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines() == [FOLDER_NOTE]
    layers = [r["layer"] for r in json.loads(result.stdout)["layers"]]
    assert layers == ["classifier.0", "classifier.3"]  # the shipped demo recipe's two layers


def test_a_file_named_like_a_shipped_recipe_is_used_as_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").write_text(tiny_recipe(0.1, 1))
    result = runner.invoke(app, ["plan", "torchvision:demo_vgg", "--recipe", "demo", "--json"])
    assert result.exit_code == 0, result.output
    assert "note:" not in result.stderr
    assert [r["layer"] for r in json.loads(result.stdout)["layers"]] == ["classifier.3"]


def test_a_folder_that_is_no_shipped_recipe_is_called_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").mkdir()
    result = runner.invoke(app, ["plan", "torchvision:demo_vgg", "--recipe", "recipes"])
    line = _one_error(result)
    assert "'recipes' is a folder" in line and "demo" in line, line


def test_notes_reach_only_the_cli(tmp_path, monkeypatch, capsys, caplog):
    """The library logs its notes on logger ``adntn``; only the CLI prints them (as it runs)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    result = runner.invoke(app, ["plan", "torchvision:demo_vgg", "--recipe", "demo"])
    assert FOLDER_NOTE in result.stderr
    capsys.readouterr()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="adntn"):
        load_recipe("demo")
    assert [r.name for r in caplog.records] == ["adntn"]
    assert caplog.records[0].getMessage() == FOLDER_NOTE.removeprefix("note: ")
    assert capsys.readouterr().err == ""


def test_a_note_prints_its_text_verbatim(monkeypatch):
    real = adntn_cli.recipe.load.parse_recipe

    def parse(data, source="<recipe>"):
        logging.getLogger("adntn").info("stripped [bold]module.[/] from :cat: 3 keys")
        return real(data, source)

    monkeypatch.setattr(adntn_cli.recipe.load, "parse_recipe", parse)
    result = runner.invoke(app, ["plan", "torchvision:demo_vgg", "--recipe", "demo"])
    assert result.exit_code == 0, result.output
    assert "note: stripped [bold]module.[/] from :cat: 3 keys\n" in result.stderr


# 3. user text (paths, data specs) prints verbatim: no rich markup, no emoji codes


def test_a_model_path_with_markup_prints_verbatim(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["compress", "my[red]model.pt", "--recipe", "demo", "--data", "digits"]
    line = _one_error(runner.invoke(app, [*args, "--out", "o", "--device", "cpu", "-q"]))
    assert "my[red]model.pt" in line, line


@pytest.mark.parametrize("spec", ["imagefolder:cat", "imagefolder:x:cat:y"])
def test_a_data_spec_with_an_emoji_code_prints_verbatim(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    args = ["compress", "torchvision:demo_vgg", "--recipe", "demo", "--data", spec]
    line = _one_error(runner.invoke(app, [*args, "--out", "o", "--device", "cpu", "-q"]))
    assert f"{spec}:" in line and "\N{CAT FACE}" not in line, line


def test_an_internal_error_prints_its_text_verbatim(tmp_path, monkeypatch):
    def boom(*_args, **_kwargs):
        raise RuntimeError("bad [red]thing[/] :cat:")

    monkeypatch.setattr(adntn_cli.demo, "train_teacher", boom)
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--device", "cpu", "-q"])
    assert result.exit_code == 1, result.output
    assert "internal error: RuntimeError: bad [red]thing[/] :cat:" in result.stderr


# 4. -h is --help, for the app and every command


@pytest.mark.parametrize(
    "command", ["", *sorted(c.name or c.callback.__name__ for c in app.registered_commands)]
)
def test_dash_h_is_help(command):
    args = [command] if command else []
    short, long = runner.invoke(app, [*args, "-h"]), runner.invoke(app, [*args, "--help"])
    assert short.exit_code == 0, short.output
    assert "Usage: adntn" in short.stdout, short.stdout
    assert short.stdout == long.stdout
