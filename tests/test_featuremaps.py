"""The shape probe that finds the feature map a Linear reads after a flatten."""

import torch
import torchvision
from torch import nn

from adntn_cli.featuremaps import linear_input_maps
from adntn_cli.models import demo_vgg


def test_alexnet_and_vgg_fc6_read_their_maps():
    assert linear_input_maps(torchvision.models.alexnet(num_classes=10), 224) == {
        "classifier.1": (256, 6, 6)
    }
    vgg = torchvision.models.vgg11(num_classes=10)
    assert linear_input_maps(vgg, 224) == {"classifier.0": (512, 7, 7)}
    assert linear_input_maps(demo_vgg(), 32, names=["classifier.3"]) == {}
    assert linear_input_maps(demo_vgg(), 32, names=["classifier.0"]) == {
        "classifier.0": (128, 4, 4)
    }


def test_the_probe_leaves_the_model_as_it_was():
    model = demo_vgg().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    linear_input_maps(model, 32)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


class _ReadsValues(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 30 * 30, 2)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:  # data-dependent control flow: no meta run
            y = -y
        return self.fc(y.flatten(1))


def test_a_vector_input_and_a_model_the_probe_cannot_run_give_no_map():
    assert linear_input_maps(torchvision.models.resnet18(num_classes=10), 64) == {}  # 512x1x1
    assert linear_input_maps(_ReadsValues(), 32) == {}
