"""Timestep spacings: which `steps` of the T training indices a few-step sampler visits.

Torch-free (numpy only), so that config validation can check every grid point without
importing torch; `schedules.timesteps` wraps `indices` into the LongTensor samplers take.

`SPACINGS` is the registry: name -> rule giving ascending candidate indices (possibly
repeated) for (T, steps). Adding a spacing is one function and one entry here. Repeated
candidates are made distinct (`resolve`), except for the spacings in `REPEATS`, which keep
them as the official code does (a step with t == t_next; only samplers registered with
`repeats=True` take those, see `pipeline.core.samplers.check_spacing`).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np


def _uniform(T: int, steps: int) -> list[int]:
    # 0, k, 2k, ..., (steps-1) k with k = T // steps: DDIM/PNDM official `range(0, T, k)` truncated
    # to `steps` (the range is longer when steps does not divide T), diffusers "leading".
    k = T // steps
    return [i * k for i in range(steps)]


def _quadratic(T: int, steps: int) -> list[int]:
    # DDIM official: int((i * sqrt(0.8 T) / (steps - 1))^2), truncation.
    return [int(v) for v in np.linspace(0, math.sqrt(0.8 * T), steps) ** 2]


def _quadratic_ddim(T: int, steps: int) -> list[int]:
    # The DDIM repository's own quadratic grid, repeats kept: 49 distinct of 50 indices, 96 of 100;
    # at steps = 1000 it starts at t = 800 (our `quadratic` makes them distinct: 0..999).
    return _quadratic(T, steps)


def _linspace(T: int, steps: int) -> list[int]:
    # round(linspace(0, T-1, steps)): respacing tutorials, diffusers "linspace".
    return [int(v) for v in np.round(np.linspace(0, T - 1, steps))]


def _trailing(T: int, steps: int) -> list[int]:
    # round(T - i T/steps) - 1: diffusers "trailing"; always starts at T-1.
    return sorted(int(v) - 1 for v in np.round(T - np.arange(steps) * (T / steps)))


SPACINGS: dict[str, Callable[[int, int], list[int]]] = {
    "uniform": _uniform,
    "quadratic": _quadratic,
    "linspace": _linspace,
    "trailing": _trailing,
    "quadratic-ddim": _quadratic_ddim,
}
REPEATS = frozenset({"quadratic-ddim"})  # spacings whose indices may repeat (not made distinct)


def check_T(T) -> None:
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T: number of training steps must be an integer >= 1, got {T!r}")


def resolve(raw: list[int], T: int, steps: int, spacing: str) -> list[int]:
    """Ascending candidate indices (possibly repeated) -> strictly ascending: each index is raised to
    at least its predecessor + 1, so crowded first indices become consecutive (0,0,0,1 -> 0,1,2,3).
    Raises, naming the values, if that would leave 0..T-1."""
    out: list[int] = []
    for r in raw:
        out.append(r if not out else max(r, out[-1] + 1))
    if out[0] < 0 or out[-1] > T - 1:
        raise ValueError(
            f"spacing {spacing!r} with steps={steps}, T={T} gives indices {raw} which cannot be made "
            f"{steps} distinct values in 0..{T - 1}"
        )
    return out


def indices(T: int, steps: int, spacing: str = "uniform") -> list[int]:
    """Exactly `steps` training indices in 0..T-1, descending; distinct unless `spacing` is in REPEATS
    (then non-increasing); see `schedules.timesteps`."""
    check_T(T)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise ValueError(f"steps: must be an integer, got {steps!r}")
    steps = int(steps)
    if not 1 <= steps <= T:
        raise ValueError(f"steps: must be in 1..T={T}, got {steps}")
    if spacing not in SPACINGS:
        raise ValueError(f"spacing: unknown {spacing!r}; known: {', '.join(SPACINGS)}")
    raw = SPACINGS[spacing](T, steps)
    if spacing in REPEATS:
        if len(raw) != steps or raw != sorted(raw) or raw[0] < 0 or raw[-1] > T - 1:
            raise ValueError(f"spacing {spacing!r} with steps={steps}, T={T} gives indices {raw}, not {steps} "
                             f"ascending values in 0..{T - 1}")
        return raw[::-1]
    return resolve(raw, T, steps, spacing)[::-1]


def first_timesteps(T: int, points) -> list:
    """The distinct first timesteps of grid points (anything with `.steps` and `.spacing`),
    ascending: where each point's sampler starts from x_T."""
    return sorted({int(indices(T, p.steps, p.spacing)[0]) for p in points})
