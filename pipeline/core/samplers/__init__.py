"""The sampler registry: name -> function, its exact NFE for a step count, its keyword options, and
the grid-point names built from them.

Every sampler has one shape (k-diffusion style, no state between calls):

    fn(eps_fn, x_T, schedule, timesteps, *, <its options>, generator=None, callback=None) -> x_0

eps_fn(x, t): x [B, ...] float, t LongTensor [B] of indices 0..T-1 -> eps shaped like x.
x_T: [B, ...] float (never modified). timesteps: LongTensor [S], descending (schedules.timesteps).
generator: None, one torch.Generator, or a list of one torch.Generator per image (see
samplers/common.py; per-image generators make an image's result independent of its batch).
callback: called after every step with {"i", "t", "t_next", "x"}.

Options: each entry declares its keyword options as `Option` specs (name, type, allowed values or
bounds, default, token for point names), e.g. ddim's eta in [0, 1]. `sample()` validates a mapping
of them against the spec, fills in the defaults and passes all of them to the function, so a run
never reports a setting it did not use. The config validates `grid.<table>.options` against the same
specs, the sample stage records the full options, and `point_name`/`parse_point_name` spell them
in grid-point names: a new option is its sampler's keyword plus one `Option` in its `register` line.

Point names: `<sampler>-s<steps>-<spacing>` and then, in the entry's declared order, every option
whose value differs from its default (and those declared `always_named`):
    float/int/str option   -<token><value>    e.g. -eta0.5 (shortest text that reads back the same)
    bool option            -<token> (true)    e.g. -clip;  -no<token> (false), e.g. -nolof
So `ddim-s10-uniform-eta0` (ddim's eta is always named: DDIM Table 1's rows are its values),
`ddpm-large-s10-uniform-clip`, `dpm-solver++-s10-uniform-nolof`. Every name reads back to exactly
its point (`parse_point_name`), and a point has exactly one name.

The registry itself is torch-free: an entry names its function by dotted path
("pipeline.core.samplers.ddim:ddim"), imported on first use, so config validation (names, NFE, options
and spacings of every grid point) never imports torch or the implementations.
"""
from __future__ import annotations

import importlib
import math
import numbers
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Union

if TYPE_CHECKING:  # annotations only: importing the registry must not import torch
    import torch

    from pipeline.core.schedules import NoiseSchedule

from pipeline.util.errors import NonFiniteError

__all__ = ["SAMPLERS", "NonFiniteError", "Option", "Sampler", "check_spacing", "complete_options", "nfe",
           "non_default_options", "options_of", "parse_point_name", "point_name", "register", "resolve_options",
           "sample", "takes_eta", "takes_text"]

_TOKEN = re.compile(r"^[a-z][a-z0-9]*$")
_NUMBER = r"[0-9]+(?:\.[0-9]+)?(?:e[-+][0-9]+)?"  # what `Option.spell` writes for a number
_RESERVED = {"eps_fn", "x_T", "schedule", "timesteps", "generator", "callback"}


