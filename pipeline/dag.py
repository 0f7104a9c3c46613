"""The benchmark DAG: every job of a configuration, with its command, files and params.

Both engines describe this same DAG. The Snakefile expands its rules from the
config (wildcards), and dvc.yaml is generated from `jobs()` here
(`python -m pipeline dvc-yaml`); tests/test_workflow.py checks that the two agree
command for command, file for file.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import Config
from pipeline.stages.features import feature_space as space  # the registry says which jobs a space needs

# The module each stage's CLI handler hands its work to; everything it imports follows.
STAGE_ENTRY = {
    "prepare-data": "pipeline.stages.data",
    "train": "pipeline.stages.train",
    "train-classifier": "pipeline.stages.classifier",
    "ref-stats": "pipeline.stages.fid",
    "exact-map": "pipeline.stages.exact_map",
    "sample": "pipeline.stages.sample",
    "fid": "pipeline.stages.fid",
    "aggregate": "pipeline.stages.aggregate",
    "figures": "pipeline.report.figures",
}
# Data files a module reads at run time (found by tests/test_dag.py's scan for `__file__`).
MODULE_DATA = {
    "pipeline.config": ["pipeline/params.schema.yaml"],
    "pipeline.report.papers": ["pipeline/report/reference"],
}
PACKAGE_DIR = Path(__file__).resolve().parent


def _module_file(module: str) -> Path | None:
    """pipeline.x.y -> its source file (a package's __init__.py), None outside the package."""
    parts = module.split(".")
    if parts[0] != "pipeline":
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(tree, module: str, *, top_level_only: bool = False, lazy: bool = False) -> set:
    """`pipeline.*` modules imported anywhere in `tree` (function bodies too: a stage calls them).
    With `lazy`, also the modules of lazy registry entries ("pipeline.core.samplers.ddim:ddim")."""
    import ast

    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    pkg = module if module.endswith("__init__") else module.rsplit(".", 1)[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if _is_package(module) else 0)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from pipeline import x` imports module x
        elif (lazy and isinstance(node, ast.Constant) and isinstance(node.value, str)
              and re.fullmatch(r"pipeline(\.\w+)+:\w+", node.value)):
            found.add(node.value.partition(":")[0])  # a lazy registry entry, e.g. "pipeline.core.samplers.ddim:ddim"
    return {m for m in found if _module_file(m) is not None}


def _is_package(module: str) -> bool:
    f = _module_file(module)
    return f is not None and f.name == "__init__.py"


# Modules whose imports of a registry only read it (config validation: the names and options of
# the sampler, spacing and feature-space registries, the U-Net presets; the DAG: which jobs a
# feature space needs): a stage depends on a registry only when its own code imports it, so
# registering a sampler or a feature space reruns only the stages that run one.
VALIDATION_ONLY = {"pipeline.config": ("pipeline.core", "pipeline.stages.features"),
                   "pipeline.dag": ("pipeline.stages.features",)}


def _closure(roots: set, *, lazy: bool = False, loaded: frozenset = frozenset()) -> set:
    """Every module reachable from `roots`. cli.py is not followed: it imports each stage's module
    inside that stage's handler, and `stage_modules` reads only the handler that runs. With `lazy`,
    lazy registry entries are followed too; of a module in `loaded` (whose imports are already
    counted) only its lazy entries are (see `stage_modules`)."""
    import ast

    seen, todo = set(), list(roots)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parts = m.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a.b runs a/__init__.py
        if m != "pipeline.cli":
            tree = ast.parse(_module_file(m).read_text())
            found = _imports(tree, m, lazy=lazy)
            if m in VALIDATION_ONLY:
                found = {f for f in found if not any((f + ".").startswith(v + ".") for v in VALIDATION_ONLY[m])}
            todo += sorted(found - _imports(tree, m) if m in loaded else found)
    return seen


def stage_modules(stage: str) -> list:
    """(See `_stage_modules`.) Cached per package folder: dvc.yaml asks once per job."""
    return list(_stage_modules(stage, PACKAGE_DIR))


@functools.lru_cache(maxsize=None)
def _stage_modules(stage: str, package_dir: Path) -> tuple:
    """The files a stage's command runs: `python -m pipeline <stage>` loads pipeline/__main__.py,
    cli.py and what cli imports at the top, then the stage handler's imports and everything they
    import (derived from the source, so a new import is a new dependency). Used as DVC `deps`
    and hashed into Snakemake `params`, so editing any of them reruns exactly this stage."""
    import ast

    cli_tree = ast.parse(_module_file("pipeline.cli").read_text())
    roots = {"pipeline.__main__", "pipeline.cli"} | _imports(cli_tree, "pipeline.cli", top_level_only=True)
    stage_roots = {STAGE_ENTRY[stage]}
    handler = "cmd_" + stage.replace("-", "_")
    for node in cli_tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in (handler, "main"):
            stage_roots |= _imports(node, "pipeline.cli")
    # A lazy registry entry ("pipeline.core.samplers.ddim:ddim") is loaded by the stage that runs it,
    # not by the config that only reads the registry's names: follow entries from the stage's roots.
    base = _closure(roots)
    modules = base | _closure(stage_roots, lazy=True, loaded=frozenset(base))
    files = {str(_module_file(m).relative_to(PACKAGE_DIR.parent)) for m in modules}
    for m in modules:
        files |= set(MODULE_DATA.get(m, []))
    return tuple(sorted(files))


def code_version(stage: str) -> str:
    """sha256 over the contents of `stage_modules(stage)`: Snakemake reruns a job when it changes."""
    import hashlib

    h = hashlib.sha256()
    root = PACKAGE_DIR.parent
    for rel in stage_modules(stage):
        path = root / rel
        for f in sorted([path] if path.is_file() else (q for q in path.rglob("*") if q.is_file())):
            if "__pycache__" in f.parts:
                continue
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@dataclass
class Job:
    stage: str
    name: str  # DVC stage name (letters, digits, '-', '_')
    cmd: str
    deps: list = field(default_factory=list)  # files made by other jobs
    outs: list = field(default_factory=list)  # cached outputs (DVC cache, git-ignored)
    outs_nocache: list = field(default_factory=list)  # small outputs kept in git
    metrics: list = field(default_factory=list)  # JSON metrics, kept in git
    params: list = field(default_factory=list)  # dotted params.yaml keys
    dataset: str | None = None  # the data set it belongs to (None: aggregate, figures)
    exact: bool = False  # a job of an exact-score data set (gaussian, gmm)

    @property
    def rule(self) -> str:
        """Its Snakemake rule name (an identifier): the DVC stage name with '-' as '_'."""
        return self.name.replace("-", "_")

    @property
    def log(self) -> str:
        """The log file its command writes (every command ends with `--log <file>`)."""
        return re.search(r" --log (\S+)$", self.cmd).group(1)


# How Snakemake schedules a stage's jobs (DVC runs one at a time and ignores these).
# The heavy stages take run.heavy_threads threads; the others one.
HEAVY_STAGES = ("train", "train-classifier", "exact-map")
# Stages whose jobs hold the accelerator (Snakemake resource `gpu`: `--resources gpu=1` on a
# one-GPU machine runs them one at a time).
ACCELERATOR_STAGES = ("train", "train-classifier", "ref-stats", "sample", "fid")


def priority(stage: str, exact: bool = False) -> int:
    """Snakemake priority of a stage's jobs: start the long chains first, so that on few cores the
    short jobs fill the gaps instead of delaying them (measured on the embedded default: without
    priorities the gmm chain, or the train job, waited minutes behind classifier and Gaussian
    jobs): prepare-data 3, then exact-map and train 2, everything else 0, except that with
    `run.job_per: dataset` an exact data set's (gaussian, gmm) sample and fid jobs get 1: they
    follow the exact-map, the longest chain. (With `point`, one sample rule serves every data set.)"""
    if stage == "prepare-data":
        return 3
    if stage in ("exact-map", "train"):
        return 2
    return 1 if exact and stage in ("sample", "fid") else 0


def stage_name(*parts: str) -> str:
    name = "-".join(parts).replace("++", "pp").replace("+", "p")
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def paths(cfg: Config) -> dict:
    b, r = str(cfg.build_dir), str(cfg.results_dir)
    return {
        "data": f"{b}/data/{{dataset}}",
        "images": f"{b}/data/{{dataset}}/images.npz",
        "manifest": f"{b}/data/{{dataset}}/manifest.json",
        "mixture": f"{b}/data/{{dataset}}/mixture.safetensors",
        "mixture_json": f"{b}/data/{{dataset}}/mixture.json",
        "endpoints": f"{b}/exact/{{dataset}}/endpoints.npz",
        "endpoints_json": f"{b}/exact/{{dataset}}/endpoints.json",
        "models": f"{b}/models/{{dataset}}",
        "unet": f"{b}/models/{{dataset}}/unet.safetensors",
        "unet_json": f"{b}/models/{{dataset}}/unet.json",
        "loss_csv": f"{b}/models/{{dataset}}/loss.csv",
        "loss_png": f"{b}/models/{{dataset}}/loss.png",
        "classifier": f"{b}/models/{{dataset}}/classifier.safetensors",
        "classifier_json": f"{b}/models/{{dataset}}/classifier.json",
        "stats": f"{b}/stats/{{dataset}}/{{features}}.npz",
        "stats_json": f"{b}/stats/{{dataset}}/{{features}}.json",
        "runs": f"{b}/runs/{{dataset}}",
        "run": f"{b}/runs/{{dataset}}/{{point}}",
        "samples": f"{b}/runs/{{dataset}}/{{point}}/samples.npz",
        "grid": f"{b}/runs/{{dataset}}/{{point}}/grid.png",
        "record": f"{b}/runs/{{dataset}}/{{point}}/record.json",
        "fid": f"{b}/runs/{{dataset}}/{{point}}/fid-{{features}}.json",
        "tables": f"{r}/tables",
        "metrics": f"{r}/metrics.json",
        "records": f"{r}/records.jsonl",
        "figures": f"{r}/figures",
        "logs": f"logs/{cfg.preset}",
        # each stage's log (a data set's sample and fid jobs with run.job_per: dataset: point `all`)
        **{f"log:{stage}": f"logs/{cfg.preset}/{stage}/{tail}.log" for stage, tail in (
            ("prepare-data", "{dataset}"), ("train", "{dataset}"), ("train-classifier", "{dataset}"),
            ("ref-stats", "{dataset}-{features}"), ("exact-map", "{dataset}"), ("sample", "{dataset}/{point}"),
            ("fid", "{dataset}/{point}-{features}"))},
        "log:aggregate": f"logs/{cfg.preset}/aggregate.log",
        "log:figures": f"logs/{cfg.preset}/figures.log",
    }


def _p(template: str, **kw) -> str:
    return template.format(**kw)


def params_keys(cfg: Config, stage: str, dataset: str | None = None) -> list:
    """The params.yaml keys a stage reads (DVC `params:`; Snakemake `params:` holds their values)."""
    per_ds = []
    if dataset is not None:
        per_ds = [f"datasets.{dataset}"]
        ov = (cfg.merged.get("overrides") or {}).get(dataset) or {}
        sections = {
            "prepare-data": [],
            "train": ["model", "train"],
            "train-classifier": ["classifier"],
            "ref-stats": ["fid"],
            "exact-map": ["sample", "grid"],
            "sample": ["sample"],
            "fid": ["fid"],
        }[stage]
        per_ds += [f"overrides.{dataset}.{s}" for s in sections if s in ov]
        fit_to = cfg.runs[dataset].fit_to if dataset in cfg.runs else None
        if stage == "prepare-data" and fit_to is not None:
            per_ds.append(f"datasets.{fit_to.name}")  # a gmm is fitted to these images
    base = {
        "prepare-data": [],
        "train": ["diffusion", "model", "train"],
        "train-classifier": ["classifier"],
        "ref-stats": ["fid"],
        "exact-map": ["diffusion", "sample", "grid"],
        "sample": ["diffusion", "sample"],
        "fid": ["fid"],
        "aggregate": ["run", "grid"],
        "figures": ["grid.mosaic_seeds"],
    }[stage]
    return base + per_ds


def params_values(cfg: Config, keys: list) -> dict:
    """Values of dotted keys in the merged config (what Snakemake records to detect param changes)."""
    out = {}
    for key in keys:
        node = cfg.merged
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out


def model_files(cfg: Config, dataset: str) -> list:
    """The committed model files a data set's train job imports instead of training
    (`model.checkpoint` and its unet.json sidecar): inputs of that job in both engines, so that a
    replaced or updated checkpoint reruns it and everything after it."""
    ckpt = cfg.runs[dataset].model.checkpoint
    if not ckpt:
        return []
    return [str(ckpt), str(Path(ckpt).with_name("unet.json"))]


def job_params(cfg: Config, stage: str, dataset: str | None = None) -> dict:
    """What Snakemake records of a job's configuration (its `params.cfg`): the values of its params
    keys, except that exact-map, which reads of the grid only the first timestep of each point, gets
    those timesteps and its seed count instead of the grid (so a grid point that starts where
    another does, such as a newly registered sampler's, does not redo it)."""
    keys = params_keys(cfg, stage, dataset)
    if stage != "exact-map":
        return params_values(cfg, keys)
    from pipeline.core import spacing

    run = cfg.runs[dataset]
    values = params_values(cfg, [k for k in keys if k != "grid" and not k.endswith(".grid")])
    values["starts"] = spacing.first_timesteps(cfg.diffusion.T, run.points)  # exact_map.starts
    values["path_seeds"] = min(max(run.sample.n_for(p.steps) for p in run.points), run.sample.path_n)
    return values


def jobs(cfg: Config) -> list:
    P = paths(cfg)
    pre = f"python -m pipeline --preset {cfg.preset}"
    out: list[Job] = []
    for ds, run in cfg.runs.items():
        exact = run.dataset.exact_score  # gaussian, gmm: a closed-form eps, no training
        gmm = run.dataset.source == "gmm"
        f = lambda key, **kw: _p(P[key], dataset=ds, **kw)  # noqa: E731
        # data, classifier and reference statistics: the entry's own, or those of its `data_of` entry
        own_data = run.dataset.data_name == ds
        fd = lambda key, **kw: _p(P[key], dataset=run.dataset.data_name, **kw)  # noqa: E731
        data_outs = [fd("images"), fd("manifest")] + ([f("mixture"), f("mixture_json")] if gmm else [])
        if own_data:
            out.append(Job(
                "prepare-data", stage_name("prepare-data", ds),
                f"{pre} prepare-data --dataset {ds} --out {fd('data')} --log {f('log:prepare-data')}",
                outs=data_outs, dataset=ds, exact=exact, params=params_keys(cfg, "prepare-data", ds),
            ))
        if not exact:
            out.append(Job(
                "train", stage_name("train", ds),
                f"{pre} train --dataset {ds} --data {fd('data')} --out {f('models')} --log {f('log:train')}",
                deps=[fd("images"), fd("manifest")] + model_files(cfg, ds),
                outs=[f("unet"), f("unet_json"), f("loss_csv"), f("loss_png")],
                dataset=ds, exact=exact, params=params_keys(cfg, "train", ds),
            ))
        # feature spaces with a classifier / reference statistics, made once by the entry that owns the data
        image_spaces = [feat for feat in run.features if space(feat).layer is not None] if own_data else []
        if any(space(feat).own_classifier for feat in image_spaces):
            out.append(Job(
                "train-classifier", stage_name("train-classifier", ds),
                f"{pre} train-classifier --dataset {ds} --data {fd('data')} --out {fd('classifier')} --log {f('log:train-classifier')}",
                deps=[fd("images"), fd("manifest")], outs=[fd("classifier"), fd("classifier_json")],
                dataset=ds, exact=exact, params=params_keys(cfg, "train-classifier", ds),
            ))
        for feat in image_spaces:
            clf = space(feat).own_classifier
            out.append(Job(
                "ref-stats", stage_name("ref-stats", ds, feat),
                f"{pre} ref-stats --dataset {ds} --features {feat} --data {fd('data')}"
                + (f" --classifier {fd('classifier')}" if clf else "")
                + f" --out {fd('stats', features=feat)} --log {f('log:ref-stats', features=feat)}",
                deps=[fd("images"), fd("manifest")] + ([fd("classifier"), fd("classifier_json")] if clf else []),
                outs=[fd("stats", features=feat), fd("stats_json", features=feat)],
                dataset=ds, exact=exact, params=params_keys(cfg, "ref-stats", ds),
            ))
        if exact:
            out.append(Job(
                "exact-map", stage_name("exact-map", ds),
                f"{pre} exact-map --dataset {ds} --data {fd('data')} --out {f('endpoints')} --log {f('log:exact-map')}",
                deps=data_outs, outs=[f("endpoints"), f("endpoints_json")],
                dataset=ds, exact=exact, params=params_keys(cfg, "exact-map", ds),
            ))
        # run.job_per: one sample/fid job per grid point, or one per data set looping over its grid
        model_deps = ([f("mixture"), f("mixture_json")] if gmm else []) + ([f("endpoints")] if exact else []) \
            + ([] if exact else [f("unet"), f("unet_json")])
        batches = [[p.name] for p in run.points] if cfg.job_per == "point" else [[p.name for p in run.points]]
        for pts in batches:
            tag = pts if cfg.job_per == "point" else []
            point_args = "".join(f" --point {pt}" for pt in pts)
            out.append(Job(
                "sample", stage_name("sample", ds, *tag),
                f"{pre} sample --dataset {ds}{point_args} --data {fd('data')}"
                + (f" --exact-map {f('endpoints')}" if exact else f" --model {f('unet')}")
                + f" --out {f('runs')} --log {f('log:sample', point='-'.join(tag) or 'all')}",
                deps=[fd("manifest")] + model_deps,
                outs=[f(k, point=pt) for pt in pts for k in ("samples", "grid", "record")],
                dataset=ds, exact=exact, params=params_keys(cfg, "sample", ds),
            ))
            for feat in run.features:
                clf, closed = space(feat).own_classifier, space(feat).closed_form is not None
                stats = [] if closed else [fd("stats", features=feat)]
                out.append(Job(
                    "fid", stage_name("fid", ds, *tag, feat),
                    f"{pre} fid --dataset {ds}{point_args} --features {feat} --data {fd('data')}"
                    + f" --runs {f('runs')}"
                    + (f" --stats {fd('stats', features=feat)}" if stats else "")
                    + (f" --classifier {fd('classifier')}" if clf else "")
                    + f" --log {f('log:fid', point='-'.join(tag) or 'all', features=feat)}",
                    deps=[fd("manifest")] + [f("samples", point=pt) for pt in pts] + stats
                    + ([fd("classifier")] if clf else []) + ([f("mixture")] if gmm and closed else []),
                    outs=[f("fid", point=pt, features=feat) for pt in pts],
                    dataset=ds, exact=exact, params=params_keys(cfg, "fid", ds),
                ))
    records = [p for j in out if j.stage in ("sample", "fid") for p in j.outs if p.endswith(".json")]
    out.append(Job(
        "aggregate", "aggregate",
        f"{pre} aggregate --out {cfg.results_dir} --log {P['log:aggregate']}",
        deps=records, outs_nocache=[P["tables"], P["records"]], metrics=[P["metrics"]],
        params=params_keys(cfg, "aggregate"),
    ))
    mosaic = [p for j in out if j.stage == "sample" for p in j.outs if p.endswith("samples.npz")]
    mosaic += [_p(P["endpoints"], dataset=ds) for ds, run in cfg.runs.items() if run.dataset.source == "gmm"]
    out.append(Job(
        "figures", "figures",
        f"{pre} figures --out {P['figures']} --log {P['log:figures']}",
        deps=[P["tables"]] + mosaic, outs_nocache=[P["figures"]],
        params=params_keys(cfg, "figures"),
    ))
    return out


def dvc_yaml(cfg: Config) -> dict:
    """dvc.yaml for `cfg`: one stage per job, same command, files and params keys as the Snakefile."""
    stages = {}
    for job in jobs(cfg):
        st: dict = {"cmd": job.cmd, "deps": stage_modules(job.stage) + list(job.deps)}
        params = dvc_params(cfg, job.params)
        if params:
            st["params"] = params
        outs = [o for o in job.outs]
        outs += [{o: {"cache": False}} for o in job.outs_nocache]
        if outs:
            st["outs"] = outs
        if job.metrics:
            st["metrics"] = [{m: {"cache": False}} for m in job.metrics]
        stages[job.name] = st
    P = paths(cfg)
    plots = [
        {f"{cfg.results_dir}/tables/runs.csv": {"x": "nfe", "y": "fid", "template": "scatter",
                                               "title": "FID vs NFE (all grid points)"}},
    ]
    for ds, run in cfg.runs.items():
        if not run.dataset.is_gaussian:
            plots.append({_p(P["loss_csv"], dataset=ds): {"x": "step", "y": "loss", "title": f"training loss ({ds})"}})
    plots.append(P["figures"])
    return {"stages": stages, "plots": plots}


def _has_key(doc: dict, key: str) -> bool:
    node = doc
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def dvc_params(cfg: Config, keys: list) -> list:
    """DVC `params:` of a stage. From the preset file (presets/<preset>.yaml), each of the stage's
    dotted keys that it writes; a key it leaves out takes the schema's default, which the stage's
    code deps cover (the schema is a data file of pipeline.config). From params.yaml (the user's
    own changes), the top-level sections those keys are in: params.yaml keeps every section, empty
    or not, so that an edit there reruns the stages that read it without regenerating dvc.yaml."""
    import yaml

    if cfg.preset_path is None:
        return list(keys)
    root = cfg.params_path.parent
    preset_doc = yaml.safe_load(cfg.preset_path.read_text()) or {}
    out = []
    present = [k for k in keys if _has_key(preset_doc, k)]
    if present:
        out.append({str(cfg.preset_path.relative_to(root)): present})
    sections = list(dict.fromkeys(k.split(".")[0] for k in keys))
    if "datasets" in sections and "overrides" not in sections:
        sections.append("overrides")  # a data set's stages read its overrides.<name>, written there or not
    if sections:
        out.append({cfg.params_path.name: sections})
    return out


def render_dvc_yaml(cfg: Config) -> str:
    import yaml

    header = (
        "# GENERATED by `python -m pipeline dvc-yaml` from params.yaml (preset: "
        f"{cfg.preset}); do not edit by hand.\n"
        "# The same jobs as the Snakefile: tests/test_workflow.py checks they agree.\n"
    )
    return header + yaml.safe_dump(dvc_yaml(cfg), sort_keys=False, width=1000)


def reconcile_with_dvc(cfg: Config, job_list: list, root: Path = Path(".")) -> int:
    """Give DVC-vouched outputs file times in DAG order, so Snakemake does not redo them.

    `dvc checkout` and `dvc pull` rewrite outputs in no particular order, and outputs made
    by `dvc repro` carry no Snakemake metadata (no recorded checksums), so Snakemake would
    read a newer input as a changed one and rerun jobs whose results are correct. DVC knows
    better: every stage that `dvc status` does not report (nor any stage upstream of it) has
    outputs that match its deps and params. Their times are set in topological order.
    Returns the number of jobs touched; does nothing outside a DVC project or when dvc.yaml
    describes another preset.
    """
    import json
    import os
    import subprocess
    import time

    dvc_yaml, lock = root / "dvc.yaml", root / "dvc.lock"
    if not ((root / ".dvc").is_dir() and dvc_yaml.exists() and lock.exists()):
        return 0
    if f"(preset: {cfg.preset})" not in dvc_yaml.read_text().split("\n", 1)[0]:
        return 0
    import shutil

    if shutil.which("dvc") is None:  # Snakemake alone, without DVC installed: nothing to reconcile
        return 0
    r = subprocess.run(["dvc", "status", "--json"], cwd=root, capture_output=True, text=True)
    if r.returncode != 0:
        return 0
    stale = set(json.loads(r.stdout or "{}"))
    made_by = {o: j.name for j in job_list for o in j.outs + j.outs_nocache + j.metrics}
    t = time.time() - 1.0 - 0.001 * len(job_list)
    touched = 0
    for job in job_list:  # jobs() lists every job after the jobs it depends on
        outs = [root / o for o in job.outs + job.outs_nocache + job.metrics]
        if job.name in stale or any(made_by.get(d) in stale for d in job.deps) or not all(o.exists() for o in outs):
            stale.add(job.name)
            continue
        t += 0.001
        for out in outs:
            for p in ([out, *out.rglob("*")] if out.is_dir() else [out]):
                os.utime(p, (t, t))
        touched += 1
    return touched
