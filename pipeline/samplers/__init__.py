"""The sampler registry: name -> function, its exact NFE for a step count, and whether it takes eta.

Every sampler has one shape (k-diffusion style, no state between calls):

    fn(eps_fn, x_T, schedule, timesteps, *, [eta,] generator=None, callback=None) -> x_0

eps_fn(x, t): x [B, ...] float, t LongTensor [B] of indices 0..T-1 -> eps shaped like x.
x_T: [B, ...] float (never modified). timesteps: LongTensor [S], descending (schedules.timesteps).
generator: None, one torch.Generator, or a list of one torch.Generator per image (see
samplers/common.py; per-image generators make an image's result independent of its batch).
callback: called after every step with {"i", "t", "t_next", "x"}.

`sample()` is the validated entry point the pipeline uses. Choices it makes:
- eta=None means "the sampler's default": 0.0 (deterministic) for ddim. Passing any eta (even 0.0)
  to a sampler without an eta knob is an error, so a run never reports a setting it did not use.
- steps must be in 1..T; the timesteps come from `schedules.timesteps`, which returns exactly
  `steps` indices, and `nfe(name, steps)` is exactly the number of eps_fn calls made (tested by
  counting).

To add a sampler: write the function in a module of this package and add one `register(...)` line
below with its NFE formula. The registry itself is torch-free: an entry names its function by dotted
path ("pipeline.samplers.ddim:ddim"), imported on first use, so config validation (the names, NFE and
eta of every grid point) never imports torch or the implementations.
"""
from __future__ import annotations

import importlib
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Union

if TYPE_CHECKING:  # annotations only: importing the registry must not import torch
    import torch

    from pipeline.schedules import NoiseSchedule

from pipeline.errors import NonFiniteError

__all__ = ["SAMPLERS", "NonFiniteError", "Sampler", "nfe", "register", "sample", "takes_eta"]


@dataclass(frozen=True)
class Sampler:
    """One registry entry. `target` is the function or its dotted path "package.module:function"."""

    name: str
    target: Union[str, Callable]
    nfe: Callable[[int], int]
    takes_eta: bool

    @property
    def fn(self) -> Callable:
        """The sampler function (its module is imported on first use)."""
        if callable(self.target):
            return self.target
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


SAMPLERS: dict[str, Sampler] = {}  # name -> entry, in registration order (the order tables list them)


def register(name: str, fn: Union[str, Callable], nfe: Callable[[int], int], *, takes_eta: bool = False) -> None:
    """Add a sampler under `name`; `fn` is the function or "module:function"; `nfe(steps)` must be the
    exact number of eps_fn calls."""
    if not isinstance(name, str) or not name or name == "all":  # `samplers: all` in params.yaml means every one
        raise ValueError(f"sampler name: expected a non-empty string other than 'all', got {name!r}")
    if name in SAMPLERS:
        raise ValueError(f"sampler {name!r} is already registered")
    if isinstance(fn, str) and (fn.count(":") != 1 or not all(fn.split(":"))):
        raise ValueError(f"sampler {name!r}: fn {fn!r} must be a callable or 'package.module:function'")
    if not isinstance(fn, str) and not callable(fn):
        raise ValueError(f"sampler {name!r}: fn must be a callable or 'package.module:function', got {type(fn).__name__}")
    if not callable(nfe):
        raise ValueError(f"sampler {name!r}: nfe must be a function steps -> number of eps_fn calls")
    SAMPLERS[name] = Sampler(name, fn, nfe, bool(takes_eta))


def _rk_warmup(steps: int) -> int:
    # 4 evaluations on each of the first min(steps, 3) steps, then 1 per step
    return 4 * min(steps, 3) + max(steps - 3, 0)


register("ddpm", "pipeline.samplers.ddpm:ddpm", lambda s: s)
register("ddpm-large", "pipeline.samplers.ddpm:ddpm_large", lambda s: s)
register("ddim", "pipeline.samplers.ddim:ddim", lambda s: s, takes_eta=True)
register("pndm-prk", "pipeline.samplers.pndm:pndm_prk", lambda s: 4 * s)
register("s-pndm", "pipeline.samplers.pndm:s_pndm", lambda s: s + 1)
register("f-pndm", "pipeline.samplers.pndm:f_pndm", _rk_warmup)
register("fon", "pipeline.samplers.pndm:fon", _rk_warmup)
register("plms", "pipeline.samplers.pndm:plms", lambda s: s + 1)
register("dpm-solver++", "pipeline.samplers.dpm_solver:dpm_solver_pp", lambda s: s)


def _check_name(name: str) -> None:
    if name not in SAMPLERS:
        raise ValueError(f"sampler: unknown {name!r}; known: {', '.join(SAMPLERS)}")


def _check_steps(steps, T: Optional[int] = None) -> int:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise ValueError(f"steps: must be an integer, got {steps!r}")
    steps = int(steps)
    if steps < 1 or (T is not None and steps > T):
        raise ValueError(f"steps: must be in 1..T={T}, got {steps}" if T else f"steps: must be >= 1, got {steps}")
    return steps


def nfe(name: str, steps: int) -> int:
    """The exact number of eps_fn calls `sample(name, ..., steps)` makes."""
    _check_name(name)
    return SAMPLERS[name].nfe(_check_steps(steps))


def takes_eta(name: str) -> bool:
    _check_name(name)
    return SAMPLERS[name].takes_eta


def sample(
    name: str,
    eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_T: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int,
    *,
    spacing: str = "uniform",
    eta: Optional[float] = None,
    generator=None,
    callback: Optional[Callable[[dict], None]] = None,
) -> torch.Tensor:
    """Run sampler `name` for `steps` steps from x_T: [B, ...] float; returns x_0 shaped like x_T.

    Inputs are checked before any model call; a NaN/inf appearing mid-run raises NonFiniteError.
    """
    import torch

    from pipeline.schedules import timesteps

    _check_name(name)
    steps = _check_steps(steps, schedule.T)
    if eta is not None:
        if not SAMPLERS[name].takes_eta:
            raise ValueError(f"eta: sampler {name!r} has no eta parameter (got eta={eta!r}); pass eta=None")
        if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not (0.0 <= eta <= 1.0):
            raise ValueError(f"eta: must be a number in [0, 1], got {eta!r}")
    if not torch.is_tensor(x_T) or not x_T.is_floating_point() or x_T.ndim < 1 or x_T.shape[0] < 1:
        raise ValueError(f"x_T: expected a float tensor [B, ...] with B >= 1, got {_describe(x_T)}")
    if not bool(torch.isfinite(x_T).all()):
        raise ValueError("x_T: contains NaN or inf")
    if generator is not None and not isinstance(generator, torch.Generator):
        gens = list(generator)
        if len(gens) != x_T.shape[0] or not all(isinstance(g, torch.Generator) for g in gens):
            raise ValueError(
                f"generator: expected None, a torch.Generator or a list of {x_T.shape[0]} torch.Generator "
                f"(one per image), got {len(gens)} items"
            )
        generator = gens
    ts = timesteps(schedule.T, steps, spacing)
    kwargs = {"eta": 0.0 if eta is None else float(eta)} if SAMPLERS[name].takes_eta else {}
    return SAMPLERS[name].fn(eps_fn, x_T, schedule, ts, generator=generator, callback=callback, **kwargs)


def _describe(x) -> str:
    import torch

    if torch.is_tensor(x):
        return f"tensor of dtype {x.dtype} and shape {tuple(x.shape)}"
    return type(x).__name__