@dataclass(frozen=True)
class Option:
    """One keyword option of a sampler.

    name: the keyword argument of the sampler function; type: bool, int, float or str;
    default: the value used when the option is not given (the function's own default must agree);
    token: its spelling in point names (see the module docstring); bounds: (lo, hi) inclusive for
    numbers; choices: the allowed strings; always_named: in the point name even at its default;
    help: one line for messages and docs.
    """

    name: str
    type: type
    default: Any
    token: str
    bounds: Optional[tuple] = None
    choices: Optional[tuple] = None
    always_named: bool = False
    help: str = ""

    def allowed(self) -> str:
        """What the option accepts, in words: "a number in [0, 1]", "true or false", "one of a, b"."""
        if self.type is bool:
            return "true or false"
        if self.type is str:
            return "one of " + ", ".join(self.choices)
        kind = "an integer" if self.type is int else "a number"
        return f"{kind} in [{self.bounds[0]:g}, {self.bounds[1]:g}]" if self.bounds else kind

    def check(self, value):
        """The canonical value (ints accepted for float options), or ValueError "must be ..."."""
        ok = False
        if self.type is bool:
            ok = isinstance(value, bool)
        elif self.type is str:
            ok = isinstance(value, str) and value in self.choices
        elif isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
            ok = self.type is float or (isinstance(value, numbers.Integral))
            if ok:
                value = self.type(value)
                ok = self.bounds is None or self.bounds[0] <= value <= self.bounds[1]
        if not ok:
            raise ValueError(f"must be {self.allowed()}, got {value!r}")
        return value

    def spell(self, value) -> str:
        """The option's part of a point name, without the leading '-'."""
        if self.type is bool:
            return self.token if value else "no" + self.token
        if self.type is float:
            text = f"{value:g}"
            return self.token + (text if float(text) == value else repr(float(value)))
        return f"{self.token}{value}"

    def pattern(self) -> str:
        """Regex of the option's part of a point name (after the '-'); group `v` holds the value."""
        if self.type is bool:
            return rf"(?P<v>(?:no)?){re.escape(self.token)}"
        if self.type is str:
            return re.escape(self.token) + "(?P<v>" + "|".join(map(re.escape, sorted(self.choices, key=len, reverse=True))) + ")"
        return re.escape(self.token) + (rf"(?P<v>{_NUMBER})" if self.type is float else r"(?P<v>[0-9]+)")

    def read(self, text: str):
        """The value of a matched group `v`."""
        if self.type is bool:
            return text != "no"
        return self.type(text)


@dataclass(frozen=True)
class Sampler:
    """One registry entry. `target` is the function or its dotted path "package.module:function".
    `repeats`: the sampler handles steps with t == t_next (the identity step of a spacing that keeps
    repeated indices, e.g. `quadratic-ddim`)."""

    name: str
    target: Union[str, Callable]
    nfe: Callable[[int], int]
    options: tuple = ()
    repeats: bool = False
    stochastic: Union[bool, Callable[[dict], bool]] = False  # or a function of the resolved options

    @property
    def takes_eta(self) -> bool:
        return any(o.name == "eta" for o in self.options)

    @property
    def fn(self) -> Callable:
        """The sampler function (its module is imported on first use)."""
        if callable(self.target):
            return self.target
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


SAMPLERS: dict[str, Sampler] = {}  # name -> entry, in registration order (the order tables list them)


def _check_options(name: str, options) -> tuple:
    options = tuple(options)
    seen_names, seen_tokens = set(), set()
    for o in options:
        where = f"sampler {name!r}: option {getattr(o, 'name', o)!r}"
        if not isinstance(o, Option):
            raise ValueError(f"sampler {name!r}: options must be Option specs, got {type(o).__name__}")
        if not o.name.isidentifier() or o.name in _RESERVED or o.name in seen_names:
            raise ValueError(f"{where}: the name must be a new keyword, not one of {sorted(_RESERVED)}")
        if o.type not in (bool, int, float, str):
            raise ValueError(f"{where}: type must be bool, int, float or str, got {o.type!r}")
        if o.type is str and not (o.choices and all(isinstance(c, str) and re.fullmatch(r"[a-z0-9]+", c) for c in o.choices)):
            raise ValueError(f"{where}: a str option needs choices of lowercase letters and digits")
        if o.bounds is not None and (o.type not in (int, float) or len(o.bounds) != 2 or o.bounds[0] > o.bounds[1]):
            raise ValueError(f"{where}: bounds must be (lo, hi) with lo <= hi, for a number")
        if not _TOKEN.match(o.token) or o.token in seen_tokens:
            raise ValueError(f"{where}: token {o.token!r} must be new and match {_TOKEN.pattern}")
        try:
            o.check(o.default)
        except ValueError as e:
            raise ValueError(f"{where}: default {e}") from None
        seen_names.add(o.name)
        seen_tokens.add(o.token)
    for o in options:  # '-no<token>' of a bool must not read as another option's token
        if o.type is bool and "no" + o.token in seen_tokens:
            raise ValueError(f"sampler {name!r}: token 'no{o.token}' is both another option's token and "
                             f"the false spelling of option {o.name!r}")
    return options


