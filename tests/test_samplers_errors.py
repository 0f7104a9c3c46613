"""Each bad input to the sampler library and the message it gets: fail before compute, name the
key, the value and what is allowed."""
import math
import re

import pytest
import torch

from pipeline.core.gaussian import exact_eps_fn, frechet_to_truth
from pipeline.core.samplers import SAMPLERS, NonFiniteError, nfe, sample, takes_eta
from pipeline.core.samplers.ddim import ddim
from pipeline.core.samplers.dpm_solver import dpm_solver_pp
from pipeline.core.schedules import NoiseSchedule

SCHEDULE = NoiseSchedule.linear(100)
EPS = exact_eps_fn(5.0, 2.0, SCHEDULE)
X = torch.zeros(3, 2)


def no_calls(x, t):
    raise AssertionError("eps_fn must not be called for bad input")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="ddim2"), r"sampler: unknown 'ddim2'; known: ddpm, ddpm-large, ddim, pndm-prk, s-pndm, f-pndm, fon, rk4-ab4, plms, dpm-solver\+\+"),
        (dict(steps=0), r"steps: must be in 1..T=100, got 0"),
        (dict(steps=101), r"steps: must be in 1..T=100, got 101"),
        (dict(steps=10.0), r"steps: must be an integer, got 10.0"),
        (dict(steps=True), r"steps: must be an integer, got True"),
        (dict(eta=1.5), r"eta: must be a number in \[0, 1\], got 1.5"),
        (dict(eta=-0.1), r"eta: must be a number in \[0, 1\], got -0.1"),
        (dict(eta=float("nan")), r"eta: must be a number in \[0, 1\], got nan"),
        (dict(eta="0"), r"eta: must be a number in \[0, 1\], got '0'"),
        (dict(name="plms", eta=0.0), r"eta: sampler 'plms' has no option 'eta' \(got eta=0.0\); it takes no options"),
        (dict(name="ddpm", eta=1.0), r"eta: sampler 'ddpm' has no option 'eta' \(got eta=1.0\); it takes clip_x0 \(true or false, default false\)"),
        (dict(options={"etaa": 0.5}), r"etaa: sampler 'ddim' has no option 'etaa' \(got etaa=0.5\); it takes eta \(a number in \[0, 1\], default 0\); clip_x0 \(true or false, default false\)"),
        (dict(options={"clip_x0": 1}), r"clip_x0: must be true or false, got 1"),
        (dict(name="dpm-solver++", options={"lower_order_final": "yes"}), r"lower_order_final: must be true or false, got 'yes'"),
        (dict(eta=0.5, options={"eta": 0.2}), r"eta: given twice, eta=0.5 and options\['eta'\]=0.2"),
        (dict(spacing="leading"), r"spacing: unknown 'leading'; known: uniform, quadratic, linspace, trailing, quadratic-ddim"),
        (dict(name="plms", spacing="quadratic-ddim"), r"spacing: 'quadratic-ddim' keeps repeated indices \(steps with t == t_next\), which sampler 'plms' cannot take; samplers that can: ddpm, ddpm-large, ddim"),
        (dict(x_T=torch.zeros(3, 2, dtype=torch.long)), r"x_T: expected a float tensor \[B, ...\] with B >= 1, got tensor of dtype torch.int64"),
        (dict(x_T=[0.0, 1.0]), r"x_T: expected a float tensor .* got list"),
        (dict(x_T=torch.zeros(0, 2)), r"x_T: expected a float tensor .* shape \(0, 2\)"),
        (dict(x_T=torch.tensor([[0.0], [math.inf]])), r"x_T: contains NaN or inf"),
        (dict(generator=[torch.Generator()] * 2), r"generator: expected None, a torch.Generator or a list of 3 torch.Generator \(one per image\), got 2 items"),
        (dict(generator=[1, 2, 3]), r"generator: expected .* got 3 items"),
    ],
)
def test_bad_input_fails_before_compute_naming_the_problem(kwargs, match):
    args = dict(name="ddim", eps_fn=no_calls, x_T=X, schedule=SCHEDULE, steps=10) | kwargs
    name, steps = args.pop("name"), args.pop("steps")
    with pytest.raises(ValueError, match=match):
        sample(name, args.pop("eps_fn"), args.pop("x_T"), args.pop("schedule"), steps, **args)


def test_non_finite_value_mid_run_names_the_step():
    def eps_nan_late(x, t):  # fine until index 30 of a 10-step uniform run (90, 80, ..., 0)
        return EPS(x, t) if int(t[0]) > 30 else torch.full_like(x, float("nan"))

    for name in SAMPLERS:
        # pndm-prk already evaluates index 30 as the end point of step 5 (40 -> 30)
        step, t, t_next = (5, 40, 30) if name == "pndm-prk" else (6, 30, 20)
        with pytest.raises(NonFiniteError, match=rf"{re.escape(name)}: non-finite value in x after step {step} of 10 \(t={t} -> {t_next}\)"):
            sample(name, eps_nan_late, torch.zeros(2, 1), SCHEDULE, 10, spacing="uniform")
    assert issubclass(NonFiniteError, ValueError)


def test_eps_fn_with_the_wrong_shape_is_named():
    with pytest.raises(ValueError, match=r"eps_fn returned shape \(3,\) for x of shape \(3, 2\) at t=90"):
        sample("ddim", lambda x, t: x[:, 0], X, SCHEDULE, 10)


def test_direct_calls_check_their_timesteps_and_eta():
    # ddim takes repeated indices (the identity step of `quadratic-ddim`), DPM-Solver++ does not (h = 0)
    with pytest.raises(ValueError, match=r"timesteps: must be non-increasing and in 0..99, got \[10, 20\]"):
        ddim(EPS, X, SCHEDULE, torch.tensor([10, 20]))
    with pytest.raises(ValueError, match=r"timesteps: must be non-increasing and in 0..99, got \[100, 5\]"):
        ddim(EPS, X, SCHEDULE, torch.tensor([100, 5]))
    with pytest.raises(ValueError, match=r"timesteps: must be distinct, descending and in 0..99, got \[50, 50, 0\]"):
        dpm_solver_pp(EPS, X, SCHEDULE, torch.tensor([50, 50, 0]))
    with pytest.raises(ValueError, match=r"timesteps: empty"):
        ddim(EPS, X, SCHEDULE, torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match=r"eta: must be a number in \[0, 1\], got 2"):
        ddim(EPS, X, SCHEDULE, torch.tensor([50, 0]), eta=2)


def test_nfe_and_takes_eta_validate_their_arguments():
    with pytest.raises(ValueError, match=r"sampler: unknown 'DDIM'; known: ddpm, "):
        nfe("DDIM", 10)
    with pytest.raises(ValueError, match=r"steps: must be >= 1, got 0"):
        nfe("ddim", 0)
    with pytest.raises(ValueError, match=r"sampler: unknown 'pndm'"):
        takes_eta("pndm")


def test_gaussian_helpers_reject_bad_parameters():
    with pytest.raises(ValueError, match=r"s: the standard deviation must be > 0, got -1.0"):
        exact_eps_fn(0.0, -1.0, SCHEDULE)
    with pytest.raises(ValueError, match=r"s: the standard deviation must be > 0"):
        exact_eps_fn(0.0, torch.tensor([1.0, 0.0]), SCHEDULE)
    with pytest.raises(ValueError, match=r"samples: need at least 2 samples \[N, ...\], got shape \(1, 3\)"):
        frechet_to_truth(torch.zeros(1, 3), 0.0, 1.0)
