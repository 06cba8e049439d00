"""Data sources: the bundled digits, synthetic data, local image folders, refusals."""

import pytest
import torch

from adntn_cli.data import EpochSampler, loaders, make_datasets, parse_data_spec
from adntn_cli.errors import DataError


def test_digits_split_is_deterministic_and_shaped_for_the_model():
    a = make_datasets("digits", image_size=32)
    b = make_datasets("digits", image_size=32)
    assert len(a.train) == 1438 and len(a.val) == 359 and a.num_classes == 10
    x, y = a.val[0]
    assert x.shape == (3, 32, 32) and 0 <= int(y) < 10
    torch.testing.assert_close(a.val.tensors[0], b.val.tensors[0])
    assert set(a.val.tensors[1].tolist()) == set(range(10))


def test_synthetic_and_loaders():
    d = make_datasets("synthetic:40", image_size=16, num_classes=7)
    assert len(d.train) + len(d.val) == 40
    train, _ = loaders(d, batch_size=8, seed=3)
    xb, yb = next(iter(train))
    assert xb.shape == (8, 3, 16, 16) and int(yb.max()) < 7
    again, _ = loaders(d, batch_size=8, seed=3)
    torch.testing.assert_close(next(iter(again))[0], xb)


def test_epoch_sampler_order_depends_on_seed_and_epoch_only_and_starts_mid_epoch():
    s = EpochSampler(10, seed=4)
    first = list(s)
    assert sorted(first) == list(range(10))
    s.set_epoch(1)
    second = list(s)
    assert second != first and sorted(second) == list(range(10))
    s.set_epoch(1, start=6)
    assert list(s) == second[6:] and len(s) == 4
    s.set_epoch(0)
    assert list(s) == first  # no hidden state: epoch 0 again is epoch 0's order
    assert list(EpochSampler(10, seed=5)) != first


def test_epoch_sampler_shards_cover_every_sample_with_equal_shares():
    shards = [EpochSampler(10, seed=1, rank=r, world=3) for r in range(3)]
    orders = [list(s) for s in shards]
    assert [len(o) for o in orders] == [4, 4, 4]
    assert set().union(*orders) == set(range(10))
    with pytest.raises(ValueError, match="rank 3"):
        EpochSampler(10, rank=3, world=3)


def test_loaders_leave_the_global_rng_alone():
    d = make_datasets("synthetic:40", image_size=8)
    train, val = loaders(d, batch_size=8, seed=3)
    state = torch.get_rng_state()
    list(train), list(val)
    assert torch.equal(torch.get_rng_state(), state)


def test_imagefolder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for k in range(2):
                Image.new("RGB", (40, 30), (k * 60, 100, 200)).save(folder / f"{k}.png")
    d = make_datasets(f"imagefolder:{tmp_path}", image_size=24)
    assert d.num_classes == 2 and len(d.train) == 4
    assert d.val[0][0].shape == (3, 24, 24)


@pytest.mark.parametrize(
    "spec,message",
    [
        ("mnist", "not a data source; valid: digits"),
        ("imagefolder:", "not a data source"),
        ("synthetic:2", "at least 4"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(DataError, match=message):
        parse_data_spec(spec)


def test_missing_local_copies_are_refused_not_downloaded(tmp_path):
    with pytest.raises(DataError, match="never downloads"):
        make_datasets(f"cifar10:{tmp_path}", image_size=32)
    with pytest.raises(DataError, match="no train/ folder"):
        make_datasets(f"imagefolder:{tmp_path}", image_size=32)


def test_data_paths_in_a_recipe_are_relative_to_the_recipe_file(tmp_path):
    from adntn_cli.resolved import relative_to_recipe

    recipe = tmp_path / "sub" / "r.yaml"
    assert relative_to_recipe("imagefolder:data/x", recipe) == f"imagefolder:{tmp_path}/sub/data/x"
    assert relative_to_recipe("cifar10:/abs/c", recipe) == "cifar10:/abs/c"
    assert relative_to_recipe("digits", recipe) == "digits"
