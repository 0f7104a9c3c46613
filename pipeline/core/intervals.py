"""95% intervals for FID, KID and the exact Frechet distance: a delete-a-block jackknife over seed blocks.

Pure functions, no I/O. Features are numpy arrays or torch tensors [N, D]; all arithmetic is float64.

    n_blocks(n)                          B for N samples: min(20, N // 5); None when N < 10 (no interval)
    block_ids(n, B)                      image k -> block floor(k B / N): the same blocks at every grid point
    jackknife_interval(theta, reps)      -> (lo, hi, se): theta -+ t_{(1+level)/2, B-1} se
    paired_difference(ta, ra, tb, rb)    -> (diff, lo, hi, se) of theta_a - theta_b, blocks paired
    frechet_replicates(x, mu_r, F, B)    -> (FD of all samples, FD without block b for each b), F F^T = Sigma_r
    kid_replicates(x, y, B)              -> (unbiased MMD^2 of all, MMD^2 without block b of x AND of y)

Why blocks of seeds. Image k of every grid point starts from the same seed (`sample.initial_noise`),
so block b holds the same seeds at every point with the same N. The replicates of two points are
then paired, and the jackknife of the difference of replicates is the jackknife of the difference:
what the seeds share cancels.

Jackknife, delete-a-group form (Kott 2001; its variance leans conservative, Efron & Stein 1981):
with theta_b the statistic without block b and theta_. their mean,
    V = (B - 1) / B * sum_b (theta_b - theta_.)^2,    interval = theta -+ t_{(1+level)/2, B-1} sqrt(V).
It estimates the sampling variance of theta at this N. For FID the target is E[FID_N] against fixed
reference statistics: FID is biased upward at finite N (by about tr Sigma_g / N and more), and the
interval does not remove that bias. KID is unbiased, so its interval is for the population value.
"""
from __future__ import annotations

import hashlib
import math
from typing import Optional

import numpy as np

LEVEL = 0.95
MAX_BLOCKS = 20  # more blocks: more degrees of freedom for t, more eigendecompositions for FID
MIN_BLOCK_SIZE = 5
MIN_N = 10  # below this no interval: the fields are null and `interval_note` says why
METHOD = "delete-a-block jackknife over seed blocks"
_CHUNK_ELEMENTS = 1 << 24  # kernel-matrix chunk: 16 Mi float64 = 128 MiB, whatever N


