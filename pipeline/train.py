"""Training the eps-prediction U-Net (Ho et al. 2020, Algorithm 1), and model checkpoints.

    train(cfg, model_cfg, diffusion, data_dir, out_dir, resume_dir) -> sidecar dict
    load_checkpoint(path, device) -> (model, sidecar)      model(x [B,C,H,W], t LongTensor [B]) -> eps

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
loss.csv, loss.png. Nothing is ever unpickled: weights and optimizer state are
safetensors, everything else is JSON.

`model_cfg.pretrained` imports a diffusers UNet2DModel (folder or hub id) instead of
training; it is saved in the same format with kind `diffusers` and loads behind the
same `model(x, t) -> eps` call.
"""
from __future__ import annotations

from pipeline.errors import CheckpointError

import copy
import csv
import io
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline import files, provenance
from pipeline.config import ConfigError, DiffusionConfig, ModelConfig, TrainConfig
from pipeline.data import PreparedData, load_prepared, to_model
from pipeline.unet import UNetConfig, build_unet, count_parameters, unet_config

KIND_UNET = "ddbench-unet"
KIND_DIFFUSERS = "diffusers"
STATE_JSON = "state.json"
EMA_RULE = "decay_k = min(ema_decay, (1 + k) / (10 + k)) at update k (k = 0, 1, ...)"
# Training-config keys a resumed run must share with the run that wrote the state.
RESUME_KEYS = ("seed", "batch_size", "lr", "weight_decay", "warmup_steps", "grad_clip", "ema_decay")



# ---------------------------------------------------------------------------- validation