def register(name: str, fn: Union[str, Callable], nfe: Callable[[int], int], *, options=(),
             repeats: bool = False, stochastic: Union[bool, Callable[[dict], bool]] = False) -> None:
    """Add a sampler under `name`; `fn` is the function or "module:function"; `nfe(steps)` must be the
    exact number of eps_fn calls; `options`: its keyword options as `Option` specs, in the order
    point names list them; `repeats`: it handles steps with t == t_next; `stochastic`: it draws fresh
    noise along the way (True, or a function of the resolved options), so its endpoint is not the
    probability-flow map of x_T (pathwise errors are reported for deterministic samplers only)."""
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9+.-]*", name) or name == "all":
        # `samplers: all` in params.yaml means every one; names are part of file paths and point names
        raise ValueError(f"sampler name: expected lowercase letters, digits and + . - other than 'all', got {name!r}")
    if name in SAMPLERS:
        raise ValueError(f"sampler {name!r} is already registered")
    if isinstance(fn, str) and (fn.count(":") != 1 or not all(fn.split(":"))):
        raise ValueError(f"sampler {name!r}: fn {fn!r} must be a callable or 'package.module:function'")
    if not isinstance(fn, str) and not callable(fn):
        raise ValueError(f"sampler {name!r}: fn must be a callable or 'package.module:function', got {type(fn).__name__}")
    if not callable(nfe):
        raise ValueError(f"sampler {name!r}: nfe must be a function steps -> number of eps_fn calls")
    if not (isinstance(stochastic, bool) or callable(stochastic)):
        raise ValueError(f"sampler {name!r}: stochastic must be a bool or a function of the options")
    SAMPLERS[name] = Sampler(name, fn, nfe, _check_options(name, options), bool(repeats), stochastic)


def _rk_warmup(steps: int) -> int:
    # 4 evaluations on each of the first min(steps, 3) steps, then 1 per step
    return 4 * min(steps, 3) + max(steps - 3, 0)


ETA = Option("eta", float, 0.0, "eta", bounds=(0.0, 1.0), always_named=True,
             help="DDIM Eq. 16: 0 = deterministic DDIM, 1 = the DDPM posterior's noise")
CLIP_X0 = Option("clip_x0", bool, False, "clip",
                 help="clamp the predicted x_0 to [-1, 1] (image data; the official DDPM/sigma-hat sampler does)")
LOWER_ORDER_FINAL = Option("lower_order_final", bool, True, "lof",
                           help="first order on the last step that ends at a noise level > 0 when S <= 10 (official DPM-Solver)")

register("ddpm", "pipeline.core.samplers.ddpm:ddpm", lambda s: s, options=(CLIP_X0,), repeats=True, stochastic=True)
register("ddpm-large", "pipeline.core.samplers.ddpm:ddpm_large", lambda s: s, options=(CLIP_X0,), repeats=True,
         stochastic=True)
register("ddim", "pipeline.core.samplers.ddim:ddim", lambda s: s, options=(ETA, CLIP_X0), repeats=True,
         stochastic=lambda o: o["eta"] > 0)
register("pndm-prk", "pipeline.core.samplers.pndm:pndm_prk", lambda s: 4 * s)
register("s-pndm", "pipeline.core.samplers.pndm:s_pndm", lambda s: s + 1)
register("f-pndm", "pipeline.core.samplers.pndm:f_pndm", _rk_warmup)
register("fon", "pipeline.core.samplers.pndm:fon", _rk_warmup)  # the PNDM paper's FON, as its official code runs it
register("rk4-ab4", "pipeline.core.samplers.pndm:rk4_ab4", _rk_warmup)  # textbook RK4 + Adams-Bashforth on the PF ODE
register("plms", "pipeline.core.samplers.pndm:plms", lambda s: s + 1)
register("dpm-solver++", "pipeline.core.samplers.dpm_solver:dpm_solver_pp", lambda s: s, options=(LOWER_ORDER_FINAL,))


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


