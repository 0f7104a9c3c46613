"""Noise schedules (betas -> alpha_bar, float64) and timestep selection for few-step samplers.

Conventions (a contract with every stage):

- `T` training steps, `betas[t]` for t = 0..T-1, `alpha_bar[t] = prod_{s<=t} (1 - betas[s])`,
  built and kept in float64; samplers cast to the data dtype at use.
- A model is called as `eps_fn(x, t)` with `t` a LongTensor [B] of indices 0..T-1.
- "alpha_bar before step 0" is 1: a sampler's last step goes from its smallest selected
  index to clean data (alpha_bar = 1), as in the official DDIM and PNDM code.

`timesteps(T, steps, spacing)` returns exactly `steps` distinct indices, descending.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# The timestep selection itself is torch-free (config validation uses it without torch).
from pipeline.core.spacing import SPACINGS, indices
from pipeline.core.spacing import check_T as _check_T
from pipeline.core.spacing import resolve as _resolve

__all__ = ["SPACINGS", "NoiseSchedule", "timesteps"]


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A discrete DDPM noise schedule.

    betas:     float64 [T], each in (0, 1)
    alpha_bar: float64 [T], alpha_bar[t] = prod_{s<=t} (1 - betas[s])  (DDPM Eq. 4 notation)
    """

    betas: torch.Tensor
    alpha_bar: torch.Tensor

    @property
    def T(self) -> int:
        return int(self.betas.shape[0])

    @classmethod
    def from_betas(cls, betas) -> "NoiseSchedule":
        """Any 1-D sequence of betas in (0, 1) (list, numpy array or tensor); stored as float64."""
        if torch.is_tensor(betas):
            b = betas.detach().to(device="cpu", dtype=torch.float64).clone()
        else:
            b = torch.tensor(np.asarray(betas, dtype=np.float64))
        if b.ndim != 1 or b.numel() < 1:
            raise ValueError(f"betas: expected a non-empty 1-D sequence, got shape {tuple(b.shape)}")
        bad = ~(torch.isfinite(b) & (b > 0) & (b < 1))
        if bad.any():
            i = int(torch.nonzero(bad)[0])
            raise ValueError(f"betas: every beta must be finite and in (0, 1); betas[{i}] = {float(b[i])!r}")
        return cls(betas=b, alpha_bar=torch.cumprod(1.0 - b, dim=0))

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """DDPM (Ho et al. 2020, Sec. 4): betas linear from beta_start to beta_end, float64."""
        _check_T(T)
        for key, v in (("beta_start", beta_start), ("beta_end", beta_end)):
            if not (isinstance(v, (int, float)) and 0 < v < 1):
                raise ValueError(f"{key}: must be a number in (0, 1), got {v!r}")
        return cls.from_betas(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008) -> "NoiseSchedule":
        """Improved DDPM (Nichol & Dhariwal 2021, Eq. 17): f(t) = cos^2(((t/T + s)/(1 + s)) pi/2),
        betas[t] = min(1 - f(t+1)/f(t), 0.999); alpha_bar is then rebuilt from the clipped betas."""
        _check_T(T)
        if not (isinstance(s, (int, float)) and s > 0 and math.isfinite(s)):
            raise ValueError(f"s: cosine offset must be a finite number > 0, got {s!r}")
        t = torch.arange(T + 1, dtype=torch.float64)
        f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        return cls.from_betas(betas)


def timesteps(T: int, steps: int, spacing: str = "uniform") -> torch.Tensor:
    """Exactly `steps` training indices in 0..T-1, descending (the order a sampler visits them); distinct
    for every spacing but `quadratic-ddim`.

    spacing:
      uniform    0, k, 2k, ..., (steps-1) k with k = T // steps (DDIM/PNDM official `range(0, T, k)`,
                 diffusers "leading"). The official range yields more than `steps` indices when steps
                 does not divide T (T=1000, steps=3: 0, 333, 666, 999); here the first `steps` are kept.
      quadratic  int((i * sqrt(0.8 T) / (steps - 1))^2), i = 0..steps-1 (DDIM official, truncation).
      linspace   round(linspace(0, T-1, steps)) (respacing tutorials, diffusers "linspace" for DDIM/PNDM).
      trailing   round(T - i T/steps) - 1, i = 0..steps-1 (diffusers "trailing"; always starts at T-1).
      quadratic-ddim  the `quadratic` rule with its repeats kept, exactly as the DDIM repository runs it
                 (49 distinct of 50; at 1000 steps it starts at 800): steps with t == t_next, which
                 only the samplers registered with `repeats=True` (ddim, ddpm, ddpm-large) take.

    Duplicates of the other rules (quadratic repeats 0 at 100 of 1000 steps) are resolved in ascending order by raising
    each index to at least its predecessor + 1, so the first indices become consecutive. If that would
    pass T-1 the request is impossible and a ValueError names the values; a different number of steps
    is never returned.
    """
    return torch.tensor(indices(T, steps, spacing), dtype=torch.long)
