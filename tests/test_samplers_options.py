"""Sampler keyword options: each registry entry declares them (pipeline.core.samplers.Option); the specs
validate values, spell point names and read them back. A new option is a keyword of its sampler
function plus one Option in its `register` line: nothing else (config, CLI, records) changes."""
import copy
import inspect
import itertools

import pytest
import torch

from pipeline import config

from pipeline.core import samplers
from pipeline.config import ConfigError, GridPoint
from pipeline.core.gaussian import exact_eps_fn
from pipeline.report.labels import options_text, series_key, series_label
from pipeline.core.samplers import SAMPLERS, Option, non_default_options, parse_point_name, point_name, register
from pipeline.core.schedules import NoiseSchedule
from pipeline.core.spacing import SPACINGS


def option_values(spec: Option) -> list:
    if spec.type is bool:
        return [False, True]
    if spec.type is str:
        return list(spec.choices)
    lo, hi = spec.bounds
    return [lo, hi, spec.default, 0.5, 1e-05, 0.123456789] if spec.type is float else [lo, hi, spec.default]


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_point_name_reads_back_to_its_point(name):
    specs = samplers.options_of(name)
    settings = [dict(zip([s.name for s in specs], combo)) for combo in itertools.product(*map(option_values, specs))]
    for spacing, steps, options in itertools.product(SPACINGS, (1, 10, 250), settings):
        text = point_name(name, steps, spacing, options)
        sampler, s, sp, given = parse_point_name(text)
        assert (sampler, s, sp) == (name, steps, spacing), text
        assert samplers.resolve_options(name, given) == samplers.resolve_options(name, options), text
        point = GridPoint(name, steps, spacing, options=tuple(options.items()))
        assert point.name == text and GridPoint.parse(text) == point


def test_names_spell_non_default_options_in_declared_order():
    assert point_name("ddim", 10, "uniform", {"eta": 0.0}) == "ddim-s10-uniform-eta0"  # eta: always named
    assert point_name("ddim", 10, "uniform", {"eta": 0.5, "clip_x0": True}) == "ddim-s10-uniform-eta0.5-clip"
    assert point_name("f-pndm", 20, "uniform") == "f-pndm-s20-uniform"
    assert point_name("ddpm-large", 10, "quadratic-ddim", {"clip_x0": True}) == "ddpm-large-s10-quadratic-ddim-clip"
    assert point_name("dpm-solver++", 10, "uniform", {"lower_order_final": False}) == "dpm-solver++-s10-uniform-nolof"
    assert point_name("dpm-solver++", 10, "uniform", {"lower_order_final": True}) == "dpm-solver++-s10-uniform"
    # equal settings are equal points however they were written
    assert GridPoint("ddim", 8, eta=1) == GridPoint("ddim", 8, options=(("eta", 1.0), ("clip_x0", False)))
    assert GridPoint("ddim", 8).eta == 0.0 and GridPoint("plms", 8).eta is None


@pytest.mark.parametrize(
    "name, message",
    [
        ("ddim-s10-uniform", "not the canonical spelling of its point; that is 'ddim-s10-uniform-eta0'"),
        ("ddim-s10-uniform-eta0-noclip", "that is 'ddim-s10-uniform-eta0'"),
        ("ddim-s10-uniform-clip-eta0", "'-clip-eta0' does not spell options of sampler 'ddim', which takes eta "
                                       "(a number in [0, 1], default 0); clip_x0 (true or false, default false), "
                                       "spelled -eta<value>, -clip/-noclip in this order"),
        ("ddim-s10-uniform-eta1.5", "option eta: must be a number in [0, 1], got 1.5"),
        ("plms-s10-uniform-eta0", "'-eta0' does not spell options of sampler 'plms', which takes no options"),
        ("warp-s10-uniform", "expected <sampler>-s<steps>-<spacing>[-<option>...] with a sampler of ddpm,"),
        ("ddim-s10-cubic-eta0", "a spacing of uniform, quadratic, linspace, trailing, quadratic-ddim"),
    ],
)
def test_a_name_that_is_not_exactly_one_point_is_refused(name, message):
    with pytest.raises(ValueError) as e:
        parse_point_name(name)
    assert message in str(e.value)
    with pytest.raises(ConfigError, match=f"point '{name}'"):
        GridPoint.parse(name)


