"""Ancestral DDPM sampling (Ho et al. 2020) on the full or a respaced chain.

On a respaced chain tau_0 > tau_1 > ... (the selected indices, ending at alpha_bar = 1) each step
re-derives its own beta from alpha_bar (the timestep-respacing method of Nichol & Dhariwal 2021):
    beta_i = 1 - alpha_bar[tau_i] / alpha_bar[tau_{i+1}]
With every index selected (steps = T) this is exactly DDPM's chain. The two variance choices:
    ddpm        sigma^2 = beta_tilde = (1 - a_next) / (1 - a) * beta   (DDPM Eq. 7, "fixed small")
    ddpm-large  sigma^2 = beta                                         (DDIM App. D.3, "sigma-hat")
The last step (to alpha_bar = 1) returns the mean without noise, as DDPM Algorithm 2 (z = 0 at t = 1)
and the DDIM code (mask at t = 0) do; for `ddpm` its beta_tilde is 0 anyway.

clip_x0 = True is the official sigma-hat sampler (ermongroup/ddim `ddpm_steps`, DDIM Table 1's
sigma-hat row): the predicted x_0 is clamped to [-1, 1] and the mean is the posterior mean of
DDPM Eq. 7, mu = (sqrt(a') beta x_0 + sqrt(1 - beta) (1 - a') x) / (1 - a); without clipping that
is Eq. 11's mean (used as written). A step with t == t_next (`quadratic-ddim`) has beta = 0 and
is the identity, with a model call, as in the official code.
"""
from __future__ import annotations

import math

from pipeline.core.samplers.common import call, noise_like, path, sqrt, step_done


def _ancestral(name, large, clip_x0, eps_fn, x_T, schedule, timesteps, generator, callback):
    ts, abar = path(schedule, timesteps, repeats=True)
    x = x_T
    for i in range(len(ts) - 1):
        a, a_next = abar[i], abar[i + 1]
        beta = 1.0 - a / a_next  # respaced beta of this step
        eps = call(eps_fn, x, ts[i])
        if clip_x0:  # DDPM Eq. 7's posterior mean from the clamped x_0 prediction (official ddpm_steps)
            x0 = ((x - math.sqrt(1.0 - a) * eps) / math.sqrt(a)).clamp(-1.0, 1.0)
            x = (math.sqrt(a_next) * beta / (1.0 - a)) * x0 + (math.sqrt(1.0 - beta) * (1.0 - a_next) / (1.0 - a)) * x
        else:  # DDPM Eq. 11: mu = (x - beta / sqrt(1 - a) * eps) / sqrt(1 - beta)
            x = (x - (beta / math.sqrt(1.0 - a)) * eps) / math.sqrt(1.0 - beta)
        last = ts[i + 1] < 0
        sigma = 0.0 if last else sqrt(beta if large else (1.0 - a_next) / (1.0 - a) * beta)
        if sigma > 0:
            x = x + sigma * noise_like(x, generator)  # Algorithm 2, line 4
        x = step_done(x, name, i, ts, callback)
    return x


def ddpm(eps_fn, x_T, schedule, timesteps, *, clip_x0=False, generator=None, callback=None):
    """Ancestral sampling with the posterior variance beta_tilde (DDPM Eq. 6-7, 11).

    eps_fn(x, t) -> eps; x_T: [B, ...] noise; timesteps: LongTensor [S] non-increasing; returns x_0 [B, ...].
    clip_x0: clamp the predicted x_0 to [-1, 1] (image data in [-1, 1] only).
    """
    return _ancestral("ddpm", False, clip_x0, eps_fn, x_T, schedule, timesteps, generator, callback)


def ddpm_large(eps_fn, x_T, schedule, timesteps, *, clip_x0=False, generator=None, callback=None):
    """As `ddpm` with sigma^2 = beta_i (the DDIM paper's sigma-hat, App. D.3); with clip_x0 = True it is
    the official sigma-hat sampler (ermongroup/ddim `ddpm_steps`)."""
    return _ancestral("ddpm-large", True, clip_x0, eps_fn, x_T, schedule, timesteps, generator, callback)
