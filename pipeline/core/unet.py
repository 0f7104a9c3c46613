"""The DDPM U-Net of Ho et al. 2020 ("Denoising Diffusion Probabilistic Models", Appendix B).

A noise-prediction network eps_theta(x_t, t): a PixelCNN++-style U-Net of wide
residual blocks (GroupNorm -> SiLU -> 3x3 conv, with the timestep embedding added
between the two convolutions), single-head self-attention at chosen resolutions,
strided-conv downsampling, nearest-neighbour + conv upsampling, and skip
connections from every block of the down path to the up path.

    model = build_unet(unet_config("ddpm-cifar10", {}, in_channels=3, image_size=32))
    eps = model(x, t)        # x: [B, C, H, W], t: LongTensor [B] in [0, T) -> eps: [B, C, H, W]

Resolution constraint: every downsampling halves the side exactly, so the image side
must be divisible by 2 ** (len(ch_mult) - 1). 28x28 MNIST works with three levels
(28 -> 14 -> 7); four levels need 32x32 (MNIST with `pad_to_32: true`).
`unet_config` checks this, and every other field, before a model is built. When the
data's size differs from a preset's, the preset's attention stays at the same level
(ddpm-cifar10 on 64x64 images attends at 32), unless attn_resolutions is overridden.
"""
from __future__ import annotations

import math
from dataclasses import fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.util.errors import ConfigError
from pipeline.core.unet_presets import PRESETS, UNetConfig  # noqa: F401  (re-exported: unet.PRESETS, unet.UNetConfig)


def check(cfg: UNetConfig, where: str = "model.overrides") -> UNetConfig:
    """Raise ConfigError naming the field if `cfg` cannot build a working U-Net."""

    def bad(key: str, value, allowed: str):
        raise ConfigError(f"{where}.{key}: {value!r} is not allowed; {allowed}")

    for key in ("ch", "num_res_blocks", "in_channels", "image_size", "num_groups"):
        value = getattr(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            bad(key, value, "expected an integer >= 1")
    if cfg.out_channels is not None and (not isinstance(cfg.out_channels, int) or cfg.out_channels < 1):
        bad("out_channels", cfg.out_channels, "expected null or an integer >= 1")
    if not cfg.ch_mult or not all(isinstance(m, int) and m >= 1 for m in cfg.ch_mult):
        bad("ch_mult", list(cfg.ch_mult), "expected a non-empty list of integers >= 1")
    if not (isinstance(cfg.dropout, (int, float)) and 0.0 <= cfg.dropout < 1.0):
        bad("dropout", cfg.dropout, "expected a number in [0, 1)")
    for m in (1, *cfg.ch_mult):
        if (cfg.ch * m) % cfg.num_groups:
            bad("num_groups", cfg.num_groups,
                f"GroupNorm needs every channel count (ch * ch_mult = {[cfg.ch * k for k in cfg.ch_mult]}) "
                "to be divisible by it")
    factor = 2 ** (len(cfg.ch_mult) - 1)
    if cfg.image_size % factor:
        bad("ch_mult", list(cfg.ch_mult),
            f"{len(cfg.ch_mult)} levels halve the side {len(cfg.ch_mult) - 1} times, so image_size "
            f"{cfg.image_size} must be divisible by {factor}; use fewer levels (28x28 MNIST: at most 3) "
            "or pad MNIST to 32x32 (data pad_to_32: true)")
    reached = cfg.resolutions
    for r in cfg.attn_resolutions:
        if r not in reached:
            bad("attn_resolutions", list(cfg.attn_resolutions),
                f"each entry must be a feature-map side the network reaches: {list(reached)}")
    return cfg


def unet_config(preset: str, overrides: dict | None = None, in_channels: int | None = None,
                image_size: int | None = None) -> UNetConfig:
    """A checked UNetConfig: PRESETS[preset] with `overrides` applied, sized to the data.

    `in_channels`/`image_size` come from the data; an override that contradicts them
    is a ConfigError (the model would not fit the data).
    """
    if preset not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset {preset!r}; known presets: {sorted(PRESETS)}")
    overrides = dict(overrides or {})
    known = {f.name for f in fields(UNetConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"model.overrides: unknown field(s) {unknown}; allowed: {sorted(known)}")
    for key, value in (("in_channels", in_channels), ("image_size", image_size)):
        if value is None:
            continue
        if key in overrides and overrides[key] != value:
            raise ConfigError(
                f"model.overrides.{key}: {overrides[key]!r} does not match the data, which has {key} = {value}"
            )
        overrides[key] = value
    for key in ("ch_mult", "attn_resolutions"):
        if key in overrides:
            if not isinstance(overrides[key], (list, tuple)):
                raise ConfigError(f"model.overrides.{key}: {overrides[key]!r} is not allowed; expected a list")
            overrides[key] = tuple(overrides[key])
    base = PRESETS[preset]
    cfg = replace(base, **overrides)
    if "attn_resolutions" not in overrides and cfg.resolutions != base.resolutions:
        # A preset's attention stays at the same level of the U-Net when the image size or
        # the number of levels changes (tiny attends at its lowest level: 7 at 28x28, 8 at 32x32).
        levels = [base.resolutions.index(r) for r in base.attn_resolutions]
        cfg = replace(cfg, attn_resolutions=tuple(cfg.resolutions[i] for i in levels if i < len(cfg.resolutions)))
    return check(cfg)


# ---------------------------------------------------------------------------- layers


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017, Sec. 3.5; DDPM's variant).

    t: [B] -> [B, dim]; frequencies 10000^(-k / (half - 1)), sin half then cos half.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - 1))
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _init(module: nn.Module, scale: float = 1.0) -> nn.Module:
    """DDPM's init: variance_scaling(scale, 'fan_avg', 'uniform') = Xavier-uniform with gain sqrt(scale), zero bias.

    scale=1e-10 on the last layer of each residual branch makes every block start
    close to the identity (the original code does the same).
    """
    nn.init.xavier_uniform_(module.weight, gain=math.sqrt(scale))
    nn.init.zeros_(module.bias)
    return module


