"""The exact probability-flow endpoints of the fixed latents, for data sets with an exact score.

    run(cfg, points, diffusion, data_dir, out_path) -> summary        the exact-map stage
    load(path) -> Endpoints                                            what the sample stage reads
    path_error(x_0, endpoints, point, seeds, T, stochastic=) -> record fields          pathwise RMS with its interval

A deterministic sampler approximates the probability-flow ODE map from x_T (drawn with seed k, as
`core.latents.initial_noise` draws it) at alpha_bar[t_S], its first timestep, to x_0 at alpha_bar = 1.
With an exact score that map is known: in closed form for the `gaussian` data set
(`gaussian.exact_map`) and by a high-accuracy adaptive solve for a `gmm` (`gmm.ode_endpoint`,
DOP853 at rtol = atol = 1e-9, whose own error tests/test_gmm.py bounds 10x below the best
sampler's at 1000 steps). So every deterministic grid point reports, beside its FID, its pathwise
error against the exact endpoint of the same x_T: a sampler's discretisation error with no model
error at all. Stochastic samplers (DDPM, DDIM eta > 0) do not approximate that map: no path error.

The endpoints depend on the first timestep (DDIM's uniform spacing starts 10 steps at t = 900,
100 steps at t = 990), so one set is solved per distinct first timestep among the grid's points,
for the first `path_n` seeds, once (the exact-map stage) and cached in
`build/<preset>/exact/<dataset>/endpoints.npz`. Every point's first timestep counts, stochastic
ones too (they share their steps and spacings with deterministic rows, so this costs nothing in
practice): the stage then depends on the grid's steps and spacings only, never on the sampler
registry, and registering a sampler does not redo it.

path_rms = sqrt(mean over images and values of (x_0 - x_0*)^2) in the model's units (images in
[-1, 1]), from the sampler's float output before any uint8 rounding; its 95% interval is the
delete-a-block jackknife over the same seed blocks as FID (`intervals`).
"""
from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pipeline.util import files, provenance

from pipeline.core import intervals, spacing
from pipeline.config import DiffusionConfig, GridPoint, SampleConfig
from pipeline.util.errors import SampleError

ENDPOINTS_VERSION = 1


def starts(points: Sequence[GridPoint], T: int) -> list[int]:
    """The distinct first timesteps of the points, ascending."""
    return spacing.first_timesteps(T, points)


def run(cfg: SampleConfig, points: Sequence[GridPoint], diffusion: DiffusionConfig, data_dir, out_path) -> dict:
    """Solve the exact map for every first timestep of `points` (deterministic ones) from the latents
    of seeds cfg.seed .. cfg.seed + n - 1 (n = sample.path_n, or fewer when no point draws that
    many) -> out_path (npz)."""
    from pipeline.stages import data
    from pipeline.core import gaussian, gmm
    from pipeline.core.latents import initial_noise

    data_dir, out_path = Path(data_dir), Path(out_path)
    manifest = data.load_prepared(data_dir, verify=False).manifest
    source = manifest.get("source")
    if source not in ("gaussian", "gmm"):
        raise SampleError(f"exact-map: data set {manifest.get('dataset')!r} (source {source!r}) has no exact score")
    shape = tuple(int(d) for d in manifest["shape"])
    n = min(max(cfg.n_for(p.steps) for p in points), cfg.path_n)
    seeds = np.arange(cfg.seed, cfg.seed + n, dtype=np.int64)
    ts = starts(points, diffusion.T)
    alpha_bar = diffusion.noise_schedule().alpha_bar
    x_T, _ = initial_noise(seeds.tolist(), shape)
    x_T = x_T.double()
    if source == "gmm":
        mix = gmm.load(data_dir / data.MIXTURE_FILE)
        solve = lambda a: gmm.ode_endpoint(mix, x_T, a)  # noqa: E731
        method = f"gmm.ode_endpoint: subspace DOP853 rtol {gmm.ODE_RTOL:g} atol {gmm.ODE_ATOL:g}, complement closed form"
    else:
        solve = lambda a: gaussian.exact_map(x_T, manifest["mu"], manifest["s"], a)  # noqa: E731
        method = "gaussian.exact_map (closed form)"
    arrays, solve_s = {"seeds": seeds}, {}
    for t in ts:
        t0 = time.perf_counter()
        x0 = solve(float(alpha_bar[t]))
        solve_s[str(t)] = round(time.perf_counter() - t0, 3)
        if not torch.isfinite(x0).all():
            raise SampleError(f"exact-map: the exact endpoint from t = {t} is not finite")
        arrays[f"t{t}"] = x0.numpy()
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    files.write_bytes(out_path, buf.getvalue())
    summary = {"endpoints_version": ENDPOINTS_VERSION, "dataset": manifest.get("dataset"), "n": n,
               "seeds": f"{cfg.seed}..{cfg.seed + n - 1}", "first_timesteps": ts, "method": method,
               "solve_s": solve_s, "data_manifest_sha256": files.sha256_file(data_dir / "manifest.json"),
               "endpoints_sha256": files.sha256_file(out_path), "fingerprint": provenance.fingerprint("cpu")}
    files.write_json(out_path.with_suffix(".json"), summary)
    return summary


