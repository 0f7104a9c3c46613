"""Our samplers against an independent implementation: diffusers' schedulers, configured to the same
conventions, driven by the same eps_fn from the same x_T, must land on the same x_0.

Convention differences found (each is either configured away below or kept out of the comparison;
docs/samplers.md lists them too):

1. Precision: diffusers stores betas and alphas_cumprod in float32, even `trained_betas`. The tests
   overwrite `alphas_cumprod` (and `final_alpha_cumprod`) with our float64 alpha_bar so DDIM/PNDM
   agree to ~1e-14; left alone they differ at ~1e-7 relative.
2. Timestep grids: our `uniform` is diffusers' "leading" with steps_offset=0 (Stable Diffusion configs
   use steps_offset=1, i.e. every index shifted by one); "trailing" and, for DDIM/PNDM, "linspace"
   coincide. DPMSolverMultistepScheduler's "linspace"/"leading" build S + 1 points and drop one, a
   different grid: it is compared on "trailing".
3. DDIMScheduler and PNDMScheduler step from t to t - T//S, not to the next index in their own list.
   These agree for "leading", and for "trailing" only when S divides T (S = 30: diffusers' DDIM goes
   999 -> 966 while its list holds 965). We always step to the next selected index.
4. End point: set_alpha_to_one=True is our "alpha_bar before step 0 is 1"; with False diffusers stops
   one noise level short of the data (at alpha_bar[0]).
5. clip_sample (default True for DDIM) clamps the predicted x_0 to [-1, 1], an image-range
   assumption; our samplers never clip (set clip_sample=False).
6. PNDM PRK when T//S is odd: diffusers moves the first stage to t - (T//S)//2 but evaluates the
   model at t_next + (T//S)//2, one index apart; we use floor((t + t_next)/2) for both. Equal when
   T//S is even (compared below); about 4e-4 apart on this Gaussian at S = 30.
7. PLMS with S = 1: diffusers takes one DDIM step (1 model call); ours takes the pseudo improved-Euler
   step that starts every PLMS run (2 calls). Compared for S >= 2.
8. F-PNDM with S < 4: diffusers' PRK warm-up needs 4 timesteps and fails; ours runs every step as a
   PRK step (NFE = 4 S for S <= 3).
9. DPMSolverMultistepScheduler computes in float32 (sigmas stored as float32, the sample cast to
   float32 in `step`), so that comparison holds to ~1e-5; with final_sigmas_type="zero" its last step
   is first order, like ours. Its lower_order_final (below 15 steps) and ours (the official DPM-Solver's,
   S <= 10) take the last step that ends at a noise level > 0 at first order: with "zero" diffusers
   has no such step, so it matches our lower_order_final=False; with "sigma_min" and our uniform grid
   without its 0 as custom timesteps, diffusers ends where our step to index 0 ends.
10. DDIM with eta > 0: diffusers draws noise on every step, including the last where its std is 0;
    we draw only when sigma > 0. The eta = 1 comparison passes `variance_noise` explicitly, drawn in
    our order.
11. The model receives a 0-d timestep tensor from diffusers' loop; our eps_fn gets a LongTensor [B].
"""
import pytest
import torch

from pipeline.core.gaussian import exact_eps_fn
from pipeline.core.samplers import nfe, sample
from pipeline.core.schedules import NoiseSchedule, timesteps

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers vs numpy 2 `copy=` notice

MU, S = 5.0, 2.0
SCHEDULE = NoiseSchedule.linear(1000)


def configured(cls, **kw):
    sched = cls(num_train_timesteps=SCHEDULE.T, trained_betas=SCHEDULE.betas.numpy(), steps_offset=0, **kw)
    sched.alphas_cumprod = SCHEDULE.alpha_bar.clone()  # difference 1: use our float64 alpha_bar
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return sched


def run_diffusers(sched, steps, x, eps_fn, noises=None):
    sched.set_timesteps(steps)
    calls = 0
    for i, t in enumerate(sched.timesteps):
        calls += 1
        eps = eps_fn(x, t.expand(x.shape[0]))
        extra = {} if noises is None else {"variance_noise": noises[i], "eta": 1.0}
        x = sched.step(eps, t, x, **extra).prev_sample
    return x, calls


@pytest.fixture(scope="module")
def eps_fn():
    return exact_eps_fn(MU, S, SCHEDULE)


@pytest.fixture(scope="module")
def x_T():
    return torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("steps", [4, 10, 25, 50])
@pytest.mark.parametrize("spacing, diffusers_spacing", [("uniform", "leading"), ("trailing", "trailing")])
def test_ddim_eta0_matches_diffusers(steps, spacing, diffusers_spacing, eps_fn, x_T):
    sched = configured(diffusers.DDIMScheduler, clip_sample=False, set_alpha_to_one=True, timestep_spacing=diffusers_spacing)
    ref, calls = run_diffusers(sched, steps, x_T, eps_fn)
    ours = sample("ddim", eps_fn, x_T, SCHEDULE, steps, spacing=spacing, eta=0.0)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    assert calls == nfe("ddim", steps)


