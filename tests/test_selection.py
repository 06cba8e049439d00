"""Honest selection: the best checkpoint is chosen on images held out of the training split,
the same ones every run, read without augmentation; the reported validation split is read by
the final evaluation alone."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import Dataset

from adntn_cli import job as job_module
from adntn_cli.data import holdout_count, make_datasets
from adntn_cli.errors import DataError
from adntn_cli.job import CompressJob, compress
from adntn_cli.recipe import load_recipe
from tests.cli.test_data_sources import idx_folder
from tests.cli.tiny import tiny_recipe, write_job


@pytest.mark.parametrize(
    ("n", "holdout", "count"),
    [(1000, None, 100), (60000, None, 5000), (1000, 0.25, 250), (1000, 37, 37), (1000, 0, 0),
     (1, None, 0), (12, 0.01, 1)],
)  # fmt: skip
def test_holdout_counts(n, holdout, count):
    assert holdout_count(n, holdout) == count


@pytest.mark.parametrize("holdout", [1000, 5000])
def test_a_holdout_that_leaves_no_training_image_is_refused(holdout):
    with pytest.raises(DataError, match="leaves no training images"):
        holdout_count(1000, holdout)


def test_the_held_out_images_are_the_same_every_run_and_disjoint_from_training():
    a = make_datasets("synthetic:64", 8, holdout=None)
    b = make_datasets("synthetic:64", 8, holdout=None)
    assert len(a.select) == 5 and len(a.train) == 43  # 10% of 48 training images
    assert a.select.indices == b.select.indices
    assert not set(a.select.indices) & set(a.train.indices)
    assert sorted(a.select.indices + a.train.indices) == list(range(48))
    assert "43 train / 5 select / 16 val" in a.description
    assert make_datasets("synthetic:64", 8).select is None  # the library's default: none


def test_held_out_images_are_read_without_augmentation(tmp_path):
    root = idx_folder(tmp_path / "fm", n_train=40, n_val=10)
    pre = {"augment": "flip"}
    data = make_datasets(f"fashion-mnist:{root}", 16, preprocess=pre, holdout=10)
    plain = make_datasets(f"fashion-mnist:{root}", 16, preprocess={}, holdout=10)
    assert data.augmented and len(data.select) == 10 and len(data.train) == 30
    for i in range(len(data.select)):  # the evaluation transform, not a random flip
        torch.testing.assert_close(data.select[i][0], plain.select[i][0], rtol=0, atol=0)
    assert data.train.dataset.transform is not data.select.dataset.transform


def test_the_recipe_takes_a_count_a_fraction_or_zero(tmp_path):
    for value in ("0", "0.2", "500"):
        path = tmp_path / "r.yaml"
        text = tiny_recipe(1, 10).replace("batch_size: 16", f"batch_size: 16, holdout: {value}")
        path.write_text(text)
        assert load_recipe(path)[0].data.holdout == json.loads(value)


class _Watched(Dataset):
    """A dataset that fails a test when read before the final evaluation began."""

    def __init__(self, inner: Dataset, flag: dict) -> None:
        self.inner, self.flag = inner, flag

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i):
        assert self.flag["evaluating"], "the reported split was read before the evaluation"
        self.flag["reads"] += 1
        return self.inner[i]


@pytest.mark.parametrize("cache", ["auto", "off"])
def test_the_reported_split_is_untouched_until_the_final_evaluation(tmp_path, monkeypatch, cache):
    recipe = tiny_recipe(2, 100).replace("{batch_size: 16}", "{batch_size: 16, holdout: 6}")
    recipe = recipe.replace(
        "distill:\n", f"distill:\n  train: replaced\n  cache_frozen_prefix: {cache}\n"
    )
    write_job(tmp_path, recipe)
    flag = {"evaluating": False, "reads": 0}
    make, evaluate = job_module.make_datasets, job_module.evaluate

    def watched_datasets(*args, **kwargs):
        data = make(*args, **kwargs)
        data.val = _Watched(data.val, flag)
        return data

    def evaluating(job, run):
        flag["evaluating"] = True
        return evaluate(job, run)

    monkeypatch.setattr(job_module, "make_datasets", watched_datasets)
    monkeypatch.setattr(job_module, "evaluate", evaluating)
    job = CompressJob.create(
        str(tmp_path / "t.pt"), tmp_path / "r.yaml", data="synthetic:64", out=tmp_path / "run",
        device="cpu",
    )  # fmt: skip
    report = compress(job)
    assert flag["reads"] == 16  # each image once, by the evaluation (both models in one pass)
    assert report.accuracy.val_images == 16
    assert report.frozen_prefix["used"] == (cache == "auto")
    sel = report.selection
    assert sel["split"] == "select" and sel["images"] == 6 and sel["best_step"] in (3, 6)
    written = json.loads((tmp_path / "run" / "report.json").read_text())
    assert written["selection"] == sel
    assert "held-out training images" in (tmp_path / "run" / "report.md").read_text()
