"""The embedded demo, whole: its accuracy target is checked here (about a minute on 2 cores)."""

import json

import pytest
from typer.testing import CliRunner

from adntn_cli.cli.app import app, register_commands

register_commands()


@pytest.mark.slow
def test_demo_compresses_1000x_within_a_point_of_dense_and_runs_twice(tmp_path):
    runner = CliRunner()
    for _ in range(2):  # running it twice works
        result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--quiet"])
        assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "demo" / "compressed" / "report.json").read_text())
    assert all(r["ratio"] >= 1000 for r in report["layers"])
    assert {r["layer"] for r in report["layers"]} == {"classifier.0", "classifier.3"}
    acc = report["accuracy"]
    assert acc["compressed"]["top1"] >= acc["dense"]["top1"] - 0.01
    assert "dense" in result.output and "compressed" in result.output
    # teacher.pt describes itself: eval needs neither --arch nor --input-size (it said
    # "internal error: mat1 and mat2 shapes cannot be multiplied" at 224x224 before)
    demo = tmp_path / "demo"
    evaluated = runner.invoke(app, ["eval", str(demo / "teacher.pt"), "--data", "digits",
                                    "--baseline", str(demo / "compressed"), "--json"])  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    scores = json.loads(evaluated.stdout)
    assert scores["input_size"] == 32 and scores["top1"] == pytest.approx(acc["dense"]["top1"])
