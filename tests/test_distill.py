"""Distillation: layer-wise fitting, the KD loss, BatchNorm recalibration, exact resume."""

import copy
import re

import pytest
import torch
from torch import nn

from adntn_cli.data import Datasets, loaders
from adntn_cli.distill import finetune, kd_loss, layerwise_fit, recalibrate_batchnorm
from adntn_cli.errors import TrainingDivergedError
from adntn_cli.layers import GeneratedLinear
from adntn_cli.recipe.schema import Finetune
from adntn_cli.tn import StructureSpec

SPEC = StructureSpec("ttn", bond_dim=4, activation="tanh")


def test_layerwise_fit_lowers_the_output_error_tenfold():
    torch.manual_seed(0)
    # A teacher layer the structure can represent: a generated weight plus small noise.
    source = GeneratedLinear(96, 64, SPEC)
    teacher = nn.Sequential(nn.Linear(96, 64))
    with torch.no_grad():
        w = source.generator()
        teacher[0].weight.copy_(w + 0.01 * w.std() * torch.randn_like(w))
    student = copy.deepcopy(teacher)
    student[0] = GeneratedLinear.from_module(teacher[0], SPEC)
    batches = [torch.randn(64, 96) for _ in range(4)]
    errors = layerwise_fit(teacher, student, ["0"], batches, steps=600, lr=2e-2)
    assert errors["0"]["final"] < errors["0"]["initial"] / 10


def test_kd_loss_is_zero_for_identical_logits_and_scales_with_t_squared():
    logits = torch.randn(8, 10)
    assert float(kd_loss(logits, logits, None, 4.0, 1.0)) == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(8, 10)
    a = kd_loss(other, logits, None, 1.0, 1.0)
    b = kd_loss(other * 2, logits * 2, None, 2.0, 1.0)
    assert float(b) == pytest.approx(4 * float(a), rel=1e-5)


def test_batchnorm_recalibration():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    x = 3 + 2 * torch.randn(256, 4)
    assert recalibrate_batchnorm(model, [x[:128], x[128:]])
    expected = model[0](x).mean(0).detach()
    torch.testing.assert_close(model[1].running_mean, expected, rtol=1e-4, atol=1e-4)
    assert not recalibrate_batchnorm(nn.Linear(2, 2), [x])


def _setup(seed=0, n_train=60):
    torch.manual_seed(seed)
    teacher = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))
    student = copy.deepcopy(teacher)
    student[0] = GeneratedLinear.from_module(teacher[0], SPEC)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(72, 12, generator=g), torch.randint(0, 3, (72,), generator=g)
    data = Datasets(
        torch.utils.data.TensorDataset(x[:n_train], y[:n_train]),
        torch.utils.data.TensorDataset(x[n_train:], y[n_train:]),
        3,
        "toy",
    )
    train, val = loaders(data, batch_size=8, seed=5)
    return teacher, student, train, val


CFG = Finetune(epochs=2, lr=1e-2, warmup=0.1, checkpoint_every=3)


@pytest.mark.parametrize(
    "stop,n_train",
    [(5, 60), (8, 60), (13, 60), (8, 64), (11, 64)],
)  # 8 batches per epoch: mid-epoch, at an epoch boundary, with a partial last batch or without
def test_an_interrupted_run_resumed_ends_with_the_same_weights(tmp_path, stop, n_train):
    teacher, student, train, val = _setup(n_train=n_train)
    whole = finetune(teacher, student, train, val, CFG, checkpoints=tmp_path / "a")
    expected = copy.deepcopy(student.state_dict())
    assert not whole["interrupted"] and whole["step"] == 16

    teacher, student, train, val = _setup(n_train=n_train)
    part = finetune(teacher, student, train, val, CFG, checkpoints=tmp_path / "b", stop_after=stop)
    assert part["interrupted"] and part["step"] == stop
    # fresh objects, as a new process would build them
    teacher, student, train, val = _setup(n_train=n_train)
    with torch.no_grad():
        for p in student.parameters():
            p.normal_()  # nothing of the student may survive but the checkpoint
    torch.manual_seed(123)  # whatever happened to the RNG in between
    rest = finetune(teacher, student, train, val, CFG, checkpoints=tmp_path / "b", resume=True)
    assert rest["step"] == 16 and len(rest["history"]) == 16
    for key, value in expected.items():
        torch.testing.assert_close(student.state_dict()[key], value, rtol=0, atol=0)
    assert (tmp_path / "b" / "best.pt").exists()


def test_a_diverging_loss_stops_with_the_checkpoint_named(tmp_path):
    teacher, student, train, val = _setup()
    with torch.no_grad():
        student[3].weight.fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match="last good checkpoint"):
        finetune(teacher, student, train, val, CFG, checkpoints=tmp_path)


def test_layerwise_fit_leaves_attention_to_the_end_to_end_step():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x)[0]

    from adntn_cli.plan import compress_
    from adntn_cli.recipe import parse_recipe

    teacher = Tiny()
    student = copy.deepcopy(teacher)
    p = compress_(
        student, parse_recipe({"version": 1, "layers": [{"select": "attn", "bond_dim": 2}]})
    )
    assert p.layers[0].record["schedule"] == "materialise"
    assert layerwise_fit(teacher, student, ["attn"], [torch.randn(2, 5, 8)], steps=3, lr=1e-2) == {}
    assert student(torch.randn(2, 5, 8)).shape == (2, 5, 8)


