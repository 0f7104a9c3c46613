"""The sample stage: one grid point -> N images, a grid PNG and a run record with measured speed.

    run(cfg, point, diffusion, data_dir, model_path, out_dir, dataset) -> record      reads inputs, writes outputs
    run_many(cfg, points, ..., out_dirs, dataset) -> records     the same for many points in one process
    generate(eps_fn, point, schedule, seeds, shape, batch_size, device) -> (x_0, nfe, wall_s)   the sampling itself

The split follows EDM's generate.py: `generate` runs the sampler over batches of seeds and
measures; `run` loads the eps model, checks everything first, renders and writes.

Fixed latents: image k starts from x_T drawn by its own generator seeded with `seed + k`
(on the CPU, then moved to the device), and the same generator supplies that image's
sampler noise (DDPM, DDIM eta > 0), as in EDM's generate.py. Image k is therefore the same
for every N, batch size and device, and every sampler starts from identical latents.

Model: `model_path` -> `checkpoint.load_checkpoint` (the EMA U-Net or an imported diffusers
UNet2DModel); None -> the gaussian data set's exact noise prediction (`gaussian.exact_eps_fn`
with mu, s from its data manifest). The eps function is wrapped once with a call counter:
the recorded NFE is counted, and `nfe_expected` is the registry's formula beside it.

Timing: one warm-up batch of the first images through the eps model (2 evaluations; CUDA
context, kernels, allocator) untimed; then `wall_s` sums the sampler calls only (CUDA-
synchronised before and after each), so `images_per_s = N / wall_s` and
`s_per_nfe = wall_s / nfe`. Peak memory is CUDA's max_memory_allocated on a GPU, the
process's peak RSS (ru_maxrss, so far in the job: with `run.job_per: dataset` the peak over
the points sampled before) on a CPU; `peak_mem_kind` says which.

Outputs (all rendered in memory first, then each written atomically; a NaN/inf in any batch
raises before anything is written): `samples.npz` (key `samples`: uint8 [N, C, H, W], or
float32 [N, *shape] for the gaussian; key `seeds`), `grid.png`, `record.json`.
"""
from __future__ import annotations

import io
import math
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.util import console, files, provenance

from pipeline.core import images, samplers
from pipeline.core.latents import initial_noise  # noqa: F401  (the stage's x_T; tests import it from here)
from pipeline.config import DiffusionConfig, GridPoint, SampleConfig
from pipeline.util.errors import SampleError
from pipeline.core.samplers import NonFiniteError
from pipeline.core.schedules import SPACINGS

WARMUP_EVALS = 2
GRID_PADDING = 2  # pixels of white around and between the images of grid.png


