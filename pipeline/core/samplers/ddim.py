"""DDIM (Song, Meng & Ermon 2021): the generalized step of Eq. 12 with sigma from Eq. 16.

eta = 0 is the deterministic DDIM (the Euler step of the probability-flow ODE in the variables
x / sqrt(a), sqrt((1 - a) / a), DDIM Eq. 14); eta = 1 is the DDPM posterior (see test: same noise,
same result as `ddpm` on the same respaced chain).

clip_x0 clamps the predicted x_0 to [-1, 1] before the update (diffusers' `clip_sample`; the
"direction to x_t" keeps the model's eps). The official DDIM sampler (ermongroup/ddim
`generalized_steps`) does not clip, hence the default False. A step with t == t_next (a spacing
that keeps repeated indices, `quadratic-ddim`) is the identity and still calls the model, as there.
"""
from __future__ import annotations

import math
import numbers

from pipeline.core.samplers.common import call, noise_like, path, sqrt, step_done


def ddim(eps_fn, x_T, schedule, timesteps, *, eta=0.0, clip_x0=False, generator=None, callback=None):
    """eps_fn(x, t) -> eps; x_T: [B, ...]; timesteps: LongTensor [S] non-increasing; eta in [0, 1].

    Returns x_0 [B, ...]. Noise is drawn only on steps with sigma > 0 (never for eta = 0, never on
    the last step, whose sigma is 0 because alpha_bar there is 1).
    """
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta: must be a number in [0, 1], got {eta!r}")
    ts, abar = path(schedule, timesteps, repeats=True)
    x = x_T
    for i in range(len(ts) - 1):
        a, a_next = abar[i], abar[i + 1]
        eps = call(eps_fn, x, ts[i])
        x0 = (x - math.sqrt(1.0 - a) * eps) / math.sqrt(a)  # Eq. 12, "predicted x_0"
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        sigma = eta * sqrt((1.0 - a_next) / (1.0 - a) * (1.0 - a / a_next))  # Eq. 16
        x = math.sqrt(a_next) * x0 + sqrt(1.0 - a_next - sigma**2) * eps  # Eq. 12, "direction to x_t"
        if sigma > 0:
            x = x + sigma * noise_like(x, generator)  # Eq. 12, random noise
        x = step_done(x, "ddim", i, ts, callback)
    return x
