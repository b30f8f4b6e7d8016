"""DDIM and DPM-Solver++ against diffusers' schedulers at fp32, step by step and as one `lax.scan`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from litefocus_jax import schedulers as S

REL_TOL = 1e-5  # max |error| / max |reference| over the whole run; reached: <= ~2e-6 (DPM 50 steps)
# cvssp/audioldm2 scheduler/scheduler_config.json (AUDIOLDM2.md §1.2 step 9)
CVSSP = dict(
    _class_name="DDIMScheduler",
    num_train_timesteps=1000,
    beta_start=0.0015,
    beta_end=0.0195,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
    timestep_spacing="leading",
    trained_betas=None,
)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers
SHAPE = (2, 8, 6, 4)  # (B, C, T, F); the schedulers are elementwise, layout does not matter


def reference(name: str, config: dict):
    """What the pipeline would hold: DDIM from the config, or DPMSolverMultistep.from_config(ddim.config)."""
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if config.get("_class_name") == "DDIMScheduler":
        return DPMSolverMultistepScheduler.from_config(DDIMScheduler.from_config(config).config)
    return DPMSolverMultistepScheduler.from_config(config)


def random_run(n: int, seed: int = 0):
    """x_T, then per step: model output and variance noise, all float32 numpy."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    eps = rng.standard_normal((n,) + SHAPE).astype(np.float32)
    noise = rng.standard_normal((n,) + SHAPE).astype(np.float32)
    return x, eps, noise


def run_diffusers(ref, n, x, eps, noise, eta):
    ref.set_timesteps(n)
    xt, outs = torch.from_numpy(x.copy()), []
    for i, t in enumerate(ref.timesteps):
        kwargs = dict(eta=eta, variance_noise=torch.from_numpy(noise[i])) if eta else {}
        xt = ref.step(torch.from_numpy(eps[i]), t, xt, **kwargs).prev_sample
        outs.append(xt.numpy())
    return ref.timesteps.numpy(), outs


def run_steps(sched, x, eps, noise):
    state, xj, outs = sched.init_state(jnp.asarray(x)), jnp.asarray(x), []
    for i in range(len(sched.timesteps)):
        state, xj = sched.step(state, jnp.asarray(eps[i]), i, xj, jnp.asarray(noise[i]))
        outs.append(np.asarray(xj))
    return outs


def run_scan(sched, x, eps, noise):
    @jax.jit
    def loop(x, eps, noise):
        def body(carry, inputs):
            state, x = carry
            i, e, z = inputs
            state, x = sched.step(state, e, i, S.scale_model_input(x, sched.timesteps[i]), z)
            return (state, x), None

        (_, x), _ = jax.lax.scan(body, (sched.init_state(x), x), (jnp.arange(len(sched.timesteps)), eps, noise))
        return x

    return np.asarray(loop(jnp.asarray(x), jnp.asarray(eps), jnp.asarray(noise)))