class CountingEps:
    """eps_fn wrapper counting model evaluations: the NFE is counted, not computed."""

    def __init__(self, eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        self.eps_fn = eps_fn
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.eps_fn(x, t)


# ---------------------------------------------------------------------------- the eps model


def precision(cfg: SampleConfig, exact_eps: bool = False) -> str:
    """The arithmetic of the eps model as records and tables name it: float32, bf16 autocast, with
    channels_last appended when set (an exact eps has no network: always float32)."""
    if exact_eps:
        return "float32"
    return ("bf16 autocast" if cfg.bf16 else "float32") + (", channels_last" if cfg.channels_last else "")


def model_eps_fn(model: torch.nn.Module, device: str, *, bf16: bool = False, channels_last: bool = False):
    """nn.Module `model(x, t) -> eps` -> eps_fn(x, t) returning float32 (contiguous), with bf16 autocast
    and/or channels-last on any device (CUDA, or the CPU through oneDNN). The sampler's own arithmetic
    stays float32: only the network runs in bf16."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    kind = torch.device(device).type

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(kind, dtype=torch.bfloat16, enabled=bf16):
            eps = model(x, t)
        return eps.to(torch.float32).contiguous()

    return eps_fn


def load_eps_fn(model_path, manifest: dict, dataset: str, diffusion: DiffusionConfig, cfg: SampleConfig,
                device: str, data_dir=None) -> tuple[Callable, dict]:
    """The eps function to sample from, and the record fields naming it (model, model_kind, checkpoint_sha256).

    model_path: a checkpoint (file or folder) from the train stage; None: the exact eps of a data set
    that has one (the gaussian's N(mu, s^2 I); a gmm's mixture, read from `data_dir`).
    """
    shape = tuple(int(d) for d in manifest["shape"])
    if model_path is not None:
        return _load_checkpoint(model_path, device, diffusion, shape, cfg)
    if manifest.get("source") == "gmm":
        from pipeline.stages import data
        from pipeline.core import gmm

        path = Path(data_dir) / data.MIXTURE_FILE
        mix = gmm.load(path)
        return gmm.eps_fn(mix, diffusion.noise_schedule(), shape), {
            "checkpoint_sha256": files.sha256_file(path), "model": f"exact eps of the mixture {path}",
            "model_kind": "exact"}
    if manifest.get("source") != "gaussian":
        raise SampleError(f"--model: required for dataset {dataset!r} (only the gaussian and gmm sets have an exact model)")
    from pipeline.core import gaussian

    mu, s = float(manifest["mu"]), float(manifest["s"])
    eps_fn = gaussian.exact_eps_fn(mu, s, diffusion.noise_schedule())
    return eps_fn, {"checkpoint_sha256": None, "model": f"exact eps of N({mu:g}, {s:g}^2 I)", "model_kind": "exact"}


def _load_checkpoint(model_path, device: str, diffusion: DiffusionConfig, shape: tuple, cfg: SampleConfig):
    from pipeline.stages import checkpoint

    path = Path(model_path)
    if path.is_dir():
        path = path / "unet.safetensors"
    if not path.is_file():
        raise SampleError(f"--model: {str(path)!r} does not exist; run the train stage first")
    try:
        model, sidecar = checkpoint.load_checkpoint(path, device)
    except (ValueError, OSError, RuntimeError) as e:  # CheckpointError / ConfigError are ValueErrors
        raise SampleError(f"--model: {path} cannot be loaded: {e}") from e
    trained = sidecar.get("diffusion")
    if trained is not None and trained != asdict(diffusion):
        raise SampleError(f"diffusion: the model in {path} was trained with {trained}, "
                          f"sampling asks for {asdict(diffusion)}; sample with the training schedule")
    c, size = sidecar.get("in_channels"), sidecar.get("image_size")
    if c is not None and (int(c), int(size), int(size)) != tuple(shape):
        raise SampleError(f"--model: {path} makes [{c}, {size}, {size}] images, the data in --data are {list(shape)}")
    eps_fn = model_eps_fn(model, device, bf16=cfg.bf16, channels_last=cfg.channels_last)
    # model_pretrained / model_train_steps: what the claims' comparability check and the tables read
    # (an imported checkpoint's hub id or folder; a trained one's optimiser steps).
    return eps_fn, {"checkpoint_sha256": files.sha256_file(path), "model": str(path), "model_kind": sidecar.get("kind"),
                    "model_pretrained": sidecar.get("pretrained"), "model_train_steps": sidecar.get("step"),
                    "model_shipped_from": sidecar.get("shipped_from")}  # model.checkpoint: the shipped file


# ---------------------------------------------------------------------------- measuring


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def _timed(fn: Callable, device: str):
    """(fn(), seconds): CUDA-synchronised before and after, since kernels run asynchronously."""
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def warm_up(eps_fn: Callable, shape: tuple, seeds: Sequence[int], T: int, device: str) -> None:
    """WARMUP_EVALS untimed evaluations on the first batch (CUDA context, kernels, allocator); then the
    CUDA peak-memory count starts afresh, so `peak_mem_bytes` measures sampling."""
    with torch.inference_mode():
        x, _ = initial_noise(seeds, shape, device)
        for t in torch.linspace(T - 1, 0, WARMUP_EVALS).long().tolist():
            eps_fn(x, torch.full((len(seeds),), t, dtype=torch.long, device=device))
        del x
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(torch.device(device))


def peak_memory(device: str) -> tuple[int, str]:
    """(bytes, kind): CUDA's max_memory_allocated on a GPU, the process's peak RSS on a CPU."""
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated(torch.device(device))), "cuda_max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "cpu_ru_maxrss_process"


# ---------------------------------------------------------------------------- sampling


def generate(eps_fn: Callable, point: GridPoint, schedule, seeds: Sequence[int], shape: tuple, batch_size: int,
             device: str, *, options: Optional[dict] = None, where: str = "sample") -> tuple[torch.Tensor, int, float]:
    """Sample one image per seed, `batch_size` at a time: (x_0 float32 [N, *shape] on the CPU, nfe, wall_s).

    options: the sampler's keyword options (default: the point's own).

    Image k depends on seeds[k] alone (`initial_noise`), not on the batching. `nfe` is counted on
    `eps_fn` per batch (every batch must agree); `wall_s` sums the sampler calls. A NaN/inf raises
    NonFiniteError naming `where` and the images.
    """
    counted = CountingEps(eps_fn)
    options = dict(point.options) if options is None else options
    outputs, wall, nfe_per_batch = [], 0.0, []
    starts = range(0, len(seeds), batch_size)
    with torch.inference_mode():
        for start in tqdm(starts, desc=where, unit="batch", disable=console.quiet() or len(starts) == 1, leave=False):
            batch = seeds[start:start + batch_size]
            x_T, gens = initial_noise(batch, shape, device)
            counted.calls = 0
            try:
                x0, seconds = _timed(lambda: samplers.sample(point.sampler, counted, x_T, schedule, point.steps,
                                                             spacing=point.spacing, options=options, generator=gens), device)
            except NonFiniteError as e:
                raise NonFiniteError(f"{where}: images {start}..{start + len(batch) - 1} "
                                     f"(seeds {batch[0]}..{batch[-1]}): {e}; nothing written") from e
            wall += seconds
            if not bool(torch.isfinite(x0).all()):
                raise NonFiniteError(f"{where}: NaN/inf in the samples of seeds {batch[0]}..{batch[-1]}; "
                                     "nothing written")
            nfe_per_batch.append(counted.calls)
            outputs.append(x0.float().cpu())
    if len(set(nfe_per_batch)) != 1:
        raise RuntimeError(f"{where}: batches made different numbers of model calls {nfe_per_batch}")
    return torch.cat(outputs), nfe_per_batch[0], wall


# ---------------------------------------------------------------------------- rendering and the record


def _grid_png_images(images_u8: torch.Tensor) -> bytes:
    """uint8 [G, C, H, W] -> PNG bytes of a square-ish RGB grid (1-channel images shown grey)."""
    from PIL import Image

    rgb = images_u8.expand(-1, 3, -1, -1) if images_u8.shape[1] == 1 else images_u8
    grid = images.tile(rgb, math.ceil(math.sqrt(len(rgb))), padding=GRID_PADDING, pad_value=255)
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    return buf.getvalue()


def _grid_png_gaussian(samples: torch.Tensor, mu: float, s: float, title: str) -> bytes:
    """Histogram of all sample coordinates against the true N(mu, s^2) density."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = samples.reshape(-1).double().numpy()
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=100)
    ax.hist(v, bins=60, density=True, alpha=0.6, label=f"samples ({len(samples)} x {samples[0].numel()} coords)")
    xs = np.linspace(mu - 4.5 * s, mu + 4.5 * s, 300)
    ax.plot(xs, np.exp(-0.5 * ((xs - mu) / s) ** 2) / (s * math.sqrt(2 * math.pi)), "k-", lw=1.2,
            label=f"N({mu:g}, {s:g}^2)")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("coordinate value")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def render(x: torch.Tensor, manifest: dict, grid_images: int, title: str) -> tuple[torch.Tensor, bytes]:
    """Sampler output x_0 -> (samples as stored: uint8 images, or float32 for the gaussian; grid.png bytes)."""
    if manifest.get("source") == "gaussian":
        samples = x.to(torch.float32)
        return samples, _grid_png_gaussian(samples, float(manifest["mu"]), float(manifest["s"]), title)
    samples = images.to_uint8(x)
    return samples, _grid_png_images(samples[:grid_images])


