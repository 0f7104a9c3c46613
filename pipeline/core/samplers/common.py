"""What every sampler shares: the alpha_bar path, the model call, noise drawing, the finiteness check.

Path convention: a sampler visits the selected indices t_0 > t_1 > ... > t_{S-1} and then takes a
last step to "index -1", where alpha_bar = 1 (clean data). `path()` returns both lists with that
end appended, so step i always goes from (ts[i], abar[i]) to (ts[i + 1], abar[i + 1]).

Noise convention: a sampler draws noise only on a step whose noise scale is > 0, one draw shaped
like x per such step, in step order. `generator` may be
  - None: the global torch RNG;
  - one torch.Generator: a single draw for the whole batch (results depend on batch composition);
  - a list/tuple of torch.Generator, one per image (the norm, as in EDM's generate.py): image b's
    noise comes from generator[b] only, so an image's result does not depend on which other
    images share its batch. The caller draws x_T for image b from the same generator first.
"""
from __future__ import annotations

from pipeline.util.errors import NonFiniteError

import math
from typing import Callable, Optional, Sequence, Union

import torch

from pipeline.core.schedules import NoiseSchedule

Generator = Union[None, torch.Generator, Sequence[torch.Generator]]
EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]



def path(schedule: NoiseSchedule, timesteps: torch.Tensor, *, repeats: bool = False) -> tuple[list[int], list[float]]:
    """timesteps: LongTensor [S], distinct, descending, in 0..T-1 (with `repeats`: non-increasing, for
    samplers whose step with t == t_next is the identity) ->
    (ts, abar): python int / float64 lists of length S + 1 ending with (-1, 1.0)."""
    ts = [int(t) for t in torch.as_tensor(timesteps).reshape(-1).tolist()]
    T = schedule.T
    if not ts:
        raise ValueError("timesteps: empty; a sampler needs at least one step")
    if any(not 0 <= t < T for t in ts) or any(a < b or (a == b and not repeats) for a, b in zip(ts, ts[1:])):
        order = "non-increasing" if repeats else "distinct, descending"
        raise ValueError(f"timesteps: must be {order} and in 0..{T - 1}, got {ts}")
    alpha_bar = schedule.alpha_bar.tolist()
    return ts + [-1], [alpha_bar[t] for t in ts] + [1.0]


def eval_index(t: int) -> int:
    """The model is only defined on indices 0..T-1: an evaluation wanted at the end point
    (index -1, alpha_bar = 1) is made at index 0 instead (see pndm.py)."""
    return max(t, 0)


def call(eps_fn: EpsFn, x: torch.Tensor, t: int) -> torch.Tensor:
    """eps_fn(x, t) with t broadcast to a LongTensor [B]; the result is cast to x's dtype."""
    eps = eps_fn(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
    if eps.shape != x.shape:
        raise ValueError(f"eps_fn returned shape {tuple(eps.shape)} for x of shape {tuple(x.shape)} at t={t}")
    return eps.to(x.dtype)


def noise_like(x: torch.Tensor, generator: Generator) -> torch.Tensor:
    """Standard normal noise shaped like x, drawn as described in the module docstring."""
    if generator is None:
        return torch.randn_like(x)
    if isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device)
    return torch.stack(
        [torch.randn(x.shape[1:], generator=g, dtype=x.dtype, device=g.device) for g in generator]
    ).to(x.device)


def step_done(x: torch.Tensor, name: str, i: int, ts: list[int], callback: Optional[Callable]) -> torch.Tensor:
    """After step i (ts[i] -> ts[i+1]): raise NonFiniteError on NaN/inf, then call the callback
    with {"i", "t", "t_next", "x"} (t_next = -1 on the last step)."""
    # sum first: one cheap reduction; NaN/inf propagate into it. The full check runs only when the
    # sum is not finite, so a finite state whose sum overflows is not reported.
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise NonFiniteError(
            f"{name}: non-finite value in x after step {i} of {len(ts) - 1} (t={ts[i]} -> {ts[i + 1]}); "
            "check eps_fn's output and the schedule"
        )
    if callback is not None:
        callback({"i": i, "t": ts[i], "t_next": ts[i + 1], "x": x})
    return x


def sqrt(v: float) -> float:
    """math.sqrt clamped at 0 (float64 round-off can leave -1e-17 where 0 is meant)."""
    return math.sqrt(max(v, 0.0))
