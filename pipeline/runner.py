"""`python -m pipeline run-all`: the DAG's jobs one after another, for a machine without Snakemake
or DVC (a lent GPU machine, say).

The jobs, their order and their commands are pipeline/dag.py's `jobs()`, the same list both
engines run; each command runs as its own process, as under Snakemake, with this process's
global options (--params, --preset, --set) in place of the job's own `--preset`, so that a
`--set` reaches every job. What it adds for a run that has one chance:

- **a deadline**: no job starts after it, and a job still running at it is stopped; the jobs
  left are reported as not run (then `aggregate --partial` tables what finished);
- **keep going**: a failed job is reported with its log, and only the jobs that need its
  outputs are skipped;
- **resume**: a job whose outputs all exist and are newer than its inputs is not rerun
  (as `make` decides; `force` reruns everything).

Snakemake remains the engine of record: this runner has no parameter or code triggers (a changed
setting does not rerun a job whose files are newer than its inputs).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from pipeline.dag import Job


@dataclass
class Outcome:
    job: str
    stage: str
    status: str  # done | up to date | failed | stopped at the deadline | not run: ...
    seconds: float = 0.0
    log: Optional[str] = None


def outputs(job: Job) -> list:
    return list(job.outs) + list(job.outs_nocache) + list(job.metrics)


PHASE = {"prepare-data": 0, "train": 1, "train-classifier": 1, "ref-stats": 1, "exact-map": 1,
         "sample": 2, "fid": 2, "aggregate": 3, "figures": 4}


def order(jobs: Sequence[Job]) -> list:
    """The jobs in an order where each comes after the jobs that make its inputs: every data set's
    data first, then every model, classifier and reference, then each data set's samples and FIDs
    together (in run.datasets order), then the tables and figures. Under a deadline this spends
    the time on every data set's models before any grid, and scores each data set's samples
    before sampling the next one."""
    maker = {o: j.name for j in jobs for o in outputs(j)}
    datasets = list(dict.fromkeys(j.dataset for j in jobs if j.dataset is not None))

    def key(ij):
        i, j = ij
        phase = PHASE.get(j.stage, 5)
        group = datasets.index(j.dataset) if phase == 2 and j.dataset in datasets else 0
        return (phase, group, i)

    done, out, pending = set(), [], list(enumerate(jobs))
    while pending:
        ready = [ij for ij in pending if all(d not in maker or maker[d] in done for d in ij[1].deps)]
        if not ready:
            raise ValueError(f"run-all: the DAG has a cycle among {[j.name for _, j in pending]}")
        nxt = min(ready, key=key)
        out.append(nxt[1])
        done.add(nxt[1].name)
        pending.remove(nxt)
    return out


def _mtime(path: Path) -> float:
    """A file's modification time; a folder's is its newest file's."""
    if path.is_dir():
        times = [f.stat().st_mtime for f in path.rglob("*") if f.is_file()]
        return max(times) if times else path.stat().st_mtime
    return path.stat().st_mtime


def up_to_date(job: Job, root: Path = Path(".")) -> bool:
    outs = [root / o for o in outputs(job)]
    if not outs or not all(o.exists() for o in outs):
        return False
    deps = [root / d for d in job.deps if (root / d).exists()]
    return not deps or min(_mtime(o) for o in outs) >= max(_mtime(d) for d in deps)


def command(job: Job, global_args: Sequence[str], python: str = sys.executable) -> list:
    """The job's argv: `python -m pipeline --preset P <stage> ...` with this interpreter and
    `global_args` (e.g. ["--params", "p.yaml", "--preset", "P", "--set", "k=v"]) in place of
    `--preset P`."""
    argv = shlex.split(job.cmd)
    if argv[:4] != ["python", "-m", "pipeline", "--preset"]:
        raise ValueError(f"run-all: job {job.name}: unexpected command {job.cmd!r}")
    return [python, "-m", "pipeline", *global_args, *argv[5:]]


