"""Closed-form truth for Gaussian data N(mu, s^2 I): the exact noise prediction, the exact
probability-flow map, and the exact Frechet distance of a sample set to the true distribution.

With x_t = sqrt(a) x_0 + sqrt(1 - a) eps, a = alpha_bar[t], the marginal is
N(sqrt(a) mu, (a s^2 + 1 - a) I), so E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a).
The probability-flow ODE keeps every marginal Gaussian and is affine, so it maps x_T at
alpha_bar = a_T to x_0 = mu + s (x_T - sqrt(a_T) mu) / sqrt(a_T s^2 + 1 - a_T) (standardise, rescale).
The Frechet distance to the truth comes with block replicates for its jackknife interval
(`frechet_to_truth_replicates`, pipeline/core/intervals.py): the truth is fixed, the samples are the noise.

mu and s are floats or tensors broadcastable to one sample's shape (per-dimension parameters).
"""
from __future__ import annotations

from typing import Callable, Union

import numpy as np
import torch

from pipeline.core.schedules import NoiseSchedule

Param = Union[float, torch.Tensor]


def _param(v: Param, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(v, dtype=like.dtype, device=like.device)


def exact_eps_fn(mu: Param, s: Param, schedule: NoiseSchedule) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """eps_fn(x [B, ...], t LongTensor [B]) -> eps*(x, t) = sqrt(1 - a)(x - sqrt(a) mu) / (a s^2 + 1 - a)."""
    if not bool((torch.as_tensor(s) > 0).all()):
        raise ValueError(f"s: the standard deviation must be > 0, got {s!r}")
    alpha_bar = {torch.device("cpu"): schedule.alpha_bar}  # float64, one copy per device

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.device not in alpha_bar:
            alpha_bar[x.device] = schedule.alpha_bar.to(x.device)
        a = alpha_bar[x.device][t].to(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
        m, sd = _param(mu, x), _param(s, x)
        return (1 - a).sqrt() * (x - a.sqrt() * m) / (a * sd**2 + 1 - a)

    return eps_fn


def exact_map(x_T: torch.Tensor, mu: Param, s: Param, alpha_bar_T: float) -> torch.Tensor:
    """The probability-flow ODE map from x_T (at alpha_bar = alpha_bar_T) to x_0 (alpha_bar = 1)."""
    a = float(alpha_bar_T)
    m, sd = _param(mu, x_T), _param(s, x_T)
    return m + sd * (x_T - a**0.5 * m) / (a * sd**2 + 1 - a).sqrt()


def _flat(samples: torch.Tensor, mu: Param, s: Param) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """samples [N, ...] -> (float64 [N, D], mu [D], s [D]) over the flattened dimensions."""
    x = torch.as_tensor(samples).detach().to("cpu", torch.float64)
    if x.ndim < 1 or x.shape[0] < 2:
        raise ValueError(f"samples: need at least 2 samples [N, ...], got shape {tuple(x.shape)}")
    shape = x.shape[1:]
    mu_v, s_v = (torch.as_tensor(v, dtype=torch.float64).expand(shape).reshape(-1).numpy() for v in (mu, s))
    return x.reshape(x.shape[0], -1).numpy(), mu_v, s_v


def frechet_to_truth(samples: torch.Tensor, mu: Param, s: Param) -> float:
    """Frechet distance between N(m, C) fitted to `samples` [N, ...] (mean, full unbiased covariance
    over the flattened dimensions) and N(mu, diag(s^2)):
        |m - mu|^2 + tr C + tr S^2 - 2 tr (S C S)^(1/2),  S = diag(s)
    (S C S is symmetric PSD, so the matrix square root's trace is the sum of sqrt of its eigenvalues.)"""
    x, mu_v, s_v = _flat(samples, mu, s)
    m = x.mean(axis=0)
    c = np.atleast_2d(np.cov(x, rowvar=False))
    scs = s_v[:, None] * c * s_v[None, :]
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((scs + scs.T) / 2), 0, None)).sum()
    return float(((m - mu_v) ** 2).sum() + np.trace(c) + (s_v**2).sum() - 2 * tr_sqrt)


def frechet_to_truth_replicates(samples: torch.Tensor, mu: Param, s: Param, blocks: int) -> np.ndarray:
    """float64 [blocks]: `frechet_to_truth` of the samples without block b (image k is in block
    floor(k * blocks / N), `intervals.block_ids`), for the delete-a-block jackknife. The truth
    N(mu, diag(s^2)) is the fixed reference: its square root is diag(s)."""
    from pipeline.core import intervals

    x, mu_v, s_v = _flat(samples, mu, s)
    return intervals.frechet_replicates(x, mu_v, np.diag(s_v), blocks)[1]
