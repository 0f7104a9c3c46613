# ddbench workflow: `snakemake --cores all` (embedded default) or
# `snakemake --cores all --config preset=gpu`. Every rule runs the same
# `python -m pipeline <stage>` command as the matching dvc.yaml stage
# (tests/test_workflow.py checks this). The job list, paths and params keys come
# from pipeline/dag.py; nothing here but wiring rules to them.
#
# What reruns a job (profiles/default/config.yaml: rerun-triggers params, input,
# software-env, code): a changed value of its params.yaml slice (`params.cfg`), a
# changed input, or a changed source file of the modules its command runs
# (`params.code`: a hash of dag.stage_modules(stage), the same files dvc.yaml lists
# as the stage's deps). Snakemake's own `code` trigger only sees the shell text.
import re
import yaml
from snakemake.exceptions import WorkflowError
from pipeline import config as ddconfig, dag

configfile: "params.yaml"

# presets/<preset>.yaml with params.yaml's own changes over it is the one configuration: only
# `preset` may come from the command line, so that every job reads the same settings.
_on_disk = yaml.safe_load(open("params.yaml"))
_extra = sorted(k for k in config if k != "preset" and config[k] != _on_disk.get(k))
if _extra:
    raise ValueError(f"--config may set only `preset`; edit params.yaml or presets/ for {_extra}")

CFG = ddconfig.load("params.yaml", preset=config.get("preset"))
P = dag.paths(CFG)
PRE = f"python -m pipeline --preset {CFG.preset}"
JOBS = dag.jobs(CFG)
# Reading this file changes nothing on disk (a dry run included). After `dvc repro`,
# `dvc checkout` or `dvc pull`, `python -m pipeline reconcile` gives the outputs DVC vouches for
# file times in DAG order, so that Snakemake does not redo DVC's finished work.


CODE = {stage: dag.code_version(stage) for stage in dag.STAGE_ENTRY}


def heavy_threads(wildcards):
    """Threads of the train, train-classifier and exact-map jobs: run.heavy_threads, `all` = every
    core of --cores. `workflow.cores` is undefined (and raises) when no --cores is given, as in
    `snakemake --unlock` or `snakemake --report`: one thread there."""
    try:
        cores = workflow.cores
    except WorkflowError:
        return 1
    return cores if CFG.heavy_threads == "all" else min(CFG.heavy_threads, cores)


def params_of(stage):
    return lambda wc: dag.job_params(CFG, stage, getattr(wc, "dataset", None))


def deps_of(stage):
    return [d for j in JOBS if j.stage == stage for d in j.deps]


def is_exact(dataset):
    """gaussian, gmm: a closed-form eps (no train job), an exact-map job, the `exact` feature space."""
    return CFG.runs[dataset].dataset.exact_score


def is_gmm(dataset):
    return CFG.runs[dataset].dataset.source == "gmm"


def data_path(key):
    """P[key] of the entry whose prepared data, classifier and reference statistics a data set
    uses: its own, or its `data_of` entry's (another model on the same data)."""
    return lambda wc: P[key].format(dataset=CFG.runs[wc.dataset].dataset.data_name, features=getattr(wc, "features", ""))


OWN_DATA = [ds for ds in CFG.runs if CFG.runs[ds].dataset.data_name == ds]


def one_of(names):
    return "|".join(map(re.escape, names)) or "(?!)"  # (?!) matches nothing


GMM = [ds for ds in CFG.runs if is_gmm(ds)]


wildcard_constraints:
    dataset="|".join(map(re.escape, CFG.runs)),
    point="[A-Za-z0-9+.-]+",
    features="inception|classifier|exact",


rule all:
    # Every job's outputs, not only the results: without mtime triggers Snakemake would let a
    # deleted intermediate file (samples, records, models) stay deleted while the tables exist.
    input:
        P["tables"],
        P["figures"],
        P["metrics"],
        sorted({o for j in JOBS for o in j.outs + j.outs_nocache + j.metrics} - {P["tables"], P["figures"], P["metrics"]}),


rule prepare_data:
    output:
        images=P["images"],
        manifest=P["manifest"],
    wildcard_constraints:
        dataset=one_of([ds for ds in OWN_DATA if not is_gmm(ds)]),
    params:
        cfg=params_of("prepare-data"),
        code=CODE["prepare-data"],
    log:
        P["logs"] + "/prepare-data/{dataset}.log",
    priority: 3  # the heads of the long chains first (see exact_map)
    shell:
        PRE + " prepare-data --dataset {wildcards.dataset} --out " + P["data"].replace("{dataset}", "{wildcards.dataset}") + " --log {log}"


