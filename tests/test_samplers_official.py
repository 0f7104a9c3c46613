"""Our samplers against transcriptions of the official code behind the papers' numbers, driven by the
same eps_fn from the same x_T (docs/samplers.md, "Conventions of the official code").

The transcriptions below are test-only reference code written for these tests from reading:
  ermongroup/ddim       functions/denoising.py (generalized_steps, ddpm_steps), runners/diffusion.py (skip types)
  luping-liu/PNDM       runner/method.py (gen_fon, transfer), runner/runner.py (sample_image)
  LuChengTHU/dpm-solver dpm_solver_pytorch.py (DPM_Solver.sample, method="multistep", order=2)
They keep the official control flow and formulas; where the official code differs from ours in a
documented convention, the test states which input carries the difference:
  - the official networks take a float t (PNDM: midpoints and -1 at the end); our eps_fn takes an
    index, so `index_model` floors it and clamps it at 0, our index rule;
  - the PNDM code reads alphas_cump[t + 1] (one index late) and ends at alphas_cump[0] = 0.9999; fed
    [1, alpha_bar[0], ..., alpha_bar[T-1]] it reads alpha_bar[t] and ends at 1, our convention;
  - DPM-Solver works on its own continuous time grid; the transcription is driven on our indices,
    where its discrete noise schedule is exact.
"""
import math

import numpy as np
import pytest
import torch

from pipeline.core.gaussian import exact_eps_fn
from pipeline.core.samplers import nfe, sample
from pipeline.core.schedules import NoiseSchedule, timesteps

SCHEDULE = NoiseSchedule.linear(1000)
T = SCHEDULE.T
ALPHA_BAR = SCHEDULE.alpha_bar  # float64 [T]



