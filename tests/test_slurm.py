"""A real SLURM: the one-node cluster of scripts/local_slurm.sh (slurmctld, slurmd, slurmdbd,
munged, mariadbd from Debian's packages) runs the tiny project through profiles/slurm/ and the
Snakemake executor plugin. Every job goes through sbatch (sacct lists it with its rule), the
results equal a local run's, a job cancelled with scancel is redone without partial files, GPU
rules ask SLURM for GPUs, and bad partitions, accounts or a missing plugin fail loudly."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from configs import write_config
from test_workflow import REPO, make_project, planned_jobs, sh, tiny_params, tmp_leftovers

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
SCRIPT = REPO / "scripts/local_slurm.sh"
DAEMONS = ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged")
PROFILE = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
TRAIN_LOG = "logs/embedded/train/mnist-embedded.log"


def slurm_params() -> dict:
    """The tiny config with one grid point per data set (stochastic DDIM, eta = 1): every rule
    still runs, and each SLURM job costs three Python start-ups (snakemake, the job step's
    snakemake, the stage), so fewer jobs keep the test short."""
    p = tiny_params("point")  # one job per grid point, as the cluster presets run
    p["run"]["datasets"] = ["mnist-embedded", "gaussian"]
    p["grid"] = {"ddim_table": {"steps": [2], "eta": [1.0], "sigma_hat": False, "spacings": ["uniform"]}, "mosaic_seeds": 4}
    return p


def local_profile(**resources) -> dict:
    """profiles/slurm/config.yaml fitted to the one-node cluster: partition `local`, no GPU
    (the node has none), 1 CPU and 1 GB per job, and the first status check after 1 s instead
    of 40. Everything else (retries, rerun triggers, ...) is the real profile's."""
    prof = yaml.safe_load(yaml.safe_dump(PROFILE))
    local = {"slurm_partition": "local", "gpu": 0, "cpus_per_task": 1, "mem_mb": 1000, "runtime": 10, **resources}
    for res in [prof["default-resources"], *prof["set-resources"].values()]:
        res.update({k: v for k, v in local.items() if k in res or k in resources})
    prof.update({"jobs": 2, "slurm-init-seconds-before-status-checks": 1})
    return prof


def project(root: Path, profile: dict | None = None) -> Path:
    make_project(root)
    write_config(root, slurm_params())
    sh([sys.executable, "-m", "pipeline", "dvc-yaml"], root)
    (root / "profiles/slurm-local").mkdir()
    (root / "profiles/slurm-local/config.yaml").write_text(yaml.safe_dump(profile or local_profile(), sort_keys=False))
    sh("git add -A && git commit -qm 'one point per data set'", root)
    return root


def env_of(root) -> dict:
    return {**os.environ, "DDBENCH_QUIET": "1", "PYTHONPATH": str(root)}


def slurm(*args, timeout=60) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, check=True, timeout=timeout).stdout


def expected_comments(root) -> set:
    """The SLURM job comment the plugin gives each planned job: rule_<rule>_wildcards_<values>
    (`all` has no command and runs in the Snakemake process itself)."""
    out = sh(["snakemake", "-n", "--cores", "1"], root).stdout
    comments = set()
    for rule, body in re.findall(r"^rule (\w+):\n((?:    .*\n)*)", out, flags=re.M):
        if rule == "all":
            continue
        w = re.search(r"^    wildcards: (.+)$", body, flags=re.M)
        values = [kv.split("=", 1)[1] for kv in w.group(1).split(", ")] if w else []
        comments.add(f"rule_{rule}" + (f"_wildcards_{'_'.join(values)}" if values else ""))
    return comments


