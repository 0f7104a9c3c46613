"""`python -m pipeline [--params params.yaml] [--preset NAME] [--set KEY=VALUE] <stage> ...`

One subcommand per pipeline stage; Snakemake rules and DVC stages run exactly these
commands. The configuration is loaded and validated once, here; a bad value is one
line on stderr naming the key and what is allowed, exit status 2, before any compute.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from pipeline.config import Config, ConfigError, GridPoint

STAGES = ("prepare-data", "train", "train-classifier", "ref-stats", "exact-map", "sample", "fid", "aggregate", "figures")


class _Tee:
    """Copy a stream to a log file (the `log:` of a Snakemake rule)."""

    def __init__(self, stream, log):
        self.stream, self.log = stream, log

    def write(self, s):
        self.stream.write(s)
        self.log.write(s)
        self.log.flush()
        return len(s)

    def flush(self):
        self.stream.flush()
        self.log.flush()

    def isatty(self):
        return False

    def __getattr__(self, name):
        return getattr(self.stream, name)


def parse_point(name: str) -> GridPoint:
    """A --point name -> its GridPoint; the sampler registry reads the name (samplers.parse_point_name)."""
    try:
        return GridPoint.parse(name)
    except ConfigError as e:
        raise ConfigError(f"--{e}") from None


def _run_for(cfg: Config, dataset: str):
    if dataset not in cfg.runs:
        raise ConfigError(f"--dataset {dataset!r}: not in run.datasets of preset {cfg.preset!r}; allowed: {list(cfg.runs)}")
    return cfg.runs[dataset]


def _point_in_grid(run, name: str) -> GridPoint:
    known = {p.name: p for p in run.points}
    if name in known:
        return known[name]
    try:
        parse_point(name)
        why = ""
    except ConfigError as e:
        why = f" ({str(e).split(': ', 1)[-1]})"
    raise ConfigError(f"--point {name!r}: not in the grid of dataset {run.dataset.name!r}{why}; allowed: {sorted(known)}")


def _features_ok(run, features: str) -> None:
    if features not in run.features:
        raise ConfigError(f"--features {features!r}: not configured for dataset {run.dataset.name!r}; allowed: {list(run.features)}")


# --- stage commands -------------------------------------------------------------------------

def cmd_prepare_data(cfg: Config, a) -> None:
    from pipeline.stages import data

    run = _run_for(cfg, a.dataset)
    manifest = data.prepare(run.dataset, Path(a.out), run.fit_to)
    print(f"prepare-data: {a.dataset}: {manifest.get('count')} items -> {a.out}")


def cmd_train(cfg: Config, a) -> None:
    from pipeline.stages import train

    run = _run_for(cfg, a.dataset)
    resume = cfg.build_dir / "resume" / a.dataset
    train.train(run.train, run.model, cfg.diffusion, Path(a.data), Path(a.out), resume)


def cmd_train_classifier(cfg: Config, a) -> None:
    from pipeline.stages import classifier

    run = _run_for(cfg, a.dataset)
    classifier.train_classifier(run.classifier, Path(a.data), Path(a.out))


def cmd_ref_stats(cfg: Config, a) -> None:
    from pipeline.stages import fid

    run = _run_for(cfg, a.dataset)
    _features_ok(run, a.features)
    fid.reference_stats(run.fid, a.features, Path(a.data), a.classifier and Path(a.classifier), Path(a.out))


def cmd_sample(cfg: Config, a) -> None:
    from pipeline.stages import sample

    run = _run_for(cfg, a.dataset)
    points = [_point_in_grid(run, name) for name in a.point]
    exact = run.dataset.exact_score
    if exact == (a.model is not None):
        raise ConfigError(f"--model: {'not used' if exact else 'required'} for dataset {a.dataset!r}")
    if a.exact_map is not None and not exact:
        raise ConfigError(f"--exact-map: only for data sets with an exact score, not {a.dataset!r}")
    out = Path(a.out)
    recs = sample.run_many(run.sample, points, cfg.diffusion, Path(a.data), a.model and Path(a.model),
                           [out / p.name for p in points], a.dataset, a.exact_map and Path(a.exact_map))
    for point, rec in zip(points, recs):
        print(f"sample: {a.dataset}/{point.name}: {rec.get('n_images')} images, nfe {rec.get('nfe')}, "
              f"{rec.get('images_per_s', 0):.2f} img/s")


def cmd_exact_map(cfg: Config, a) -> None:
    from pipeline.stages import exact_map

    run = _run_for(cfg, a.dataset)
    if not run.dataset.exact_score:
        raise ConfigError(f"--dataset {a.dataset!r}: no exact score (sources gaussian and gmm have one)")
    summary = exact_map.run(run.sample, run.points, cfg.diffusion, Path(a.data), Path(a.out))
    print(f"exact-map: {a.dataset}: {summary['n']} endpoints from first timesteps {summary['first_timesteps']} "
          f"in {sum(summary['solve_s'].values()):.1f} s -> {a.out}")


def cmd_fid(cfg: Config, a) -> None:
    from pipeline.stages import fid

    run = _run_for(cfg, a.dataset)
    _features_ok(run, a.features)
    names = [_point_in_grid(run, name).name for name in a.point]
    runs = Path(a.runs)
    missing = [str(runs / n / "samples.npz") for n in names if not (runs / n / "samples.npz").is_file()]
    if missing:
        raise ConfigError(f"--runs {a.runs}: no samples for {missing}; run the sample stage first")
    for name in names:
        rec = fid.evaluate(run.fid, a.features, runs / name / "samples.npz", Path(a.data), a.stats and Path(a.stats),
                           a.classifier and Path(a.classifier), runs / name / f"fid-{a.features}.json", a.dataset, name)
        print(f"fid: {a.dataset}/{name} [{a.features}]: FID {rec.get('fid')}")


def _records(cfg: Config) -> tuple[list, list]:
    from pipeline import dag

    sample_recs, fid_recs = [], []
    for job in dag.jobs(cfg):
        if job.stage == "sample":
            sample_recs += [Path(p) for p in job.outs if p.endswith("record.json")]
        elif job.stage == "fid":
            fid_recs += [Path(p) for p in job.outs]
    return sample_recs, fid_recs


def cmd_aggregate(cfg: Config, a) -> None:
    from pipeline.stages import aggregate
    from pipeline import dag
    from pipeline.util import files

    sample_recs, fid_recs = _records(cfg)
    missing = [str(p) for p in sample_recs + fid_recs if not p.exists()]
    unfinished = []
    if missing and a.partial:  # a long run in progress: the points whose records are all there
        unfinished = sorted({str(Path(p).parent) for p in missing})
        sample_recs = [p for p in sample_recs if str(p.parent) not in unfinished]
        fid_recs = [p for p in fid_recs if str(p.parent) not in unfinished]
    elif missing:
        raise ConfigError(f"aggregate: {len(missing)} run record(s) missing, e.g. {missing[0]}; run the sample/fid "
                          f"stages first (or pass --partial to aggregate the finished points of a run in progress)")
    out = Path(a.out)
    frame = aggregate.run(sample_recs, fid_recs, out / "tables", preset=cfg.preset, unfinished=unfinished)
    # Every record, verbatim, in one git-tracked file: the provenance of each number.
    lines = [json.dumps({"kind": "sample", **files.read_json(p)}, sort_keys=True) for p in sample_recs]
    lines += [json.dumps({"kind": "fid", **files.read_json(p)}, sort_keys=True) for p in fid_recs]
    files.write_text(dag.paths(cfg)["records"], "\n".join(lines) + "\n")
    # `dvc metrics show/diff`: the headline numbers only; per-point curves stay in runs.csv.
    files.write_json(dag.paths(cfg)["metrics"], aggregate.headline_metrics(frame))
    print(f"aggregate: {len(frame)} rows -> {out}")


def cmd_figures(cfg: Config, a) -> None:
    from pipeline import dag
    from pipeline.report import figures
    from pipeline.core import spacing

    P = dag.paths(cfg)
    mosaic, exact = {}, {}
    for ds, run in cfg.runs.items():
        if run.dataset.is_gaussian:
            continue
        for p in run.points:
            path = Path(P["samples"].format(dataset=ds, point=p.name))
            if path.exists() or not a.partial:
                mosaic[(ds, p.name)] = path
        sps = {p.spacing for p in run.points}
        if run.dataset.source == "gmm" and len(sps) == 1:  # the exact endpoints of the same seeds, on top
            sp = sps.pop()
            exact[ds] = figures.exact_mosaic_row(Path(P["endpoints"].format(dataset=ds)), [p.steps for p in run.points],
                                                 lambda s: spacing.indices(cfg.diffusion.T, s, sp)[0],
                                                 run.sample.seed, cfg.mosaic_seeds)
    written = figures.run(Path(P["tables"]) / "runs.csv", mosaic, Path(a.out), mosaic_seeds=cfg.mosaic_seeds,
                          mosaic_exact=exact)
    print(f"figures: {len(written)} files -> {a.out}")


# --- tooling commands -----------------------------------------------------------------------

def cmd_validate(cfg: Config, a) -> None:
    n = sum(len(r.points) for r in cfg.runs.values())
    print(f"ok: preset {cfg.preset!r}, datasets {list(cfg.runs)}, {n} grid points")
    if a.points:
        for ds, run in cfg.runs.items():
            for p in run.points:
                print(f"{ds}\t{p.name}")


def cmd_dvc_yaml(cfg: Config, a) -> None:
    from pipeline import dag
    from pipeline.util import files

    files.write_text(a.out, dag.render_dvc_yaml(cfg))
    print(f"dvc-yaml: {len(dag.jobs(cfg))} stages (preset {cfg.preset}) -> {a.out}")


def cmd_reconcile(cfg: Config, a) -> None:
    from pipeline import dag

    jobs = dag.jobs(cfg)
    n = dag.reconcile_with_dvc(cfg, jobs)
    print(f"reconcile: {n} of {len(jobs)} jobs have outputs DVC vouches for (file times set in DAG order)")


def cmd_run_all(cfg: Config, a) -> int:
    """Every job of the DAG in order, without Snakemake or DVC (pipeline/runner.py)."""
    from pipeline import dag, runner
    from pipeline.util import files

    global_args = ["--params", a.params, "--preset", cfg.preset] + [x for kv in a.set for x in ("--set", kv)]
    deadline = None if a.deadline_s is None else time.monotonic() + a.deadline_s
    say = lambda s: print(f"run-all: {s}", flush=True)  # noqa: E731
    jobs = dag.jobs(cfg)
    outcomes = runner.run(jobs, lambda job: runner.command(job, global_args), deadline=deadline, force=a.force,
                          keep_going=not a.stop_on_error, say=say)
    if a.score_partial_s:
        outcomes += runner.score_partial(jobs, outcomes, global_args, budget_s=a.score_partial_s, say=say)
    table = runner.report(outcomes)
    if a.report:
        files.write_text(a.report, table)
    print(table.rsplit("\n\n", 1)[-1].strip())
    return 0 if all(o.status in ("done", "up to date") for o in outcomes) else 1


def cmd_preset(cfg: Config, a, params_path: Path) -> None:
    """Switch both engines: set `preset:` in params.yaml (comments kept) and regenerate dvc.yaml."""
    from pipeline import config, dag
    from pipeline.util import files

    text = params_path.read_text()
    if not re.search(r"^preset:.*$", text, flags=re.M):
        raise ConfigError(f"{params_path}: no top-level `preset:` line to switch")
    new_cfg = config.load(params_path, preset=a.name)  # validate before touching anything
    files.write_text(params_path, re.sub(r"^preset:[ \t]*[^\s#]*", f"preset: {a.name}", text, count=1, flags=re.M))
    files.write_text(params_path.parent / "dvc.yaml", dag.render_dvc_yaml(new_cfg))
    print(f"preset: {a.name} ({len(dag.jobs(new_cfg))} jobs); params.yaml and dvc.yaml updated")


def cmd_convert_inception(cfg, a) -> None:
    from pipeline.stages import inception_convert

    inception_convert.convert_inception(Path(a.torchscript), Path(a.out))
    print(f"convert-inception: {a.torchscript} -> {a.out}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.split("\n\n")[1].strip())
    p.add_argument("--params", default="params.yaml", help="configuration file (default: params.yaml)")
    p.add_argument("--preset", default=None, help="run presets/<NAME>.yaml, under params.yaml's own changes (default: the `preset:` key of params.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one value, e.g. --set train.steps=100 (repeatable)")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")

    def stage(name, help_, **kw):
        s = sub.add_parser(name, help=help_, description=help_)
        s.add_argument("--log", help="also write this command's output to this file")
        return s

    s = stage("prepare-data", "Load a data set, check it, write images.npz + manifest.json.")
    s.add_argument("--dataset", required=True)
    s.add_argument("--out", required=True, help="output folder")
    s = stage("train", "Train the eps-prediction U-Net (or import a pretrained one); resumes from build/<preset>/resume/.")
    s.add_argument("--dataset", required=True)
    s.add_argument("--data", required=True, help="prepare-data output folder")
    s.add_argument("--out", required=True, help="output folder: unet.safetensors, unet.json, loss.csv, loss.png")
    s = stage("train-classifier", "Train the small classifier whose features define the `classifier` FID space.")
    s.add_argument("--dataset", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True, help="classifier .safetensors (a .json sidecar is written beside it)")
    s = stage("ref-stats", "Feature statistics of the training split, computed once per data set and feature space.")
    s.add_argument("--dataset", required=True)
    s.add_argument("--features", required=True, help="inception | classifier")
    s.add_argument("--data", required=True)
    s.add_argument("--classifier", help="classifier weights (for --features classifier)")
    s.add_argument("--out", required=True, help="statistics .npz (a .json sidecar is written beside it)")
    s = stage("sample", "Sample grid points: per point N images, a grid PNG and a run record (NFE, wall s, img/s, hardware).")
    s.add_argument("--dataset", required=True)
    s.add_argument("--point", required=True, action="append",
                   help="grid point, e.g. ddim-s10-uniform-eta0 or f-pndm-s20-uniform; repeat it to sample several in one process")
    s.add_argument("--data", required=True, help="prepare-data output folder (manifest)")
    s.add_argument("--model", help="checkpoint from the train stage (not for the gaussian data set)")
    s.add_argument("--out", required=True, help="the data set's runs folder: each point writes OUT/<point>/{samples.npz, grid.png, record.json}")
    s.add_argument("--exact-map", help="the exact-map stage's endpoints.npz (gaussian, gmm): records each deterministic point's pathwise RMS error")
    s = stage("exact-map", "Exact probability-flow endpoints of the fixed latents, per first timestep (data sets with an exact score).")
    s.add_argument("--dataset", required=True)
    s.add_argument("--data", required=True, help="prepare-data output folder (manifest; a gmm's mixture)")
    s.add_argument("--out", required=True, help="endpoints .npz (a .json summary is written beside it)")
    s = stage("fid", "FID and KID of grid points' samples against the reference statistics.")
    s.add_argument("--dataset", required=True)
    s.add_argument("--point", required=True, action="append", help="grid point; repeat it to evaluate several in one process")
    s.add_argument("--features", required=True, help="inception | classifier | exact (gaussian)")
    s.add_argument("--data", required=True)
    s.add_argument("--runs", required=True, help="the data set's runs folder: reads RUNS/<point>/samples.npz, writes RUNS/<point>/fid-<features>.json")
    s.add_argument("--stats", help="ref-stats output (not for the gaussian data set)")
    s.add_argument("--classifier")
    s = stage("aggregate", "Run records -> runs.csv, paper-layout tables (Markdown, LaTeX), claims, metrics.json.")
    s.add_argument("--out", required=True, help="results folder, e.g. results/embedded")
    s.add_argument("--partial", action="store_true",
                   help="aggregate the grid points whose records are all there and list the others as unfinished "
                        "in summary.md (a long run in progress); without it a missing record is an error. Its "
                        "outputs look up to date to Snakemake: finish the run with `snakemake --cores all "
                        "--forcerun aggregate figures`")
    s = stage("figures", "Seaborn figures (FID vs steps / NFE / wall-clock / training steps) and sample mosaics, PNG + PDF.")
    s.add_argument("--out", required=True)
    s.add_argument("--partial", action="store_true", help="mosaics of the points sampled so far (after aggregate --partial)")

    s = sub.add_parser("validate", help="Validate the configuration and print the grid.")
    s.add_argument("--points", action="store_true", help="list every grid point")
    sub.add_parser("reconcile", help="After dvc repro, checkout or pull: give the outputs DVC vouches for "
                   "file times in DAG order, so that Snakemake finds nothing to redo (prints how many jobs).")
    s = sub.add_parser("run-all", help="Run every job of the DAG in order, each as its own process, without "
                       "Snakemake or DVC (a machine that has neither): jobs whose outputs are newer than their "
                       "inputs are skipped, a failed job skips only what needs it; exit 1 unless every job is done.")
    s.add_argument("--deadline-s", type=float, default=None,
                   help="start no job after this many seconds and stop the one still running then")
    s.add_argument("--score-partial-s", type=float, default=0.0,
                   help="after a deadline stopped a data set's sample job (run.job_per: dataset), spend up to "
                        "this many seconds scoring the points it finished (then `aggregate --partial`)")
    s.add_argument("--force", action="store_true", help="rerun jobs whose outputs are up to date")
    s.add_argument("--stop-on-error", action="store_true", help="run nothing after the first failed job")
    s.add_argument("--report", help="write the table of jobs and outcomes (Markdown) to this file")
    s = sub.add_parser("dvc-yaml", help="Write dvc.yaml generated from the configuration.")
    s.add_argument("--out", default="dvc.yaml")
    s = sub.add_parser("preset", help="Switch the preset for both engines: edit `preset:` in params.yaml and regenerate dvc.yaml.")
    s.add_argument("name", help="embedded | gpu | paper | any presets/<name>.yaml")
    s = sub.add_parser("convert-inception", help="Convert the StyleGAN2-ADA/EDM TorchScript FID Inception into torch-fidelity weights.")
    s.add_argument("torchscript", help="inception-2015-12-05.pt")
    s.add_argument("--out", required=True)
    return p


def main(argv=None) -> int:
    from pipeline import config

    a = build_parser().parse_args(argv)
    log = None
    if getattr(a, "log", None):
        Path(a.log).parent.mkdir(parents=True, exist_ok=True)
        log = open(a.log, "w", encoding="utf-8")
        sys.stdout, sys.stderr = _Tee(sys.__stdout__, log), _Tee(sys.__stderr__, log)
    t0 = time.perf_counter()
    try:
        if a.command == "convert-inception":
            cmd_convert_inception(None, a)
            return 0
        cfg = config.load(a.params, preset=a.preset, sets=a.set)
        if a.command == "prepare-data":
            # every job chain starts here: a download the run cannot make fails before any compute
            # (the later stages skip the probe and its imports at start-up)
            config.preflight(cfg)
        if a.command == "preset":
            cmd_preset(cfg, a, Path(a.params))
            return 0
        handler = {
            "prepare-data": cmd_prepare_data, "train": cmd_train, "train-classifier": cmd_train_classifier,
            "ref-stats": cmd_ref_stats, "exact-map": cmd_exact_map, "sample": cmd_sample, "fid": cmd_fid, "aggregate": cmd_aggregate,
            "figures": cmd_figures, "validate": cmd_validate, "dvc-yaml": cmd_dvc_yaml, "reconcile": cmd_reconcile,
            "run-all": cmd_run_all,
        }[a.command]
        rc = handler(cfg, a)
        if a.command == "run-all":
            return rc
        if a.command in STAGES:
            print(f"{a.command}: done in {time.perf_counter() - t0:.1f} s")
        return 0
    except (ValueError, FileNotFoundError) as e:  # ConfigError, DataError, NonFiniteError are ValueErrors
        if os.environ.get("DDBENCH_DEBUG"):
            raise
        msg = str(e).strip() or type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    finally:
        if log is not None:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
            log.close()


if __name__ == "__main__":
    raise SystemExit(main())