def float_samples(x: torch.Tensor, manifest: dict) -> dict:
    """A mixture's samples also as float32 (key samples_float): the exact feature space compares their
    moments with the mixture's before any uint8 rounding or clamping."""
    return {"samples_float": x.to(torch.float32).cpu().numpy()} if manifest.get("source") == "gmm" else {}


def run_record(*, cfg: SampleConfig, point: GridPoint, options: dict, diffusion: DiffusionConfig, dataset: str,
               n: int, nfe: int, wall: float, peak: tuple[int, str], device: str, model_info: dict,
               manifest_sha256: str, samples_dtype: torch.dtype) -> dict:
    """The run record (record.json): the grid point, counted NFE, speed, memory, model, data and hardware.
    `options`: every keyword option the sampler ran with, defaults included; `non_default_options` those
    that differ from the registry's defaults (the runs frame keys settings by them); `eta` repeats
    options["eta"] (null for samplers without one)."""
    exact_eps = model_info.get("model_kind") == "exact"  # closed-form eps: float64/32 arithmetic, no network
    fp = provenance.fingerprint(device)
    return {
        "dataset": dataset,
        "point": point.name,
        "sampler": point.sampler,
        "steps": point.steps,
        "spacing": point.spacing,
        "eta": options.get("eta"),
        "options": dict(options),
        "non_default_options": samplers.non_default_options(point.sampler, options),  # what the name spells
        "nfe": nfe,
        "nfe_expected": samplers.nfe(point.sampler, point.steps),
        "n_images": n,
        "seed": cfg.seed,
        "seeds": f"{cfg.seed}..{cfg.seed + n - 1}",
        "batch_size": cfg.batch_size,
        "n_batches": math.ceil(n / cfg.batch_size),
        "wall_s": wall,
        "images_per_s": n / wall if wall > 0 else None,
        "s_per_nfe": wall / nfe if nfe else None,
        "warmup": f"{WARMUP_EVALS} untimed eps evaluations on a batch of {min(cfg.batch_size, n)}",
        "peak_mem_bytes": peak[0],
        "peak_mem_kind": peak[1],
        "device": device,
        "device_name": fp.get("device_name"),
        "torch": torch.__version__,
        "bf16": bool(cfg.bf16 and not exact_eps),
        "channels_last": bool(cfg.channels_last and not exact_eps),
        "precision": precision(cfg, exact_eps),
        "diffusion": asdict(diffusion),
        **model_info,
        "data_manifest_sha256": manifest_sha256,
        "samples_dtype": str(samples_dtype).replace("torch.", ""),
        "grid_images": min(cfg.grid_images, n),
        "fingerprint": fp,
    }