def sacct_rows(run_uuid) -> list:
    """(job id, comment, state) of every job of one Snakemake run: the plugin names each job by
    the run's id, and slurmdbd keeps the comment (AccountingStoreFlags=job_comment)."""
    out = slurm("sacct", "-X", "-n", "-P", "-S", "now-1day", "--name", run_uuid, "-o", "JobIDRaw,Comment,State")
    return [tuple(line.split("|")) for line in out.splitlines() if line]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The one-node cluster, up for this module and down after it."""
    import importlib.util

    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("the Snakemake SLURM executor plugin is not installed: pip install -e \".[slurm]\" "
                    "(the `test` extra installs it on Python >= 3.11)")
    if os.geteuid() != 0:
        pytest.skip("a local SLURM needs root (apt-get installs it; slurmd starts jobs as their user)")
    installed = all(shutil.which(c) for c in (*DAEMONS, "sbatch", "sacct"))
    if not installed and not shutil.which("apt-get"):
        pytest.skip("SLURM is not installed and there is no apt-get to install it")
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "DDBENCH_SLURM_DIR": str(state)}
    try:
        up = subprocess.run([str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=900)
        assert up.returncode == 0, f"scripts/local_slurm.sh up failed:\n{up.stdout}\n{up.stderr}"
        yield state
    finally:
        subprocess.run([str(SCRIPT), "down"], env=env, capture_output=True, timeout=300)
        shutil.rmtree(state / "db", ignore_errors=True)  # the MariaDB files are about 100 MB


def cancel_training_mid_run(root, deadline, snakemake_proc) -> tuple:
    """scancel the running `train` job as soon as its stage has started (its log exists): SLURM
    sends SIGTERM, then SIGKILL after KillWait. Returns (SLURM job id, comment). Fails at once,
    with Snakemake's output, if Snakemake has exited before the job ran."""
    while time.time() < deadline:
        if snakemake_proc.poll() is not None:
            raise AssertionError(f"snakemake exited ({snakemake_proc.returncode}) before the train job ran:\n"
                                 + (root / "snakemake.out").read_text()[-4000:])
        for line in slurm("squeue", "-h", "-t", "RUNNING", "-o", "%i|%k").splitlines():
            jobid, comment = line.split("|", 1)
            if comment == "rule_train_wildcards_mnist-embedded" and (root / TRAIN_LOG).exists():
                slurm("scancel", jobid)
                return jobid, comment
        time.sleep(0.5)
    raise AssertionError("the train job never ran")


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """The tiny project run twice: through SLURM (with its training job cancelled mid-run) and
    locally with `snakemake --cores 2`, at the same time."""
    root = project(tmp_path_factory.mktemp("slurm-run") / "proj")
    local = project(tmp_path_factory.mktemp("local-run") / "proj")
    expected = expected_comments(root)
    log = root / "snakemake.out"
    t0 = time.time()
    with open(log, "w") as out, open(local / "snakemake.out", "w") as local_out:
        procs = [
            subprocess.Popen(["snakemake", "--profile", "profiles/slurm-local"], cwd=root, env=env_of(root),
                             stdout=out, stderr=subprocess.STDOUT, start_new_session=True),
            subprocess.Popen(["snakemake", "--cores", "2"], cwd=local, env=env_of(local),
                             stdout=local_out, stderr=subprocess.STDOUT, start_new_session=True),
        ]
        try:
            cancelled = cancel_training_mid_run(root, t0 + 900, procs[0])
            rcs = [p.wait(timeout=1800) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
    text = log.read_text()
    assert rcs == [0, 0], f"snakemake exit statuses {rcs}:\n{text[-6000:]}\n{(local / 'snakemake.out').read_text()[-3000:]}"
    run_uuid = re.search(r"^SLURM run ID: (\S+)$", text, flags=re.M).group(1)
    return dict(root=root, local=local, log=text, expected=expected, cancelled=cancelled, run_uuid=run_uuid,
                wall_s=time.time() - t0)


def test_every_job_goes_through_sbatch_and_sacct_lists_it_with_its_rule(runs):
    rows = sacct_rows(runs["run_uuid"])
    assert {c for _, c, s in rows if s == "COMPLETED"} == runs["expected"]
    assert {r.split("_wildcards_")[0] for r in runs["expected"]} == {
        "rule_prepare_data", "rule_train", "rule_train_classifier", "rule_ref_stats", "rule_exact_map", "rule_sample",
        "rule_fid", "rule_aggregate", "rule_figures"}
    # Only the cancelled job did not complete; Snakemake submitted exactly the jobs sacct lists.
    assert [(j, c, s.split()[0]) for j, c, s in rows if s != "COMPLETED"] == [(*runs["cancelled"], "CANCELLED")]
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", runs["log"])
    assert sorted(submitted, key=int) == sorted((j for j, _, _ in rows), key=int)


def test_results_through_slurm_equal_a_local_run(runs):
    root, local = runs["root"], runs["local"]
    samples = sorted(p.relative_to(local) for p in (local / "build").rglob("samples.npz"))
    assert len(samples) == 2
    for rel in samples:
        a, b = np.load(root / rel), np.load(local / rel)
        assert a.files == b.files, rel
        for k in a.files:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), (rel, k)
    # Training was cancelled mid-run and redone (resuming from its checkpoint, if it got that far): same weights.
    from safetensors.numpy import load_file

    w, v = (load_file(r / "build/embedded/models/mnist-embedded/unet.safetensors") for r in (root, local))
    assert w.keys() == v.keys() and all(np.array_equal(w[k], v[k]) for k in w)
    assert (root / "results/embedded/tables/runs.csv").exists() and (root / "results/embedded/metrics.json").exists()