def check_train_config(cfg: TrainConfig) -> None:
    """Raise ConfigError naming the key for a training config that cannot work."""

    def bad(key, allowed):
        raise ConfigError(f"train.{key}: {getattr(cfg, key)!r} is not allowed; {allowed}")

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if not (isinstance(cfg.lr, (int, float)) and cfg.lr > 0):
        bad("lr", "expected a number > 0")
    for key, low in (("steps", 0), ("batch_size", 1), ("warmup_steps", 0), ("checkpoint_every", 1),
                     ("log_every", 1), ("num_workers", 0)):
        if not is_int(getattr(cfg, key)) or getattr(cfg, key) < low:
            bad(key, f"expected an integer >= {low}")
    if not is_int(cfg.seed) or cfg.seed < 0:
        bad("seed", "expected an integer >= 0")
    if not (isinstance(cfg.weight_decay, (int, float)) and cfg.weight_decay >= 0):
        bad("weight_decay", "expected a number >= 0")
    if not (isinstance(cfg.grad_clip, (int, float)) and cfg.grad_clip >= 0):
        bad("grad_clip", "expected a number >= 0 (0 = no clipping)")
    if not (isinstance(cfg.ema_decay, (int, float)) and 0 <= cfg.ema_decay < 1):
        bad("ema_decay", "expected a number in [0, 1)")


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
    x0 = to_model(x0) if x0.dtype == torch.uint8 else x0.float()
    g = torch.Generator().manual_seed(derived_seed(cfg.seed, STREAM_NOISE, k))
    t = torch.randint(0, len(alpha_bar), (cfg.batch_size,), generator=g)
    eps = torch.randn(x0.shape, generator=g)  # drawn on the CPU: the same numbers on every device
    ab = alpha_bar[t].view(-1, 1, 1, 1)
    # q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)   (Ho et al. eq. 4); coefficients from float64
    a, s = ab.sqrt().float().to(device), (1.0 - ab).sqrt().float().to(device)
    eps, t = eps.to(device), t.to(device)
    x_t = a * x0 + s * eps
    if device.startswith("cuda") and cfg.channels_last:
        x_t = x_t.contiguous(memory_format=torch.channels_last)

    state.model.train()
    cuda = device.startswith("cuda")
    # fork_rng: the caller's global RNG is left as it was
    with torch.random.fork_rng(devices=[torch.device(device).index or 0] if cuda else []):
        torch.manual_seed(derived_seed(cfg.seed, STREAM_DROPOUT, k))  # dropout masks depend on (seed, k) only
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and cfg.bf16):
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

    callback(step, loss) runs after every update (step counts updates done); an exception
    raised there stops training like a kill would (the test of resuming uses this).
    """
    from tqdm.auto import tqdm

    forward = state.model
    if device.startswith("cuda") and cfg.compile:
        forward = torch.compile(state.model)
    bar = tqdm(total=stop, initial=state.step, desc="train", unit="step", dynamic_ncols=True,
               disable=not progress or _quiet())
    t_run, t_log, n_log = time.perf_counter(), time.perf_counter(), 0
    wall0 = state.wall_s
    try:
        while state.step < stop:
            loss = train_step(state, forward, data, alpha_bar, cfg, device)
            state.window[0] += loss
            state.window[1] += 1
            n_log += 1
            bar.update(1)
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
                if bar.disable and progress and os.environ.get("DDBENCH_QUIET") != "1":  # logs get plain lines
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


def _quiet() -> bool:
    return os.environ.get("DDBENCH_QUIET") == "1" or not sys.stderr.isatty()


# ---------------------------------------------------------------------------- resume state (safetensors + JSON)


def _state_tensors(state: TrainState) -> tuple[dict, dict]:
    """Flatten the state into tensors (safetensors) + JSON; no pickle anywhere."""
    tensors = {f"model.{k}": v for k, v in state.model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in state.ema.state_dict().items()})
    opt = state.optimizer.state_dict()
    opt_scalars = {}
    for idx, per_param in opt["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                opt_scalars[f"{idx}.{key}"] = value
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    record = {"step": state.step, "log": state.log, "window": state.window, "wall_s": state.wall_s,
              "resumed_from": state.resumed_from, "optim_param_groups": opt["param_groups"],
              "optim_scalars": opt_scalars}
    return tensors, record


def save_state(state: TrainState, resume_dir: Path, identity: dict) -> Path:
    """Write the state atomically: tensors to a new file, then state.json (the commit point) naming it.

    A kill at any moment leaves either the previous complete state or the new one.
    """
    from safetensors.torch import save_file

    resume_dir = Path(resume_dir)
    tensors, record = _state_tensors(state)
    weights = resume_dir / f"state-{state.step:09d}.safetensors"
    with files.atomic_path(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "kind": "ddbench-train-state"})
    record.update(identity=identity, tensors=weights.name, tensors_sha256=files.sha256_file(weights))
    files.write_json(resume_dir / STATE_JSON, record)
    for old in resume_dir.glob("state-*.safetensors"):  # superseded states
        if old.name != weights.name:
            old.unlink(missing_ok=True)
    return weights


def load_state(state: TrainState, resume_dir: Path, identity: dict) -> bool:
    """Load the state saved in `resume_dir` into `state` (in place). False when there is none."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    resume_dir = Path(resume_dir)
    fix = f"delete {resume_dir} to start training afresh"
    path = resume_dir / STATE_JSON
    if not path.is_file():
        return False
    try:
        record = files.read_json(path)
        weights = resume_dir / record["tensors"]
    except (ValueError, KeyError, OSError) as e:
        raise CheckpointError(f"resume state {path} is unreadable ({e}); {fix}") from e
    diffs = {k: (record.get("identity", {}).get(k), v) for k, v in identity.items()
             if record.get("identity", {}).get(k) != v}
    if diffs:
        lines = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diffs.items())
        raise ConfigError(f"resume state in {resume_dir} was made with a different setup ({lines}); "
                          f"restore the config or {fix}")
    if not weights.is_file() or files.sha256_file(weights) != record.get("tensors_sha256"):
        raise CheckpointError(f"resume state {weights} is missing or does not match its checksum in {path}; {fix}")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"resume state {weights} cannot be read ({e}); {fix}") from e

    def part(prefix):
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    try:
        state.model.load_state_dict(part("model."))
        state.ema.load_state_dict(part("ema."))
        per_param: dict = {}
        for key, value in part("optim.").items():
            idx, name = key.split(".", 1)
            per_param.setdefault(int(idx), {})[name] = value
        for key, value in record["optim_scalars"].items():
            idx, name = key.split(".", 1)
            per_param.setdefault(int(idx), {})[name] = value
        state.optimizer.load_state_dict({"state": per_param, "param_groups": record["optim_param_groups"]})
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"resume state {weights} does not fit the model ({e}); {fix}") from e
    state.step = int(record["step"])
    state.log = [list(r) for r in record["log"]]
    state.window = list(record["window"])
    state.wall_s = float(record["wall_s"])
    state.resumed_from = list(record.get("resumed_from", [])) + [state.step]
    return True


# ---------------------------------------------------------------------------- checkpoints (the stage's output)


def save_checkpoint(model: nn.Module, path: str | os.PathLike, sidecar: dict) -> dict:
    """Weights -> path (.safetensors), then sidecar (with the weights' sha256) -> path.with_suffix('.json')."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with files.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "kind": sidecar["kind"]})
    sidecar = {**sidecar, "weights_sha256": files.sha256_file(path), "weights_file": path.name}
    files.write_json(path.with_suffix(".json"), sidecar)
    return sidecar


class DiffusersEps(nn.Module):
    """A diffusers UNet2DModel behind the ddbench call: model(x, t) -> eps (its `.sample`)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


