"""Training the eps-prediction U-Net (Ho et al. 2020, Algorithm 1).

    train(cfg, model_cfg, diffusion, data_dir, out_dir, resume_dir) -> sidecar dict
    fit(state, data, alpha_bar, cfg, device, stop=...) -> state          the pure core: train_step per update

The loss is the "simple" objective E_{x0, t, eps} ||eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t)||^2
with t uniform on {0, ..., T-1} (Ho et al. eq. 14), optimised with AdamW, a linear
learning-rate warmup and gradient-norm clipping. An exponential moving average of the
weights (EMA) is kept and is what gets saved and sampled.

Reproducible and resumable. Every random draw of step k (the minibatch, t, eps and the
dropout masks) is a function of (seed, k) alone: the minibatches walk through a fresh
permutation of the data each epoch, and t/eps/dropout come from generators seeded with
(seed, k). The full training state (weights, EMA, AdamW moments, step, loss log) is
saved atomically to `resume_dir` every `checkpoint_every` steps, so a killed run that
is started again continues from its last checkpoint and ends with the same weights as
an uninterrupted run (bit for bit on the CPU). No RNG state has to be saved: the step
number is the RNG state.

Outputs (out_dir): unet.safetensors (EMA weights) + unet.json (sidecar: kind, U-Net and
diffusion config, step, EMA decay, data manifest checksum, versions, wall time, device),
loss.csv, loss.png. The file formats of the checkpoint and the resume state are
pipeline.stages.checkpoint's, which the sample stage reads without importing this module.

`model_cfg.pretrained` imports a diffusers UNet2DModel (folder or hub id) instead of
training; it is saved in the same format with kind `diffusers` and loads behind the
same `model(x, t) -> eps` call.
"""
from __future__ import annotations

import copy
import csv
import io
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.util import console, files, provenance
from pipeline.stages.checkpoint import (KIND_DIFFUSERS, KIND_UNET, STATE_JSON, import_pretrained, load_state,
                                 save_checkpoint, save_state, verify_shipped)
from pipeline.config import ConfigError, DiffusionConfig, ModelConfig, TrainConfig
from pipeline.stages.data import PreparedData, load_prepared
from pipeline.core.images import from_uint8
from pipeline.core.unet import UNetConfig, build_unet, count_parameters, unet_config

EMA_RULE = "decay_k = min(ema_decay, (1 + k) / (10 + k)) at update k (k = 0, 1, ...)"
# Training-config keys a resumed run must share with the run that wrote the state.
RESUME_KEYS = ("seed", "batch_size", "lr", "weight_decay", "warmup_steps", "grad_clip", "ema_decay")



# ---------------------------------------------------------------------------- the model for the data


def model_config_for(model_cfg: ModelConfig, shape: tuple) -> UNetConfig:
    """The checked U-Net config for data of `shape` [C, H, W] (ConfigError on a mismatch)."""
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ConfigError(f"model: the U-Net needs square images [C, H, H]; the data has shape {list(shape)}")
    return unet_config(model_cfg.preset, model_cfg.overrides, in_channels=int(shape[0]), image_size=int(shape[1]))


# ---------------------------------------------------------------------------- randomness as a function of (seed, step)


def derived_seed(*key: int) -> int:
    """A 63-bit seed from integers (seed, stream, counter) via numpy's SeedSequence hash."""
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0] >> 1)


STREAM_EPOCH, STREAM_NOISE, STREAM_DROPOUT, STREAM_INIT = 0, 1, 2, 3


@lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(seed, STREAM_EPOCH, epoch)))


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> torch.Tensor:
    """Indices of minibatch `step`: positions [step*B, (step+1)*B) of the stream of per-epoch permutations.

    Sampling without replacement within an epoch, and a pure function of (seed, step).
    """
    pos = torch.arange(step * batch_size, (step + 1) * batch_size)
    epochs, offsets = pos // n, pos % n
    out = torch.empty(batch_size, dtype=torch.long)
    for e in epochs.unique().tolist():
        mask = epochs == e
        out[mask] = _epoch_permutation(seed, e, n)[offsets[mask]]
    return out


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup from lr / warmup_steps to lr over the first warmup_steps steps, then constant (as in DDPM)."""
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else cfg.lr


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay with the usual warmup, so that short runs are not dominated by the initial weights."""
    return min(decay, (1 + step) / (10 + step))


# ---------------------------------------------------------------------------- the pure core