def n_blocks(n: int) -> Optional[int]:
    """Number of jackknife blocks for N samples: min(20, N // 5), at least 2; None when N < 10."""
    if n < MIN_N:
        return None
    return max(2, min(MAX_BLOCKS, n // MIN_BLOCK_SIZE))


def block_ids(n: int, blocks: int) -> np.ndarray:
    """int64 [n]: image k (by seed index, k = 0..n-1) -> its block floor(k * blocks / n), contiguous and ordered."""
    if not 1 <= blocks <= n:
        raise ValueError(f"blocks: {blocks} must be between 1 and the number of samples {n}")
    return (np.arange(n, dtype=np.int64) * blocks) // n


def _t_quantile(level: float, df: int) -> float:
    from scipy.stats import t

    if not 0 < level < 1:
        raise ValueError(f"level: {level!r} must be strictly between 0 and 1 (e.g. 0.95)")
    return float(t.ppf(0.5 + level / 2, df))


def jackknife_interval(theta: float, replicates, level: float = LEVEL) -> tuple[float, float, float]:
    """Delete-a-block jackknife: (lo, hi, se) = theta -+ t_{(1+level)/2, B-1} se, se^2 = (B-1)/B sum (theta_b - mean)^2."""
    r = np.asarray(replicates, dtype=np.float64)
    if r.ndim != 1 or len(r) < 2:
        raise ValueError(f"replicates: need a 1-d list of at least 2 block replicates, got shape {r.shape}")
    if not np.isfinite(r).all() or not math.isfinite(theta):
        raise ValueError(f"jackknife: theta {theta!r} or a replicate is not finite")
    b = len(r)
    se = math.sqrt((b - 1) / b * float(((r - r.mean()) ** 2).sum()))
    half = _t_quantile(level, b - 1) * se
    return float(theta) - half, float(theta) + half, se


def paired_difference(theta_a: float, reps_a, theta_b: float, reps_b, level: float = LEVEL
                      ) -> tuple[float, float, float, float]:
    """theta_a - theta_b with its jackknife interval over paired blocks: (diff, lo, hi, se).

    reps_a[b] and reps_b[b] must leave out the same seeds (same N, same seeds, same B); the
    replicates of the difference are then reps_a - reps_b. ValueError when the block counts differ.
    """
    ra, rb = np.asarray(reps_a, dtype=np.float64), np.asarray(reps_b, dtype=np.float64)
    if ra.shape != rb.shape:
        raise ValueError(f"paired_difference: the two values have {ra.shape[0] if ra.ndim else ra.shape} and "
                         f"{rb.shape[0] if rb.ndim else rb.shape} block replicates; a paired difference needs the "
                         "same blocks (same N and seeds)")
    diff = float(theta_a) - float(theta_b)
    lo, hi, se = jackknife_interval(diff, ra - rb, level)
    return diff, lo, hi, se


# --------------------------------------------------------------------------- FID / exact Frechet distance


def _float64(x) -> np.ndarray:
    """numpy array or torch tensor -> float64 numpy array (a CPU copy for tensors)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def sqrtm_psd(sigma) -> np.ndarray:
    """Symmetric PSD square root of a covariance [D, D] (eigh; negative rounding eigenvalues clipped to 0)."""
    s = _float64(sigma)
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def covariance_factor(sigma) -> np.ndarray:
    """F [D, D] with F F^T = Sigma: the Cholesky factor (cheap), or `sqrtm_psd` when Sigma is singular
    (fewer reference samples than dimensions). Either gives the same tr (F^T C F)^(1/2) = tr (C Sigma)^(1/2)."""
    s = _float64(sigma)
    try:
        return np.linalg.cholesky((s + s.T) / 2)
    except np.linalg.LinAlgError:
        return sqrtm_psd(s)


def _eigvalsh(m: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric float64 matrix, from whichever LAPACK is faster at its size on one
    CPU thread (measured here: numpy's OpenBLAS 0.070 s against torch's 0.128 s at D = 784, the
    mixture's pixel space; torch 1.81 s against 2.70 s at D = 2048, Inception's)."""
    sym = (m + m.T) / 2
    if len(sym) <= 1024:
        return np.linalg.eigvalsh(sym)
    import torch

    return torch.linalg.eigvalsh(torch.from_numpy(sym)).numpy()


def _run_starts(ids: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])


def frechet_replicates(features, mu_r, factor_r, blocks: int) -> tuple[float, np.ndarray]:
    """Frechet distance of N(m, C) fitted to `features` [N, D] to N(mu_r, Sigma_r), and its block replicates.

    factor_r: F [D, D] with F F^T = Sigma_r (`covariance_factor`, or Sigma_r^(1/2)), computed once per reference.
        FD = |m - mu_r|^2 + tr C + tr Sigma_r - 2 tr (F^T C F)^(1/2)
    (C Sigma_r = C F F^T has the eigenvalues of F^T C F, which is symmetric PSD: eigvalsh, float64.)
    C is the unbiased covariance. Replicate b is the same FD without the samples of block b: its
    mean and covariance are downdated from the full sums, Y = (X - m) F is formed block by block
    (memory bounded: see below). Returns (FD of all N, float64 [blocks]).
    """
    x = _float64(features)
    n, d = x.shape
    a = _float64(factor_r)
    mu_r = _float64(mu_r)
    if a.shape != (d, d) or mu_r.shape != (d,):
        raise ValueError(f"reference moments: mu {mu_r.shape} and the factor of Sigma {a.shape} do not match {d}-d features")
    ids = block_ids(n, blocks)
    if blocks > 1 and n - -(-n // blocks) < 2:
        raise ValueError(f"Frechet distance: {blocks} blocks leave fewer than 2 of {n} samples in a replicate")
    starts = list(_run_starts(ids)) + [n]
    m = x.mean(axis=0)
    tr_sigma_r = float((a * a).sum())  # tr(F F^T)

    # Y_b = (X_b - m) F; Y^T Y and the per-block sums in one pass. For the replicates each block's
    # Y_b^T Y_b is needed again: kept when all of them fit in 128 MiB, else Y_b kept when Y fits in
    # 256 MiB, else Y_b recomputed (memory bounded at any N).
    keep_gram, keep_y = blocks * d * d <= _CHUNK_ELEMENTS, n * d <= 2 * _CHUNK_ELEMENTS
    g, q, sums, kept = np.zeros((d, d)), 0.0, [], []
    for b in range(blocks):
        xc = x[starts[b]:starts[b + 1]] - m
        y = xc @ a
        gb = y.T @ y
        g += gb  # Y^T Y (Y centered: its column sums are 0)
        sums.append((y.sum(axis=0), xc.sum(axis=0), float((xc * xc).sum())))
        q += sums[-1][2]  # sum |x_i - m|^2
        kept.append(gb if keep_gram else (y if keep_y else None))

    def gram(b):
        if keep_gram:
            return kept[b]
        y = kept[b] if keep_y else (x[starts[b]:starts[b + 1]] - m) @ a
        return y.T @ y

    def fd(n_kept, g_kept, ysum, xsum, q_kept):
        cy, cx = ysum / n_kept, xsum / n_kept  # the kept samples' mean, in centered coordinates
        aca = (g_kept - n_kept * np.outer(cy, cy)) / (n_kept - 1)  # F^T C F of the kept samples
        tr_c = (q_kept - n_kept * float(cx @ cx)) / (n_kept - 1)
        tr_sqrt = np.sqrt(np.clip(_eigvalsh(aca), 0, None)).sum()
        return float(((m + cx - mu_r) ** 2).sum() + tr_c + tr_sigma_r - 2 * tr_sqrt)

    theta = fd(n, g, np.zeros(d), np.zeros(d), q)
    reps = np.empty(blocks)
    for b, (yb, xb, qb) in enumerate(sums):
        reps[b] = fd(n - (starts[b + 1] - starts[b]), g - gram(b), -yb, -xb, q - qb)
    return theta, reps


# --------------------------------------------------------------------------- KID


def _cubic(a: np.ndarray, b: np.ndarray, d: int) -> np.ndarray:
    """k(a_i, b_j) = (a_i . b_j / d + 1)^3 [len(a), len(b)], the KID kernel (Binkowski et al. 2018, gamma = 1/d)."""
    k = a @ b.T
    k *= 1.0 / d
    k += 1.0
    k2 = k * k
    k2 *= k
    return k2


def _kernel_block_sums(x: np.ndarray, ids_x: np.ndarray, y: Optional[np.ndarray], ids_y: Optional[np.ndarray],
                       blocks: int) -> np.ndarray:
    """S[a, b] = sum of k(x_i, y_j) over x_i in block a, y_j in block b [blocks, blocks], in row chunks.

    y None: the within-set sums of x without the diagonal i = j, from strips of the upper triangle
    (the strip's square once, the rest of the strip once and transposed). Block sums are products
    with 0/1 block-indicator matrices, P^T K P.
    """
    n, d = x.shape
    px = np.eye(blocks)[ids_x]  # [n, blocks] indicator
    s = np.zeros((blocks, blocks))
    if y is not None:
        py = np.eye(blocks)[ids_y]
        step = max(1, _CHUNK_ELEMENTS // len(y))
        for r0 in range(0, n, step):
            s += px[r0:r0 + step].T @ _cubic(x[r0:r0 + step], y, d) @ py
        return s
    step = max(1, min(_CHUNK_ELEMENTS // n, -(-n // 8)))  # >= 8 strips: about 56% of the square is computed
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        k = _cubic(x[r0:r1], x[r0:], d)  # rows r0:r1 against columns r0:n
        c = r1 - r0
        np.fill_diagonal(k[:, :c], 0.0)  # unbiased: no k(x_i, x_i)
        s += px[r0:r1].T @ k[:, :c] @ px[r0:r1]
        off = px[r0:r1].T @ k[:, c:] @ px[r1:]
        s += off + off.T
    return s


_REF_SUMS: dict = {}  # (sha1 of the reference features, blocks) -> their within-set block sums


def _reference_block_sums(y: np.ndarray, ids_y: np.ndarray, blocks: int) -> np.ndarray:
    """`_kernel_block_sums(y, ids_y, None, None, blocks)`, memoised by content: every grid point of a
    job is scored against the same stored reference subset, and with M = 5,000 its M^2 kernel is
    most of KID's cost (all of it at N = 100). Keyed by a hash of the bytes, so a different
    reference can never reuse the sums; a copy is returned, and the memo keeps the last 4."""
    key = (hashlib.sha1(np.ascontiguousarray(y).view(np.uint8)).hexdigest(), y.shape, blocks)
    if key not in _REF_SUMS:
        if len(_REF_SUMS) >= 4:
            _REF_SUMS.pop(next(iter(_REF_SUMS)))
        _REF_SUMS[key] = _kernel_block_sums(y, ids_y, None, None, blocks)
    return _REF_SUMS[key].copy()


def kid_replicates(gen, ref, blocks: int) -> tuple[float, np.ndarray]:
    """Unbiased MMD^2 with the cubic polynomial kernel (KID) of all of `gen` [N, D] vs all of `ref` [M, D],
    and its replicates without block b of BOTH sets (blocks by index: seed index in gen, index in the
    stored reference subset). Returns (KID, float64 [blocks]); blocks = 1: (KID, no replicates).

        KID = sum_{i != j} k(x_i, x_j) / (N (N-1)) + sum_{i != j} k(y_i, y_j) / (M (M-1)) - 2 sum k(x_i, y_j) / (N M)

    From block sums of the three kernel matrices (O((N + M)^2 D) time, bounded memory at any N).
    """
    x, y = _float64(gen), _float64(ref)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"KID: features must be [N, D] and [M, D] of one D, got {x.shape} and {y.shape}")
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"KID: needs at least 2 features in each set, got {n} and {m}")
    ids_x, ids_y = block_ids(n, blocks), block_ids(m, blocks)
    if blocks > 1 and min(n - -(-n // blocks), m - -(-m // blocks)) < 2:
        raise ValueError(f"KID: {blocks} blocks leave fewer than 2 features of {n} or {m} in a replicate")
    sxx = _kernel_block_sums(x, ids_x, None, None, blocks)
    syy = _reference_block_sums(y, ids_y, blocks)
    sxy = _kernel_block_sums(x, ids_x, y, ids_y, blocks)
    nb, mb = np.bincount(ids_x, minlength=blocks), np.bincount(ids_y, minlength=blocks)

    def mmd2(n_, m_, xx, yy, xy):
        return xx / (n_ * (n_ - 1)) + yy / (m_ * (m_ - 1)) - 2 * xy / (n_ * m_)

    theta = float(mmd2(n, m, sxx.sum(), syy.sum(), sxy.sum()))
    if blocks == 1:
        return theta, np.empty(0)  # the value alone
    diag = np.arange(blocks)
    xx = sxx.sum() - 2 * sxx.sum(axis=1) + sxx[diag, diag]
    yy = syy.sum() - 2 * syy.sum(axis=1) + syy[diag, diag]
    xy = sxy.sum() - sxy.sum(axis=1) - sxy.sum(axis=0) + sxy[diag, diag]
    return theta, mmd2(n - nb, m - mb, xx, yy, xy)
