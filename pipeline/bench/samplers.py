"""Sampler benchmark, no training needed.

Table 1, accuracy vs cost: every sampler on Gaussian data N(mu, s^2) with its exact noise
prediction, at NFE budgets around 10, 20, 50, 100, 1000 (the most steps whose exact NFE fits the
budget). Pathwise error = RMS over the batch of |x_0 - exact probability-flow map(x_T)|, the map
started at alpha_bar of the first selected index; the stochastic samplers (ddpm, ddpm-large) do not
follow the ODE, so their pathwise error does not vanish. Frechet distance of the outputs to
N(mu, s^2) measures the distribution error of every sampler (it includes the sampling error of N
draws, about s^2 sqrt(2/N)).

Table 2, overhead: wall time per step spent outside eps_fn at batch [256, 3, 32, 32] (float32, CPU),
beside the cost of one call of a trivial eps_fn (the exact noise prediction of N(0, I) data,
sqrt(1 - alpha_bar[t]) x: one lookup, one multiply). Minimum over repeats; one torch thread by
default, so the numbers are per-step arithmetic cost rather than thread scheduling on a busy box.

    python -m pipeline.bench samplers [--n 10000] [--spacing uniform] [--batch 256,3,32,32] [--repeats 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import math
import time

import pandas as pd
import torch

from pipeline.core.gaussian import exact_eps_fn, exact_map, frechet_to_truth
from pipeline.core.samplers import SAMPLERS, nfe, sample
from pipeline.core.schedules import SPACINGS, NoiseSchedule, timesteps

BUDGETS = (10, 20, 50, 100, 1000)


def steps_for_budget(name: str, budget: int, T: int) -> int:
    """The most steps (>= 1, <= T) whose exact NFE is within `budget`."""
    fits = [s for s in range(1, T + 1) if nfe(name, s) <= budget]
    return max(fits) if fits else 1


def accuracy_table(n: int, spacing: str, seed: int, mu: float = 5.0, s: float = 2.0) -> pd.DataFrame:
    schedule = NoiseSchedule.linear(1000)
    x_T = torch.randn(n, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    rows = []
    for name in SAMPLERS:
        for budget in BUDGETS:
            steps = steps_for_budget(name, budget, schedule.T)
            calls = 0
            eps = exact_eps_fn(mu, s, schedule)

            def counted(x, t):
                nonlocal calls
                calls += 1
                return eps(x, t)

            gen = torch.Generator().manual_seed(seed + 1)
            out = sample(name, counted, x_T, schedule, steps, spacing=spacing, generator=gen)
            a_T = schedule.alpha_bar[timesteps(schedule.T, steps, spacing)[0]].item()
            err = (out - exact_map(x_T, mu, s, a_T)).pow(2).mean().sqrt().item()
            rows.append(dict(sampler=name, budget=budget, steps=steps, nfe=calls, path_rmse=err,
                             frechet=frechet_to_truth(out, mu, s)))
            assert calls == nfe(name, steps)
    return pd.DataFrame(rows)


def overhead_table(shape: tuple[int, ...], steps: int, repeats: int, seed: int) -> tuple[pd.DataFrame, float]:
    schedule = NoiseSchedule.linear(1000)
    scale = (1 - schedule.alpha_bar).sqrt().float()
    spent = 0.0

    def eps_fn(x, t):  # exact eps for N(0, I) data
        nonlocal spent
        t0 = time.perf_counter()
        out = scale[t].reshape((-1,) + (1,) * (x.ndim - 1)) * x
        spent += time.perf_counter() - t0
        return out

    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    t_probe = torch.full((shape[0],), 500)
    call_us = min(_timed(lambda: eps_fn(x_T, t_probe)) for _ in range(20)) * 1e6
    runs = [(name, name, None) for name in SAMPLERS] + [("ddpm", "ddpm (per-image generators)", "per-image")]
    best = {label: math.inf for _, label, _ in runs}
    for _ in range(repeats):  # round-robin, so a burst of load on a shared machine hits every sampler alike
        for name, label, gen_kind in runs:
            if gen_kind == "per-image":
                gen = [torch.Generator().manual_seed(seed + k) for k in range(shape[0])]
            else:
                gen = torch.Generator().manual_seed(seed)
            spent = 0.0
            total = _timed(lambda: sample(name, eps_fn, x_T, schedule, steps, generator=gen))
            best[label] = min(best[label], (total - spent) / steps)
    rows = [dict(sampler=label, steps=steps, nfe=nfe(name, steps), overhead_us_per_step=best[label] * 1e6,
                 overhead_in_eps_calls=best[label] * 1e6 / call_us) for name, label, _ in runs]
    return pd.DataFrame(rows), call_us


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.bench samplers", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10_000, help="Gaussian samples per accuracy run (default 10000)")
    p.add_argument("--spacing", choices=SPACINGS, default="uniform", help="timestep spacing (default uniform)")
    p.add_argument("--batch", default="256,3,32,32", help="x shape for the overhead table (default 256,3,32,32)")
    p.add_argument("--steps", type=int, default=20, help="steps per overhead run (default 20)")
    p.add_argument("--repeats", type=int, default=5, help="overhead runs per sampler; the minimum is kept (default 5)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: per-step arithmetic cost, steady on a shared machine)")
    p.add_argument("--seed", type=int, default=0, help="seed of x_T and of the noise (default 0)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.batch.split(","))

    acc = accuracy_table(args.n, args.spacing, args.seed)
    acc["cell"] = [f"{e:.2e} ({s}/{k})" for e, s, k in zip(acc.path_rmse, acc.steps, acc.nfe)]
    fd = [f"{e:.2e}" for e in acc.frechet]
    acc["fd_cell"] = fd
    print(f"## 1. Accuracy vs NFE on N(5, 2^2), exact eps, linear schedule T=1000, {args.spacing} spacing, n={args.n}\n")
    print("Pathwise RMS error vs the exact probability-flow map, cell = error (steps/NFE); columns = NFE budget\n")
    print(acc.pivot(index="sampler", columns="budget", values="cell").loc[list(SAMPLERS)].to_markdown())
    print("\nFrechet distance of the outputs to N(5, 2^2) (same runs)\n")
    print(acc.pivot(index="sampler", columns="budget", values="fd_cell").loc[list(SAMPLERS)].to_markdown())

    over, call_us = overhead_table(shape, args.steps, args.repeats, args.seed)
    print(f"\n## 2. Sampler overhead outside eps_fn, batch {list(shape)} float32, CPU, "
          f"{torch.get_num_threads()} torch threads, min of {args.repeats}\n")
    print(f"One trivial eps_fn call (sqrt(1 - alpha_bar[t]) * x): {call_us:.0f} us\n")
    print(over.to_markdown(index=False, floatfmt=(None, ".0f", ".0f", ".0f", ".2f")))
    return 0