def load_checkpoint(path: str | os.PathLike, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a saved eps model in eval mode on `device`: (model, sidecar); `model(x, t) -> eps` for both kinds.

    path: the .safetensors file (or the folder holding unet.safetensors); its sidecar is the same name with .json.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / "unet.safetensors"
    sidecar_path = path.with_suffix(".json")
    fix = "rerun the train stage (python -m pipeline train ...) to write it again"
    missing = [str(p) for p in (path, sidecar_path) if not p.is_file()]
    if missing:
        raise CheckpointError(f"checkpoint files not found: {missing}; {fix}")
    try:
        sidecar = files.read_json(sidecar_path)
    except ValueError as e:
        raise CheckpointError(f"checkpoint sidecar {sidecar_path} is not valid JSON ({e}); {fix}") from e
    expected = sidecar.get("weights_sha256")
    if expected is not None and files.sha256_file(path) != expected:
        raise CheckpointError(f"checkpoint {path} does not match the weights_sha256 in {sidecar_path} "
                              f"(corrupt or from another run); {fix}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file ({e}); {fix}") from e

    kind = sidecar.get("kind")
    try:
        if kind == KIND_UNET:
            model = build_unet(UNetConfig.from_dict(sidecar["unet"]))
        elif kind == KIND_DIFFUSERS:
            model = DiffusersEps(_diffusers_unet_class().from_config(sidecar["diffusers_config"]))
            tensors = {f"unet.{k}": v for k, v in tensors.items()}
        else:
            raise CheckpointError(f"checkpoint sidecar {sidecar_path}: unknown kind {kind!r}; "
                                  f"expected {KIND_UNET!r} or {KIND_DIFFUSERS!r}; {fix}")
        model.load_state_dict(tensors)
    except (KeyError, RuntimeError, ConfigError) as e:
        raise CheckpointError(f"checkpoint {path} does not match the model its sidecar describes ({e}); {fix}") from e
    return model.to(device).eval(), sidecar


# ---------------------------------------------------------------------------- diffusers import


def _diffusers_unet_class():
    try:
        from diffusers import UNet2DModel
    except ImportError as e:
        raise ConfigError("model.pretrained: importing a diffusers UNet2DModel needs the diffusers package "
                          "(pip install diffusers)") from e
    return UNet2DModel


def import_pretrained(source: str) -> nn.Module:
    """A diffusers UNet2DModel from a local folder (its own or a pipeline's unet/) or a hub id."""
    cls = _diffusers_unet_class()
    local = Path(source).expanduser()
    if local.exists():
        if (local / "config.json").is_file():
            subfolder = None
        elif (local / "unet" / "config.json").is_file():
            subfolder = "unet"
        else:
            raise ConfigError(f"model.pretrained: {local} holds neither config.json nor unet/config.json "
                              "(a diffusers UNet2DModel or pipeline folder, from save_pretrained)")
        try:
            return cls.from_pretrained(str(local), subfolder=subfolder)
        except (OSError, ValueError, RuntimeError) as e:
            raise ConfigError(f"model.pretrained: {local} cannot be loaded as a UNet2DModel ({e})") from e
    errors = []
    for subfolder in (None, "unet"):  # a bare UNet2DModel repo, or a pipeline repo with unet/
        try:
            return cls.from_pretrained(source, subfolder=subfolder)
        except (OSError, ValueError) as e:
            errors.append(f"{subfolder or '.'}: {e}")
    raise ConfigError(f"model.pretrained: {source!r} is no local folder, and loading it as a hub id failed "
                      f"(no network, or not a UNet2DModel repo): {' | '.join(errors)}")


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
    check_train_config(cfg)
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

    ucfg = model_config_for(model_cfg, shape)
    device = provenance.resolve_device(cfg.device)
    alpha_bar = torch.as_tensor(diffusion.noise_schedule().alpha_bar, dtype=torch.float64).cpu()
    identity = {**{k: getattr(cfg, k) for k in RESUME_KEYS}, "unet": ucfg.to_dict(),
                "diffusion": asdict(diffusion), "data_sha256": data.manifest.get("sha256")}

    state = new_state(ucfg, cfg, device)
    if load_state(state, resume_dir, identity) and state.step > cfg.steps:
        raise ConfigError(f"train.steps: {cfg.steps} is below the step of the resume state in {resume_dir} "
                          f"({state.step}); raise train.steps or delete {resume_dir}")
    if device.startswith("cuda") and cfg.channels_last:
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
