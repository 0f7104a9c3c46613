"""pipeline.core.unet: the DDPM U-Net's shapes, size, attention placement, time conditioning and config checks."""
import time

import pytest
import torch
from torch import nn

from pipeline.config import ConfigError
from pipeline.core.unet import PRESETS, AttnBlock, build_unet, count_parameters, timestep_embedding, unet_config

SMALL = dict(ch=16, num_groups=8, dropout=0.0)  # same topology as a preset, few channels: fast on CPU




def randomize_(model: nn.Module) -> nn.Module:
    """Replace DDPM's near-zero init of the last layers so that every path visibly affects the output."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def test_ddpm_cifar10_has_the_papers_parameter_count():
    model = build_unet(unet_config("ddpm-cifar10"))
    assert count_parameters(model) == 35_746_307  # Ho et al. 2020 CIFAR-10 model (original TF code)


@pytest.mark.parametrize("preset,size,channels", [("tiny", 28, 1), ("mnist-small", 28, 1), ("ddpm-cifar10", 32, 3),
                                                  ("tiny", 32, 3)])
def test_output_has_the_input_shape(preset, size, channels):
    model = build_unet(unet_config(preset, SMALL, in_channels=channels, image_size=size)).eval()
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        eps = model(x, torch.tensor([0, 999]))
    assert eps.shape == x.shape and torch.isfinite(eps).all()


def test_attention_runs_exactly_at_the_configured_resolution_and_in_the_middle():
    cfg = unet_config("ddpm-cifar10", SMALL)  # 32 -> 16 -> 8 -> 4, attention at 16
    model = build_unet(cfg).eval()
    sides = []
    for m in model.modules():
        if isinstance(m, AttnBlock):
            m.register_forward_hook(lambda mod, inp, out: sides.append(inp[0].shape[-1]))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32), torch.tensor([10]))
    # down path: num_res_blocks at 16; up path: num_res_blocks + 1 at 16; middle: one at 4
    assert sorted(sides) == [4] + [16] * (2 * cfg.num_res_blocks + 1)


def test_time_embedding_changes_the_output_and_the_batch_does_not():
    model = randomize_(build_unet(unet_config("tiny", SMALL))).eval()
    x = torch.randn(3, 1, 28, 28)
    t = torch.tensor([5, 500, 900])
    with torch.no_grad():
        a = model(x, t)
        b = model(x, torch.tensor([6, 500, 900]))
        single = model(x[1:2], t[1:2])
    assert not torch.allclose(a[0], b[0], atol=1e-4)  # only image 0's t changed ...
    assert torch.allclose(a[1:], b[1:], atol=1e-5)  # ... and only image 0 changed
    assert torch.allclose(single[0], a[1], atol=1e-4)  # GroupNorm is per image: no batch coupling


def test_timestep_embedding_is_sin_then_cos_of_geometric_frequencies():
    t = torch.tensor([0, 7])
    emb = timestep_embedding(t, 8)
    freqs = 10000.0 ** (-torch.arange(4) / 3.0)
    assert torch.allclose(emb[1], torch.cat([torch.sin(7 * freqs), torch.cos(7 * freqs)]), atol=1e-6)
    assert emb[0].tolist() == [0.0] * 4 + [1.0] * 4


def test_tiny_step_is_fast_on_cpu():
    model = build_unet(unet_config("tiny"))
    x, t = torch.randn(8, 1, 28, 28), torch.zeros(8, dtype=torch.long)
    times = []
    for _ in range(3):  # the first is a warm-up; the best of the rest is robust to a busy machine
        t0 = time.perf_counter()
        model(x, t).square().mean().backward()
        times.append(time.perf_counter() - t0)
    assert min(times[1:]) < 1.0


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"model.preset.*'huge'.*ddpm-cifar10"):
        unet_config("huge")
    with pytest.raises(ConfigError, match=r"model.overrides.*'chanels'"):
        unet_config("tiny", {"chanels": 3})
    with pytest.raises(ConfigError, match=r"ch_mult.*28.*divisible by 8.*pad_to_32"):
        unet_config("ddpm-cifar10", in_channels=1, image_size=28)
    with pytest.raises(ConfigError, match=r"attn_resolutions.*\[28, 14, 7\]"):
        unet_config("tiny", {"attn_resolutions": [16]})
    with pytest.raises(ConfigError, match="num_groups"):
        unet_config("tiny", {"ch": 20})
    with pytest.raises(ConfigError, match="dropout"):
        unet_config("tiny", {"dropout": 1.5})
    with pytest.raises(ConfigError, match=r"in_channels.*does not match the data"):
        unet_config("tiny", {"in_channels": 3}, in_channels=1, image_size=28)


def test_presets_are_valid_as_written():
    for name, cfg in PRESETS.items():
        assert unet_config(name) == cfg
