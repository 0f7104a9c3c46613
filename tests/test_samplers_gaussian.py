"""Every sampler against exact answers: Gaussian data N(mu, s^2 I) has a closed-form noise
prediction and a closed-form probability-flow map (pipeline/core/gaussian.py), so errors are measured,
not guessed. mu = 5, s = 2 is the 1-D case; a 4-dimensional case has per-dimension mu and s."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from pipeline.core import samplers
from pipeline.core.gaussian import exact_eps_fn, exact_map, frechet_to_truth
from pipeline.core.samplers import SAMPLERS, nfe, sample
from pipeline.core.samplers.pndm import adams_bashforth_weights
from pipeline.core.schedules import SPACINGS, NoiseSchedule, timesteps
from pipeline.core.spacing import REPEATS

MU, S = 5.0, 2.0
DETERMINISTIC = ["ddim", "pndm-prk", "s-pndm", "f-pndm", "fon", "rk4-ab4", "plms", "dpm-solver++"]
# Pathwise error bound and budget at which each deterministic sampler must reach the exact map: DDIM is
# first order (1000 steps); the official FON has a one-index bias (its derivative is the one-index DDIM
# step, so it cannot beat DDIM at S = T; see test_official_fon_* below); the others at 250 steps.
REACH = {"ddim": (1000, 0.01 * S), "fon": (250, 0.01 * S)}
REACH_DEFAULT = (250, 1e-3 * S)
STOCHASTIC = [("ddpm", None), ("ddpm-large", None), ("ddim", 1.0), ("ddim", 0.5)]



@pytest.fixture(scope="module")
def linear():
    return NoiseSchedule.linear(1000)


@pytest.fixture(scope="module")
def sigma_linear():
    """A schedule with sigma(t) = sqrt((1 - a)/a) = 0.005 (t + 1): the PNDM transfer is then exact for
    constant eps, so each pseudo method is the classical method in sigma (see test below)."""
    sig = 0.005 * torch.arange(1, 1001, dtype=torch.float64)
    ab = 1 / (1 + sig**2)
    return NoiseSchedule.from_betas(1 - ab / torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]]))


def grid(n=64):
    return torch.linspace(-3, 3, n, dtype=torch.float64)[:, None]


def path_error(name, schedule, steps, spacing="uniform", x=None, **options):
    """max |sampler(x_T) - exact PF-ODE map(x_T)|, the map started at alpha_bar[first timestep]."""
    x = grid() if x is None else x
    a_T = schedule.alpha_bar[timesteps(schedule.T, steps, spacing)[0]].item()
    out = sample(name, exact_eps_fn(MU, S, schedule), x, schedule, steps, spacing=spacing, options=options)
    return (out - exact_map(x, MU, S, a_T)).abs().max().item()


def fitted_order(name, schedule, ladder, spacing, **options):
    errs = [path_error(name, schedule, n, spacing, **options) for n in ladder]
    return -np.polyfit(np.log(ladder), np.log(errs), 1)[0]


# --- the closed forms themselves ---------------------------------------------------------------


def test_exact_eps_is_the_posterior_mean_of_the_noise(linear):
    g = torch.Generator().manual_seed(0)
    x0 = MU + S * torch.randn(400_000, generator=g, dtype=torch.float64)
    noise = torch.randn(400_000, generator=g, dtype=torch.float64)
    for t in (0, 300, 999):
        a = linear.alpha_bar[t].item()
        xt = math.sqrt(a) * x0 + math.sqrt(1 - a) * noise
        # E[eps | x_t] is affine in x_t: the least-squares fit of eps on x_t recovers it
        slope, intercept = np.polyfit(xt.numpy(), noise.numpy(), 1)
        pred = exact_eps_fn(MU, S, linear)(torch.tensor([[0.0], [1.0]], dtype=torch.float64), torch.full((2,), t))
        assert pred[0].item() == pytest.approx(intercept, abs=5e-3)
        assert (pred[1] - pred[0]).item() == pytest.approx(slope, abs=5e-3)


def test_exact_map_pushes_the_noisy_marginal_onto_the_data(linear):
    a = linear.alpha_bar[700].item()
    xT = math.sqrt(a) * MU + math.sqrt(a * S**2 + 1 - a) * torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    np.testing.assert_allclose(exact_map(xT, MU, S, a).numpy(), [MU - S, MU, MU + S], rtol=1e-14)


def test_frechet_to_truth_against_scipy_sqrtm():
    g = torch.Generator().manual_seed(1)
    mu = torch.tensor([-1.0, 0.0, 2.0, 5.0], dtype=torch.float64).reshape(1, 2, 2)
    s = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64).reshape(1, 2, 2)
    x = torch.randn(50, 1, 2, 2, generator=g, dtype=torch.float64) @ torch.tensor([[1.0, 0.3], [0.0, 1.0]], dtype=torch.float64)
    flat = x.reshape(50, -1).numpy()
    m, c = flat.mean(0), np.cov(flat, rowvar=False)
    sig = np.diag(s.reshape(-1).numpy() ** 2)
    expected = ((m - mu.reshape(-1).numpy()) ** 2).sum() + np.trace(c + sig - 2 * scipy.linalg.sqrtm(c @ sig).real)
    assert frechet_to_truth(x, mu[0], s[0]) == pytest.approx(expected, rel=1e-9)
    # dims = 1: (m - mu)^2 + (sd - s)^2 with the unbiased sd
    y = torch.tensor([[4.0], [6.0], [5.0]], dtype=torch.float64)
    assert frechet_to_truth(y, MU, S) == pytest.approx((1.0 - 2.0) ** 2, rel=1e-12)
    assert frechet_to_truth(torch.tensor([4.0, 6.0, 5.0]), MU, S) == pytest.approx(1.0, rel=1e-6)


def test_adams_bashforth_weights_reduce_to_the_classical_coefficients():
    w = adams_bashforth_weights([300, 400, 500, 600], 300, 200)
    np.testing.assert_allclose(w, [-100 * c / 24 for c in (55, -59, 37, -9)], rtol=1e-12)
    # exact for cubics on unequal steps: the integral of t^3 from 10 to 3
    nodes = [10, 17, 30, 31]
    w = adams_bashforth_weights(nodes, 10, 3)
    assert sum(wi * n**3 for wi, n in zip(w, nodes)) == pytest.approx((3**4 - 10**4) / 4, rel=1e-12)


# --- NFE: counted, never computed --------------------------------------------------------------


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_nfe_equals_counted_eps_calls(name, linear):
    eps = exact_eps_fn(MU, S, linear)
    for spacing in SPACINGS:
        if spacing in REPEATS and not SAMPLERS[name].repeats:
            continue  # refused before compute (test_samplers_errors.py)
        for steps in (1, 2, 3, 4, 5, 11, 50):
            calls = []
            out = sample(name, lambda x, t: calls.append(t) or eps(x, t), grid(4), linear, steps, spacing=spacing)
            assert len(calls) == nfe(name, steps), (name, spacing, steps)
            assert all(t.dtype == torch.long and t.shape == (4,) and 0 <= int(t.min()) for t in calls)
            assert torch.isfinite(out).all()


# --- deterministic samplers: exact answers and convergence order -------------------------------


def test_every_deterministic_sampler_reaches_the_exact_map(linear):
    # DDIM is first order: at 1000 steps its error is about 1/1000 of its 1-step scale
    for name in DETERMINISTIC:
        steps, bound = REACH.get(name, REACH_DEFAULT)
        assert path_error(name, linear, steps) < bound, name


def test_multidimensional_gaussian_is_solved_per_dimension(linear):
    mu = torch.tensor([-1.0, 0.0, 2.0, 5.0], dtype=torch.float64).reshape(1, 2, 2)
    s = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64).reshape(1, 2, 2)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 1, 2, 2, generator=g, dtype=torch.float64)
    for name in DETERMINISTIC:
        steps, bound = REACH.get(name, REACH_DEFAULT)  # the same budgets as the 1-D test above
        a_T = linear.alpha_bar[timesteps(1000, steps, "uniform")[0]].item()
        out = sample(name, exact_eps_fn(mu, s, linear), x, linear, steps)
        assert out.shape == x.shape
        assert (out - exact_map(x, mu, s, a_T)).abs().max() < bound / S * s.max(), name
        # the exact score is diagonal, so each dimension is its own 1-D problem
        out = sample(name, exact_eps_fn(mu, s, linear), x, linear, 25).reshape(16, 4)
        for k, (m_k, s_k) in enumerate(zip(mu.reshape(-1).tolist(), s.reshape(-1).tolist())):
            one = sample(name, exact_eps_fn(m_k, s_k, linear), x.reshape(16, 4)[:, k : k + 1], linear, 25)
            torch.testing.assert_close(one[:, 0], out[:, k], rtol=1e-12, atol=1e-12)


def test_convergence_orders_on_the_linear_schedule(linear):
    """Fitted slope of log error vs log steps (uniform spacing, T // S even so PRK midpoints are exact).
    DDIM is first order; the pseudo methods are second order on a general schedule (the transfer is
    exact only for constant eps in sigma, not in t); DPM-Solver++(2M) is second order (measured without
    lower_order_final, which changes only S <= 10: the scheme's own order); rk4-ab4, the classical
    RK4/AB4 on the ODE in t, is fourth order. The official FON has no order of its own (below)."""
    ladder = [10, 20, 25, 50, 100]
    orders = {name: fitted_order(name, linear, ladder, "uniform") for name in DETERMINISTIC if name not in ("fon", "dpm-solver++")}
    orders["dpm-solver++"] = fitted_order("dpm-solver++", linear, ladder, "uniform", lower_order_final=False)
    assert 0.9 < orders["ddim"] < 1.1, orders
    for name in ("pndm-prk", "s-pndm", "f-pndm", "plms", "dpm-solver++"):
        assert 1.6 < orders[name] < 2.6, (name, orders)
    assert orders["rk4-ab4"] > 3.0, orders


def test_official_fon_stalls_at_the_one_index_ddim_error_and_rk4_ab4_does_not(linear):
    """The official FON's derivative is the one-index DDIM increment phi(x, eps, t, t - 1) - x, so its
    error cannot fall below that of DDIM at S = T (every step one index): from 50 steps on it stays
    within a factor 2 of it, while the textbook rk4-ab4 keeps converging (1000x below it at 100 steps)."""
    one_index_ddim = path_error("ddim", linear, 1000)
    for steps in (50, 100, 250):
        assert 0.5 < path_error("fon", linear, steps) / one_index_ddim < 2, steps
    assert path_error("rk4-ab4", linear, 100) < 1e-3 * one_index_ddim
    for steps in (10, 20, 50, 100):  # the textbook method is at least 10x more accurate at every budget
        assert path_error("fon", linear, steps) > 10 * path_error("rk4-ab4", linear, steps), steps


def test_dpm_solver_pp_lower_order_final_removes_the_uniform_grids_overshoot(linear):
    """uniform's grid ends ..., 100, 0, clean: the step 100 -> 0 is long in lambda (step ratio r ~ 0.2),
    and at second order it overshoots to DDIM's error. With the official lower_order_final (the default)
    it is first order, and DPM-Solver++ is far below DDIM at 10 steps."""
    ddim = path_error("ddim", linear, 10)
    assert path_error("dpm-solver++", linear, 10) < 0.1 * ddim
    assert path_error("dpm-solver++", linear, 10, lower_order_final=False) > 0.9 * ddim
    # the official rule applies below 10 steps of its own (our S - 1): from S = 11 on both agree
    torch.testing.assert_close(sample("dpm-solver++", exact_eps_fn(MU, S, linear), grid(), linear, 11),
                               sample("dpm-solver++", exact_eps_fn(MU, S, linear), grid(), linear, 11,
                                      options={"lower_order_final": False}), rtol=0, atol=0)


def test_pseudo_methods_recover_their_classical_order_when_sigma_is_linear_in_t(sigma_linear):
    """With sigma(t) linear in t and a lattice uniform in t (trailing spacing), the pseudo methods are
    the classical methods on dy/dsigma = eps (y = x / sqrt(a)): the gradient parts must then show
    their textbook orders. pndm-prk is left out: its last step needs the model at the end point."""
    ladder = [50, 100, 125, 250]
    orders = {name: fitted_order(name, sigma_linear, ladder, "trailing") for name in ("ddim", "s-pndm", "f-pndm", "plms")}
    assert 0.9 < orders["ddim"] < 1.1, orders
    assert 1.8 < orders["s-pndm"] < 2.2, orders
    assert 3.5 < orders["f-pndm"] < 4.6, orders
    assert 3.5 < orders["plms"] < 4.8, orders


# --- stochastic samplers: moments against the exact linear-Gaussian chain -------------------------


def chain_moments(name, eta, schedule, steps, m, v):
    """Mean and variance after the sampler's chain, started from N(m, v): with the exact (affine)
    eps every step is x' = p x + q + sigma z, so the moments propagate in closed form."""
    ts = timesteps(schedule.T, steps, "uniform").tolist() + [-1]
    ab = [schedule.alpha_bar[t].item() if t >= 0 else 1.0 for t in ts]
    for a, a2, last in zip(ab[:-1], ab[1:], [False] * (steps - 1) + [True]):
        c1 = math.sqrt(1 - a) / (a * S**2 + 1 - a)  # eps = c1 x + c0
        c0 = -c1 * math.sqrt(a) * MU
        beta = 1 - a / a2
        if name == "ddim":  # x' = sqrt(a2) (x - sqrt(1-a) eps)/sqrt(a) + sqrt(1 - a2 - sig^2) eps
            sig2 = eta**2 * (1 - a2) / (1 - a) * beta
            k_eps = math.sqrt(max(1 - a2 - sig2, 0.0)) - math.sqrt(a2 * (1 - a) / a)
            p, q = math.sqrt(a2 / a) + k_eps * c1, k_eps * c0
        else:  # x' = (x - beta / sqrt(1 - a) eps) / sqrt(1 - beta)
            sig2 = 0.0 if last else ((1 - a2) / (1 - a) * beta if name == "ddpm" else beta)
            p = (1 - beta / math.sqrt(1 - a) * c1) / math.sqrt(1 - beta)
            q = -beta / math.sqrt(1 - a) * c0 / math.sqrt(1 - beta)
        m, v = p * m + q, p * p * v + sig2
    return m, v


@pytest.mark.parametrize("name, eta", STOCHASTIC)
def test_stochastic_samplers_match_the_truth_at_1000_steps(name, eta, linear):
    n, steps = 16_000, 1000
    g = torch.Generator().manual_seed(11)
    x = torch.randn(n, 1, generator=g, dtype=torch.float64)  # N(0, 1): the usual start, slightly off the true marginal
    out = sample(name, exact_eps_fn(MU, S, linear), x, linear, steps, eta=eta, generator=g)
    m, v = chain_moments(name, eta, linear, steps, 0.0, 1.0)  # start mismatch included
    # the chain itself is close to the truth at 1000 steps ...
    assert abs(m - MU) < 0.02 * S and abs(math.sqrt(v) - S) < 0.02 * S, (m, v)
    # ... and the samples match the chain's exact moments within sampling error (5 standard errors)
    assert abs(out.mean().item() - m) < 5 * math.sqrt(v / n)
    assert abs(out.var().item() - v) < 5 * v * math.sqrt(2 / (n - 1))


def test_ddpm_full_chain_from_the_true_marginal_has_the_true_moments(linear):
    n = 16_000
    g = torch.Generator().manual_seed(12)
    a = linear.alpha_bar[-1].item()
    x = math.sqrt(a) * MU + math.sqrt(a * S**2 + 1 - a) * torch.randn(n, 1, generator=g, dtype=torch.float64)
    out = sample("ddpm", exact_eps_fn(MU, S, linear), x, linear, 1000, generator=g)
    assert abs(out.mean().item() - MU) < 5 * S / math.sqrt(n)
    assert abs(out.std().item() - S) < 5 * S / math.sqrt(2 * n) + 0.01 * S  # + discretisation of the chain


# --- DDIM Eq. 16: ddpm on a respaced chain is ddim with eta = 1 ---------------------------------


@pytest.mark.parametrize("steps, spacing", [(10, "uniform"), (37, "quadratic"), (50, "trailing"), (1000, "uniform")])
def test_respaced_ddpm_is_ddim_eta_1_with_the_same_noise(steps, spacing, linear):
    eps = exact_eps_fn(MU, S, linear)
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    a = sample("ddpm", eps, x, linear, steps, spacing=spacing, generator=torch.Generator().manual_seed(9))
    b = sample("ddim", eps, x, linear, steps, spacing=spacing, eta=1.0, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    c = sample("ddpm-large", eps, x, linear, steps, spacing=spacing, generator=torch.Generator().manual_seed(9))
    assert (a - c).abs().max() > 1e-3  # the larger variance really is a different process


# --- purity, reproducibility, batch independence ------------------------------------------------


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_inputs_are_never_mutated(name, linear):
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_copy, ab_copy, b_copy = x.clone(), linear.alpha_bar.clone(), linear.betas.clone()
    seen = []

    def eps_fn(xi, t):
        seen.append((xi, xi.clone()))
        return exact_eps_fn(MU, S, linear)(xi, t)

    sample(name, eps_fn, x, linear, 6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x, x_copy) and torch.equal(linear.alpha_bar, ab_copy) and torch.equal(linear.betas, b_copy)
    assert all(torch.equal(xi, c) for xi, c in seen)  # no state handed to the model is changed afterwards


@pytest.mark.parametrize("name, eta", STOCHASTIC)
def test_same_seed_same_result_and_batch_composition_does_not_matter(name, eta, linear):
    eps = exact_eps_fn(MU, S, linear)

    def run(seeds):  # one generator per image: x_T and then every noise draw come from image k's own seed
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        x = torch.stack([torch.randn(3, 2, generator=g, dtype=torch.float64) for g in gens])
        return sample(name, eps, x, linear, 20, eta=eta, generator=gens)

    full = run([100, 101, 102, 103])
    torch.testing.assert_close(run([100, 101, 102, 103]), full, rtol=0, atol=0)
    torch.testing.assert_close(run([102]), full[2:3], rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(run([103, 100]), full[[3, 0]], rtol=1e-14, atol=1e-14)
    assert (run([200])[0] - full[0]).abs().max() > 1e-3  # another seed, another image
    # a single generator is also reproducible (but then a draw depends on the batch)
    x = torch.zeros(4, 2, dtype=torch.float64)
    one = [sample(name, eps, x, linear, 20, eta=eta, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(one[0], one[1])


def test_float32_in_float32_out_and_callback_sees_every_step(linear):
    x = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    for name in SAMPLERS:
        steps_seen = []
        out = sample(name, exact_eps_fn(MU, S, linear), x, linear, 7, callback=steps_seen.append)
        assert out.dtype == torch.float32 and out.shape == x.shape
        ts = timesteps(1000, 7, "uniform").tolist()
        assert [d["i"] for d in steps_seen] == list(range(7)) and [d["t"] for d in steps_seen] == ts
        assert [d["t_next"] for d in steps_seen] == ts[1:] + [-1] and steps_seen[-1]["x"] is out
    assert samplers.takes_eta("ddim") and not samplers.takes_eta("plms")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_state_with_cpu_per_image_generators_matches_cpu(linear):
    eps = exact_eps_fn(MU, S, linear)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name, eta in STOCHASTIC + [("f-pndm", None)]:
        gens = lambda: [torch.Generator().manual_seed(k) for k in range(4)]  # noqa: E731
        cpu = sample(name, eps, x, linear, 20, eta=eta, generator=gens())
        gpu = sample(name, eps, x.cuda(), linear, 20, eta=eta, generator=gens())
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-10, atol=1e-10)
