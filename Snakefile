# ddbench workflow: `snakemake --cores all` (embedded default) or
# `snakemake --cores all --config preset=gpu`. The DAG is pipeline/dag.py's `jobs()`, the same
# list dvc.yaml is generated from (tests/test_workflow.py checks the two engines agree). One rule
# per stage, named after it (profiles/slurm gives each stage its resources by that name; a
# mixture's prepare-data, with its extra outputs, is a second rule beside it): its
# output patterns are dag.paths(), and each job's inputs, command, params and log come from the
# dag job that makes those outputs. A new data set, sampler or feature space needs no edit here.
#
# What reruns a job (profiles/default/config.yaml: rerun-triggers params, input,
# software-env, code): a changed value of its configuration (`params.cfg`: dag.job_params), a
# changed input, or a changed source file of the modules its command runs (`params.code`: a
# hash of dag.stage_modules(stage), the same files dvc.yaml lists as the stage's deps).
# Snakemake's own `code` trigger only sees the shell text.
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
JOBS = dag.jobs(CFG)
CODE = {stage: dag.code_version(stage) for stage in dag.STAGE_ENTRY}
JOB_OF = {o: j for j in JOBS for o in j.outs + j.outs_nocache + j.metrics}
# Reading this file changes nothing on disk (a dry run included). After `dvc repro`,
# `dvc checkout` or `dvc pull`, `python -m pipeline reconcile` gives the outputs DVC vouches for
# file times in DAG order, so that Snakemake does not redo DVC's finished work.


def heavy_threads(wildcards):
    """Threads of the heavy jobs (dag.HEAVY_STAGES): run.heavy_threads, `all` = every core of
    --cores. `workflow.cores` is undefined (and raises) when no --cores is given, as in
    `snakemake --unlock` or `snakemake --report`: one thread there."""
    try:
        cores = workflow.cores
    except WorkflowError:
        return 1
    return cores if CFG.heavy_threads == "all" else min(CFG.heavy_threads, cores)


def job(key):
    """wildcards -> the dag job that makes P[key] there."""
    return lambda wc: JOB_OF[P[key].format(**dict(wc.items()))]


def wiring(stage, key):
    """A stage rule's input function and params, all from the dag job that makes P[key]."""
    of = job(key)
    inputs = lambda wc: of(wc).deps  # noqa: E731
    params = dict(
        cfg=lambda wc: dag.job_params(CFG, stage, of(wc).dataset),
        code=CODE[stage],
        cmd=lambda wc: of(wc).cmd.rsplit(" --log ", 1)[0],  # the log is Snakemake's `log:`
    )
    return inputs, params


def one_of(names):
    names = sorted(set(names))
    return "|".join(map(re.escape, names)) or "(?!)"  # (?!) matches nothing


def datasets_of(stage, pred=lambda job: True):
    return one_of(j.dataset for j in JOBS if j.stage == stage and pred(j))


def threads_of(stage):
    return heavy_threads if stage in dag.HEAVY_STAGES else 1


def gpu_of(stage):
    return 1 if stage in dag.ACCELERATOR_STAGES else 0


wildcard_constraints:
    point="[A-Za-z0-9+.-]+",
    features=one_of(f for run in CFG.runs.values() for f in run.features),


rule all:
    # Every job's outputs, not only the results: without mtime triggers Snakemake would let a
    # deleted intermediate file (samples, records, models) stay deleted while the tables exist.
    input:
        sorted(JOB_OF),


_in, _params = wiring("prepare-data", "manifest")

rule prepare_data:
    wildcard_constraints:
        dataset=datasets_of("prepare-data", lambda j: P["mixture"].format(dataset=j.dataset) not in j.outs),
    input: _in
    output:
        images=P["images"],
        manifest=P["manifest"],
    params: **_params
    log: P["log:prepare-data"]
    priority: dag.priority("prepare-data")
    shell: "{params.cmd} --log {log}"


rule prepare_data_gmm:
    # a gmm data set: the fitted mixture beside its exact samples
    wildcard_constraints:
        dataset=datasets_of("prepare-data", lambda j: P["mixture"].format(dataset=j.dataset) in j.outs),
    input: _in
    output:
        images=P["images"],
        manifest=P["manifest"],
        mixture=P["mixture"],
        mixture_json=P["mixture_json"],
    params: **_params
    log: P["log:prepare-data"]
    priority: dag.priority("prepare-data")
    shell: "{params.cmd} --log {log}"


_in, _params = wiring("exact-map", "endpoints")

