"""pipeline.core.images: the uint8 <-> [-1, 1] maps and the one tiling of images into a picture."""
import math

import numpy as np
import torch

from pipeline.core.images import from_uint8, tile, to_uint8


def test_from_uint8_and_back_is_exact_for_every_uint8_value():
    x = torch.arange(256, dtype=torch.uint8)
    y = from_uint8(x)
    assert y.dtype == torch.float32 and y.min() == -1.0 and y.max() == 1.0
    assert torch.equal(to_uint8(y), x)


def test_to_uint8_rounds_and_clamps():
    x = torch.tensor([-3.0, -1.0, 1.0, 7.0, 0.0, 0.5 / 127.5 - 1.0 + 1e-6])
    assert to_uint8(x).tolist() == [0, 0, 255, 255, 128, 1]  # 127.5 rounds half to even: 128


def test_tile_has_torchvision_make_grid_layout():
    """An independent implementation of the same layout: torchvision's make_grid (for k > 1 images)."""
    from torchvision.utils import make_grid

    g = torch.Generator().manual_seed(0)
    for k, cols in ((2, 2), (5, 3), (16, 4), (7, 8)):
        x = torch.randint(0, 256, (k, 3, 5, 6), generator=g, dtype=torch.uint8)
        want = make_grid(x, nrow=cols, padding=2, pad_value=255).permute(1, 2, 0).numpy()
        assert np.array_equal(tile(x, cols, padding=2, pad_value=255), want)


def test_tile_without_padding_and_grey_images():
    x = np.arange(5 * 1 * 2 * 3, dtype=np.uint8).reshape(5, 1, 2, 3)
    picture = tile(x, 4)
    assert picture.shape == (math.ceil(5 / 4) * 2, 4 * 3)  # grey: [H', W'], as matplotlib and PIL take it
    assert np.array_equal(picture[2:, 3:6], np.full((2, 3), 255))  # the empty cell stays white
    assert np.array_equal(picture[:2, 3:6], x[1, 0]) and np.array_equal(picture[2:, :3], x[4, 0])
