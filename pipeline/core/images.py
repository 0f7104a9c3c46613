"""uint8 images and the model's value range, and tiling images into one picture.

    from_uint8(x uint8 [..] in 0..255) -> float32 in [-1, 1]     (x / 127.5 - 1, the DDPM data scaling)
    to_uint8(x float in [-1, 1]) -> uint8                         ((x + 1) * 127.5, rounded and clamped)
    tile(images uint8 [k, C, H, W], cols) -> one picture [H', W'] (C = 1) or [H', W', C]
"""
from __future__ import annotations

import math

import numpy as np
import torch


def from_uint8(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 [..] in [0, 255] -> float32 in [-1, 1] (the DDPM data scaling x / 127.5 - 1)."""
    x = torch.as_tensor(x)
    if x.dtype != torch.uint8:
        raise TypeError(f"from_uint8 expects uint8 images, got {x.dtype}")
    return x.to(torch.float32) / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8: (x + 1) * 127.5, rounded to nearest and clamped to [0, 255]."""
    x = torch.as_tensor(x)
    return ((x.to(torch.float32) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def tile(images: torch.Tensor | np.ndarray, cols: int, *, padding: int = 0, pad_value: int = 255) -> np.ndarray:
    """uint8 [k, C, H, W] -> one uint8 picture, `cols` images per row (fewer when k < cols), row-major.

    `padding` pixels of `pad_value` around and between the images (the layout of torchvision's
    make_grid). Returns [H', W'] for C = 1 and [H', W', C] otherwise, as PIL and matplotlib take them.
    """
    images = np.asarray(images)
    k, c, h, w = images.shape
    cols = max(1, min(k, cols))
    rows = math.ceil(k / cols)
    p = padding
    canvas = np.full((rows * (h + p) + p, cols * (w + p) + p, c), pad_value, dtype=np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, cols)
        y, x = r * (h + p) + p, q * (w + p) + p
        canvas[y:y + h, x:x + w] = img.transpose(1, 2, 0)
    return canvas[..., 0] if c == 1 else canvas
