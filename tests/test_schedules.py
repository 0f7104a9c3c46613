"""Noise schedules and timestep selection: each rule against its published definition."""
import math

import numpy as np
import pytest
import torch

from pipeline.core.schedules import SPACINGS, NoiseSchedule, _resolve, timesteps
from pipeline.core.spacing import REPEATS


def test_linear_schedule_is_ddpm_float64():
    sch = NoiseSchedule.linear(1000, 1e-4, 0.02)
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)  # DDPM official get_beta_schedule("linear")
    assert sch.T == 1000
    assert sch.betas.dtype == torch.float64 and sch.alpha_bar.dtype == torch.float64
    np.testing.assert_allclose(sch.betas.numpy(), betas, rtol=1e-15, atol=0)
    np.testing.assert_allclose(sch.alpha_bar.numpy(), np.cumprod(1 - betas), rtol=1e-13)


def test_cosine_schedule_follows_improved_ddpm_closed_form():
    T, s = 1000, 0.008
    sch = NoiseSchedule.cosine(T, s)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731  (Nichol & Dhariwal Eq. 17)
    clipped = sch.betas.numpy() >= 0.999
    assert clipped.sum() == 1 and clipped[-1]  # only the last beta hits the 0.999 cap at T = 1000
    for t in (0, 10, 500, 900, T - 2):
        assert sch.alpha_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-10)


def test_from_betas_accepts_lists_and_arrays_and_keeps_float64():
    a = NoiseSchedule.from_betas([0.1, 0.2, 0.3])
    b = NoiseSchedule.from_betas(np.array([0.1, 0.2, 0.3], dtype=np.float32))
    assert a.T == 3 and a.alpha_bar.dtype == torch.float64
    np.testing.assert_allclose(a.alpha_bar.numpy(), [0.9, 0.72, 0.504], rtol=1e-15)
    np.testing.assert_allclose(b.alpha_bar.numpy(), a.alpha_bar.numpy(), rtol=1e-6)


@pytest.mark.parametrize(
    "betas, match",
    [([], "non-empty 1-D"), ([[0.1, 0.2]], "1-D"), ([0.1, 0.0], r"betas\[1\] = 0.0"),
     ([0.1, 1.0], r"betas\[1\] = 1.0"), ([float("nan")], r"betas\[0\] = nan")],
)
def test_from_betas_rejects_bad_betas(betas, match):
    with pytest.raises(ValueError, match=match):
        NoiseSchedule.from_betas(betas)


@pytest.mark.parametrize(
    "call, match",
    [(lambda: NoiseSchedule.linear(0), "T: .* got 0"), (lambda: NoiseSchedule.linear(10, 0.0, 0.02), "beta_start"),
     (lambda: NoiseSchedule.linear(10, 1e-4, 1.5), "beta_end"), (lambda: NoiseSchedule.cosine(10, s=0), "s: .* got 0"),
     (lambda: NoiseSchedule.cosine(2.5), "T: .* got 2.5")],
)
def test_constructors_name_the_bad_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("spacing", sorted(set(SPACINGS) - REPEATS))
@pytest.mark.parametrize("T", [1, 7, 50, 1000])
def test_exactly_steps_distinct_descending_indices(spacing, T):
    for steps in sorted({s for s in (1, 2, 3, T // 3, T // 2, T - 1, T) if 1 <= s <= T} | set(range(1, min(T, 60) + 1))):
        ts = timesteps(T, steps, spacing)
        assert ts.dtype == torch.long and ts.shape == (steps,)
        assert bool((ts[:-1] > ts[1:]).all()), (spacing, T, steps)
        assert 0 <= int(ts.min()) and int(ts.max()) <= T - 1


def test_uniform_is_the_official_range_truncated_to_steps():
    for steps in (3, 7, 10, 50, 333, 999):
        official = list(range(0, 1000, 1000 // steps))  # DDIM/PNDM: range(0, T, T // S)
        assert timesteps(1000, steps, "uniform").tolist() == official[:steps][::-1]


def test_quadratic_is_ddim_rule_and_duplicates_become_consecutive():
    raw10 = [int(v) for v in np.linspace(0, np.sqrt(800), 10) ** 2]
    assert timesteps(1000, 10, "quadratic").tolist() == raw10[::-1]
    raw100 = [int(v) for v in np.linspace(0, np.sqrt(800), 100) ** 2]
    assert len(set(raw100)) < 100  # the official rule repeats indices here
    # documented resolution: each index raised to at least its predecessor + 1; for this convex
    # rule that is max(raw_i, i), i.e. the first indices become 0, 1, 2, ...
    expected = np.maximum(raw100, np.arange(100)).tolist()
    got = timesteps(1000, 100, "quadratic").tolist()[::-1]
    assert got == expected and got[:8] == list(range(8)) and got[-1] == raw100[-1]


def test_linspace_and_trailing_follow_their_definitions():
    for steps in (1, 3, 10, 16, 50, 1000):
        lin = np.round(np.linspace(0, 999, steps)).astype(int)
        assert timesteps(1000, steps, "linspace").tolist() == sorted(lin.tolist(), reverse=True)
        trail = np.round(np.arange(1000, 0, -1000 / steps)).astype(int) - 1  # diffusers "trailing"
        assert timesteps(1000, steps, "trailing").tolist() == trail.tolist()
        assert timesteps(1000, steps, "trailing")[0] == 999


@pytest.mark.parametrize(
    "args, match",
    [((1000, 0, "uniform"), r"steps: must be in 1..T=1000, got 0"), ((1000, 1001, "uniform"), "got 1001"),
     ((1000, 2.0, "uniform"), "steps: must be an integer"), ((1000, 10, "leading"), "spacing: unknown 'leading'; known: uniform, quadratic"),
     ((0, 1, "uniform"), "T: .* got 0")],
)
def test_timesteps_errors_name_the_problem(args, match):
    with pytest.raises(ValueError, match=match):
        timesteps(*args)


def test_impossible_resolution_raises_naming_the_values():
    with pytest.raises(ValueError, match=r"gives indices \[3, 4, 4\] which cannot be made 3 distinct values in 0..4"):
        _resolve([3, 4, 4], T=5, steps=3, spacing="quadratic")