def test_a_loss_turning_nan_mid_run_keeps_the_last_good_checkpoint(tmp_path):
    """NaN at step 5 (checkpoints every 3 steps): the error names last.pt, which holds exactly
    the state of a run stopped cleanly at step 3."""
    teacher, student, train, val = _setup()
    finetune(teacher, student, train, val, CFG, checkpoints=tmp_path / "ok", stop_after=3)
    good = torch.load(tmp_path / "ok" / "last.pt", weights_only=True)

    teacher, student, train, val = _setup()
    calls = []

    def poison(_module, _inputs, output):
        calls.append(1)
        return output * float("nan") if len(calls) == 5 else output

    teacher.register_forward_hook(poison)
    last = tmp_path / "bad" / "last.pt"
    with pytest.raises(
        TrainingDivergedError, match=re.escape(f"nan at step 5; the last good checkpoint is {last}")
    ):
        finetune(teacher, student, train, val, CFG, checkpoints=tmp_path / "bad")
    kept = torch.load(last, weights_only=True)
    assert kept["step"] == good["step"] == 3
    for key, value in good["model"].items():
        assert torch.isfinite(kept["model"][key].float()).all()
        torch.testing.assert_close(kept["model"][key], value, rtol=0, atol=0)


def test_finetune_length_is_steps_or_epochs_or_the_default_by_data():
    from adntn_cli.recipe.schema import MAX_STEPS, MIN_STEPS

    assert Finetune(steps=70).total_steps(per_epoch=500) == 70
    assert Finetune(epochs=1.5).total_steps(per_epoch=500) == 750
    assert Finetune().total_steps(per_epoch=10) == MIN_STEPS  # small data: at least MIN_STEPS
    assert Finetune().total_steps(per_epoch=860) == 6020  # Fashion-MNIST: 7 passes
    assert Finetune().total_steps(per_epoch=10**6) == MAX_STEPS
    with pytest.raises(ValueError, match="steps or epochs, not both"):
        Finetune(steps=5, epochs=1)


def test_dropout_off_leaves_dropout_layers_passing_their_input():
    from adntn_cli.distill import train_mode

    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.BatchNorm1d(4))
    train_mode(model, dropout=False)
    assert model[0].training and not model[1].training and model[2].training
    train_mode(model)
    assert model[1].training


def test_the_feature_loss_is_the_relative_error_of_the_replaced_outputs_and_trains_them(tmp_path):
    from adntn_cli.distill import FeatureMatch

    teacher, student, train, val = _setup()
    match = FeatureMatch(teacher, student)
    x = torch.randn(5, 12)
    teacher(x), student(x)
    with torch.no_grad():
        t, s = teacher[0](x), student[0](x)
    expected = (s - t).pow(2).sum() / t.pow(2).sum()
    torch.testing.assert_close(match.loss(), expected)
    match.remove()
    teacher(x), student(x)
    assert not match.outputs  # the hooks are gone

    def error():
        with torch.no_grad():
            xs = torch.cat([b[0] for b in train])
            return float(
                (student[0](xs) - teacher[0](xs)).pow(2).sum() / teacher[0](xs).pow(2).sum()
            )

    before = error()
    cfg = Finetune(steps=40, lr=1e-2, feature_weight=10.0, kd_weight=1.0)
    finetune(teacher, student, train, val, cfg, checkpoints=tmp_path)
    assert error() < 0.5 * before  # the replaced layer moved toward the teacher's outputs
    assert not student[0]._forward_hooks  # finetune removed its hooks


def test_a_tie_on_held_out_top1_keeps_the_checkpoint_with_the_lower_loss(tmp_path, monkeypatch):
    """A small hold-out saturates at its best top-1 early: the first model to reach it is the
    least trained, so ties are broken by the held-out loss (the demo kept step 42 of 210)."""
    import adntn_cli.distill as distill

    scores = iter([(0.5, 0.9), (1.0, 0.6), (1.0, 0.2), (1.0, 0.4), (0.75, 0.1)])  # (top1, loss)
    monkeypatch.setattr(
        distill, "accuracy", lambda *a: dict(zip(("top1", "loss"), next(scores), strict=True))
    )
    teacher, student, train, val = _setup()
    cfg = Finetune(steps=5, lr=1e-2, eval_every=1)
    done = finetune(teacher, student, train, val, cfg, checkpoints=tmp_path)
    assert (done["best_top1"], done["best_step"]) == (1.0, 3)
    best = torch.load(tmp_path / "best.pt", weights_only=False)
    assert (best["best_step"], best["best_loss"]) == (3, 0.2)


def test_the_layerwise_targets_are_the_layers_outputs_before_an_in_place_activation():
    torch.manual_seed(0)
    # torchvision's AlexNet and VGG put ReLU(inplace=True) after their Linear and Conv2d layers
    teacher = nn.Sequential(nn.Linear(16, 12), nn.ReLU(inplace=True), nn.Linear(12, 4))
    student = copy.deepcopy(teacher)
    student[0] = GeneratedLinear.from_module(teacher[0], StructureSpec("tt", bond_dim=2))
    with torch.no_grad():
        student[0].generator.scale.zero_()  # outputs: the bias alone
        x = torch.randn(32, 16)
        y = teacher[0](x)  # pre-activation: half of it negative
    fit = layerwise_fit(teacher, student, ["0"], [x], steps=0, lr=1e-2)
    bias = teacher[0].bias.detach().expand_as(y)
    expected = float((bias - y).pow(2).sum() / y.pow(2).sum())
    assert fit["0"]["initial"] == pytest.approx(expected, rel=1e-5)
