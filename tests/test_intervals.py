"""Intervals of FID, KID and the exact Frechet distance (pipeline/core/intervals.py).

First the algebra, against independent implementations: replicates are the statistic recomputed
without each block (torch-fidelity's FID and KID, `gaussian.frechet_to_truth`), and the jackknife of
a mean is the t-interval of the block means. Then calibration on Gaussian features with a known
truth, fixed seeds, 200 repeats per case: the 95% intervals must cover the truth in 90-99% of them.

    FID   truth = E[FID_N] against fixed reference moments: the mean term in closed form, the
          covariance terms from 2,000 covariances C drawn from their Wishart law (Bartlett), not
          from feature sets: an independent route.
    KID   truth = the population MMD^2 with the cubic kernel, in closed form from Gaussian moments
          (checked here against Isserlis' theorem).

Features are numpy float64; BLAS runs one thread (small matrices on a shared 2-core machine).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from pipeline.core import gaussian, intervals

REPEATS = 200


@pytest.fixture(autouse=True)
def one_blas_thread():
    with threadpool_limits(1):
        yield


# --------------------------------------------------------------------------- the synthetic problem


def problem(d: int, seed: int = 0):
    """Reference N(mu_r, Sigma_r) and generated N(mu_g, Sigma_g) with a decaying spectrum (as image
    features have); the generated law is 1.3x wider, slightly rotated and shifted."""
    rng = np.random.default_rng(seed)
    lam = 1.0 / np.arange(1, d + 1)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    rot, _ = np.linalg.qr(np.eye(d) + 0.3 * rng.standard_normal((d, d)) / np.sqrt(d))
    sig_r = (q * lam) @ q.T
    sig_g = (rot @ q * (1.3 * lam)) @ (rot @ q).T
    return np.zeros(d), sig_r, 0.05 * rng.standard_normal(d), sig_g


def draw(rng, mu, sig, n):
    return mu + rng.standard_normal((n, len(mu))) @ np.linalg.cholesky(sig).T


def expected_fid(n: int, mu_r, sig_r, mu_g, sig_g, repeats: int = 2000, seed: int = 1) -> float:
    """E[FID_N] of N samples of N(mu_g, Sigma_g) against the fixed N(mu_r, Sigma_r).

    The sample mean m is independent of the covariance C: E|m - mu_r|^2 = |mu_g - mu_r|^2 + tr Sigma_g / N.
    E[tr C - 2 tr (C Sigma_r)^1/2] by Monte Carlo over C alone (the two terms vary together, so they
    are drawn together): with Sigma_g = L_g L_g^T, Sigma_r = L_r L_r^T, (N - 1) C = U U^T, U = L_g T,
    T T^T ~ Wishart(N - 1, I); tr (C Sigma_r)^1/2 = tr (L_r^T U U^T L_r / (N - 1))^1/2. T is lower
    triangular with chi_{N-1-i} on the diagonal (Bartlett) when N - 1 >= D, else T = Z^T, Z [N - 1, D] normal.
    """
    d = len(mu_r)
    rng = np.random.default_rng(seed)
    lg, lr = np.linalg.cholesky(sig_g), np.linalg.cholesky(sig_r)
    terms = []
    for r0 in range(0, repeats, 200):
        r = min(200, repeats - r0)
        if n - 1 >= d:
            t = np.tril(rng.standard_normal((r, d, d)), -1)
            t[:, np.arange(d), np.arange(d)] = np.sqrt(rng.chisquare(n - 1 - np.arange(d), size=(r, d)))
        else:
            t = rng.standard_normal((r, n - 1, d)).transpose(0, 2, 1)
        u = lg @ t  # [r, D, min(D, N - 1)]
        g = lr.T @ u
        ev = np.linalg.eigvalsh(g.transpose(0, 2, 1) @ g / (n - 1))  # the nonzero eigenvalues of g g^T / (N - 1)
        terms.append((u**2).sum((1, 2)) / (n - 1) - 2 * np.sqrt(np.clip(ev, 0, None)).sum(-1))
    return float(((mu_g - mu_r) ** 2).sum() + np.trace(sig_g) / n + np.trace(sig_r) + np.concatenate(terms).mean())


def expected_cubic_kernel(a, A, b, B) -> float:
    """E (x.y / d + 1)^3 for independent x ~ N(a, A), y ~ N(b, B), from the first three moments:
    E x.y = a.b, E (x.y)^2 = tr((A + aa^T)(B + bb^T)),
    E (x.y)^3 = (a.b)^3 + 3 (a.b)(a^T B a + b^T A b + tr AB) + 6 a^T B A b."""
    d, ab = len(a), a @ b
    e2 = np.trace((A + np.outer(a, a)) @ (B + np.outer(b, b)))
    e3 = ab**3 + 3 * ab * (a @ B @ a + b @ A @ b + np.trace(A @ B)) + 6 * a @ B @ A @ b
    return float(1 + 3 * ab / d + 3 * e2 / d**2 + e3 / d**3)


def population_kid(mu_g, sig_g, mu_r, sig_r) -> float:
    """MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y), the value KID estimates without bias."""
    return (expected_cubic_kernel(mu_g, sig_g, mu_g, sig_g) + expected_cubic_kernel(mu_r, sig_r, mu_r, sig_r)
            - 2 * expected_cubic_kernel(mu_g, sig_g, mu_r, sig_r))


def fid_direct(x, mu_r, sig_r) -> float:
    """The textbook FID of samples x against N(mu_r, Sigma_r), through a Cholesky factor of Sigma_r."""
    lr = np.linalg.cholesky(sig_r)
    c = np.cov(x, rowvar=False)
    ev = np.clip(np.linalg.eigvalsh(lr.T @ c @ lr), 0, None)
    return float(((x.mean(0) - mu_r) ** 2).sum() + np.trace(c) + np.trace(sig_r) - 2 * np.sqrt(ev).sum())


def mmd2_direct(x, y) -> float:
    d = x.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    n, m = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


def fid_coverage(n: int, d: int, repeats: int = REPEATS, seed: int = 2) -> tuple[float, float]:
    """(fraction of 95% FID intervals that cover E[FID_N], E[FID_N])."""
    mu_r, sig_r, mu_g, sig_g = problem(d)
    truth = expected_fid(n, mu_r, sig_r, mu_g, sig_g)
    a, blocks = intervals.covariance_factor(sig_r), intervals.n_blocks(n)
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(repeats):
        theta, reps = intervals.frechet_replicates(draw(rng, mu_g, sig_g, n), mu_r, a, blocks)
        lo, hi, _ = intervals.jackknife_interval(theta, reps)
        hits += lo <= truth <= hi
    return hits / repeats, truth


def kid_coverage(n: int, m: int, d: int, repeats: int = REPEATS, seed: int = 3) -> tuple[float, float]:
    """(fraction of 95% KID intervals that cover the population MMD^2, that MMD^2); both sets drawn afresh."""
    mu_r, sig_r, mu_g, sig_g = problem(d)
    truth = population_kid(mu_g, sig_g, mu_r, sig_r)
    blocks = intervals.n_blocks(n)
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(repeats):
        theta, reps = intervals.kid_replicates(draw(rng, mu_g, sig_g, n), draw(rng, mu_r, sig_r, m), blocks)
        lo, hi, _ = intervals.jackknife_interval(theta, reps)
        hits += lo <= truth <= hi
    return hits / repeats, truth


# --------------------------------------------------------------------------- blocks and the jackknife


def test_blocks_follow_the_seed_index():
    assert intervals.block_ids(10, 3).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]  # floor(k * 3 / 10)
    for n in (10, 37, 128, 1000, 50000):
        b = intervals.n_blocks(n)
        assert b == min(20, n // 5)
        sizes = np.bincount(intervals.block_ids(n, b))
        assert len(sizes) == b and sizes.max() - sizes.min() <= 1  # as equal as N allows
    assert intervals.n_blocks(9) is None  # too few samples: no interval
    with pytest.raises(ValueError, match="blocks"):
        intervals.block_ids(5, 6)


def test_jackknife_of_a_mean_is_the_t_interval_of_block_means():
    """For the mean with equal blocks, the delete-a-block jackknife is exactly the t-interval of the block means."""
    from scipy import stats

    x = np.random.default_rng(0).standard_normal(100) * 2 + 1
    blocks = 20
    ids = intervals.block_ids(100, blocks)
    reps = [x[ids != b].mean() for b in range(blocks)]
    lo, hi, se = intervals.jackknife_interval(x.mean(), reps)
    means = np.array([x[ids == b].mean() for b in range(blocks)])
    want = stats.t.interval(0.95, blocks - 1, loc=means.mean(), scale=stats.sem(means))
    assert (lo, hi) == pytest.approx(want, rel=1e-12)
    assert se == pytest.approx(stats.sem(means), rel=1e-12)
    lo90, hi90, _ = intervals.jackknife_interval(x.mean(), reps, level=0.9)
    assert lo < lo90 < hi90 < hi


def test_paired_difference_pairs_blocks_and_refuses_unequal_ones():
    rng = np.random.default_rng(1)
    ra, rb = rng.standard_normal(20), rng.standard_normal(20)
    diff, lo, hi, se = intervals.paired_difference(2.0, ra, 1.5, rb)
    assert diff == pytest.approx(0.5) and (lo, hi, se) == pytest.approx(intervals.jackknife_interval(0.5, ra - rb))
    assert intervals.paired_difference(2.0, ra, 2.0, ra)[1:] == (0.0, 0.0, 0.0)  # a value against itself
    with pytest.raises(ValueError, match="same blocks"):
        intervals.paired_difference(2.0, ra, 1.5, rb[:10])
    with pytest.raises(ValueError, match="level"):
        intervals.paired_difference(2.0, ra, 1.5, rb, level=95)
    with pytest.raises(ValueError, match="at least 2"):
        intervals.jackknife_interval(1.0, [1.0])


# --------------------------------------------------------------------------- replicates = the statistic without a block


def test_frechet_replicates_are_torch_fidelity_fid_without_each_block(monkeypatch):
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    mu_r, sig_r, mu_g, sig_g = problem(12)
    x = draw(np.random.default_rng(4), mu_g, sig_g, 63)
    ref = {"mu": mu_r, "sigma": sig_r}

    def tf_fid(f):
        return fid_statistics_to_metric(fid_features_to_statistics(torch.from_numpy(f)), ref, False)["frechet_inception_distance"]

    theta, reps = intervals.frechet_replicates(torch.from_numpy(x), mu_r, intervals.covariance_factor(sig_r), 7)
    ids = intervals.block_ids(63, 7)
    assert theta == pytest.approx(tf_fid(x), rel=1e-8)
    assert reps == pytest.approx([tf_fid(x[ids != b]) for b in range(7)], rel=1e-8)
    # any factor F F^T = Sigma_r gives the same distances: the symmetric square root here
    again = intervals.frechet_replicates(x, mu_r, intervals.sqrtm_psd(sig_r), 7)
    assert again[0] == pytest.approx(theta, rel=1e-10) and again[1] == pytest.approx(reps, rel=1e-10)
    # bounded memory: block Grams not kept (then the block features are), then neither
    for limit in (7 * 12 * 12 - 1, 63 * 12 // 2 - 1):
        monkeypatch.setattr(intervals, "_CHUNK_ELEMENTS", limit)
        again = intervals.frechet_replicates(x, mu_r, intervals.covariance_factor(sig_r), 7)
        assert again[0] == pytest.approx(theta, rel=1e-12) and again[1] == pytest.approx(reps, rel=1e-12)


def test_a_singular_reference_covariance_falls_back_to_its_square_root():
    """Fewer reference samples than dimensions: no Cholesky factor; the PSD square root is used."""
    rng = np.random.default_rng(10)
    ref = rng.standard_normal((5, 12))
    sig_r = np.cov(ref, rowvar=False)  # rank 4
    f = intervals.covariance_factor(sig_r)
    assert f @ f.T == pytest.approx(sig_r, abs=1e-12)
    x = rng.standard_normal((40, 12))
    want = intervals.frechet_replicates(x, ref.mean(0), intervals.sqrtm_psd(sig_r), 4)
    got = intervals.frechet_replicates(x, ref.mean(0), f, 4)
    assert got[0] == pytest.approx(want[0], rel=1e-10) and got[1] == pytest.approx(want[1], rel=1e-10)


def test_exact_space_replicates_are_frechet_to_truth_without_each_block():
    x = torch.randn(45, 1, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.7 + 4.8
    reps = gaussian.frechet_to_truth_replicates(x, 5.0, 2.0, 9)
    ids = intervals.block_ids(45, 9)
    assert reps == pytest.approx([gaussian.frechet_to_truth(x[ids != b], 5.0, 2.0) for b in range(9)], rel=1e-10)


def test_kid_replicates_are_the_unbiased_mmd_without_each_block_of_both_sets(monkeypatch):
    from torch_fidelity.metric_kid import kid_features_to_metric

    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((53, 6)) + 0.3, rng.standard_normal((37, 6))
    theta, reps = intervals.kid_replicates(x, y, 5)
    ix, iy = intervals.block_ids(53, 5), intervals.block_ids(37, 5)
    assert theta == pytest.approx(mmd2_direct(x, y), rel=1e-12)
    assert reps == pytest.approx([mmd2_direct(x[ix != b], y[iy != b]) for b in range(5)], rel=1e-12)
    monkeypatch.setattr(intervals, "_CHUNK_ELEMENTS", 50)  # one row per chunk: the chunked sums agree
    monkeypatch.setattr(intervals, "_REF_SUMS", {})  # (recomputed, not read from the memo)
    chunked = intervals.kid_replicates(torch.from_numpy(x), torch.from_numpy(y), 5)
    assert chunked[0] == pytest.approx(theta, rel=1e-12) and chunked[1] == pytest.approx(reps, rel=1e-12)
    # torch-fidelity's KID with subsets as large as both (equal) sets: every subset is a permutation
    tf = kid_features_to_metric(torch.from_numpy(x[:37]), torch.from_numpy(y), kid_subsets=2, kid_subset_size=37,
                                kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                                kid_kernel_poly_coef0=1, rng_seed=0, verbose=False)
    assert intervals.kid_replicates(x[:37], y, 1)[0] == pytest.approx(tf["kernel_inception_distance_mean"], rel=1e-9)


def test_the_reference_sums_are_reused_only_for_the_same_reference_features(monkeypatch):
    """Every grid point of a job is scored against one stored reference subset: its M^2 kernel sums
    are computed once, keyed by content, so an edited or different reference is never served stale."""
    monkeypatch.setattr(intervals, "_REF_SUMS", {})
    rng = np.random.default_rng(8)
    x1, x2, y = rng.standard_normal((40, 5)), rng.standard_normal((40, 5)) + 0.2, rng.standard_normal((30, 5))
    calls = []
    real = intervals._kernel_block_sums
    monkeypatch.setattr(intervals, "_kernel_block_sums", lambda x, *a: calls.append(len(x)) or real(x, *a))
    for x in (x1, x2):
        theta, reps = intervals.kid_replicates(x, y, 5)
        ix, iy = intervals.block_ids(40, 5), intervals.block_ids(30, 5)
        assert theta == pytest.approx(mmd2_direct(x, y), rel=1e-12)
        assert reps == pytest.approx([mmd2_direct(x[ix != b], y[iy != b]) for b in range(5)], rel=1e-12)
    assert calls.count(30) == 1  # the reference's within-set sums once, the generated sets' every time
    y[0] += 1.0  # the same array, edited in place: new sums
    assert intervals.kid_replicates(x1, y, 5)[0] == pytest.approx(mmd2_direct(x1, y), rel=1e-12)
    assert intervals.kid_replicates(x1, y, 4)[1] == pytest.approx(
        [mmd2_direct(x1[intervals.block_ids(40, 4) != b], y[intervals.block_ids(30, 4) != b]) for b in range(4)],
        rel=1e-12)  # another block count: other sums


def test_cubic_kernel_expectation_is_isserlis():
    """The closed form used as KID's truth == the contraction of the Gaussian third-moment tensors."""
    rng = np.random.default_rng(6)
    d = 4
    a, b = rng.standard_normal(d), rng.standard_normal(d)
    ga, gb = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    A, B = ga @ ga.T / d, gb @ gb.T / d

    def moments(m, s):  # E x_i x_j, E x_i x_j x_k (Isserlis: third moment = mmm + 3 sym(m s))
        t = (np.einsum("i,j,k->ijk", m, m, m) + np.einsum("i,jk->ijk", m, s) + np.einsum("j,ik->ijk", m, s)
             + np.einsum("k,ij->ijk", m, s))
        return s + np.outer(m, m), t

    (m2a, m3a), (m2b, m3b) = moments(a, A), moments(b, B)
    want = 1 + 3 * (a @ b) / d + 3 * (m2a * m2b).sum() / d**2 + (m3a * m3b).sum() / d**3
    assert expected_cubic_kernel(a, A, b, B) == pytest.approx(want, rel=1e-12)