def test_the_runs_frame_tells_settings_apart_by_their_non_default_options():
    assert non_default_options("ddim", {"eta": 0.5, "clip_x0": False}) == {"eta": 0.5}
    assert non_default_options("ddim", {"eta": 0.0, "clip_x0": True}) == {"clip_x0": True}
    assert non_default_options("dpm-solver++", {"lower_order_final": False}) == {"lower_order_final": False}
    assert non_default_options("retired-sampler", {"order": 3}) == {"order": 3}  # an unknown sampler keeps all
    assert options_text({"eta": 0.5}) == ""  # eta has a column of its own
    assert options_text({"clip_x0": True, "lower_order_final": False}) == "clip_x0=true, lower_order_final=false"
    assert series_key("ddpm-large", None, "clip_x0=true") != series_key("ddpm-large", None, "")
    assert series_key("ddpm-large", float("nan"), float("nan")) == ("ddpm-large", None)  # runs.csv's empty cells
    assert series_label("dpm-solver++", None, "lower_order_final=false") == "dpm-solver++ lower_order_final=false"


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_declared_options_are_the_function_keywords_with_the_same_defaults(name):
    params = inspect.signature(SAMPLERS[name].fn).parameters
    for spec in samplers.options_of(name):
        assert spec.name in params and params[spec.name].kind is inspect.Parameter.KEYWORD_ONLY, (name, spec.name)
        assert params[spec.name].default == spec.default, (name, spec.name)
    keywords = {p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY}
    assert keywords - {"generator", "callback"} == {s.name for s in samplers.options_of(name)}, name


@pytest.mark.parametrize(
    "options, message",
    [
        ((Option("eta", float, 2.0, "eta", bounds=(0.0, 1.0)),), "option 'eta': default must be a number in [0, 1], got 2.0"),
        ((Option("a", bool, False, "x"), Option("b", bool, False, "x")), "option 'b': token 'x' must be new"),
        ((Option("a", bool, False, "Clip"),), "token 'Clip' must be new and match"),
        ((Option("a", bool, False, "clip"), Option("b", bool, True, "noclip")), "token 'noclip' is both another option's token"),
        ((Option("generator", bool, False, "g"),), "the name must be a new keyword"),
        ((Option("mode", str, "a", "m"),), "a str option needs choices"),
    ],
)
def test_bad_option_specs_are_refused_at_registration(options, message):
    with pytest.raises(ValueError) as e:
        register("bad-options", "pipeline.core.samplers.ddim:ddim", lambda s: s, options=options)
    assert message in str(e.value) and "bad-options" not in SAMPLERS


def _damped_ddim(eps_fn, x_T, schedule, timesteps, *, damping="none", generator=None, callback=None):
    """A test sampler with one new option: ddim, its result scaled down by 'half'."""
    from pipeline.core.samplers.ddim import ddim

    x = ddim(eps_fn, x_T, schedule, timesteps, generator=generator, callback=callback)
    return x / 2 if damping == "half" else x


@pytest.fixture
def damped():
    register("damped", _damped_ddim, lambda s: s, options=(Option("damping", str, "none", "damp", choices=("none", "half")),))
    try:
        yield "damped"
    finally:
        del SAMPLERS["damped"]


def test_a_new_option_needs_only_its_function_and_registry_entry(damped, repo_root):
    import yaml

    params = yaml.safe_load((repo_root / "presets/embedded.yaml").read_text())
    for name in ("mnist-embedded", "mnist-cpu"):
        params["overrides"][name].pop("grid")  # on the global grid, as every other data set here
    params["grid"]["pndm_table"].update(samplers=[damped], options={damped: {"damping": ["none", "half"]}})
    cfg = config.from_dict(copy.deepcopy(params), base_dir=repo_root)
    names = {p.name for p in cfg.runs["mnist-embedded"].points}
    assert {"damped-s10-uniform", "damped-s10-uniform-damphalf"} <= names
    assert GridPoint.parse("damped-s10-uniform-damphalf").options == (("damping", "half"),)
    params["grid"]["pndm_table"]["options"] = {damped: {"damping": "double"}}
    with pytest.raises(ConfigError, match=r"grid.pndm_table.options.damped.damping \(dataset mnist-embedded\): "
                                          r"'double' is not allowed: must be one of none, half"):
        config.from_dict(params, base_dir=repo_root)
    schedule = NoiseSchedule.linear(100)
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    eps = exact_eps_fn(5.0, 2.0, schedule)
    full = samplers.sample(damped, eps, x, schedule, 5)
    torch.testing.assert_close(samplers.sample(damped, eps, x, schedule, 5, options={"damping": "half"}), full / 2)


def test_the_registry_says_which_samplers_draw_noise_after_x_T():
    from pipeline.core import samplers as reg

    assert reg.is_stochastic("ddpm") and reg.is_stochastic("ddpm-large")
    assert not reg.is_stochastic("ddim") and reg.is_stochastic("ddim", {"eta": 0.5})
    assert not any(reg.is_stochastic(n) for n in ("s-pndm", "f-pndm", "fon", "rk4-ab4", "pndm-prk", "plms", "dpm-solver++"))
    with pytest.raises(ValueError, match="stochastic must be a bool or a function"):
        reg.register("noisy-test-only", lambda *a, **k: None, lambda s: s, stochastic="yes")
    assert "noisy-test-only" not in reg.SAMPLERS