rule exact_map:
    wildcard_constraints:
        dataset=datasets_of("exact-map"),
    input: _in
    output:
        endpoints=P["endpoints"],
        summary=P["endpoints_json"],
    params: **_params
    log: P["log:exact-map"]
    priority: dag.priority("exact-map")
    threads: threads_of("exact-map")  # run.heavy_threads (Snakemake sets OMP_NUM_THREADS)
    shell: "{params.cmd} --log {log}"


_in, _params = wiring("train", "unet")

rule train:
    wildcard_constraints:
        dataset=datasets_of("train"),
    input: _in
    output:
        unet=P["unet"],
        unet_json=P["unet_json"],
        loss_csv=P["loss_csv"],
        loss_png=report(P["loss_png"], caption="report/loss.rst", category="Training"),
    params: **_params
    log: P["log:train"]
    priority: dag.priority("train")
    threads: threads_of("train")
    resources:
        gpu=gpu_of("train"),
    shell: "{params.cmd} --log {log}"


_in, _params = wiring("train-classifier", "classifier")

rule train_classifier:
    wildcard_constraints:
        dataset=datasets_of("train-classifier"),
    input: _in
    output:
        weights=P["classifier"],
        sidecar=P["classifier_json"],
    params: **_params
    log: P["log:train-classifier"]
    threads: threads_of("train-classifier")
    resources:
        gpu=gpu_of("train-classifier"),
    shell: "{params.cmd} --log {log}"


_in, _params = wiring("ref-stats", "stats")

rule ref_stats:
    wildcard_constraints:
        dataset=datasets_of("ref-stats"),
    input: _in
    output:
        stats=P["stats"],
        sidecar=P["stats_json"],
    params: **_params
    log: P["log:ref-stats"]
    resources:
        gpu=gpu_of("ref-stats"),
    shell: "{params.cmd} --log {log}"


if CFG.job_per == "point":
    _in, _params = wiring("sample", "record")

    rule sample:
        wildcard_constraints:
            dataset=datasets_of("sample"),
        input: _in
        output:
            samples=P["samples"],
            grid=P["grid"],
            record=P["record"],
        params: **_params
        log: P["log:sample"]
        resources:
            gpu=gpu_of("sample"),
        shell: "{params.cmd} --log {log}"

    _in, _params = wiring("fid", "fid")

    rule fid:
        wildcard_constraints:
            dataset=datasets_of("fid"),
        input: _in
        output:
            record=P["fid"],
        params: **_params
        log: P["log:fid"]
        resources:
            gpu=gpu_of("fid"),
        shell: "{params.cmd} --log {log}"

else:
    # run.job_per: dataset: one sample job per data set and one fid job per data set and feature
    # space, each looping over the grid in one process. The grid differs per data set, so these
    # are one rule per job (sample_<dataset>, fid_<dataset>_<features>: dag.Job.rule).
    for _job in JOBS:
        if _job.stage not in ("sample", "fid"):
            continue

        rule:
            name: _job.rule
            input: _job.deps
            output: _job.outs
            params:
                cfg=dag.job_params(CFG, _job.stage, _job.dataset),
                code=CODE[_job.stage],
                # the command as a value: `shell:` is formatted when the job runs, when the loop
                # variable names the last job, while params are evaluated here
                cmd=_job.cmd.rsplit(" --log ", 1)[0],
            log: _job.log
            priority: dag.priority(_job.stage, _job.exact)
            resources:
                gpu=gpu_of(_job.stage),
            shell: "{params.cmd} --log {log}"


_agg, _fig = (next(j for j in JOBS if j.stage == s) for s in ("aggregate", "figures"))

rule aggregate:
    input: _agg.deps
    output:
        tables=report(directory(P["tables"]), patterns=["{name}.csv"], caption="report/tables.rst", category="Tables"),
        records=P["records"],
        metrics=P["metrics"],
    params:
        cfg=dag.job_params(CFG, "aggregate"),
        code=CODE["aggregate"],
        cmd=_agg.cmd.rsplit(" --log ", 1)[0],
    log: _agg.log
    shell: "{params.cmd} --log {log}"


rule figures:
    input: _fig.deps
    output:
        figures=report(directory(P["figures"]), patterns=["{name}.png"], caption="report/figures.rst", category="Figures"),
    params:
        cfg=dag.job_params(CFG, "figures"),
        code=CODE["figures"],
        cmd=_fig.cmd.rsplit(" --log ", 1)[0],
    log: _fig.log
    shell: "{params.cmd} --log {log}"

onstart:
    # A download the run relies on but cannot make (no network, no offline copy) fails here,
    # naming the key, before the first job; a dry run never probes.
    ddconfig.preflight(CFG)

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