@dataclass
class TrainState:
    """Everything a resumed run needs. `step` = number of optimizer updates done."""

    model: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    step: int = 0
    log: list = field(default_factory=list)  # rows: step, loss, lr, images_per_s, wall_s
    window: list = field(default_factory=lambda: [0.0, 0])  # running loss sum and count since the last log row
    wall_s: float = 0.0  # training time summed over all runs that built this state
    resumed_from: list = field(default_factory=list)
    stopped_by: str = "steps"  # which limit ended the last fit: steps | wall_clock_s


def new_state(ucfg: UNetConfig, cfg: TrainConfig, device: str) -> TrainState:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(cfg.seed, STREAM_INIT, 0))  # the initial weights depend on the seed alone
        model = build_unet(ucfg).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return TrainState(model=model, ema=ema, optimizer=optimizer)


def train_step(state: TrainState, forward: Callable, data: torch.Tensor, alpha_bar: torch.Tensor,
               cfg: TrainConfig, device: str) -> float:
    """One update of Algorithm 1 (Ho et al. 2020) at step `state.step`; returns the minibatch loss.

    data: uint8 [N, C, H, W] images (or float samples for the gaussian set), on `device`.
    alpha_bar: float64 [T] on the CPU.
    """
    k = state.step
    idx = batch_indices(cfg.seed, k, cfg.batch_size, len(data))
    x0 = data[idx.to(data.device)]
    x0 = from_uint8(x0) if x0.dtype == torch.uint8 else x0.float()
    g = torch.Generator().manual_seed(derived_seed(cfg.seed, STREAM_NOISE, k))
    t = torch.randint(0, len(alpha_bar), (cfg.batch_size,), generator=g)
    eps = torch.randn(x0.shape, generator=g)  # drawn on the CPU: the same numbers on every device
    ab = alpha_bar[t].view(-1, 1, 1, 1)
    # q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)   (Ho et al. eq. 4); coefficients from float64
    a, s = ab.sqrt().float().to(device), (1.0 - ab).sqrt().float().to(device)
    eps, t = eps.to(device), t.to(device)
    x_t = a * x0 + s * eps
    if cfg.channels_last:
        x_t = x_t.contiguous(memory_format=torch.channels_last)

    state.model.train()
    cuda = device.startswith("cuda")
    # fork_rng: the caller's global RNG is left as it was
    with torch.random.fork_rng(devices=[torch.device(device).index or 0] if cuda else []):
        torch.manual_seed(derived_seed(cfg.seed, STREAM_DROPOUT, k))  # dropout masks depend on (seed, k) only
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=cfg.bf16):
            pred = forward(x_t, t)
        loss = F.mse_loss(pred.float(), eps)  # the "simple" loss (eq. 14)

        for group in state.optimizer.param_groups:
            group["lr"] = lr_at(k, cfg)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip)
        state.optimizer.step()

    with torch.no_grad():
        d = ema_decay_at(k, cfg.ema_decay)
        for p_ema, p in zip(state.ema.parameters(), state.model.parameters()):
            p_ema.lerp_(p, 1.0 - d)  # ema <- d * ema + (1 - d) * p
        for b_ema, b in zip(state.ema.buffers(), state.model.buffers()):
            b_ema.copy_(b)
    state.step = k + 1
    return float(loss.detach())