def x_T(n=32, seed=0):
    return torch.randn(n, 1, 2, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class index_model:
    """The official code's model(x, t) with a float or int t, on our eps_fn(x, LongTensor [B]) (floor, >= 0)."""

    def __init__(self, eps_fn):
        self.eps_fn, self.calls = eps_fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.eps_fn(x, torch.full((x.shape[0],), max(math.floor(float(t)), 0), dtype=torch.long))


# --- the timestep sequences (ermongroup/ddim runners/diffusion.py) ----------------------------------


def ddim_seq(skip_type, steps):
    if skip_type == "uniform":
        return list(range(0, T, T // steps))
    return [int(s) for s in list(np.linspace(0, np.sqrt(T * 0.8), steps) ** 2)]  # "quad", repeats kept


@pytest.mark.parametrize("steps", [10, 20, 50, 100, 1000])
def test_quadratic_ddim_spacing_is_the_official_quad_sequence(steps):
    seq = ddim_seq("quad", steps)
    assert timesteps(T, steps, "quadratic-ddim").tolist() == seq[::-1]
    ours = timesteps(T, steps, "quadratic").tolist()
    assert len(set(ours)) == steps and (ours == seq[::-1]) == (len(set(seq)) == steps)
    assert {50: 49, 100: 96}.get(steps, len(set(seq))) == len(set(seq))  # the official grid's repeats
    assert seq[-1] == 800 and (steps < 1000 or ours[0] == T - 1)  # ours de-duplicates 0, 0, 0, ... upwards


# --- ermongroup/ddim functions/denoising.py -------------------------------------------------------


def official_alpha(t):
    """compute_alpha: cumprod of (1 - [0, betas]) at t + 1, i.e. alpha_bar[t], 1 at t = -1."""
    return 1.0 if t < 0 else ALPHA_BAR[t].item()


def official_generalized_steps(model, x, seq, eta, noises):
    seq_next = [-1] + list(seq[:-1])
    noises = iter(noises)
    for i, j in zip(reversed(seq), reversed(seq_next)):
        at, at_next = official_alpha(i), official_alpha(j)
        et = model(x, i)
        x0_t = (x - et * math.sqrt(1 - at)) / math.sqrt(at)
        c1 = eta * math.sqrt((1 - at / at_next) * (1 - at_next) / (1 - at))
        c2 = math.sqrt((1 - at_next) - c1**2)
        x = math.sqrt(at_next) * x0_t + c1 * next(noises) + c2 * et
    return x


def official_ddpm_steps(model, x, seq, noises):
    """The sigma-hat sampler of DDIM Table 1: clamped x0, posterior mean, variance beta_t, no noise at t = 0."""
    seq_next = [-1] + list(seq[:-1])
    noises = iter(noises)
    for i, j in zip(reversed(seq), reversed(seq_next)):
        at, atm1 = official_alpha(i), official_alpha(j)
        beta_t = 1 - at / atm1
        e = model(x, i)
        x0_from_e = (math.sqrt(1.0 / at) * x - math.sqrt(1.0 / at - 1) * e).clamp(-1, 1)
        mean = ((math.sqrt(atm1) * beta_t) * x0_from_e + (math.sqrt(1 - beta_t) * (1 - atm1)) * x) / (1.0 - at)
        mask = 0.0 if i == 0 else 1.0
        logvar = math.log(beta_t) if beta_t > 0 else -math.inf
        x = mean + mask * math.exp(0.5 * logvar) * next(noises)
    return x


def noises_in_our_order(seq, eta_or_large, x, seed):
    """One draw per step in our order (only steps with noise scale > 0: not the last, not t == t_next);
    zeros where the official code multiplies its draw by 0."""
    g = torch.Generator().manual_seed(seed)
    steps = list(zip(reversed(seq), reversed([-1] + list(seq[:-1]))))
    return [torch.randn(x.shape, generator=g, dtype=x.dtype) if (eta_or_large and j >= 0 and i != j) else torch.zeros_like(x)
            for i, j in steps]


@pytest.mark.parametrize("skip_type, spacing, steps", [("uniform", "uniform", 10), ("uniform", "uniform", 50),
                                                       ("quad", "quadratic-ddim", 20), ("quad", "quadratic-ddim", 100)])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_is_generalized_steps(skip_type, spacing, steps, eta):
    eps_fn, x = exact_eps_fn(5.0, 2.0, SCHEDULE), x_T()
    seq = ddim_seq(skip_type, steps)
    model = index_model(eps_fn)
    ref = official_generalized_steps(model, x, seq, eta, noises_in_our_order(seq, eta > 0, x, seed=4))
    ours = sample("ddim", eps_fn, x, SCHEDULE, steps, spacing=spacing, eta=eta, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    assert model.calls == nfe("ddim", steps) == steps  # a repeated index still costs its model call


@pytest.mark.parametrize("skip_type, spacing, steps", [("uniform", "uniform", 10), ("uniform", "uniform", 100),
                                                       ("quad", "quadratic-ddim", 50)])
def test_ddpm_large_with_clip_x0_is_ddpm_steps(skip_type, spacing, steps):
    eps_fn = exact_eps_fn(0.0, 0.6, SCHEDULE)  # data in about [-1.8, 1.8]: the clamp is active on some steps
    x, seq = x_T(), ddim_seq(skip_type, steps)
    model = index_model(eps_fn)
    ref = official_ddpm_steps(model, x, seq, noises_in_our_order(seq, True, x, seed=6))
    ours = sample("ddpm-large", eps_fn, x, SCHEDULE, steps, spacing=spacing, options={"clip_x0": True},
                  generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    assert model.calls == nfe("ddpm-large", steps)
    unclipped = sample("ddpm-large", eps_fn, x, SCHEDULE, steps, spacing=spacing, generator=torch.Generator().manual_seed(6))
    assert (unclipped - ref).abs().max() > 1e-2  # the clamp mattered: the comparison is not vacuous


# --- luping-liu/PNDM runner/method.py ---------------------------------------------------------------


def official_transfer(x, t, t_next, et, alphas_cump):
    at, at_next = alphas_cump[int(t) + 1].item(), alphas_cump[int(t_next) + 1].item()
    x_delta = (at_next - at) * ((1 / (math.sqrt(at) * (math.sqrt(at) + math.sqrt(at_next)))) * x
                                - 1 / (math.sqrt(at) * (math.sqrt((1 - at_next) * at) + math.sqrt((1 - at) * at_next))) * et)
    return x + x_delta


def official_gen_fon(img, t, t_next, model, alphas_cump, ets):
    """One step of gen_fon: every stage's increment is transfer(img, t, t - 1, noise) - img."""
    t_list = [t, (t + t_next) / 2.0, t_next]
    if len(ets) > 2:
        noise = model(img, t)
        ets.append(official_transfer(img, t, t - 1, noise, alphas_cump) - img)
        delta = (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
    else:
        delta_1 = official_transfer(img, t, t - 1, model(img, t_list[0]), alphas_cump) - img
        ets.append(delta_1)
        img_2 = img + delta_1 * (t - t_next) / 2.0
        delta_2 = official_transfer(img, t, t - 1, model(img_2, t_list[1]), alphas_cump) - img
        img_3 = img + delta_2 * (t - t_next) / 2.0
        delta_3 = official_transfer(img, t, t - 1, model(img_3, t_list[1]), alphas_cump) - img
        img_4 = img + delta_3 * (t - t_next)
        delta_4 = official_transfer(img, t, t - 1, model(img_4, t_list[2]), alphas_cump) - img
        delta = (1 / 6.0) * (delta_1 + 2 * delta_2 + 2 * delta_3 + delta_4)
    return img + delta * (t - t_next)


def official_sample_image(method, model, noise, seq, alphas_cump):
    """runner.sample_image: seq ascending, seq_next = [-1] + seq[:-1], a fresh ets list per run."""
    img, ets = noise, []
    for i, j in zip(reversed(seq), reversed([-1] + list(seq[:-1]))):
        img = method(img, float(i), float(j), model, alphas_cump, ets)
    return img


# Fed [1, alpha_bar...], the official one-index-late read returns alpha_bar[t] and 1 at the end (t = -1).
ALPHAS_CUMP_OURS = torch.cat([torch.ones(1, dtype=torch.float64), ALPHA_BAR])


@pytest.mark.parametrize("steps", [1, 2, 4, 5, 8, 10, 20, 50])  # S divides T: range(0, T, T // S) has S items
def test_fon_is_the_official_gen_fon(steps):
    eps_fn, x = exact_eps_fn(5.0, 2.0, SCHEDULE), x_T()
    model = index_model(eps_fn)
    ref = official_sample_image(official_gen_fon, model, x, ddim_seq("uniform", steps), ALPHAS_CUMP_OURS)
    ours = sample("fon", eps_fn, x, SCHEDULE, steps)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    assert model.calls == nfe("fon", steps) == (steps + 9 if steps >= 3 else 4 * steps)
    # the textbook method is another algorithm, not a rounding away from it
    assert (sample("rk4-ab4", eps_fn, x, SCHEDULE, steps) - ref).abs().max() > 1e-4


def test_the_pndm_codes_alpha_bar_is_one_index_late():
    """With its own alphas_cump (= alpha_bar) the official transfer reads alpha_bar[t + 1] and ends at
    alphas_cump[0] = alpha_bar[0] = 1 - beta_1 = 0.9999, not at 1 (docs/samplers.md)."""
    x, e = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    end = official_transfer(x, 0.0, -1.0, e, ALPHA_BAR)  # e = 0: x scaled by sqrt(a_end / a_start)
    assert end.item() == pytest.approx(math.sqrt(ALPHA_BAR[0].item() / ALPHA_BAR[1].item()), rel=1e-14)
    assert ALPHA_BAR[0].item() == pytest.approx(0.9999, rel=1e-12)


# --- LuChengTHU/dpm-solver dpm_solver_pytorch.py -----------------------------------------------------


def official_multistep_dpm_solver_pp(eps_fn, x, times, lower_order_final=True, denoise_to_zero=True):
    """DPM_Solver(algorithm_type="dpmsolver++").sample(method="multistep", order=2, solver_type="dpmsolver")
    on the time points `times` (our indices t_0 > ... > t_N, N = steps): data prediction, first step
    first order, then multistep second order; lower_order_final and steps < 10: the last step first
    order; denoise_to_zero: a final data prediction at t_N."""
    order, steps = 2, len(times) - 1
    alpha = lambda t: math.sqrt(ALPHA_BAR[t].item())  # noqa: E731
    sigma = lambda t: math.sqrt(1 - ALPHA_BAR[t].item())  # noqa: E731
    lam = lambda t: math.log(alpha(t) / sigma(t))  # noqa: E731

    def model_fn(x, t):  # data_prediction_fn
        return (x - sigma(t) * eps_fn(x, torch.full((x.shape[0],), t, dtype=torch.long))) / alpha(t)

    def first_update(x, s, t, model_s):  # dpm_solver_first_update, dpmsolver++
        h = lam(t) - lam(s)
        return (sigma(t) / sigma(s)) * x - (alpha(t) * math.expm1(-h)) * model_s

    def second_update(x, model_prev_list, t_prev_list, t):  # multistep_dpm_solver_second_update, dpmsolver++
        model_prev_1, model_prev_0 = model_prev_list[-2], model_prev_list[-1]
        t_prev_1, t_prev_0 = t_prev_list[-2], t_prev_list[-1]
        h_0, h = lam(t_prev_0) - lam(t_prev_1), lam(t) - lam(t_prev_0)
        d1_0 = (1.0 / (h_0 / h)) * (model_prev_0 - model_prev_1)
        phi_1 = math.expm1(-h)
        return (sigma(t) / sigma(t_prev_0)) * x - (alpha(t) * phi_1) * model_prev_0 - 0.5 * (alpha(t) * phi_1) * d1_0

    def update(x, model_prev_list, t_prev_list, t, step_order):  # multistep_dpm_solver_update
        if step_order == 1:
            return first_update(x, t_prev_list[-1], t, model_prev_list[-1])
        return second_update(x, model_prev_list, t_prev_list, t)

    assert steps >= order
    t = times[0]
    t_prev_list, model_prev_list = [t], [model_fn(x, t)]
    for step in range(1, order):
        t = times[step]
        x = update(x, model_prev_list, t_prev_list, t, step)
        t_prev_list.append(t)
        model_prev_list.append(model_fn(x, t))
    for step in range(order, steps + 1):
        t = times[step]
        step_order = min(order, steps + 1 - step) if lower_order_final and steps < 10 else order
        x = update(x, model_prev_list, t_prev_list, t, step_order)
        for i in range(order - 1):
            t_prev_list[i], model_prev_list[i] = t_prev_list[i + 1], model_prev_list[i + 1]
        t_prev_list[-1] = t
        if step < steps:
            model_prev_list[-1] = model_fn(x, t)
    if denoise_to_zero:
        x = model_fn(x, times[-1])
    return x


@pytest.mark.parametrize("steps", [3, 5, 10, 11, 20])
@pytest.mark.parametrize("spacing", ["uniform", "trailing"])
@pytest.mark.parametrize("lower_order_final", [True, False])
def test_dpm_solver_pp_is_the_official_multistep_with_denoise_to_zero(steps, spacing, lower_order_final):
    """Our S steps = the official multistep with S - 1 steps on our S indices, then denoise_to_zero
    (its condition `steps < 10` is ours S <= 10)."""
    eps_fn, x = exact_eps_fn(5.0, 2.0, SCHEDULE), x_T()
    calls = []
    counted = lambda x, t: calls.append(t) or eps_fn(x, t)  # noqa: E731
    ref = official_multistep_dpm_solver_pp(counted, x, timesteps(T, steps, spacing).tolist(), lower_order_final)
    assert len(calls) == nfe("dpm-solver++", steps)
    ours = sample("dpm-solver++", eps_fn, x, SCHEDULE, steps, spacing=spacing,
                  options={"lower_order_final": lower_order_final})
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