def test_ddim_eta1_matches_diffusers_with_the_same_noise(eps_fn, x_T):
    steps = 20
    g = torch.Generator().manual_seed(3)
    # our noise order: one draw shaped like x per step with sigma > 0 (every step but the last)
    noises = [torch.randn(x_T.shape, generator=g, dtype=x_T.dtype) for _ in range(steps - 1)] + [torch.zeros_like(x_T)]
    sched = configured(diffusers.DDIMScheduler, clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading")
    ref, _ = run_diffusers(sched, steps, x_T, eps_fn, noises=noises)
    ours = sample("ddim", eps_fn, x_T, SCHEDULE, steps, eta=1.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("steps", [2, 3, 4, 10, 25, 50])
def test_plms_matches_diffusers_pndm_without_prk(steps, eps_fn, x_T):
    sched = configured(diffusers.PNDMScheduler, skip_prk_steps=True, set_alpha_to_one=True, timestep_spacing="leading")
    ref, calls = run_diffusers(sched, steps, x_T, eps_fn)
    torch.testing.assert_close(sample("plms", eps_fn, x_T, SCHEDULE, steps), ref, rtol=1e-12, atol=1e-12)
    assert calls == nfe("plms", steps)


@pytest.mark.parametrize("steps", [4, 5, 10, 25, 50])  # T // S even: the PRK midpoints coincide (difference 6)
def test_f_pndm_matches_diffusers_pndm_with_prk(steps, eps_fn, x_T):
    sched = configured(diffusers.PNDMScheduler, skip_prk_steps=False, set_alpha_to_one=True, timestep_spacing="leading")
    ref, calls = run_diffusers(sched, steps, x_T, eps_fn)
    torch.testing.assert_close(sample("f-pndm", eps_fn, x_T, SCHEDULE, steps), ref, rtol=1e-12, atol=1e-12)
    assert calls == nfe("f-pndm", steps) == steps + 9


@pytest.mark.parametrize("steps", [5, 10, 25, 50])
def test_dpm_solver_pp_2m_matches_diffusers(steps, eps_fn, x_T):
    sched = configured(
        diffusers.DPMSolverMultistepScheduler, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
        timestep_spacing="trailing", final_sigmas_type="zero", lower_order_final=True,
    )
    ref, calls = run_diffusers(sched, steps, x_T, eps_fn)
    ours = sample("dpm-solver++", eps_fn, x_T, SCHEDULE, steps, spacing="trailing", options={"lower_order_final": False})
    torch.testing.assert_close(ours, ref, rtol=2e-6, atol=2e-5)  # diffusers runs this one in float32 (difference 9)
    # ... a tolerance far below what a different second-order rule would change:
    first_order = sample("ddim", eps_fn, x_T, SCHEDULE, steps, spacing="trailing")
    assert (first_order - ref).abs().max() > 100 * 2e-5
    assert calls == nfe("dpm-solver++", steps)


@pytest.mark.parametrize("steps", [3, 5, 10])
def test_dpm_solver_pp_lower_order_final_matches_diffusers(steps, eps_fn, x_T):
    """Our default (official) lower_order_final on `uniform`: the step that lands on index 0 is first
    order. diffusers with custom timesteps (our grid without its 0) and final_sigmas_type="sigma_min"
    ends at alpha_bar[0] with that step at first order (lower_order_final, fewer than 15 steps)."""
    grid = timesteps(SCHEDULE.T, steps, "uniform").tolist()
    sched = configured(diffusers.DPMSolverMultistepScheduler, algorithm_type="dpmsolver++", solver_order=2,
                       solver_type="midpoint", final_sigmas_type="sigma_min", lower_order_final=True)
    sched.set_timesteps(timesteps=grid[:-1])
    x, calls = x_T, 0
    for t in sched.timesteps:
        calls += 1
        x = sched.step(eps_fn(x, t.expand(x.shape[0])), t, x).prev_sample
    at_zero = {}
    sample("dpm-solver++", eps_fn, x_T, SCHEDULE, steps,
           callback=lambda d: at_zero.update(x=d["x"]) if d["t_next"] == 0 else None)
    torch.testing.assert_close(at_zero["x"], x, rtol=2e-6, atol=2e-5)
    assert calls == steps - 1  # ours then spends its S-th call on the landing 0 -> clean
    second_order = {}
    sample("dpm-solver++", eps_fn, x_T, SCHEDULE, steps, options={"lower_order_final": False},
           callback=lambda d: second_order.update(x=d["x"]) if d["t_next"] == 0 else None)
    if steps > 2:
        assert (second_order["x"] - x).abs().max() > 100 * 2e-5
