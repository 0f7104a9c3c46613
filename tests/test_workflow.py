"""Real Snakemake and real DVC on a tiny configuration: both engines describe one DAG,
run it end to end, never fight over finished outputs, and survive being killed."""
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from configs import preset_params, write_config

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
COPY = ["pipeline", "Snakefile", "presets", "profiles", "report", "pyproject.toml",
        "models/mnist-cpu/unet.safetensors", "models/mnist-cpu/unet.json"]  # the shipped model mnist-cpu samples


def tiny_params(job_per: str | None = None) -> dict:
    """The embedded preset, shrunk; `job_per` switches the sample/fid job granularity (run.job_per:
    the embedded preset's `dataset` unless given)."""
    p = preset_params("embedded")
    if job_per is not None:
        p["run"]["job_per"] = job_per
    p["datasets"]["mnist-embedded"]["limit"] = 256
    p["datasets"]["gaussian"]["n"] = 400
    p["train"].update(steps=8, batch_size=16, warmup_steps=2, checkpoint_every=4, log_every=2)
    p["classifier"].update(steps=10, batch_size=32)
    p["sample"].update(n_images=12, batch_size=12, grid_images=8)
    p["fid"].update(batch_size=16)
    p["overrides"]["gaussian"]["sample"].update(n_images=200, batch_size=200)
    p["overrides"]["gaussian"].pop("grid", None)
    p["overrides"]["mnist-embedded"].pop("grid", None)  # every data set on the tiny grid below
    p["overrides"]["mnist-cpu"].pop("grid", None)
    p["datasets"]["mnist-gmm"].update(components=3, rank=8, n=100)
    p["overrides"]["mnist-gmm"] = {"sample": {"n_images": 20, "batch_size": 20, "path_n": 10}}
    p["grid"] = {
        "ddim_table": {"steps": [2, 4], "eta": [0.0, 1.0], "sigma_hat": False, "spacings": ["uniform"]},
        "pndm_table": {"samplers": ["s-pndm", "f-pndm"], "steps": [5], "spacings": ["uniform"]},
        "mosaic_seeds": 4,
    }
    return p


