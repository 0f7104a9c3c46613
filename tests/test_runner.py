"""pipeline/runner.py (`python -m pipeline run-all`): the DAG's jobs one after another, without
Snakemake: in DAG order, skipping what is up to date, skipping only what needs a failed job, and
starting nothing after a deadline (the job running at it is stopped)."""
import sys
import time

from pipeline.dag import Job
from pipeline import runner


def job(name, code, outs=(), deps=(), stage="sample", dataset="d"):
    return Job(stage, name, f"python -m pipeline --preset p {stage} --log logs/{name}.log",
               deps=list(deps), outs=list(outs), dataset=dataset), code


def run(tmp_path, specs, **kw):
    jobs = [j for j, _ in specs]
    code = {j.name: c for j, c in specs}
    said = []
    out = runner.run(jobs, lambda j: [sys.executable, "-c", code[j.name]], root=tmp_path, say=said.append, **kw)
    return {o.job: o.status for o in out}, said


def writes(path, text="x"):
    return f"open({str(path)!r}, 'w').write({text!r})"


def test_jobs_run_in_dag_order_and_a_failure_skips_only_what_needs_it(tmp_path):
    specs = [
        job("b", writes(tmp_path / "b"), outs=["b"], deps=["a"]),  # listed first, runs second
        job("a", writes(tmp_path / "a"), outs=["a"]),
        job("bad", "raise SystemExit(3)", outs=["c"]),
        job("needs-bad", writes(tmp_path / "d"), outs=["d"], deps=["c"]),
        job("other", writes(tmp_path / "e"), outs=["e"], deps=["a"]),
    ]
    status, said = run(tmp_path, specs)
    assert status == {"a": "done", "b": "done", "bad": "failed (exit 3)", "needs-bad": "not run: needs bad",
                      "other": "done"}
    assert [s.split(":")[0] for s in said if s.endswith(" ...")][:2] == ["[1/5] a", "[2/5] b"]
    assert "(log: logs/bad.log)" in next(s for s in said if "failed" in s)
    # a second run: the finished jobs are up to date, the failed one runs again
    status, _ = run(tmp_path, specs)
    assert status["a"] == status["b"] == status["other"] == "up to date" and status["bad"].startswith("failed")
    # an input newer than its outputs reruns the job (and so what follows it)
    time.sleep(0.05)
    (tmp_path / "a").write_text("new")
    status, _ = run(tmp_path, specs)
    assert status["a"] == "up to date" and status["b"] == "done"


def test_nothing_starts_after_the_deadline_and_the_job_running_at_it_is_stopped(tmp_path):
    specs = [
        job("quick", writes(tmp_path / "q"), outs=["q"]),
        job("slow", "import time; time.sleep(60)", outs=["s"]),
        job("later", writes(tmp_path / "l"), outs=["l"]),
    ]
    t0 = time.monotonic()
    status, _ = run(tmp_path, specs, deadline=time.monotonic() + 3)
    assert time.monotonic() - t0 < 30
    assert status == {"quick": "done", "slow": "stopped at the deadline", "later": "not run: past the deadline"}
    assert "stopped at the deadline" in runner.report([runner.Outcome("slow", "sample", "stopped at the deadline")])


def test_the_commands_are_the_dag_jobs_with_this_processes_global_options():
    j, _ = job("s", "")
    argv = runner.command(j, ["--params", "p.yaml", "--preset", "p", "--set", "sample.n_images=3"], python="py")
    assert argv == ["py", "-m", "pipeline", "--params", "p.yaml", "--preset", "p", "--set", "sample.n_images=3",
                    "sample", "--log", "logs/s.log"]