def rel_err(out, ref):
    return float(np.abs(np.asarray(out) - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize(
    "name,n,eta",
    [
        ("ddim", 4, 0.0),
        ("ddim", 25, 0.0),
        ("ddim", 50, 0.7),
        ("ddim", 4, 0.7),
        ("dpmsolver++", 4, 0.0),
        ("dpmsolver++", 25, 0.0),
        ("dpmsolver++", 50, 0.0),
    ],
)
def test_cvssp_config_matches_diffusers_step_by_step_and_under_scan(name, n, eta):
    x, eps, noise = random_run(n)
    ref_ts, ref = run_diffusers(reference(name, CVSSP), n, x, eps, noise, eta)
    sched = S.make_scheduler(name, CVSSP, n, eta=eta)
    np.testing.assert_array_equal(np.asarray(sched.timesteps), ref_ts)
    assert sched.timesteps.dtype == jnp.int32 and sched.init_noise_sigma == 1.0
    steps = run_steps(sched, x, eps, noise)
    err = max(rel_err(o, r) for o, r in zip(steps, ref))
    scanned = run_scan(sched, x, eps, noise)
    scan_err = rel_err(scanned, steps[-1])
    print(f"{name} N={n} eta={eta}: max rel error vs diffusers {err:.1e}; scan vs step loop {scan_err:.1e}")
    assert err <= REL_TOL
    assert scan_err <= 3e-6  # the compiled scan fuses the update (FMA contraction): rounding-level only


def test_cvssp_timesteps():
    cfg = S.DDIMConfig.from_diffusers(CVSSP)
    assert S.ddim_timesteps(cfg, 4).tolist() == [751, 501, 251, 1]
    ts = S.ddim_timesteps(cfg, 200)
    assert ts[0] == 996 and ts[-1] == 1 and len(ts) == 200 and np.all(np.diff(ts) == -5)
    # DPM-Solver++ built from the same DDIM config keeps "leading" spacing and steps_offset 1
    assert S.dpm_timesteps_and_sigmas(S.DPMSolverConfig.from_diffusers(CVSSP), 4)[0].tolist() == [801, 601, 401, 201]


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [1, 3, 7, 200, 999])
def test_timesteps_equal_diffusers(spacing, n):
    config = dict(CVSSP, timestep_spacing=spacing)
    ddim, dpm = reference("ddim", config), reference("dpmsolver++", config)
    ddim.set_timesteps(n)
    assert S.ddim_timesteps(S.DDIMConfig.from_diffusers(config), n).tolist() == ddim.timesteps.tolist()
    if n < 999:  # DPM "leading" with 999 steps repeats timesteps in diffusers too; we refuse it (below)
        dpm.set_timesteps(n)
        ts, sigmas = S.dpm_timesteps_and_sigmas(S.DPMSolverConfig.from_diffusers(config), n)
        assert ts.tolist() == dpm.timesteps.tolist()
        # torch's float32 sqrt is not always correctly rounded (1 ulp off on ~18% of the table), numpy's is
        np.testing.assert_allclose(sigmas, dpm.sigmas.numpy(), rtol=3e-7, atol=0)


@pytest.mark.parametrize("schedule", ["scaled_linear", "linear", "squaredcos_cap_v2"])
def test_alphas_cumprod_bit_equal(schedule):
    config = dict(CVSSP, beta_schedule=schedule)
    ours = np.asarray(S.ddim_schedule(S.DDIMConfig.from_diffusers(config)).alphas_cumprod)
    np.testing.assert_array_equal(ours, DDIMScheduler.from_config(config).alphas_cumprod.numpy())


@pytest.mark.parametrize(
    "name,overrides,n",
    [
        ("ddim", dict(prediction_type="v_prediction", set_alpha_to_one=True, timestep_spacing="trailing"), 10),
        ("ddim", dict(clip_sample=True, beta_schedule="linear", beta_start=0.0001, beta_end=0.02), 10),
        ("dpmsolver++", dict(_class_name="DPMSolverMultistepScheduler", final_sigmas_type="sigma_min"), 10),
        ("dpmsolver++", dict(_class_name="DPMSolverMultistepScheduler", final_sigmas_type="sigma_min"), 20),
        ("dpmsolver++", dict(_class_name="DPMSolverMultistepScheduler", solver_type="heun", timestep_spacing="linspace"), 12),
        ("dpmsolver++", dict(_class_name="DPMSolverMultistepScheduler", solver_order=1, prediction_type="v_prediction"), 6),
        (
            "dpmsolver++",
            dict(
                _class_name="DPMSolverMultistepScheduler",
                euler_at_final=True,
                final_sigmas_type="sigma_min",
                lambda_min_clipped=-3.5,
                timestep_spacing="trailing",
            ),
            16,
        ),
    ],
)
def test_other_options_match_diffusers(name, overrides, n):
    config = dict(CVSSP, **overrides)
    if name == "dpmsolver++":
        for key in ("clip_sample", "set_alpha_to_one"):
            config.pop(key)
    x, eps, noise = random_run(n, seed=1)
    ref_ts, ref = run_diffusers(reference(name, config), n, x, eps, noise, 0.0)
    sched = S.make_scheduler(name, config, n)
    np.testing.assert_array_equal(np.asarray(sched.timesteps), ref_ts)
    err = max(rel_err(o, r) for o, r in zip(run_steps(sched, x, eps, noise), ref))
    print(f"{name} {overrides} N={n}: max rel error {err:.1e}")
    assert err <= REL_TOL


def test_bf16_latents_keep_their_dtype():
    sched = S.make_scheduler("dpmsolver++", CVSSP, 4)
    x = jnp.ones(SHAPE, jnp.bfloat16)
    state, out = sched.step(sched.init_state(x), x, 0, x)
    assert out.dtype == jnp.bfloat16 and state.dtype == jnp.float32


def test_scale_model_input_is_identity():
    x = jnp.arange(3.0)
    assert S.scale_model_input(x, 5) is x


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: S.make_scheduler("euler", CVSSP, 4), "unknown scheduler"),
        (lambda: S.make_scheduler("ddim", dict(CVSSP, _class_name="PNDMScheduler"), 4), "_class_name"),
        (lambda: S.make_scheduler("ddim", CVSSP, 0), "num_inference_steps"),
        (lambda: S.make_scheduler("ddim", CVSSP, 1001), "num_inference_steps"),
        (lambda: S.make_scheduler("ddim", CVSSP, 1000), "outside 0..999"),
        (lambda: S.make_scheduler("ddim", CVSSP, 4.0), "num_inference_steps"),
        (lambda: S.make_scheduler("ddim", dict(CVSSP, prediction_type="sample"), 4), "prediction_type"),
        (lambda: S.make_scheduler("ddim", dict(CVSSP, beta_schedule="cosine"), 4), "beta_schedule"),
        (lambda: S.make_scheduler("ddim", dict(CVSSP, timestep_spacing="karras"), 4), "timestep_spacing"),
        (lambda: S.make_scheduler("ddim", dict(CVSSP, thresholding=True), 4), "thresholding"),
        (lambda: S.make_scheduler("ddim", CVSSP, 4, eta=-1.0), "eta"),
        (lambda: S.make_scheduler("dpmsolver++", CVSSP, 4, eta=0.5), "eta"),
        (
            lambda: S.make_scheduler(
                "dpmsolver++", dict(CVSSP, _class_name="DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++"), 4
            ),
            "algorithm_type",
        ),
        (
            lambda: S.make_scheduler(
                "dpmsolver++", dict(CVSSP, _class_name="DPMSolverMultistepScheduler", use_karras_sigmas=True), 4
            ),
            "use_karras_sigmas",
        ),
        (
            lambda: S.make_scheduler("dpmsolver++", dict(CVSSP, _class_name="DPMSolverMultistepScheduler", solver_order=3), 4),
            "solver_order",
        ),
        (lambda: S.make_scheduler("dpmsolver++", CVSSP, 999), "not distinct"),
    ],
)
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_ddim_eta_needs_noise():
    sched = S.ddim_schedule(S.DDIMConfig.from_diffusers(CVSSP))
    x = jnp.zeros(SHAPE)
    with pytest.raises(ValueError, match="noise"):
        S.ddim_step(sched, x, 501, 251, x, eta=0.5)