class ResBlock(nn.Module):
    """h = conv(dropout(silu(norm(conv(silu(norm(x))) + proj(silu(temb)))))); out = shortcut(x) + h."""

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = _init(nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.temb_proj = _init(nn.Linear(temb_ch, out_ch))
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _init(nn.Conv2d(out_ch, out_ch, 3, padding=1), scale=1e-10)
        # the original's "nin_shortcut": a 1x1 conv when the channel count changes
        self.shortcut = _init(nn.Conv2d(in_ch, out_ch, 1)) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, residual (the original's attn_block)."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.q = _init(nn.Conv2d(ch, ch, 1))
        self.k = _init(nn.Conv2d(ch, ch, 1))
        self.v = _init(nn.Conv2d(ch, ch, 1))
        self.proj_out = _init(nn.Conv2d(ch, ch, 1), scale=1e-10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        # [B, C, H, W] -> [B, 1 head, H*W, C]
        q, k, v = (m(h).reshape(B, 1, C, H * W).transpose(2, 3) for m in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v
        h = h.transpose(2, 3).reshape(B, C, H, W)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Halve H and W: a stride-2 3x3 conv (or 2x2 average pooling when resamp_with_conv is false)."""

    def __init__(self, ch: int, with_conv: bool):
        super().__init__()
        self.conv = _init(nn.Conv2d(ch, ch, 3, stride=2, padding=1)) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if self.conv is not None else F.avg_pool2d(x, 2)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour, then a 3x3 conv."""

    def __init__(self, ch: int, with_conv: bool):
        super().__init__()
        self.conv = _init(nn.Conv2d(ch, ch, 3, padding=1)) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class Level(nn.Module):
    """The blocks of one resolution level on one path: ResBlocks, each optionally followed by attention."""

    def __init__(self, blocks: list[ResBlock], attn: list[nn.Module], resample: nn.Module | None):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)  # empty when the level has no attention
        self.resample = resample


class UNet(nn.Module):
    """eps_theta(x_t, t) of Ho et al. 2020. forward(x [B, C, H, W], t LongTensor [B]) -> eps [B, C_out, H, W]."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        check(cfg, where="unet")
        self.config = cfg
        ch, groups = cfg.ch, cfg.num_groups
        temb_ch = 4 * ch
        self.temb = nn.Sequential(_init(nn.Linear(ch, temb_ch)), nn.SiLU(), _init(nn.Linear(temb_ch, temb_ch)))
        self.conv_in = _init(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))

        n_levels = len(cfg.ch_mult)
        skip_ch = [ch]  # channels of every tensor pushed onto the skip stack
        block_in = ch
        self.down = nn.ModuleList()
        for i, mult in enumerate(cfg.ch_mult):
            use_attn = cfg.resolutions[i] in cfg.attn_resolutions
            blocks, attn = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(block_in, ch * mult, temb_ch, cfg.dropout, groups))
                block_in = ch * mult
                if use_attn:
                    attn.append(AttnBlock(block_in, groups))
                skip_ch.append(block_in)
            down = Downsample(block_in, cfg.resamp_with_conv) if i != n_levels - 1 else None
            if down is not None:
                skip_ch.append(block_in)
            self.down.append(Level(blocks, attn, down))

        self.mid_block1 = ResBlock(block_in, block_in, temb_ch, cfg.dropout, groups)
        self.mid_attn = AttnBlock(block_in, groups)
        self.mid_block2 = ResBlock(block_in, block_in, temb_ch, cfg.dropout, groups)

        self.up = nn.ModuleList()
        for i in reversed(range(n_levels)):
            use_attn = cfg.resolutions[i] in cfg.attn_resolutions
            blocks, attn = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock(block_in + skip_ch.pop(), ch * cfg.ch_mult[i], temb_ch, cfg.dropout, groups))
                block_in = ch * cfg.ch_mult[i]
                if use_attn:
                    attn.append(AttnBlock(block_in, groups))
            up = Upsample(block_in, cfg.resamp_with_conv) if i != 0 else None
            self.up.append(Level(blocks, attn, up))
        assert not skip_ch  # every skip is consumed exactly once

        self.norm_out = nn.GroupNorm(groups, block_in)
        self.conv_out = _init(nn.Conv2d(block_in, cfg.out_channels or cfg.in_channels, 3, padding=1), scale=1e-10)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        temb = self.temb(timestep_embedding(t, self.config.ch).to(x.dtype))

        hs = [self.conv_in(x)]
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(hs[-1], temb)
                if level.attn:
                    h = level.attn[j](h)
                hs.append(h)
            if level.resample is not None:
                hs.append(level.resample(hs[-1]))

        h = self.mid_block2(self.mid_attn(self.mid_block1(hs[-1], temb)), temb)

        for level in self.up:
            for j, block in enumerate(level.block):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
                if level.attn:
                    h = level.attn[j](h)
            if level.resample is not None:
                h = level.resample(h)

        return self.conv_out(F.silu(self.norm_out(h)))


def build_unet(cfg: UNetConfig) -> UNet:
    """The U-Net for a (checked) config, in float32 on the CPU, in train mode."""
    return UNet(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