# ---------------------------------------------------------------------------- the stage


def _check_point(point: GridPoint, diffusion: DiffusionConfig) -> dict:
    """Validate the grid point; return the options actually used: every option of its sampler, defaults
    filled in (the registry's specs), e.g. {"eta": 0.0, "clip_x0": False} for ddim."""
    if point.sampler not in samplers.SAMPLERS:
        raise SampleError(f"sampler: unknown {point.sampler!r}; known: {', '.join(samplers.SAMPLERS)}")
    if isinstance(point.steps, bool) or not isinstance(point.steps, int) or not 1 <= point.steps <= diffusion.T:
        raise SampleError(f"steps: {point.steps!r} must be an integer in 1..T={diffusion.T} (diffusion.T)")
    if point.spacing not in SPACINGS:
        raise SampleError(f"spacing: {point.spacing!r}; allowed: {list(SPACINGS)}")
    try:
        samplers.check_spacing(point.sampler, point.spacing)
        return samplers.resolve_options(point.sampler, dict(point.options))
    except ValueError as e:
        raise SampleError(str(e)) from None


def run(
    cfg: SampleConfig,
    point: GridPoint,
    diffusion: DiffusionConfig,
    data_dir,
    model_path,
    out_dir,
    dataset: str,
) -> dict:
    """Sample grid point `point`: writes out_dir/{samples.npz, grid.png, record.json}; returns the record."""
    return run_many(cfg, [point], diffusion, data_dir, model_path, [out_dir], dataset)[0]