def run(jobs: Sequence[Job], argv_of: Callable[[Job], list], *, deadline: Optional[float] = None,
        force: bool = False, keep_going: bool = True, root: Path = Path("."),
        say: Callable[[str], None] = print) -> list:
    """Run `jobs` in DAG order, job j as the process argv_of(j) (`command` with the caller's global
    options); `deadline` is a time.monotonic() value. Returns one Outcome per job."""
    maker = {o: j.name for j in jobs for o in outputs(j)}
    status: dict = {}
    result = []
    for i, job in enumerate(order(jobs), 1):
        head = f"[{i}/{len(jobs)}] {job.name}"
        broken = sorted({maker[d] for d in job.deps if d in maker and status.get(maker[d]) not in ("done", "up to date")})
        if broken:
            outcome = Outcome(job.name, job.stage, f"not run: needs {', '.join(broken)}")
        elif not force and up_to_date(job, root):
            outcome = Outcome(job.name, job.stage, "up to date")
        elif deadline is not None and time.monotonic() >= deadline:
            outcome = Outcome(job.name, job.stage, "not run: past the deadline")
        elif status and not keep_going and any(s == "failed" for s in status.values()):
            outcome = Outcome(job.name, job.stage, "not run: an earlier job failed")
        else:
            say(f"{head}: {job.stage} ...")
            t0 = time.monotonic()
            timeout = None if deadline is None else max(deadline - t0, 1.0)
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            try:
                rc = subprocess.run(argv_of(job), cwd=root, env=env, timeout=timeout,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
                st = "done" if rc == 0 else f"failed (exit {rc})"
            except subprocess.TimeoutExpired:
                st = "stopped at the deadline"
            outcome = Outcome(job.name, job.stage, st, time.monotonic() - t0, job.log)
        status[job.name] = "failed" if outcome.status.startswith(("failed", "stopped")) else outcome.status
        say(f"{head}: {outcome.status}" + (f" in {outcome.seconds:.1f} s" if outcome.seconds else "")
            + (f" (log: {outcome.log})" if outcome.status.startswith(("failed", "stopped")) else ""))
        result.append(outcome)
    return result


def _points(argv: list) -> list:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--point"]


def score_partial(jobs: Sequence[Job], outcomes: Sequence[Outcome], global_args: Sequence[str], *,
                  budget_s: float, root: Path = Path("."), say: Callable[[str], None] = print) -> list:
    """After a deadline stopped a sample job that loops over a data set's grid (run.job_per:
    dataset), score the points it finished: run each fid job that was left out for it on those
    points alone, within `budget_s` in all. Returns the new outcomes (one per such fid job)."""
    stopped = {o.job for o in outcomes if o.status == "stopped at the deadline" and o.stage == "sample"}
    by_name = {j.name: j for j in jobs}
    maker = {o: j.name for j in jobs for o in outputs(j)}
    end = time.monotonic() + budget_s
    result = []
    for o in outcomes:
        job = by_name[o.job]
        needs = {maker[d] for d in job.deps if d in maker and maker[d] in stopped}
        if job.stage != "fid" or not needs or not o.status.startswith("not run"):
            continue
        argv = command(job, global_args)
        sample = by_name[needs.pop()]
        finished = [pt for pt in _points(argv) if all((root / x).exists() for x in sample.outs
                                                      if f"/{pt}/" in x)]
        if not finished or time.monotonic() >= end:
            continue
        keep = [a for i, a in enumerate(argv) if a != "--point" and (i == 0 or argv[i - 1] != "--point")]
        at = keep.index("fid") + 1
        argv = keep[:at] + [x for pt in finished for x in ("--point", pt)] + keep[at:]
        t0 = time.monotonic()
        try:
            rc = subprocess.run(argv, cwd=root, timeout=max(end - t0, 1.0), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL).returncode
            st = (f"done on the {len(finished)} of {len(_points(command(job, global_args)))} points sampled "
                  f"before the deadline" if rc == 0 else f"failed (exit {rc})")
        except subprocess.TimeoutExpired:
            st = "stopped at the deadline"
        out = Outcome(job.name, job.stage, st, time.monotonic() - t0, job.log)
        say(f"{job.name}: {st} in {out.seconds:.1f} s")
        result.append(out)
    return result


def report(outcomes: Sequence[Outcome]) -> str:
    """A Markdown table of the outcomes (one row per job) and a count per status."""
    lines = ["| job | stage | status | s |", "|---|---|---|---|"]
    lines += [f"| {o.job} | {o.stage} | {o.status} | {o.seconds:.1f} |" for o in outcomes]
    counts: dict = {}
    for o in outcomes:
        key = o.status.split(":")[0].split(" (")[0]
        counts[key] = counts.get(key, 0) + 1
    return "\n".join(lines) + "\n\n" + ", ".join(f"{v} {k}" for k, v in counts.items()) + "\n"
