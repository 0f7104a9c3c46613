"""PNDM family (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds").

A pseudo numerical method splits a step t -> t - delta into a gradient part (an estimate e' of the
noise over the step, from Runge-Kutta or linear multistep formulas) and the transfer part
    phi(x_t, e, t, t - delta) = sqrt(a'/a) x_t - (a' - a) / (sqrt(a) (sqrt((1 - a') a) + sqrt((1 - a) a'))) e
with a = alpha_bar[t], a' = alpha_bar[t - delta] (PNDM Eq. 9/11; algebraically DDIM's eta = 0 step).

    pndm-prk  pseudo Runge-Kutta (PNDM Eq. 12) on every step                    NFE = 4 S
    s-pndm    pseudo improved Euler first step, then 2nd-order pseudo LMS        NFE = S + 1
    f-pndm    pseudo RK for 3 steps, then the 4th-order pseudo LMS (Eq. 13,
              Algorithm 2): e' = (55 e_t - 59 e_{t+d} + 37 e_{t+2d} - 9 e_{t+3d}) / 24
                                                                                 NFE = S + 9 (S >= 3)
    plms      PLMS of latent diffusion / diffusers: pseudo improved Euler, then
              pseudo Adams-Bashforth of order 2, 3, then 4                       NFE = S + 1
    fon       the paper's classical fourth-order baseline FON as its official code runs it
              (`gen_fon`): RK4 then Adams-Bashforth on the one-index DDIM increment
              phi(x, eps, t, t - 1) - x used as dx/dt, every stage's increment taken
              at the step's base point                                           NFE = S + 9 (S >= 3)
    rk4-ab4   the textbook fourth-order method on the probability-flow ODE itself:
              RK4 for 3 steps, then 4th-order Adams-Bashforth                    NFE = S + 9 (S >= 3)

Index conventions (the model only takes integer t in 0..T-1):
- The Runge-Kutta midpoint t - delta/2 is the index floor((t + t_next) / 2). When T // S is even
  that is the exact midpoint (as the official code, which feeds the model a float t); when odd it
  is half an index early, which coincides with diffusers' PNDMScheduler (t_next + (T // S) // 2).
- Evaluations wanted at the end point (index -1, alpha_bar = 1, where the model is undefined) are
  made at index 0, with the state moved to alpha_bar[0] (`common.eval_index`). Only a Runge-Kutta
  or improved-Euler step that ends the run needs this: pndm-prk's last step, s-pndm/plms with
  S = 1, f-pndm/fon/rk4-ab4 with S <= 3 (fon moves the state as its official code does, by the
  whole step; only the model's index is clamped). With `uniform` spacing the last step is 0 -> -1 and its stages
  collapse onto index 0 (the step becomes a DDIM / Euler step; its 4 evaluations are still made
  and counted).
- f-pndm, fon and rk4-ab4 with S < 3: every step is a Runge-Kutta step (fewer warm-up steps, no
  multistep), so NFE = 4 S; nfe() reports exactly that.
- The multistep history holds the first evaluation e_1 = eps(x_t, t) of each earlier step
  (Algorithm 2; LDM's `old_eps`), not the combined e'.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from pipeline.core.samplers.common import call, eval_index, path, step_done


def transfer(x: torch.Tensor, e: torch.Tensor, a: float, a_next: float) -> torch.Tensor:
    """phi(x, e, t, t_next) of PNDM Eq. 9/11, with a = alpha_bar[t], a_next = alpha_bar[t_next] (float64)."""
    coef = (a_next - a) / (math.sqrt(a) * (math.sqrt((1.0 - a_next) * a) + math.sqrt((1.0 - a) * a_next)))
    return math.sqrt(a_next / a) * x - coef * e


def _alpha_at(schedule):
    alpha_bar = schedule.alpha_bar.tolist()
    return lambda t: 1.0 if t < 0 else alpha_bar[t]


def _prk(eps_fn, x, t, t_next, alpha):
    """Pseudo Runge-Kutta gradient part (PNDM Eq. 12): returns (e_1, e')."""
    m, end = eval_index((t + t_next) // 2), eval_index(t_next)
    a = alpha(t)
    e1 = call(eps_fn, x, t)
    e2 = call(eps_fn, transfer(x, e1, a, alpha(m)), m)
    e3 = call(eps_fn, transfer(x, e2, a, alpha(m)), m)
    e4 = call(eps_fn, transfer(x, e3, a, alpha(end)), end)
    return e1, (e1 + 2 * e2 + 2 * e3 + e4) / 6


def _improved_euler(eps_fn, x, e1, t, t_next, alpha):
    """Pseudo improved Euler (Heun) gradient part: e' = (e_1 + eps(phi(x, e_1, t, t_next), t_next)) / 2."""
    end = eval_index(t_next)
    e2 = call(eps_fn, transfer(x, e1, alpha(t), alpha(end)), end)
    return (e1 + e2) / 2


def pndm_prk(eps_fn, x_T, schedule, timesteps, *, generator=None, callback=None):
    """Pseudo Runge-Kutta on every step. x_T: [B, ...]; timesteps: LongTensor [S] descending."""
    ts, abar = path(schedule, timesteps)
    alpha = _alpha_at(schedule)
    x = x_T
    for i in range(len(ts) - 1):
        _, e_prime = _prk(eps_fn, x, ts[i], ts[i + 1], alpha)
        x = transfer(x, e_prime, abar[i], abar[i + 1])
        x = step_done(x, "pndm-prk", i, ts, callback)
    return x


def s_pndm(eps_fn, x_T, schedule, timesteps, *, generator=None, callback=None):
    """Pseudo improved Euler first step, then the 2nd-order pseudo linear multistep
    e' = (3 e_t - e_{t+delta}) / 2 (PNDM Sec. 3.3)."""
    ts, abar = path(schedule, timesteps)
    alpha = _alpha_at(schedule)
    x, e_prev = x_T, None
    for i in range(len(ts) - 1):
        e1 = call(eps_fn, x, ts[i])
        if e_prev is None:
            e_prime = _improved_euler(eps_fn, x, e1, ts[i], ts[i + 1], alpha)
        else:
            e_prime = (3 * e1 - e_prev) / 2
        e_prev = e1
        x = transfer(x, e_prime, abar[i], abar[i + 1])
        x = step_done(x, "s-pndm", i, ts, callback)
    return x


def f_pndm(eps_fn, x_T, schedule, timesteps, *, generator=None, callback=None):
    """PNDM Algorithm 2: pseudo Runge-Kutta for the first 3 steps, then the 4th-order pseudo
    linear multistep (Eq. 13)."""
    ts, abar = path(schedule, timesteps)
    alpha = _alpha_at(schedule)
    x, history = x_T, []  # e_1 of the last 3 steps, newest last
    for i in range(len(ts) - 1):
        if len(history) < 3:
            e1, e_prime = _prk(eps_fn, x, ts[i], ts[i + 1], alpha)
        else:
            e1 = call(eps_fn, x, ts[i])
            e_prime = (55 * e1 - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        history = (history + [e1])[-3:]
        x = transfer(x, e_prime, abar[i], abar[i + 1])
        x = step_done(x, "f-pndm", i, ts, callback)
    return x


def plms(eps_fn, x_T, schedule, timesteps, *, generator=None, callback=None):
    """PLMS as in latent diffusion (CompVis plms.py) and diffusers' PNDMScheduler(skip_prk_steps=True):
    pseudo improved Euler, then pseudo Adams-Bashforth of order 2, 3, 4 as history accumulates."""
    ts, abar = path(schedule, timesteps)
    alpha = _alpha_at(schedule)
    x, history = x_T, []  # e_1 of the last 3 steps, newest last
    for i in range(len(ts) - 1):
        e1 = call(eps_fn, x, ts[i])
        if len(history) == 0:
            e_prime = _improved_euler(eps_fn, x, e1, ts[i], ts[i + 1], alpha)
        elif len(history) == 1:
            e_prime = (3 * e1 - history[-1]) / 2
        elif len(history) == 2:
            e_prime = (23 * e1 - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            e_prime = (55 * e1 - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        history = (history + [e1])[-3:]
        x = transfer(x, e_prime, abar[i], abar[i + 1])
        x = step_done(x, "plms", i, ts, callback)
    return x


def log_alpha_bar_rate(schedule) -> list[float]:
    """d log(alpha_bar) / dt at t = 0..T-1: the derivative of the cubic spline (not-a-knot) through
    log alpha_bar on the integer grid -1..T-1 with log alpha_bar(-1) = 0. The spline passes through
    every alpha_bar[t], so the ODE below has the exact probability-flow map between any two indices."""
    from scipy.interpolate import CubicSpline

    log_ab = np.concatenate([[0.0], np.log(schedule.alpha_bar.numpy())])
    return CubicSpline(np.arange(-1, schedule.T), log_ab)(np.arange(schedule.T), 1).tolist()


def adams_bashforth_weights(nodes: list[int], t: int, t_next: int) -> list[float]:
    """Weights w_j with x(t_next) ~ x(t) + sum_j w_j f(nodes[j]): the integral over [t, t_next] of the
    Lagrange basis polynomials on `nodes`. For nodes t, t+d, t+2d, t+3d and t_next = t - d these are
    -d (55, -59, 37, -9) / 24, the classical 4th-order Adams-Bashforth step."""
    d = [float(n - t) for n in nodes]
    weights = []
    for j, dj in enumerate(d):
        others = [dk for k, dk in enumerate(d) if k != j]
        basis = np.poly(others) / np.prod([dj - dk for dk in others])
        weights.append(float(np.polyval(np.polyint(basis), float(t_next - t))))
    return weights


def fon(eps_fn, x_T, schedule, timesteps, *, generator=None, callback=None):
    """PNDM's FON baseline as the official code runs it (luping-liu/PNDM runner/method.py `gen_fon`).

    Its derivative at (x, t) is the one-index DDIM increment f(x, t) = phi(x, eps(x, t), t, t - 1) - x
    (x per index, t decreasing), and a step t -> t_next = t - d is RK4 for the first 3 steps,
        k_1 = f(x, t), k_2 = g(x + d/2 k_1, m), k_3 = g(x + d/2 k_2, m), k_4 = g(x + d k_3, t_next),
        x' = x + d (k_1 + 2 k_2 + 2 k_3 + k_4) / 6,
    then x' = x + d (55 f_t - 59 f_{t+d} + 37 f_{t+2d} - 9 f_{t+3d}) / 24 (the history holds k_1 of
    each step). The stages differ from textbook RK4: g(y, s) = phi(x, eps(y, s), t, t - 1) - x takes
    the stage's noise estimate but the increment of the step's BASE point x from t to t - 1. Both
    make it a first-order method with an O(1 index) bias: 20-1500x less accurate than `rk4-ab4` on
    the Gaussian (docs/samplers.md). m = floor((t + t_next)/2) and the model index is clamped to >= 0
    (index rules in the module docstring); alpha_bar is read at the index itself (the official code
    reads it one index late, see docs/samplers.md)."""
    ts, _ = path(schedule, timesteps)
    alpha = _alpha_at(schedule)
    x, history = x_T, []  # k_1 of each step, newest last

    def increment(base, stage, t, s):  # phi(base, eps(stage, s), t, t - 1) - base
        return transfer(base, call(eps_fn, stage, eval_index(s)), alpha(t), alpha(t - 1)) - base

    for i in range(len(ts) - 1):
        t, t_next = ts[i], ts[i + 1]
        d, m = t - t_next, (t + t_next) // 2
        k1 = increment(x, x, t, t)
        if len(history) < 3:  # RK4 warm-up, every stage's increment at the base point x
            k2 = increment(x, x + (d / 2) * k1, t, m)
            k3 = increment(x, x + (d / 2) * k2, t, m)
            k4 = increment(x, x + d * k3, t, t_next)
            delta = (k1 + 2 * k2 + 2 * k3 + k4) / 6
        else:  # 4th-order Adams-Bashforth with the equal-step weights, whatever the spacing
            delta = (55 * k1 - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        history = (history + [k1])[-3:]
        x = step_done(x + d * delta, "fon", i, ts, callback)
    return x


def rk4_ab4(eps_fn, x_T, schedule, timesteps, *, generator=None, callback=None):
    """Textbook fourth-order method on the probability-flow ODE in index time (the method the PNDM paper's
    FON names; its code runs `fon` instead),
        dx/dt = 1/2 dlog(a)/dt (x - eps(x, t) / sqrt(1 - a)),  a = alpha_bar(t)
    (PNDM Eq. 10, DDIM Eq. 14 written for x): RK4 for the first 3 steps, then the 4th-order
    Adams-Bashforth method, whose weights follow the actual step sizes (on equal steps they are
    (55, -59, 37, -9) / 24; they differ only on the short final step of `uniform` spacing and on
    `quadratic` spacing)."""
    ts, _ = path(schedule, timesteps)
    alpha_bar = schedule.alpha_bar.tolist()
    rate = log_alpha_bar_rate(schedule)

    def drift(x, t):
        return (0.5 * rate[t]) * (x - call(eps_fn, x, t) / math.sqrt(1.0 - alpha_bar[t]))

    x, history = x_T, []  # (t, drift) at the start of the last 3 steps, newest last
    for i in range(len(ts) - 1):
        t, t_next = ts[i], ts[i + 1]
        if len(history) < 3:  # classical RK4, stages at the midpoint and end index (clamped to >= 0)
            m, end = eval_index((t + t_next) // 2), eval_index(t_next)
            k1 = drift(x, t)
            k2 = drift(x + (m - t) * k1, m)
            k3 = drift(x + (m - t) * k2, m)
            k4 = drift(x + (end - t) * k3, end)
            x_next = x + ((t_next - t) / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
        else:  # 4th-order Adams-Bashforth on the drift history
            k1 = drift(x, t)
            nodes = [t] + [s for s, _ in reversed(history)]
            w = adams_bashforth_weights(nodes, t, t_next)
            x_next = x + w[0] * k1 + w[1] * history[-1][1] + w[2] * history[-2][1] + w[3] * history[-3][1]
        history = (history + [(t, k1)])[-3:]
        x = step_done(x_next, "rk4-ab4", i, ts, callback)
    return x