def sh(cmd, cwd, check=True, env=None, **kw):
    env = {**(env or os.environ), "DDBENCH_QUIET": "1", "PYTHONPATH": str(cwd)}
    r = subprocess.run(cmd, cwd=cwd, shell=isinstance(cmd, str), capture_output=True, text=True, env=env, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    return r


def make_project(root: Path, job_per: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in COPY:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, root / name)
    write_config(root, tiny_params(job_per))
    (root / ".gitignore").write_text("/build/\n/logs/\n/.snakemake/\n__pycache__/\n")
    sh([sys.executable, "-m", "pipeline", "dvc-yaml"], root)
    sh("git init -q && git config user.email t@t && git config user.name t && dvc init -q && dvc config core.analytics false "
       "&& git add -A && git commit -qm init", root)
    return root


def snakemake(root, *args, check=True):
    return sh(["snakemake", "--cores", "2", *args], root, check=check)


def planned_jobs(root) -> list:
    """Rules Snakemake would run now (dry run)."""
    r = snakemake(root, "-n")
    if "Nothing to be done" in r.stdout + r.stderr:
        return []
    return re.findall(r"^rule (\w+):", r.stdout, flags=re.M)


def stage_of(rule: str) -> str:
    """A rule's stage: with run.job_per: dataset the sample and fid rules are one per data set
    (sample_<dataset>, fid_<dataset>_<features>)."""
    return rule.split("_")[0] if rule.startswith(("sample_", "fid_")) else rule


def dvc_cmds(root) -> dict:
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return stages


def tmp_leftovers(root):
    return [p for d in ("build", "results") if (root / d).exists() for p in (root / d).rglob("*.tmp*")]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One Snakemake run of the tiny DAG, shared by the tests that inspect its results."""
    root = make_project(tmp_path_factory.mktemp("snake") / "proj")
    snakemake(root)
    return root


@pytest.mark.parametrize("job_per", ["dataset", "point"])
def test_snakefile_and_dvc_yaml_run_the_same_commands_on_the_same_files(tmp_path, job_per):
    root = make_project(tmp_path / "proj", job_per)
    r = snakemake(root, "-n", "-p", "--forceall")
    lines = [l.strip().removeprefix("Shell command:").strip() for l in r.stdout.splitlines()]
    snake_cmds = {" ".join(l.split()) for l in lines if l.startswith("python -m pipeline")}
    stages = dvc_cmds(root)
    assert snake_cmds == {" ".join(s["cmd"].split()) for s in stages.values()}
    snake_outs = set()
    for block in re.findall(r"^\s+output: (.+)$", r.stdout, flags=re.M):
        snake_outs |= {o.strip() for o in block.split(",")}
    dvc_outs = set()
    for s in stages.values():
        for o in s.get("outs", []) + s.get("metrics", []):
            dvc_outs.add(o if isinstance(o, str) else next(iter(o)))
    assert snake_outs == dvc_outs
    from pipeline import dag

    for name, s in stages.items():
        assert "pipeline" not in s["deps"] and "pipeline/" not in s["deps"], name  # own modules only
        stage = max((st for st in dag.STAGE_ENTRY if name == st or name.startswith(st + "-")), key=len)
        assert [d for d in s["deps"] if d.startswith("pipeline/")] == dag.stage_modules(stage), name
        assert s["params"], name


@pytest.mark.slow  # 20 s a case: CI tier
@pytest.mark.parametrize("heavy, want", [(1, 1), ("all", 2), (8, 2)])
def test_heavy_jobs_get_the_threads_run_heavy_threads_says(tmp_path, heavy, want):
    """run.heavy_threads: train, train-classifier and exact-map take min(n, --cores) threads (`all`:
    every core), so on 2 cores 1 lets them run beside the single-threaded sample and fid jobs."""
    root = make_project(tmp_path / "proj")
    p = yaml.safe_load((root / "params.yaml").read_text())
    p["run"]["heavy_threads"] = heavy  # the user's own change in params.yaml, over the preset
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    out = snakemake(root, "-n", "--forceall").stdout
    threads = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        m = re.match(r"(?:local)?rule (\w+):", block)
        if m:
            t = re.search(r"^\s+threads: (\d+)", block, flags=re.M)
            threads.setdefault(m[1], set()).add(int(t[1]) if t else 1)
    assert {rule: threads[rule] for rule in ("train", "train_classifier", "exact_map")} == \
        {"train": {want}, "train_classifier": {want}, "exact_map": {want}}
    assert all(t == {1} for rule, t in threads.items() if rule.startswith(("sample", "fid", "ref_stats")))


def test_a_code_edit_reruns_exactly_the_stages_that_run_that_code_in_both_engines(built, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(built, root, symlinks=True)
    with open(root / "pipeline/report/figures.py", "a") as f:
        f.write("\n# an edit\n")
    assert set(planned_jobs(root)) - {"all"} == {"figures"}  # `all` is the target rule, no work
    changed = yaml.safe_load(sh(["dvc", "status", "--json"], root).stdout or "{}")
    assert set(changed) == {"figures"}, changed
    with open(root / "pipeline/core/samplers/ddim.py", "a") as f:
        f.write("\n# an edit\n")
    jobs = {stage_of(r) for r in planned_jobs(root)}
    assert {"sample", "fid", "aggregate", "figures"} <= jobs
    assert not jobs & {"prepare_data", "train", "train_classifier", "ref_stats"}


def test_snakemake_runs_the_tiny_pipeline_end_to_end(built):
    runs = pd.read_csv(built / "results/embedded/tables/runs.csv")
    assert set(runs["dataset"]) == {"mnist-embedded", "mnist-cpu", "gaussian", "mnist-gmm"}
    # 6 grid points per data set: one feature space each, the mixture two (classifier and exact)
    assert len(runs) == 6 + 6 + 6 + 2 * 6
    # the shipped model (data_of: mnist-embedded) is named as such, on the same reference statistics
    cpu, own = runs[runs.dataset == "mnist-cpu"], runs[runs.dataset == "mnist-embedded"]
    assert set(cpu.model_shipped_from) == {"models/mnist-cpu/unet.safetensors"} and set(cpu.model_train_steps) == {6000}
    assert own.model_shipped_from.isna().all() and set(own.model_train_steps) == {8}
    assert set(cpu.ref_stats_id) == set(own.ref_stats_id)
    table = (built / "results/embedded/tables/ddim_table1-mnist-cpu-classifier-uniform.md").read_text()
    assert "model: U-Net, 6,000 training steps (shipped checkpoint models/mnist-cpu/unet.safetensors)" in table
    assert (built / "results/embedded/figures/fid_vs_training-mnist-embedded-classifier.png").exists()
    gm = runs[(runs.dataset == "mnist-gmm") & (runs.features == "exact")]
    deterministic = gm.sampler.isin(["s-pndm", "f-pndm"]) | ((gm.sampler == "ddim") & (gm.eta == 0))
    assert gm.loc[deterministic, "path_rms"].notna().all() and gm.loc[~deterministic, "path_rms"].isna().all()
    assert list((built / "results/embedded/tables").glob("pndm-mnist-gmm-path-rms-*.md"))
    assert runs["fid"].notna().all() and (runs["nfe"] > 0).all()
    for f in ("s-pndm", "f-pndm"):
        assert set(runs.loc[runs.sampler == f, "nfe"]) == {__import__("pipeline.core.samplers", fromlist=["nfe"]).nfe(f, 5)}
    figs = list((built / "results/embedded/figures").glob("*.png"))
    assert figs and list((built / "results/embedded/figures").glob("*.pdf"))
    assert (built / "results/embedded/metrics.json").exists()
    assert not tmp_leftovers(built)


def test_after_snakemake_dvc_finds_nothing_to_redo(built):
    r = sh(["dvc", "status"], built)
    assert "Data and pipelines are up to date" in r.stdout, r.stdout
    r = sh(["dvc", "repro"], built)
    assert "Running stage" not in r.stdout, r.stdout


def test_dvc_metrics_and_plots_work(built):
    r = sh(["dvc", "metrics", "show"], built)
    assert "mnist-embedded" in r.stdout or "gaussian" in r.stdout
    sh(["dvc", "plots", "show", "-o", "plots_html"], built)
    assert (built / "plots_html" / "index.html").exists()


def test_snakemake_report_is_one_self_contained_html(built):
    sh("snakemake --report report.html", built)  # verbatim from the README: no --cores
    html = (built / "report.html").read_text(errors="replace")
    assert len(html) > 10_000 and "runs.csv" in html


def test_a_param_edit_reruns_exactly_the_affected_jobs(built, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(built, root, symlinks=True)
    p = yaml.safe_load((root / "params.yaml").read_text())
    p["sample"]["n_images"] = 10
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    jobs = {stage_of(r) for r in planned_jobs(root)}
    assert {"sample", "fid", "aggregate", "figures"} <= jobs
    assert not jobs & {"prepare_data", "train", "train_classifier", "ref_stats"}
    changed = sh(["dvc", "status"], root).stdout
    assert "sample-mnist-embedded:" in changed
    assert "train-mnist-embedded:" not in changed


def test_registering_a_sampler_reruns_only_sampling_and_what_follows_in_both_engines(built, tmp_path):
    """A new registry entry changes the sampler registry's file, which config validation reads in
    every stage: only the stages that run samplers (sample) and what follows them may rerun."""
    root = tmp_path / "copy"
    shutil.copytree(built, root, symlinks=True)
    registry = root / "pipeline/core/samplers/__init__.py"
    registry.write_text(registry.read_text()
                        + '\nregister("ddim-again", "pipeline.core.samplers.ddim:ddim", lambda s: s, options=(ETA,))\n')
    allowed = {"sample", "fid", "aggregate", "figures"}
    jobs = {stage_of(r) for r in planned_jobs(root)} - {"all"}
    assert "sample" in jobs and jobs <= allowed, jobs
    changed = {name.rstrip(":") for name in re.findall(r"^(\S+):$", sh(["dvc", "status"], root).stdout, flags=re.M)}
    assert changed and {n.split("-")[0] for n in changed} <= allowed, changed


def test_a_replaced_shipped_checkpoint_reruns_its_import_in_both_engines(built, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(built, root, symlinks=True)
    ckpt = root / "models/mnist-cpu/unet.safetensors"
    data = bytearray(ckpt.read_bytes())
    data[-16:] = bytes(b ^ 0xFF for b in data[-16:])
    ckpt.write_bytes(bytes(data))
    assert "train" in {stage_of(r) for r in planned_jobs(root)}
    assert "train-mnist-cpu:" in sh(["dvc", "status"], root).stdout


def test_deleted_outputs_are_remade(built, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(built, root, symlinks=True)
    shutil.rmtree(root / "build/embedded/runs/gaussian")
    assert {"sample", "fid"} <= {stage_of(r) for r in planned_jobs(root)}


def test_snakemake_runs_without_dvc_on_the_path(built, tmp_path):
    """Snakemake alone (DVC not installed) plans and checks a finished run; reconciling with DVC
    is skipped, not a FileNotFoundError."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("snakemake", "python", "python3"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "DDBENCH_QUIET": "1", "PYTHONPATH": str(built)}
    assert shutil.which("dvc", path=env["PATH"]) is None
    r = subprocess.run(["snakemake", "-n", "--cores", "1"], cwd=built, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "FileNotFoundError" not in r.stderr, r.stderr[-3000:]


def test_dvc_repro_then_snakemake_finds_nothing_even_after_checkout(tmp_path):
    root = make_project(tmp_path / "proj")
    sh(["dvc", "repro"], root)
    assert (root / "results/embedded/tables/runs.csv").exists()
    sh([sys.executable, "-m", "pipeline", "reconcile"], root)  # the one explicit step between the engines
    assert planned_jobs(root) == []
    # dvc checkout rewrites files (new mtimes, arbitrary order): still nothing to redo.
    victim = root / "build/embedded/data/mnist-embedded/images.npz"
    victim.unlink()
    sh(["dvc", "checkout", "--force"], root)
    assert victim.exists()
    for p in (root / "build").rglob("*"):
        if p.is_file():
            t = time.time() - random.uniform(0, 3600)
            os.utime(p, (t, t))
    sh([sys.executable, "-m", "pipeline", "reconcile"], root)
    assert planned_jobs(root) == []


def test_reading_the_snakefile_changes_nothing_on_disk(built):
    """A dry run (every Snakefile parse) touches no output: reconciling with DVC is explicit."""
    files = [p for p in (built / "build").rglob("*") if p.is_file()]
    before = {p: p.stat().st_mtime_ns for p in files}
    planned_jobs(built)
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_a_download_the_run_cannot_make_fails_before_the_first_job_in_both_engines(tmp_path):
    """Inception features with fid.inception_weights null, no cached copy and no network: Snakemake
    stops in onstart and `dvc repro` in its first stage, naming the key; no job's output exists."""
    root = tmp_path / "proj"
    root.mkdir()
    p = tiny_params()
    p["fid"].update(features=["inception"], inception_weights=None)
    p["run"]["datasets"] = ["mnist-embedded"]
    make_project(root)
    write_config(root, p)
    sh([sys.executable, "-m", "pipeline", "dvc-yaml"], root)
    # no network: every HTTP(S) request goes to a proxy where nothing listens
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "https_proxy": "http://127.0.0.1:9",
           "http_proxy": "http://127.0.0.1:9", "no_proxy": ""}
    for cmd in (["snakemake", "--cores", "1"], ["dvc", "repro"]):
        r = sh(cmd, root, check=False, env=env)
        out = r.stdout + r.stderr
        assert r.returncode != 0 and "fid.inception_weights: null" in out and "cannot be reached" in out, out[-3000:]
        assert not (root / "build").exists() or not [f for f in (root / "build").rglob("*") if f.is_file()]


def test_killed_run_resumes_without_redoing_finished_jobs_or_leaving_partial_files(tmp_path):
    # One job per grid point (run.job_per: point, as the long presets run): many jobs to kill amid.
    root = make_project(tmp_path / "proj", "point")
    env = {**os.environ, "DDBENCH_QUIET": "1", "PYTHONPATH": str(root)}
    proc = subprocess.Popen("snakemake --cores all", shell=True, cwd=root, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = lambda: list((root / "build/embedded/runs").rglob("record.json"))  # noqa: E731
    deadline = time.time() + 300
    while time.time() < deadline and len(records()) < 2:
        time.sleep(0.5)
    time.sleep(3)  # let a few more jobs finish, and kill others mid-way
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # A hard kill leaves Snakemake's directory lock behind: releasing it is the user's one extra
    # step, run exactly as the README writes it (no --cores).
    sh("snakemake --unlock", root)
    # Jobs Snakemake saw finish must not be planned again; the ones killed mid-way are.
    planned = set()
    for block in re.findall(r"^\s+output: (.+)$", snakemake(root, "-n").stdout, flags=re.M):
        planned |= {root / o.strip() for o in block.split(",")}
    done = {p for p in records() if p not in planned}
    assert done, "the run was killed before any grid point finished"
    assert planned, "the run was killed after it had finished"
    rerun = set()
    r = snakemake(root)
    for block in re.findall(r"^\s+output: (.+)$", r.stdout + r.stderr, flags=re.M):
        rerun |= {root / o.strip() for o in block.split(",")}
    assert (root / "results/embedded/tables/runs.csv").exists()
    assert not done & rerun, f"finished jobs were redone: {sorted(done & rerun)}"
    assert planned <= rerun
    assert not tmp_leftovers(root)


def test_a_dvc_remote_gives_a_fresh_clone_every_result_with_nothing_to_recompute(built, tmp_path):
    """How a team shares results (README): `dvc push` the cached outputs to a remote and commit
    dvc.lock and results/ to git; a teammate's `git clone` + `dvc pull` then has every output,
    and neither `dvc repro` nor (after `python -m pipeline reconcile`) Snakemake finds anything
    to redo."""
    root = tmp_path / "proj"
    shutil.copytree(built, root, symlinks=True)
    store = tmp_path / "store"  # a local folder standing in for s3://bucket/path
    sh(["dvc", "remote", "add", "-d", "store", str(store)], root)
    sh("git add -A && git commit -qm 'results, dvc.lock and the remote'", root)
    sh(["dvc", "push"], root)
    assert not sh(["git", "status", "--porcelain"], root).stdout.strip()
    cached = [next(iter(o)) if isinstance(o, dict) else o
              for s in dvc_cmds(root).values() for o in s.get("outs", []) + s.get("metrics", [])
              if not (isinstance(o, dict) and next(iter(o.values())).get("cache") is False)]
    assert cached and all(o.startswith("build/") for o in cached)

    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(root), str(clone)], tmp_path)
    assert not (clone / "build").exists() and (clone / "results/embedded/tables/runs.csv").exists()
    sh(["dvc", "pull"], clone)
    for o in cached:
        assert (clone / o).read_bytes() == (root / o).read_bytes(), o
    assert "Data and pipelines are up to date" in sh(["dvc", "status"], clone).stdout
    r = sh(["dvc", "repro"], clone)
    assert "Running stage" not in r.stdout, r.stdout
    sh([sys.executable, "-m", "pipeline", "reconcile"], clone)  # pulled files carry no Snakemake metadata
    assert planned_jobs(clone) == []