def fit(state: TrainState, data: torch.Tensor, alpha_bar: torch.Tensor, cfg: TrainConfig, device: str, *,
        stop: int, on_checkpoint: Callable[[TrainState], None] | None = None,
        callback: Callable[[int, float], None] | None = None, progress: bool = True) -> TrainState:
    """Run updates state.step .. stop-1; log every `log_every`, call `on_checkpoint` every `checkpoint_every`.

    With `cfg.wall_clock_s`, stop earlier: after the first update that ends with the training
    wall-clock (state.wall_s, resumed runs included) past the budget; `state.stopped_by` says which
    limit stopped it. callback(step, loss) runs after every update (step counts updates done); an
    exception raised there stops training like a kill would (the test of resuming uses this).
    """
    from tqdm.auto import tqdm

    forward = state.model
    if cfg.compile:
        forward = torch.compile(state.model)
    budget = cfg.wall_clock_s
    bar = tqdm(total=stop, initial=state.step, desc="train", unit="step", dynamic_ncols=True,
               disable=not progress or console.quiet())
    t_run, t_log, n_log = time.perf_counter(), time.perf_counter(), 0
    wall0 = state.wall_s
    state.stopped_by = "steps"
    try:
        while state.step < stop:
            if budget is not None and state.wall_s >= budget:
                state.stopped_by = "wall_clock_s"
                break
            loss = train_step(state, forward, data, alpha_bar, cfg, device)
            state.window[0] += loss
            state.window[1] += 1
            n_log += 1
            bar.update(1)
            if budget is not None:  # the clock the budget reads: synchronised, so it counts GPU work done
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                state.wall_s = wall0 + time.perf_counter() - t_run
                if state.wall_s >= budget and state.step < stop:
                    stop = state.step  # this step is the last: log and checkpoint it as the final one
                    state.stopped_by = "wall_clock_s"
            if state.step % cfg.log_every == 0 or state.step == stop:
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                now = time.perf_counter()
                ips = n_log * cfg.batch_size / max(now - t_log, 1e-9)
                state.wall_s = wall0 + now - t_run
                mean = state.window[0] / state.window[1]
                state.log.append([state.step, mean, lr_at(state.step - 1, cfg), ips, state.wall_s])
                state.window = [0.0, 0]
                bar.set_postfix(loss=f"{mean:.4f}", img_s=f"{ips:.0f}")
                if progress and console.log_lines():  # a log file gets plain lines instead of a bar
                    print(f"train: step {state.step}/{stop} loss {mean:.4f} {ips:.0f} img/s", flush=True)
                t_log, n_log = now, 0
            if on_checkpoint is not None and (state.step % cfg.checkpoint_every == 0 or state.step == stop):
                state.wall_s = wall0 + time.perf_counter() - t_run
                on_checkpoint(state)
            if callback is not None:
                callback(state.step, loss)
    finally:
        bar.close()
    state.wall_s = wall0 + time.perf_counter() - t_run
    return state


# ---------------------------------------------------------------------------- outputs


def write_loss_outputs(out_dir: Path, log: list, title: str) -> None:
    """loss.csv (one row per log window) and loss.png (the curve), both atomic."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["step", "loss", "lr", "images_per_s", "wall_s"])
    for step, loss, lr, ips, wall in log:
        w.writerow([step, f"{loss:.6g}", f"{lr:.6g}", f"{ips:.4g}", f"{wall:.4g}"])
    files.write_text(out_dir / "loss.csv", buf.getvalue())

    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.add_subplot()
    if log:
        steps, losses = [r[0] for r in log], [r[1] for r in log]
        ax.plot(steps, losses, color="C0", lw=1.2)
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no training (imported model)", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("simple loss  ||eps - eps_theta||^2")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    with files.atomic_path(out_dir / "loss.png") as tmp:
        fig.savefig(tmp, dpi=120)


def _versions() -> dict:
    import safetensors

    return {"torch": torch.__version__, "safetensors": safetensors.__version__, "numpy": np.__version__}


# ---------------------------------------------------------------------------- the stage


def train(cfg: TrainConfig, model_cfg: ModelConfig, diffusion: DiffusionConfig, data_dir, out_dir, resume_dir,
          *, callback: Callable[[int, float], None] | None = None) -> dict:
    """Train (or import) the eps model; write out_dir/{unet.safetensors, unet.json, loss.csv, loss.png}.

    Resumes from `resume_dir` when it holds a state of the same setup. Returns the sidecar record.
    Every config check runs before any compute.
    """
    out_dir, resume_dir, data_dir = Path(out_dir), Path(resume_dir), Path(data_dir)
    data = load_prepared(data_dir)
    shape = data.shape
    common = {
        "dataset": data.manifest.get("dataset"),
        "diffusion": asdict(diffusion),
        "data_manifest_sha256": files.sha256_file(data_dir / "manifest.json"),
        "data_sha256": data.manifest.get("sha256"),
        "in_channels": int(shape[0]),
        "image_size": int(shape[-1]),
    }
    if model_cfg.pretrained:
        return _import_and_save(model_cfg, shape, common, out_dir)
    if model_cfg.checkpoint:
        return _use_shipped(model_cfg, shape, common, out_dir)

    ucfg = model_config_for(model_cfg, shape)
    device = provenance.resolve_device(cfg.device)
    alpha_bar = torch.as_tensor(diffusion.noise_schedule().alpha_bar, dtype=torch.float64).cpu()
    identity = {**{k: getattr(cfg, k) for k in RESUME_KEYS}, "unet": ucfg.to_dict(),
                "diffusion": asdict(diffusion), "data_sha256": data.manifest.get("sha256")}

    state = new_state(ucfg, cfg, device)
    if load_state(state, resume_dir, identity) and state.step > cfg.steps:
        raise ConfigError(f"train.steps: {cfg.steps} is below the step of the resume state in {resume_dir} "
                          f"({state.step}); raise train.steps or delete {resume_dir}")
    if cfg.channels_last:
        state.model.to(memory_format=torch.channels_last)
        state.ema.to(memory_format=torch.channels_last)
    tensor = _training_tensor(data).to(device)

    fit(state, tensor, alpha_bar, cfg, device, stop=cfg.steps,
        on_checkpoint=lambda s: save_state(s, resume_dir, identity), callback=callback)
    if not (resume_dir / STATE_JSON).is_file():  # steps == 0: still leave a resumable state
        save_state(state, resume_dir, identity)

    fp = provenance.fingerprint(device)
    sidecar = {
        "kind": KIND_UNET,
        "unet": ucfg.to_dict(),
        "preset": model_cfg.preset,
        "model_overrides": dict(model_cfg.overrides),
        "params": count_parameters(state.ema),
        **common,
        "step": state.step,
        "stopped_by": state.stopped_by,  # steps | wall_clock_s (train.wall_clock_s)
        "precision": "bf16 autocast" if cfg.bf16 else "float32",
        "ema_decay": cfg.ema_decay,
        "ema_rule": EMA_RULE,
        "train": asdict(cfg),
        "final_loss": state.log[-1][1] if state.log else None,
        "wall_s": state.wall_s,
        "resumed_from": state.resumed_from,
        "device": device,
        "device_name": fp.get("device_name"),
        "versions": _versions(),
        "fingerprint": fp,
    }
    sidecar = save_checkpoint(state.ema, out_dir / "unet.safetensors", sidecar)
    write_loss_outputs(out_dir, state.log, f"{common['dataset']}: {model_cfg.preset}, batch {cfg.batch_size}, "
                                           f"{state.step} steps ({device})")
    return sidecar


def _training_tensor(data: PreparedData) -> torch.Tensor:
    """uint8 images (converted per minibatch) or the gaussian's float samples."""
    return data.samples if data.samples is not None else data.images


