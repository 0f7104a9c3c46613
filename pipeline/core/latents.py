"""The fixed latents x_T every grid point starts from: image k from seed k alone."""
from __future__ import annotations

import torch


def initial_noise(seeds, shape, device: str = "cpu") -> tuple[torch.Tensor, list[torch.Generator]]:
    """x_T [B, *shape] float32 on `device` and the per-image CPU generators that drew it.

    Image b: `torch.Generator().manual_seed(seeds[b])`, x_T[b] = randn(shape) from it, on the CPU,
    so a CPU and a GPU run start from the same x_T. The generators carry on into the sampler's noise.
    """
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    x = torch.stack([torch.randn(tuple(shape), generator=g, dtype=torch.float32) for g in gens])
    return x.to(device), gens