def test_a_job_cancelled_with_scancel_is_resubmitted_and_leaves_no_partial_output(runs):
    root = runs["root"]
    jobid, comment = runs["cancelled"]
    again = [j for j, c, s in sacct_rows(runs["run_uuid"]) if c == comment and s == "COMPLETED"]
    assert len(again) == 1 and int(again[0]) > int(jobid)  # the profile's `retries: 1` resubmitted it
    assert f"SLURM-job '{jobid}' failed, SLURM status is: 'CANCELLED'" in runs["log"]
    assert not tmp_leftovers(root)
    assert planned_jobs(root) == []


def test_gpu_rules_ask_slurm_for_gpus_and_cpu_rules_do_not(runs, tmp_path):
    """The unmodified profiles/slurm against the local cluster, which has neither its `gpu` nor
    its `cpu` partition: every sbatch fails at once, and the plugin's error shows the command."""
    root = tmp_path / "proj"
    shutil.copytree(runs["root"], root, symlinks=True)
    targets = ["build/embedded/runs/gaussian/ddim-s2-uniform-eta1/samples.npz",
               "build/embedded/data/mnist-embedded/manifest.json"]  # independent jobs: both are submitted
    r = sh(["snakemake", "--profile", "profiles/slurm", "--force", "--keep-going", "--retries", "0", *targets],
           root, check=False, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    sbatch = {rule: call for call, rule in re.findall(r"(sbatch --parsable .*?--comment rule_(\w+?)_wildcards_.*?) --wrap", out)}
    assert set(sbatch) == {"sample", "prepare_data"}, out[-4000:]
    gpu = PROFILE["set-resources"]["sample"]
    assert f"-p {gpu['slurm_partition']}" in sbatch["sample"] and f"--gpus={gpu['gpu']}" in sbatch["sample"]
    assert f"--cpus-per-task={gpu['cpus_per_task']}" in sbatch["sample"] and f"--mem {gpu['mem_mb']}" in sbatch["sample"]
    cpu = PROFILE["default-resources"]
    assert f"-p {cpu['slurm_partition']}" in sbatch["prepare_data"] and "--gpus" not in sbatch["prepare_data"]
    assert "Invalid partition name specified" in out


def test_a_partition_that_does_not_exist_fails_with_slurms_message(cluster, tmp_path):
    root = project(tmp_path / "proj", local_profile(slurm_partition="no-such-partition"))
    t0 = time.time()
    r = sh(["snakemake", "--profile", "profiles/slurm-local"], root, check=False, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and time.time() - t0 < 300
    assert "sbatch: error: invalid partition specified: no-such-partition" in out, out[-3000:]
    assert "Batch job submission failed: Invalid partition name specified" in out


def test_an_account_that_does_not_exist_fails_with_the_accounts_slurm_knows(cluster, tmp_path):
    root = project(tmp_path / "proj", local_profile(slurm_account="no-such-account"))
    r = sh(["snakemake", "--profile", "profiles/slurm-local"], root, check=False, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert re.search(r"account no-such-account appears to be invalid\. Available accounts:\s*root", out), out[-3000:]


def test_a_missing_executor_plugin_is_a_short_error_and_the_profile_says_how_to_install_it(tmp_path):
    """Snakemake finds executor plugins by module name; hiding the slurm ones is what a machine
    without the plugin looks like. Snakemake stops before reading the Snakefile (so no check
    there could speak first), with one line naming the executor; profiles/slurm/config.yaml
    and the README say how to install it."""
    hide = ("import pkgutil, sys; _it = pkgutil.iter_modules; pkgutil.iter_modules = lambda *a, **k: "
            "(m for m in _it(*a, **k) if not m.name.startswith('snakemake_executor_plugin_slurm')); "
            "sys.argv[0] = 'snakemake'; from snakemake.cli import main; main()")
    r = subprocess.run([sys.executable, "-c", hide, "--profile", str(REPO / "profiles/slurm"), "-n"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("snakemake: error: argument --executor/-e: invalid choice: 'slurm'"), last
    install = 'pip install -e ".[slurm]"'
    assert install in (REPO / "profiles/slurm/config.yaml").read_text()
    assert install in (REPO / "README.md").read_text() and "invalid choice: 'slurm'" in (REPO / "README.md").read_text()


def test_the_cluster_goes_down_and_leaves_no_daemon(cluster):
    r = subprocess.run([str(SCRIPT), "down"], env={**os.environ, "DDBENCH_SLURM_DIR": str(cluster)},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    left = {d: subprocess.run(["pgrep", "-x", d], capture_output=True, text=True).stdout.split()
            for d in (*DAEMONS, "slurmstepd")}
    assert not any(left.values()), left
    assert not Path("/etc/slurm/slurm.conf").exists()
