"""DDPM U-Net architectures as data: `UNetConfig` and the named `PRESETS`.

Torch-free, so config validation can list and check the presets without importing torch;
pipeline/core/unet.py builds the network from a `UNetConfig` and re-exports both names.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from pipeline.util.errors import ConfigError


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the DDPM U-Net; field names follow the original `diffusion` code."""

    ch: int = 128  # base channel count; level i has ch * ch_mult[i] channels
    ch_mult: tuple = (1, 2, 2, 2)  # one entry per resolution level; len - 1 downsamplings
    num_res_blocks: int = 2  # residual blocks per level on the down path (the up path has one more)
    attn_resolutions: tuple = (16,)  # feature-map sides (pixels) at which self-attention is applied
    dropout: float = 0.1
    in_channels: int = 3
    image_size: int = 32  # square images only
    out_channels: int | None = None  # None = in_channels (eps has the shape of x)
    num_groups: int = 32  # GroupNorm groups; every channel count must be divisible by it
    resamp_with_conv: bool = True  # a 3x3 conv in each down/upsampling (as in the paper)

    @property
    def resolutions(self) -> tuple:
        """Feature-map side at each level: image_size, image_size / 2, ..."""
        return tuple(self.image_size // 2**i for i in range(len(self.ch_mult)))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        d["attn_resolutions"] = list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unet config: unknown field(s) {unknown}; allowed: {sorted(known)}")
        d = dict(d)
        for key in ("ch_mult", "attn_resolutions"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


PRESETS: dict[str, UNetConfig] = {
    # Ho et al. 2020, CIFAR-10 model: 35.7M parameters.
    "ddpm-cifar10": UNetConfig(
        ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
        in_channels=3, image_size=32,
    ),
    # The same design scaled down for 28x28 MNIST (28 -> 14 -> 7), attention at 14: 6.5M parameters.
    "mnist-small": UNetConfig(
        ch=64, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(14,), dropout=0.1,
        in_channels=1, image_size=28,
    ),
    # For CPU: the embedded default and the tests. Few channels where the image is large (16 at
    # 28x28, 64 at 7x7), attention only at 7x7 (49 tokens), no dropout: 0.69M parameters. At equal
    # CPU time it beat a ch=32, ch_mult (1,2,2) variant (twice the cost per step) on held-out loss.
    "tiny": UNetConfig(
        ch=16, ch_mult=(1, 2, 4), num_res_blocks=1, attn_resolutions=(7,), dropout=0.0,
        in_channels=1, image_size=28, num_groups=8,
    ),
}
