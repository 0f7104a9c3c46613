"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2: multistep second order,
data prediction), on the selected indices.

With alpha_t = sqrt(a), sigma_t = sqrt(1 - a), lambda_t = log(alpha_t / sigma_t), the data
prediction x0_i = (x - sigma_i eps) / alpha_i and h_i = lambda_{i+1} - lambda_i:
    step 0:      x_{i+1} = sigma_{i+1}/sigma_i x_i - alpha_{i+1} (e^{-h_i} - 1) x0_i        (DPM-Solver++(1) = DDIM)
    later steps: D_i = (1 + 1/(2 r_i)) x0_i - 1/(2 r_i) x0_{i-1},  r_i = h_{i-1} / h_i
                 x_{i+1} = sigma_{i+1}/sigma_i x_i - alpha_{i+1} (e^{-h_i} - 1) D_i
The last step ends at alpha_bar = 1 (sigma = 0, lambda = +inf), where the update is x0_i itself
(the first-order formula's limit; the second-order one is undefined there). diffusers'
DPMSolverMultistepScheduler with final_sigmas_type="zero" does the same. NFE = S.
"""
from __future__ import annotations

import math

from pipeline.samplers.common import call, path, step_done


def dpm_solver_pp(eps_fn, x_T, schedule, timesteps, *, generator=None, callback=None):
    """x_T: [B, ...]; timesteps: LongTensor [S] descending; returns x_0 [B, ...]."""
    ts, abar = path(schedule, timesteps)
    x, x0_prev, h_prev = x_T, None, None
    for i in range(len(ts) - 1):
        a, a_next = abar[i], abar[i + 1]
        alpha, sigma = math.sqrt(a), math.sqrt(1.0 - a)
        x0 = (x - sigma * call(eps_fn, x, ts[i])) / alpha  # data prediction
        if ts[i + 1] < 0:  # sigma_next = 0: the step lands on the data prediction
            x = x0
        else:
            alpha_next, sigma_next = math.sqrt(a_next), math.sqrt(1.0 - a_next)
            h = math.log(alpha_next / sigma_next) - math.log(alpha / sigma)
            if x0_prev is None:
                d = x0
            else:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev  # Algorithm 2, D_i
            x = (sigma_next / sigma) * x - (alpha_next * math.expm1(-h)) * d
            h_prev = h
        x0_prev = x0
        x = step_done(x, "dpm-solver++", i, ts, callback)
    return x