# --------------------------------------------------------------------------- calibration


@pytest.mark.parametrize("n,d", [(100, 16), (100, 128), (2000, 16),
                                 pytest.param(2000, 128, marks=pytest.mark.slow)])  # 13 s: CI tier
def test_fid_interval_covers_the_expected_fid(n, d):
    cover, truth = fid_coverage(n, d)
    assert 0.90 <= cover <= 0.99, f"FID N={n} D={d}: coverage {cover:.3f} of E[FID_N] = {truth:.4f}"


@pytest.mark.parametrize("n,d", [(100, 16), (100, 128), (500, 16),
                                 pytest.param(2000, 16, marks=pytest.mark.slow),
                                 pytest.param(2000, 128, marks=pytest.mark.slow)])
def test_kid_interval_covers_the_population_kid(n, d):
    cover, truth = kid_coverage(n, n, d)
    assert 0.90 <= cover <= 0.99, f"KID N=M={n} D={d}: coverage {cover:.3f} of MMD^2 = {truth:.5f}"


def test_exact_space_interval_covers_the_expected_distance():
    """gaussian.frechet_to_truth_replicates on [N, 1, 4, 4] samples of N(m, c^2) vs the truth N(5, 2^2 I)."""
    n, shape = 100, (1, 4, 4)
    m, c = torch.linspace(4.8, 5.2, 16).reshape(shape), torch.linspace(1.8, 2.6, 16).reshape(shape)
    mu_r, sig_r = np.full(16, 5.0), np.eye(16) * 4.0
    truth = expected_fid(n, mu_r, sig_r, m.reshape(-1).double().numpy(), np.diag(c.reshape(-1).double().numpy() ** 2))
    g = torch.Generator().manual_seed(7)
    hits = 0
    for _ in range(REPEATS):
        x = m + c * torch.randn(n, *shape, generator=g, dtype=torch.float64)
        lo, hi, _ = intervals.jackknife_interval(gaussian.frechet_to_truth(x, 5.0, 2.0),
                                                 gaussian.frechet_to_truth_replicates(x, 5.0, 2.0, intervals.n_blocks(n)))
        hits += lo <= truth <= hi
    assert 0.90 <= hits / REPEATS <= 0.99


