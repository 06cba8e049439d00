"""The typed report: it serialises to report.json's keys in their order, reads like that dict,
and reads back from it."""

import json

from adntn_cli.report import (
    Accuracy,
    CompressionReport,
    EvalResult,
    LayerRecord,
    Scores,
    Totals,
    format_legs,
)

RECORD = LayerRecord("fc", "Linear", "ttn", [8, 8], [[2, 2], [2, 2], [2, 2]], [3], 64, 20, 100,
                     256, 1.5, "contract", 3.2)  # fmt: skip


def _run_report() -> CompressionReport:
    return CompressionReport(
        layers=[RECORD], totals=Totals.of(100, [RECORD]), recipe="r.yaml", model="t.pt",
        arch="demo_vgg", data="digits", seed=0, versions={"torch": "x"}, git_commit=None,
        accuracy=Accuracy(Scores(0.9, 1.0, 0.3), Scores(0.8, 1.0, 0.5), 0.85, 10),
        seconds=1.0, run_dir="runs/x",
    )  # fmt: skip


def test_a_run_report_keeps_report_json_order_and_reads_back():
    report = _run_report()
    data = report.to_dict()
    assert list(data) == ["recipe", "model", "arch", "data", "seed", "versions", "git_commit",
                          "layers", "totals", "accuracy", "seconds"]  # fmt: skip
    assert data["git_commit"] is None and "run_dir" not in data
    assert data["layers"][0]["ratio"] == 3.2 and list(data["layers"][0])[-1] == "ratio"
    assert CompressionReport.from_dict(json.loads(json.dumps(data))) == report
    assert report["accuracy"]["compressed"]["top1"] == 0.8  # reads like the dict


def test_a_plan_report_is_its_layers_and_totals_only():
    plan = CompressionReport(layers=[RECORD], totals=Totals.of(100, [RECORD]))
    assert list(plan.to_dict()) == ["layers", "totals"]
    assert plan.totals.compressed_params == 100 - 64 + 20


def test_an_eval_result_with_a_baseline_has_the_differences():
    a = EvalResult("m", "compressed", 0.8, 0.9, 0.5, 10, None, 20, 80, 40, {"1": 1.0}, "cpu", 32)
    b = EvalResult("t", "dense", 0.9, 1.0, 0.3, 10, 400, 100, 400, 400, {"1": 2.0}, "cpu", 32)
    data = a.against(b).to_dict()
    assert data["file_bytes"] is None and data["baseline"]["file_bytes"] == 400
    assert data["delta"]["params"] == -80


def test_legs_are_formatted_in_one_place():
    assert format_legs([[2, 2], [2, 2], [4, 1]]) == "2x2^2 4x1"
    assert format_legs([[2, 2], [4, 1]], compact=False) == "2x2 4x1"