def is_stochastic(name: str, options: Optional[Mapping] = None) -> bool:
    """Whether sampler `name` with `options` draws noise after x_T (DDPM, DDIM with eta > 0)."""
    _check_name(name)
    st = SAMPLERS[name].stochastic
    return bool(st(resolve_options(name, options)) if callable(st) else st)


def options_of(name: str) -> tuple:
    """The `Option` specs of sampler `name`, in declared order."""
    _check_name(name)
    return SAMPLERS[name].options


def takes_text(name: str) -> str:
    """What sampler `name` accepts, for messages: "takes eta (a number in [0, 1], default 0); clip_x0 (...)"."""
    opts = SAMPLERS[name].options
    if not opts:
        return "takes no options"
    return "takes " + "; ".join(f"{o.name} ({o.allowed()}, default {_text(o.default)})" for o in opts)


def resolve_options(name: str, given: Optional[Mapping] = None) -> dict:
    """`given` options checked against sampler `name`'s specs -> every option with its value
    (defaults filled in), in declared order. ValueError "<option>: ..." naming what is allowed."""
    _check_name(name)
    given = dict(given or {})
    specs = {o.name: o for o in SAMPLERS[name].options}
    for key in given:
        if key not in specs:
            raise ValueError(f"{key}: sampler {name!r} has no option {key!r} (got {key}={given[key]!r}); "
                             f"it {takes_text(name)}")
    out = {}
    for key, spec in specs.items():
        try:
            out[key] = spec.check(given.get(key, spec.default))
        except ValueError as e:
            raise ValueError(f"{key}: {e}") from None
    return out


def complete_options(name: str, given: Mapping) -> dict:
    """Lenient `resolve_options` for building a GridPoint: defaults filled in and values made canonical
    where the sampler and option are known and the value is valid; anything else is kept as given for
    the stage's validation to report."""
    if name not in SAMPLERS:
        return dict(sorted(given.items()))
    out = {}
    for spec in SAMPLERS[name].options:
        value = given.get(spec.name, spec.default)
        try:
            value = spec.check(value)
        except ValueError:
            pass
        out[spec.name] = value
    out.update((k, v) for k, v in sorted(given.items()) if k not in out)
    return out


def _text(value) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)


def non_default_options(name: str, options: Mapping) -> dict:
    """The options whose value differs from the sampler's default, in declared order (what a point's
    name spells, eta's always-named default aside). The sample stage records it beside the full
    options, so the runs frame tells settings apart without importing the registry. A sampler the
    registry does not know keeps every option given."""
    specs = SAMPLERS[name].options if name in SAMPLERS else ()
    defaults = {o.name: o.default for o in specs}
    order = [o.name for o in specs] + sorted(k for k in options if k not in defaults)
    return {k: options[k] for k in order if k in options and not (k in defaults and options[k] == defaults[k])}


def point_name(sampler: str, steps: int, spacing: str, options: Optional[Mapping] = None) -> str:
    """`<sampler>-s<steps>-<spacing>` plus the non-default (and always-named) options, see the module
    docstring. Options the registry does not know for this sampler are spelled `-<name><value>`."""
    options = dict(options or {})
    parts = [f"{sampler}-s{steps}-{spacing}"]
    specs = SAMPLERS[sampler].options if sampler in SAMPLERS else ()
    for spec in specs:
        value = options.pop(spec.name, spec.default)
        if spec.always_named or value != spec.default:
            try:
                parts.append(spec.spell(spec.check(value)))
            except ValueError:
                parts.append(f"{spec.token}{value}")
    parts += [f"{k}{v}" for k, v in sorted(options.items())]
    return "-".join(parts)


def _read_options(sampler: str, rest: str) -> Optional[dict]:
    """The options spelled in `rest` ('' or '-tok...-tok...'), in declared order; None if it does not parse."""
    options = {}
    for spec in SAMPLERS[sampler].options:
        m = re.match(r"-" + spec.pattern() + r"(?=-|$)", rest)
        if m:
            options[spec.name] = spec.read(m["v"])
            rest = rest[m.end():]
    return options if rest == "" else None