def run_many(
    cfg: SampleConfig,
    points: Sequence[GridPoint],
    diffusion: DiffusionConfig,
    data_dir,
    model_path,
    out_dirs: Sequence,
    dataset: str,
    exact_map_path=None,
) -> list[dict]:
    """Sample each grid point in turn into its folder of `out_dirs` (one process, one model load and
    one warm-up for all: `run.job_per: dataset`); returns the records. Every point is checked before
    any compute; each point's outputs are written as soon as it is done. `exact_map_path`: the
    exact-map stage's endpoints (data sets with an exact score): each deterministic point's record
    gets its pathwise RMS error against them (`exact_map.path_error`)."""
    from pipeline.stages import data

    # ---- every check before any compute
    options = [_check_point(p, diffusion) for p in points]
    device = provenance.resolve_device(cfg.device)
    data_dir = Path(data_dir)
    manifest = data.load_prepared(data_dir, verify=False).manifest
    shape = tuple(int(d) for d in manifest["shape"])
    schedule = diffusion.noise_schedule()
    eps_fn, model_info = load_eps_fn(model_path, manifest, dataset, diffusion, cfg, device, data_dir)
    endpoints = None
    if exact_map_path is not None:
        from pipeline.stages import exact_map

        endpoints = exact_map.load(exact_map_path)
    manifest_sha256 = files.sha256_file(data_dir / "manifest.json")

    # ---- warm-up (untimed), then per point the timed sampling
    warm_up(eps_fn, shape, range(cfg.seed, cfg.seed + min(cfg.batch_size, cfg.n_for(points[0].steps))), diffusion.T,
            device)
    records = []
    for point, opts, out_dir in zip(points, options, out_dirs):
        n = cfg.n_for(point.steps)
        seeds = range(cfg.seed, cfg.seed + n)
        if device.startswith("cuda"):  # each point's own peak
            torch.cuda.reset_peak_memory_stats(torch.device(device))
        x, nfe, wall = generate(eps_fn, point, schedule, seeds, shape, cfg.batch_size, device, options=opts,
                                where=f"{dataset}/{point.name}")
        peak = peak_memory(device)

        # ---- render everything in memory, then write
        samples, grid = render(x, manifest, cfg.grid_images, f"{dataset} {point.name}")
        buf = io.BytesIO()
        np.savez_compressed(buf, samples=samples.numpy(), seeds=np.arange(cfg.seed, cfg.seed + n, dtype=np.int64),
                            **float_samples(x, manifest))
        record = run_record(cfg=cfg, point=point, options=opts, diffusion=diffusion, dataset=dataset, n=n, nfe=nfe,
                            wall=wall, peak=peak, device=device, model_info=model_info,
                            manifest_sha256=manifest_sha256, samples_dtype=samples.dtype)
        if endpoints is not None:
            from pipeline.stages import exact_map

            record.update(exact_map.path_error(x, endpoints, point, seeds, diffusion.T,
                                                stochastic=samplers.is_stochastic(point.sampler, dict(point.options))))
        out_dir = Path(out_dir)
        files.write_bytes(out_dir / "samples.npz", buf.getvalue())
        files.write_bytes(out_dir / "grid.png", grid)
        files.write_json(out_dir / "record.json", record)
        records.append(record)
    return records
