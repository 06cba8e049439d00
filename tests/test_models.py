"""Loading models: state dicts, key mismatches, and no pickle without the explicit flag."""

import pytest
import torch

from adntn_cli.errors import ModelError
from adntn_cli.models import build_model, load_model


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (str(self.marker), "w"))


def test_a_malicious_pickle_is_refused_by_default(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(Evil(marker), path)
    with pytest.raises(ModelError, match="--allow-pickle"):
        load_model(str(path), "demo_vgg")
    assert not marker.exists()


def test_state_dict_round_trip_and_mismatch(tmp_path):
    model = build_model("demo_vgg", 10)
    pt, st = tmp_path / "m.pt", tmp_path / "m.safetensors"
    torch.save(model.state_dict(), pt)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(st))
    for path in (pt, st):
        loaded = load_model(str(path), "demo_vgg").state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ModelError, match="does not fit vgg11"):
        load_model(str(pt), "vgg11")
    with pytest.raises(ModelError, match="name the architecture"):
        load_model(str(pt))