def parse_point_name(name: str) -> tuple:
    """A point name -> (sampler, steps, spacing, options given in it) with the options checked; the
    name must be the canonical one (`point_name` of the result). ValueError otherwise."""
    from pipeline.core.spacing import SPACINGS

    found, unread = [], []
    for sampler in SAMPLERS:
        m = re.match(re.escape(sampler) + r"-s([0-9]+)-", name)
        if not m:
            continue
        rest = name[m.end():]
        for spacing in SPACINGS:
            if rest == spacing or rest.startswith(spacing + "-"):
                options = _read_options(sampler, rest[len(spacing):])
                if options is not None:
                    found.append((sampler, int(m[1]), spacing, options))
                else:
                    unread.append((sampler, rest[len(spacing):]))
    if not found and unread:
        sampler, rest = unread[0]
        spelled = ", ".join(f"-{o.token}/-no{o.token}" if o.type is bool else f"-{o.token}<value>"
                            for o in SAMPLERS[sampler].options)
        raise ValueError(f"{rest!r} does not spell options of sampler {sampler!r}, which "
                         f"{takes_text(sampler)}" + (f", spelled {spelled} in this order" if spelled else ""))
    if not found:
        raise ValueError(
            f"expected <sampler>-s<steps>-<spacing>[-<option>...] with a sampler of {', '.join(SAMPLERS)} and a "
            f"spacing of {', '.join(SPACINGS)}, options spelled as their registry tokens (e.g. ddim-s10-uniform-eta0, "
            f"ddpm-large-s10-uniform-clip)")
    if len(found) > 1:
        raise ValueError(f"reads as more than one point: {found}")
    sampler, steps, spacing, options = found[0]
    try:
        resolved = resolve_options(sampler, options)
    except ValueError as e:
        raise ValueError(f"option {e}") from None
    canonical = point_name(sampler, steps, spacing, resolved)
    if canonical != name:
        raise ValueError(f"not the canonical spelling of its point; that is {canonical!r}")
    return sampler, steps, spacing, options


def check_spacing(name: str, spacing: str) -> None:
    """ValueError unless sampler `name` can run `spacing` (a spacing that repeats indices needs a
    sampler whose entry says `repeats`)."""
    from pipeline.core.spacing import REPEATS, SPACINGS

    _check_name(name)
    if spacing not in SPACINGS:
        raise ValueError(f"spacing: unknown {spacing!r}; known: {', '.join(SPACINGS)}")
    if spacing in REPEATS and not SAMPLERS[name].repeats:
        able = [n for n, s in SAMPLERS.items() if s.repeats]
        raise ValueError(f"spacing: {spacing!r} keeps repeated indices (steps with t == t_next), which sampler "
                         f"{name!r} cannot take; samplers that can: {', '.join(able)}")


def sample(
    name: str,
    eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_T: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int,
    *,
    spacing: str = "uniform",
    eta: Optional[float] = None,
    options: Optional[Mapping] = None,
    generator=None,
    callback: Optional[Callable[[dict], None]] = None,
) -> torch.Tensor:
    """Run sampler `name` for `steps` steps from x_T: [B, ...] float; returns x_0 shaped like x_T.

    options: the sampler's keyword options (see `options_of`); missing ones take their defaults.
    eta: shorthand for options={"eta": eta} (None = the default). Inputs are checked before any
    model call; a NaN/inf appearing mid-run raises NonFiniteError.
    """
    import torch

    from pipeline.core.schedules import timesteps

    _check_name(name)
    steps = _check_steps(steps, schedule.T)
    given = dict(options or {})
    if eta is not None:
        if "eta" in given and given["eta"] != eta:
            raise ValueError(f"eta: given twice, eta={eta!r} and options['eta']={given['eta']!r}")
        given["eta"] = eta
    kwargs = resolve_options(name, given)
    check_spacing(name, spacing)
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
    return SAMPLERS[name].fn(eps_fn, x_T, schedule, ts, generator=generator, callback=callback, **kwargs)


def _describe(x) -> str:
    import torch

    if torch.is_tensor(x):
        return f"tensor of dtype {x.dtype} and shape {tuple(x.shape)}"
    return type(x).__name__