rule prepare_data_gmm:
    # a gmm data set: the fitted mixture beside its exact samples
    output:
        images=P["images"],
        manifest=P["manifest"],
        mixture=P["mixture"],
        mixture_json=P["mixture_json"],
    wildcard_constraints:
        dataset=one_of(GMM),
    params:
        cfg=params_of("prepare-data"),
        code=CODE["prepare-data"],
    log:
        P["logs"] + "/prepare-data/{dataset}.log",
    priority: 3  # the head of the exact data sets' chain (exact-map, sample, fid): started first
    shell:
        PRE + " prepare-data --dataset {wildcards.dataset} --out " + P["data"].replace("{dataset}", "{wildcards.dataset}") + " --log {log}"


rule exact_map:
    input:
        lambda wc: [P[k].format(dataset=wc.dataset) for k in ("images", "manifest") + (("mixture", "mixture_json") if is_gmm(wc.dataset) else ())],
    output:
        endpoints=P["endpoints"],
        summary=P["endpoints_json"],
    params:
        cfg=params_of("exact-map"),
        code=CODE["exact-map"],
    log:
        P["logs"] + "/exact-map/{dataset}.log",
    # Priorities start the long chains first, so that on few cores the short jobs fill the gaps
    # instead of delaying them (measured on the embedded default: without them the gmm chain, or
    # the train job, waited minutes behind classifier and Gaussian jobs): prepare-data 3, then
    # exact-map and train 2, the exact data sets' sample and fid jobs 1, everything else 0.
    priority: 2
    threads: heavy_threads  # run.heavy_threads (Snakemake sets OMP_NUM_THREADS)
    shell:
        PRE + " exact-map --dataset {wildcards.dataset} --data " + P["data"].replace("{dataset}", "{wildcards.dataset}")
        + " --out {output.endpoints} --log {log}"


rule train:
    input:
        images=data_path("images"),
        manifest=data_path("manifest"),
        model=lambda wc: dag.model_files(CFG, wc.dataset),  # a committed checkpoint it imports
    output:
        unet=P["unet"],
        unet_json=P["unet_json"],
        loss_csv=P["loss_csv"],
        loss_png=report(P["loss_png"], caption="report/loss.rst", category="Training"),
    params:
        cfg=params_of("train"),
        code=CODE["train"],
        data=data_path("data"),
    log:
        P["logs"] + "/train/{dataset}.log",
    priority: 2  # see exact_map
    threads: heavy_threads  # run.heavy_threads (Snakemake sets OMP_NUM_THREADS)
    resources:
        gpu=1,
    shell:
        PRE + " train --dataset {wildcards.dataset} --data {params.data}"
        + " --out " + P["models"].replace("{dataset}", "{wildcards.dataset}") + " --log {log}"


rule train_classifier:
    wildcard_constraints:
        dataset=one_of(OWN_DATA),
    input:
        images=P["images"],
        manifest=P["manifest"],
    output:
        weights=P["classifier"],
        sidecar=P["classifier_json"],
    params:
        cfg=params_of("train-classifier"),
        code=CODE["train-classifier"],
    log:
        P["logs"] + "/train-classifier/{dataset}.log",
    threads: heavy_threads  # run.heavy_threads (Snakemake sets OMP_NUM_THREADS)
    resources:
        gpu=1,
    shell:
        PRE + " train-classifier --dataset {wildcards.dataset} --data " + P["data"].replace("{dataset}", "{wildcards.dataset}")
        + " --out {output.weights} --log {log}"


rule ref_stats:
    wildcard_constraints:
        dataset=one_of(OWN_DATA),
    input:
        images=P["images"],
        manifest=P["manifest"],
        classifier=lambda wc: [P["classifier"].format(dataset=wc.dataset), P["classifier_json"].format(dataset=wc.dataset)] if wc.features == "classifier" else [],
    output:
        stats=P["stats"],
        sidecar=P["stats_json"],
    params:
        cfg=params_of("ref-stats"),
        code=CODE["ref-stats"],
        clf=lambda wc: f" --classifier {P['classifier'].format(dataset=wc.dataset)}" if wc.features == "classifier" else "",
    log:
        P["logs"] + "/ref-stats/{dataset}-{features}.log",
    resources:
        gpu=1,
    shell:
        PRE + " ref-stats --dataset {wildcards.dataset} --features {wildcards.features} --data "
        + P["data"].replace("{dataset}", "{wildcards.dataset}") + "{params.clf} --out {output.stats} --log {log}"