def _use_shipped(model_cfg: ModelConfig, shape: tuple, common: dict, out_dir: Path) -> dict:
    """`model.checkpoint`: the shipped weights stand in for training, byte for byte; the sidecar
    keeps the original training record and says where the weights came from."""
    path, sidecar = verify_shipped(model_cfg.checkpoint, shape, common["diffusion"])
    out_dir.mkdir(parents=True, exist_ok=True)
    files.write_bytes(out_dir / "unet.safetensors", path.read_bytes())
    sidecar = {**sidecar, "shipped_from": str(model_cfg.checkpoint), "shipped_data_manifest_sha256":
               common["data_manifest_sha256"]}
    files.write_json(out_dir / "unet.json", sidecar)
    write_loss_outputs(out_dir, [], f"{common['dataset']}: shipped checkpoint {model_cfg.checkpoint} "
                                    f"({sidecar.get('step')} steps; its loss curve lives beside it)")
    return sidecar


def _import_and_save(model_cfg: ModelConfig, shape: tuple, common: dict, out_dir: Path) -> dict:
    unet = import_pretrained(model_cfg.pretrained)
    conf = dict(unet.config)
    if conf.get("in_channels") != shape[0]:
        raise ConfigError(f"model.pretrained: {model_cfg.pretrained!r} takes in_channels={conf.get('in_channels')}, "
                          f"the data has {shape[0]} channels")
    size = conf.get("sample_size")
    sizes = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    if size is not None and sizes != tuple(shape[1:]):
        raise ConfigError(f"model.pretrained: {model_cfg.pretrained!r} was trained at sample_size={size}, "
                          f"the data is {shape[1]}x{shape[2]}")
    import diffusers

    sidecar = {
        "kind": KIND_DIFFUSERS,
        "pretrained": model_cfg.pretrained,
        "diffusers_config": conf,
        "diffusers_class": type(unet).__name__,
        "params": count_parameters(unet),
        **common,
        "step": None,
        "ema_decay": None,
        "wall_s": 0.0,
        "device": "cpu",
        "versions": {**_versions(), "diffusers": diffusers.__version__},
        "fingerprint": provenance.fingerprint("cpu"),
    }
    sidecar = save_checkpoint(unet, out_dir / "unet.safetensors", sidecar)
    write_loss_outputs(out_dir, [], f"{common['dataset']}: imported {model_cfg.pretrained}")
    return sidecar
