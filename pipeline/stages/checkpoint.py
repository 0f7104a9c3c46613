"""The checkpoint format: what the train stage writes and the sample stage reads.

    save_checkpoint(model, path, sidecar) -> sidecar     unet.safetensors + unet.json
    load_checkpoint(path, device) -> (model, sidecar)    model(x [B,C,H,W], t LongTensor [B]) -> eps
    save_state(state, resume_dir, identity)              the resumable training state
    load_state(state, resume_dir, identity) -> bool

A checkpoint is the EMA weights (safetensors) plus a JSON sidecar (`kind`, U-Net and
diffusion config, step, data checksum, versions, ... and the weights' sha256). Two kinds
load behind the same `model(x, t) -> eps` call: `ddbench-unet` (pipeline.core.unet) and
`diffusers` (an imported UNet2DModel, see `import_pretrained`).

The resume state (weights, EMA, AdamW moments, step, loss log) is a safetensors file plus
`state.json`, the commit point that names it; nothing is ever unpickled.

This module is the contract between training and sampling: the sample stage imports it,
not pipeline.stages.train, so editing the training loop does not rerun sampling.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from pipeline.util import files
from pipeline.util.errors import CheckpointError, ConfigError
from pipeline.core.unet import UNetConfig, build_unet

KIND_UNET = "ddbench-unet"
KIND_DIFFUSERS = "diffusers"
STATE_JSON = "state.json"


# ---------------------------------------------------------------------------- checkpoints (the train stage's output)


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
    model = _rebuild(path, sidecar, sidecar_path, fix)
    return model.to(device).eval(), sidecar


def _rebuild(path: Path, sidecar: dict, sidecar_path: Path, fix: str) -> nn.Module:
    """The model the sidecar describes, with the weights in `path` loaded strictly (every tensor, every shape)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

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
    return model


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


# ---------------------------------------------------------------------------- resume state (safetensors + JSON)
# `state` is pipeline.stages.train.TrainState (model, ema, optimizer, step, log, window, wall_s, resumed_from);
# it is not imported here, so that this module, and with it the sample stage, does not depend on train.py.


def _state_tensors(state) -> tuple[dict, dict]:
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


def save_state(state, resume_dir: Path, identity: dict) -> Path:
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


def load_state(state, resume_dir: Path, identity: dict) -> bool:
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


# ---------------------------------------------------------------------------- shipped checkpoints


def verify_shipped(path: str | os.PathLike, shape: tuple, diffusion: dict) -> tuple[Path, dict]:
    """Check a shipped checkpoint (`model.checkpoint`) before it stands in for training:
    the weights match the sidecar's sha256, and the model makes images of the data set's
    shape [C, H, W] under the configured forward process. Returns (weights path, sidecar).
    Any mismatch is a CheckpointError naming the file and the mismatch."""
    path = Path(path)
    if path.is_dir():
        path = path / "unet.safetensors"
    sidecar_path = path.with_suffix(".json")
    for p in (path, sidecar_path):
        if not p.is_file():
            raise CheckpointError(f"model.checkpoint: {p} not found; a shipped checkpoint is a .safetensors "
                                  f"file with its .json sidecar beside it")
    try:
        sidecar = files.read_json(sidecar_path)
    except ValueError as e:
        raise CheckpointError(f"model.checkpoint: sidecar {sidecar_path} is not valid JSON ({e})") from e
    expected, actual = sidecar.get("weights_sha256"), files.sha256_file(path)
    if expected != actual:
        raise CheckpointError(f"model.checkpoint: {path} has sha256 {actual[:16]}..., its sidecar {sidecar_path} "
                              f"says {str(expected)[:16]}...: the weights are corrupt or belong to another sidecar")
    made = (sidecar.get("in_channels"), sidecar.get("image_size"), sidecar.get("image_size"))
    if made != tuple(int(v) for v in shape):
        raise CheckpointError(f"model.checkpoint: {path} makes images of shape {list(made)} (in_channels, "
                              f"image_size), the data set's are {list(shape)}")
    if sidecar.get("diffusion") not in (None, diffusion):
        raise CheckpointError(f"model.checkpoint: {path} was trained with diffusion {sidecar.get('diffusion')}, "
                              f"the configuration says {diffusion}")
    # A matching hash only says the sidecar was written for these bytes; the bytes must also load
    # into the model the sidecar describes, or every sampling job would fail later.
    _rebuild(path, sidecar, sidecar_path, f"model.checkpoint: replace {path} and {sidecar_path.name} with a "
                                          f"checkpoint that loads (save_checkpoint writes both)")
    return path, sidecar