if CFG.job_per == "point":

    rule sample:
        input:
            manifest=data_path("manifest"),
            model=lambda wc: ([P[k].format(dataset=wc.dataset) for k in ("mixture", "mixture_json")] if is_gmm(wc.dataset) else [])
            + ([P["endpoints"].format(dataset=wc.dataset)] if is_exact(wc.dataset) else [P["unet"].format(dataset=wc.dataset), P["unet_json"].format(dataset=wc.dataset)]),
        output:
            samples=P["samples"],
            grid=P["grid"],
            record=P["record"],
        params:
            cfg=params_of("sample"),
            code=CODE["sample"],
            model=lambda wc: f" --exact-map {P['endpoints'].format(dataset=wc.dataset)}" if is_exact(wc.dataset) else f" --model {P['unet'].format(dataset=wc.dataset)}",
            runs=lambda wc: P["runs"].format(dataset=wc.dataset),
            data=data_path("data"),
        log:
            P["logs"] + "/sample/{dataset}/{point}.log",
        resources:
            gpu=1,
        shell:
            PRE + " sample --dataset {wildcards.dataset} --point {wildcards.point} --data {params.data}"
            + "{params.model} --out {params.runs} --log {log}"

    rule fid:
        input:
            manifest=data_path("manifest"),
            samples=P["samples"],
            stats=lambda wc: [] if wc.features == "exact" else [data_path("stats")(wc)],
            classifier=lambda wc: [data_path("classifier")(wc)] if wc.features == "classifier" else [],
            mixture=lambda wc: [P["mixture"].format(dataset=wc.dataset)] if wc.features == "exact" and is_gmm(wc.dataset) else [],
        output:
            record=P["fid"],
        params:
            cfg=params_of("fid"),
            code=CODE["fid"],
            runs=lambda wc: P["runs"].format(dataset=wc.dataset),
            stats=lambda wc: "" if wc.features == "exact" else f" --stats {data_path('stats')(wc)}",
            clf=lambda wc: f" --classifier {data_path('classifier')(wc)}" if wc.features == "classifier" else "",
            data=data_path("data"),
        log:
            P["logs"] + "/fid/{dataset}/{point}-{features}.log",
        resources:
            gpu=1,
        shell:
            PRE + " fid --dataset {wildcards.dataset} --point {wildcards.point} --features {wildcards.features} --data {params.data}"
            + " --runs {params.runs}{params.stats}{params.clf} --log {log}"

else:
    # run.job_per: dataset: one sample job per data set and one fid job per data set and feature
    # space, each looping over the grid in one process. The grid differs per data set, so these
    # are one rule per job (named sample_<dataset>, fid_<dataset>_<features>), wired from
    # dag.jobs: the same command, inputs and outputs as the dvc.yaml stage of that name.
    for _job in JOBS:
        if _job.stage not in ("sample", "fid"):
            continue

        rule:
            name:
                _job.name.replace("-", "_")
            input:
                _job.deps,
            output:
                _job.outs,
            params:
                cfg=dag.params_values(CFG, _job.params),
                code=CODE[_job.stage],
                # the command as a value: `shell:` is formatted when the job runs, when the loop
                # variable names the last job, while params are evaluated here
                cmd=_job.cmd.rsplit(" --log ", 1)[0],
            log:
                re.search(r"--log (\S+)", _job.cmd).group(1),
            priority: 1 if is_exact(re.search(r"--dataset (\S+)", _job.cmd).group(1)) else 0  # after exact-map: the longest chain first
            resources:
                gpu=1,
            shell:
                "{params.cmd} --log {log}"


rule aggregate:
    input:
        deps_of("aggregate"),
    output:
        tables=report(directory(P["tables"]), patterns=["{name}.csv"], caption="report/tables.rst", category="Tables"),
        records=P["records"],
        metrics=P["metrics"],
    params:
        cfg=params_of("aggregate"),
        code=CODE["aggregate"],
    log:
        P["logs"] + "/aggregate.log",
    shell:
        PRE + f" aggregate --out {CFG.results_dir} --log {{log}}"


rule figures:
    input:
        deps_of("figures"),
    output:
        figures=report(directory(P["figures"]), patterns=["{name}.png"], caption="report/figures.rst", category="Figures"),
    params:
        cfg=params_of("figures"),
        code=CODE["figures"],
    log:
        P["logs"] + "/figures.log",
    shell:
        PRE + " figures --out {output.figures} --log {log}"


onsuccess:
    # Keep DVC in step: record what Snakemake just built in dvc.lock, so that a
    # following `dvc repro` finds nothing to redo (only when dvc.yaml describes
    # this same preset and the folder is a DVC project).
    import os, shutil, subprocess
    if os.path.isdir(".dvc") and os.path.exists("dvc.yaml") and shutil.which("dvc"):
        with open("dvc.yaml") as f:
            head = f.readline() + f.readline()
        if f"(preset: {CFG.preset})" in head:
            subprocess.run(["dvc", "commit", "--force", "--quiet"], check=False)