def test_paired_difference_of_correlated_sets_is_narrow_and_covers():
    """Point B = point A + small independent noise (same seeds): the paired interval is far narrower
    than the unpaired one and still covers the true E[FID_N(B)] - E[FID_N(A)]."""
    n, d, tau = 500, 16, 0.1
    mu_r, sig_r, mu_g, sig_g = problem(d)
    rng = np.random.default_rng(8)
    truth = np.mean([fid_direct(x + tau * rng.standard_normal(x.shape), mu_r, sig_r) - fid_direct(x, mu_r, sig_r)
                     for x in (draw(rng, mu_g, sig_g, n) for _ in range(2000))])
    a, blocks = intervals.covariance_factor(sig_r), intervals.n_blocks(n)
    hits, paired, unpaired = 0, [], []
    for _ in range(REPEATS):
        x = draw(rng, mu_g, sig_g, n)
        ta, ra = intervals.frechet_replicates(x, mu_r, a, blocks)
        tb, rb = intervals.frechet_replicates(x + tau * rng.standard_normal(x.shape), mu_r, a, blocks)
        _, lo, hi, se = intervals.paired_difference(tb, rb, ta, ra)
        hits += lo <= truth <= hi
        paired.append(se)
        unpaired.append(np.hypot(intervals.jackknife_interval(ta, ra)[2], intervals.jackknife_interval(tb, rb)[2]))
    assert 0.90 <= hits / REPEATS <= 0.99
    assert np.median(np.array(paired) / np.array(unpaired)) < 0.2


def test_paired_difference_of_independent_sets_of_one_law_contains_zero():
    n, d = 200, 16
    mu_r, sig_r, mu_g, sig_g = problem(d)
    a, blocks = intervals.covariance_factor(sig_r), intervals.n_blocks(n)
    rng = np.random.default_rng(9)
    fid_zero = kid_zero = 0
    for _ in range(REPEATS):
        x1, x2, y = draw(rng, mu_g, sig_g, n), draw(rng, mu_g, sig_g, n), draw(rng, mu_r, sig_r, n)
        _, lo, hi, _ = intervals.paired_difference(*intervals.frechet_replicates(x1, mu_r, a, blocks),
                                                   *intervals.frechet_replicates(x2, mu_r, a, blocks))
        fid_zero += lo <= 0 <= hi
        # KID: both points against the same reference subset, its blocks deleted in both
        _, lo, hi, _ = intervals.paired_difference(*intervals.kid_replicates(x1, y, blocks),
                                                   *intervals.kid_replicates(x2, y, blocks))
        kid_zero += lo <= 0 <= hi
    assert fid_zero / REPEATS >= 0.90 and kid_zero / REPEATS >= 0.90
