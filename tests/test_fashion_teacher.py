"""The Fashion-MNIST study's teacher (benchmarks/accuracy/fashion_teacher.py) resumes where a
stopped run saved: the same steps on the same batches as a run never stopped. Shown on a small
convolutional model at 32x32 on 64 IDX images (the real one is AlexNet at 224x224)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.cli.test_data_sources import idx_folder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy"))
import fashion_teacher as ft


def _small(arch: str, num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 5, stride=4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5),
        nn.Linear(4 * 7 * 7, num_classes),
    )  # fmt: skip


@pytest.fixture
def small_teacher(tmp_path, monkeypatch):
    monkeypatch.setattr(ft, "build_model", _small)
    monkeypatch.setattr(ft, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(ft, "BATCH", 16)
    monkeypatch.setattr(ft, "PHASES", ((32, 1), (32, 1)))
    (tmp_path / "cache").mkdir()
    return idx_folder(tmp_path / "fashion", n_train=64, n_val=16)


def test_a_stopped_stage_resumes_to_the_weights_of_one_never_stopped(small_teacher, monkeypatch):
    whole, _ = ft.train(small_teacher, seed=3)
    ft._progress_path(3, "main").unlink()  # saved at its last step: this run starts over
    monkeypatch.setattr(ft, "SAVE_EVERY", -1)  # save after every step
    stopped = ft._Progress.save

    def save_then_stop(self, **state):  # as SIGTERM would, after step 5 of 8
        stopped(self, **state)
        if state["at"] == 5:
            self.stop = True

    monkeypatch.setattr(ft._Progress, "save", save_then_stop)
    monkeypatch.setattr(ft._Progress, "due", lambda self: True)
    with pytest.raises(SystemExit, match="stopped at step 5/8, saved"):
        ft.train(small_teacher, seed=3)
    monkeypatch.setattr(ft._Progress, "save", stopped)
    resumed, info = ft.train(small_teacher, seed=3)
    assert info["resumes"] == 1
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_stop_in_a_stages_last_step_is_saved_and_resumes_to_the_end(small_teacher, monkeypatch):
    whole, _ = ft.train(small_teacher, seed=3)
    calls = []

    def sigterm_in_the_last_step(self):
        calls.append(1)
        self.stop = len(calls) == 8
        return self.stop

    monkeypatch.setattr(ft._Progress, "due", sigterm_in_the_last_step)
    ft._progress_path(3, "main").unlink()
    ft.train(small_teacher, seed=3)  # ends normally: the stage is done, saved at step 8
    assert torch.load(ft._progress_path(3, "main"), weights_only=False)["at"] == 8
    resumed, info = ft.train(small_teacher, seed=3)
    assert info["resumes"] == 1
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_progress_saved_under_other_settings_is_not_resumed(small_teacher, monkeypatch):
    ft.train(small_teacher, seed=3)  # leaves its progress at the last step
    monkeypatch.setattr(ft, "LR", 2 * ft.LR)
    messages = []
    _, info = ft.train(small_teacher, seed=3, log=messages.append)
    assert info["resumes"] == 0
    assert any("saved under other settings; starting over" in m for m in messages)


def test_the_checkpoint_holds_its_record_and_an_older_one_is_read_from_its_json(small_teacher):
    path = ft.teacher_path(0)
    model = _small("alexnet", 10)
    ft._save(model, path, path.with_suffix(".json"), {"top1": 0.5, "polish": {}})
    path.with_suffix(".json").unlink()  # the record is the checkpoint's own
    assert ft._record(path) == {"top1": 0.5, "polish": {}}
    saved = {"state_dict": model.state_dict(), "arch": "alexnet", "num_classes": 10}
    torch.save(saved, path)  # as the first version wrote it: the record beside it
    assert ft._record(path) is None
    path.with_suffix(".json").write_text('{"top1": 0.25}')
    assert ft._record(path) == {"top1": 0.25}


def test_a_teacher_trained_on_a_gpu_is_cached_and_resumed_apart_from_the_cpus(monkeypatch):
    assert ft.teacher_path(0).name == "alexnet-fashion-224-s0.pt"  # the CPU's, as before
    assert ft.teacher_path(0, "cuda").name == "alexnet-fashion-224-s0-cuda.pt"
    progress = ft._progress_path(0, "main", "cuda").name
    assert progress == "alexnet-fashion-224-s0-cuda.main.progress.pt"
    monkeypatch.setattr(ft, "_bf16", lambda device: device.type == "cuda")
    cpu = ft._settings("main", 0, torch.device("cpu"))
    assert "device" not in cpu  # a CPU's progress saved before devices were recorded resumes
    cuda = ft._settings("main", 0, torch.device("cuda"))
    assert cuda == {**cpu, "device": "cuda", "precision": "bf16"}


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_a_named_precision_is_the_teachers_whatever_the_cpu(monkeypatch, precision):
    monkeypatch.setattr(ft, "PRECISION", precision)
    for device in ("cpu", "cuda"):
        assert ft._settings("main", 0, torch.device(device))["precision"] == precision


def test_a_cached_teachers_precision_is_kept_or_another_refused(small_teacher, monkeypatch):
    path = ft.teacher_path(0)
    ft._save(_small("alexnet", 10), path, path.with_suffix(".json"),
             {"top1": 0.5, "polish": {}, "precision": "bf16"})  # fmt: skip
    monkeypatch.setattr(ft, "PRECISION", "fp32")
    with pytest.raises(SystemExit, match="is bf16, not fp32; move it aside"):
        ft.fashion_teacher(small_teacher, 0)
    monkeypatch.setattr(ft, "PRECISION", "auto")
    messages = []
    assert ft.fashion_teacher(small_teacher, 0, messages.append)[0] == path
    assert ft.PRECISION == "bf16"
    assert messages == [f"teacher: bf16, as the one cached in {ft.CACHE} began"]


def test_auto_precision_resumes_progress_in_the_precision_it_began(small_teacher, monkeypatch):
    monkeypatch.setattr(ft, "PRECISION", "bf16")
    ft.train(small_teacher, seed=0)  # leaves its progress (saved at the last step)
    monkeypatch.setattr(ft, "PRECISION", "auto")
    assert ft._cached_precision(0, "cpu") == "bf16"
    ft._keep_cached_precision(0, "cpu", print)
    assert ft.PRECISION == "bf16"