@dataclass(frozen=True)
class Endpoints:
    seeds: np.ndarray  # int64 [N]
    by_start: dict  # first timestep -> float64 [N, *shape]
    sha256: str


def load(path) -> Endpoints:
    path = Path(path)
    if not path.is_file():
        raise SampleError(f"--exact-map: {path} not found; run the exact-map stage first")
    with np.load(path, allow_pickle=False) as z:
        by_start = {int(k[1:]): z[k] for k in z.files if k.startswith("t")}
        seeds = z["seeds"]
    return Endpoints(seeds=seeds, by_start=by_start, sha256=files.sha256_file(path))


def path_error(x_0: torch.Tensor, endpoints: Endpoints, point: GridPoint, seeds: Sequence[int], T: int, *,
               stochastic: bool) -> dict:
    """Record fields: path_rms with its jackknife interval against the exact endpoint of the same x_T
    (deterministic points), or nulls with the reason (stochastic points: `stochastic`, which the
    sample stage reads from the sampler registry)."""
    none = {"path_rms": None, "path_rms_lo": None, "path_rms_hi": None, "path_rms_blocks": None, "path_n": None}
    if stochastic:
        return {**none, "path_rms_note": "stochastic sampler: its endpoint is not the probability-flow map of x_T"}
    t = spacing.indices(T, point.steps, point.spacing)[0]
    m = min(len(seeds), len(endpoints.seeds))  # the first images, which the endpoints were solved for
    seeds = np.asarray(list(seeds)[:m], dtype=np.int64)
    x_0 = x_0[:m]
    index = {int(s): i for i, s in enumerate(endpoints.seeds)}
    if t not in endpoints.by_start or any(int(s) not in index for s in seeds):
        raise SampleError(f"--exact-map: no exact endpoints for first timestep {t} and seeds "
                          f"{seeds[0]}..{seeds[-1]}; rerun the exact-map stage")
    ref = torch.from_numpy(endpoints.by_start[t][[index[int(s)] for s in seeds]])
    per_image = (x_0.double().cpu() - ref).reshape(len(seeds), -1).pow(2).mean(1).numpy()  # mean square per image
    rms = float(math.sqrt(per_image.mean()))
    blocks = intervals.n_blocks(len(seeds))
    out = {"path_rms": rms, "path_rms_lo": None, "path_rms_hi": None, "path_rms_blocks": blocks, "path_n": m,
           "path_rms_max": float(math.sqrt(per_image.max())), "path_first_timestep": t,
           "exact_map_sha256": endpoints.sha256}
    if blocks is not None:
        ids = intervals.block_ids(len(seeds), blocks)
        reps = [math.sqrt(per_image[ids != b].mean()) for b in range(blocks)]
        lo, hi, _ = intervals.jackknife_interval(rms, reps)
        out.update(path_rms_lo=max(lo, 0.0), path_rms_hi=hi)
    return out

