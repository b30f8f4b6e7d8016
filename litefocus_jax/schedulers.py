"""DDIM and DPM-Solver++ (2M) samplers as pure functions with explicit state, for one `lax.scan`.

Both reproduce diffusers 0.42.1 (`DDIMScheduler`, `DPMSolverMultistepScheduler`) at fp32: the noise
schedule is built in float32 exactly as torch does (see `_torch_linspace_f32`), the DPM per-step
coefficients are computed on the host in float32 with diffusers' operation order, and the latent update
runs in float32 whatever the latent dtype (diffusers upcasts too), then casts back.

The pipeline-facing interface is `make_scheduler(name, scheduler_config, num_inference_steps)`:

    sched = make_scheduler("ddim", config, 200)      # or "dpmsolver++"
    x = noise * sched.init_noise_sigma                # 1.0 for both
    state = sched.init_state(x)
    def body(carry, i):
        state, x = carry
        eps = unet(scale_model_input(x, sched.timesteps[i]), sched.timesteps[i], ...)
        state, x = sched.step(state, eps, i, x)        # DDIM eta > 0: sched.step(state, eps, i, x, noise)
        return (state, x), None
    (state, x), _ = jax.lax.scan(body, (state, x), jnp.arange(len(sched.timesteps)))

`scale_model_input` is the identity for both schedulers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

DDIM_CLASS = "DDIMScheduler"
DPM_CLASS = "DPMSolverMultistepScheduler"
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
_SPACINGS = ("leading", "trailing", "linspace")
_PREDICTIONS = ("epsilon", "v_prediction")


# ---------------------------------------------------------------------------------------------- noise schedule

# the cvssp/audioldm2 DDIM scheduler config (scheduler/scheduler_config.json)
CVSSP_DDIM = {
    "_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0015, "beta_end": 0.0195,
    "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
    "prediction_type": "epsilon", "timestep_spacing": "leading", "trained_betas": None,
}



def _torch_linspace_f32(start: float, end: float, n: int) -> np.ndarray:
    """torch.linspace(start, end, n, dtype=float32) bit for bit on x86 CPU (fused multiply-add, two halves)."""
    s, e = np.float32(start), np.float32(end)
    if n == 1:
        return np.array([s], np.float32)
    step = np.float64((e - s) / np.float32(n - 1))  # the step is rounded to float32 first, as torch does
    idx = np.arange(n)
    # float64 holds the exact float32 product, so one rounding at the end equals torch's FMA
    values = np.where(idx < n // 2, np.float64(s) + step * idx, np.float64(e) - step * (n - 1 - idx))
    return values.astype(np.float32)


def _cosine_betas(n: int, max_beta: float = 0.999) -> np.ndarray:
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)], np.float32)


def _alphas_cumprod(
    num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str, trained_betas
) -> np.ndarray:
    """float32 (T,) cumulative alphas, equal to diffusers' `scheduler.alphas_cumprod`."""
    if trained_betas is not None:
        betas = np.asarray(trained_betas, np.float32)
    elif beta_schedule == "linear":
        betas = _torch_linspace_f32(beta_start, beta_end, num_train_timesteps)
    elif beta_schedule == "scaled_linear":
        betas = _torch_linspace_f32(beta_start**0.5, beta_end**0.5, num_train_timesteps) ** 2
    else:
        betas = _cosine_betas(num_train_timesteps)
    # torch's CPU cumprod accumulates float32 in double and rounds each output once
    return np.cumprod((np.float32(1) - betas).astype(np.float64)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- configs


def _common_fields(config: Mapping[str, Any], what: str, defaults: Mapping[str, Any]) -> dict:
    """The noise-schedule keys shared by DDIM and DPM configs, validated."""
    get = lambda k: config.get(k, defaults[k])  # noqa: E731
    out = dict(
        num_train_timesteps=int(get("num_train_timesteps")),
        beta_start=float(get("beta_start")),
        beta_end=float(get("beta_end")),
        beta_schedule=str(get("beta_schedule")),
        trained_betas=None if config.get("trained_betas") is None else tuple(float(b) for b in config["trained_betas"]),
        prediction_type=str(get("prediction_type")),
        timestep_spacing=str(get("timestep_spacing")),
        steps_offset=int(get("steps_offset")),
    )
    if out["num_train_timesteps"] < 2:
        raise ValueError(f"{what}: num_train_timesteps={out['num_train_timesteps']} must be at least 2.")
    if out["trained_betas"] is None and out["beta_schedule"] not in _BETA_SCHEDULES:
        raise ValueError(f"{what}: beta_schedule={out['beta_schedule']!r} is not supported; use one of {_BETA_SCHEDULES}.")
    if out["trained_betas"] is not None and len(out["trained_betas"]) != out["num_train_timesteps"]:
        raise ValueError(
            f"{what}: trained_betas has {len(out['trained_betas'])} values, num_train_timesteps is {out['num_train_timesteps']}."
        )
    if out["prediction_type"] not in _PREDICTIONS:
        raise ValueError(f"{what}: prediction_type={out['prediction_type']!r} is not supported; use one of {_PREDICTIONS}.")
    if out["timestep_spacing"] not in _SPACINGS:
        raise ValueError(f"{what}: timestep_spacing={out['timestep_spacing']!r} is not supported; use one of {_SPACINGS}.")
    for key in ("thresholding", "rescale_betas_zero_snr"):
        if config.get(key):
            raise ValueError(f"{what}: {key}=True is not supported by this port; set it to false.")
    return out


def _check_class(config: Mapping[str, Any], allowed: tuple[str, ...], what: str) -> None:
    name = config.get("_class_name", allowed[0])
    if name not in allowed:
        raise ValueError(f"{what}: _class_name is {name!r}; expected one of {allowed} (a diffusers scheduler_config.json).")


@dataclasses.dataclass(frozen=True)
class DDIMConfig:
    """diffusers `DDIMScheduler` options, built from a `scheduler/scheduler_config.json` dict by `from_diffusers`.

    Attributes:
      num_train_timesteps / beta_start / beta_end / beta_schedule / trained_betas: the training noise schedule
        (cvssp: 1000, 0.0015, 0.0195, "scaled_linear").
      set_alpha_to_one: the "previous" alpha of the final step is 1 (True) or alphas_cumprod[0] (False, cvssp).
      steps_offset: added to "leading" timesteps (cvssp: 1).
      timestep_spacing: "leading" (cvssp), "trailing" or "linspace".
      prediction_type: "epsilon" (every AudioLDM2 checkpoint) or "v_prediction".
      clip_sample / clip_sample_range: clamp the predicted x0 (cvssp: False).
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    timestep_spacing: str = "leading"
    prediction_type: str = "epsilon"
    clip_sample: bool = True
    clip_sample_range: float = 1.0

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> DDIMConfig:
        """Validate a diffusers DDIMScheduler config dict (missing keys take diffusers' defaults)."""
        what = "DDIM scheduler config"
        _check_class(config, (DDIM_CLASS,), what)
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        return cls(
            **_common_fields(config, what, defaults),
            set_alpha_to_one=bool(config.get("set_alpha_to_one", True)),
            clip_sample=bool(config.get("clip_sample", True)),
            clip_sample_range=float(config.get("clip_sample_range", 1.0)),
        )


@dataclasses.dataclass(frozen=True)
class DPMSolverConfig:
    """diffusers `DPMSolverMultistepScheduler` options (the DPM-Solver++ subset this port implements).

    Built by `from_diffusers` from either a DPMSolverMultistepScheduler config or a DDIMScheduler config; the
    latter behaves as `DPMSolverMultistepScheduler.from_config(ddim.config)`: the shared schedule keys
    (betas, prediction_type, timestep_spacing, steps_offset) carry over, every DPM option takes its default.

    Attributes:
      (schedule keys): as `DDIMConfig`.
      solver_order: 1 or 2 (2 = "2M", the default).
      solver_type: "midpoint" (default) or "heun": the second-order correction.
      lower_order_final: first-order last step when there are fewer than 15 steps.
      euler_at_final: always a first-order last step.
      final_sigmas_type: "zero" (default: the last step lands on sigma 0, i.e. returns the x0 prediction) or
        "sigma_min".
      lambda_min_clipped: clip the smallest log-SNR used for the timestep range (default -inf: no clipping).
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    steps_offset: int = 0
    timestep_spacing: str = "linspace"
    prediction_type: str = "epsilon"
    solver_order: int = 2
    solver_type: str = "midpoint"
    lower_order_final: bool = True
    euler_at_final: bool = False
    final_sigmas_type: str = "zero"
    lambda_min_clipped: float = -math.inf

    # DPM options that must keep diffusers' default here, with that default.
    _FIXED = {
        "algorithm_type": "dpmsolver++",
        "variance_type": None,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_lu_lambdas": False,
        "use_flow_sigmas": False,
        "use_dynamic_shifting": False,
    }

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> DPMSolverConfig:
        """Validate a DPMSolverMultistepScheduler (or DDIMScheduler, converted as diffusers does) config dict."""
        what = "DPM-Solver scheduler config"
        _check_class(config, (DPM_CLASS, DDIM_CLASS), what)
        if config.get("_class_name") == DDIM_CLASS:
            # from_config keeps only the keys DPMSolverMultistepScheduler.__init__ accepts
            config = {k: config[k] for k in (
                "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
                "thresholding", "timestep_spacing", "steps_offset", "rescale_betas_zero_snr") if k in config}
        for key, want in cls._FIXED.items():
            if key in config and config[key] != want:
                raise ValueError(f"{what}: {key}={config[key]!r} is not supported by this port; use {want!r}.")
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        cfg = cls(
            **_common_fields(config, what, defaults),
            solver_order=int(config.get("solver_order", 2)),
            solver_type=str(config.get("solver_type", "midpoint")),
            lower_order_final=bool(config.get("lower_order_final", True)),
            euler_at_final=bool(config.get("euler_at_final", False)),
            final_sigmas_type=str(config.get("final_sigmas_type", "zero")),
            lambda_min_clipped=float(config.get("lambda_min_clipped", -math.inf)),
        )
        if cfg.solver_order not in (1, 2):
            raise ValueError(f"{what}: solver_order={cfg.solver_order} is not supported; use 1 or 2.")
        if cfg.solver_type not in ("midpoint", "heun"):
            raise ValueError(f"{what}: solver_type={cfg.solver_type!r} is not supported; use 'midpoint' or 'heun'.")
        if cfg.final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError(f"{what}: final_sigmas_type={cfg.final_sigmas_type!r} must be 'zero' or 'sigma_min'.")
        return cfg


def _check_steps(num_inference_steps, num_train_timesteps: int) -> int:
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise ValueError(f"num_inference_steps must be an int, got {num_inference_steps!r}.")
    n = int(num_inference_steps)
    if not 1 <= n <= num_train_timesteps:
        raise ValueError(f"num_inference_steps={n} must be between 1 and num_train_timesteps={num_train_timesteps}.")
    return n


# ---------------------------------------------------------------------------------------------- DDIM


def ddim_timesteps(cfg: DDIMConfig, num_inference_steps: int) -> np.ndarray:
    """int64 (N,) timesteps, high to low, exactly `DDIMScheduler.set_timesteps` (cvssp: 4 -> 751 501 251 1)."""
    n = _check_steps(num_inference_steps, cfg.num_train_timesteps)
    T = cfg.num_train_timesteps
    if cfg.timestep_spacing == "linspace":
        ts = np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
    elif cfg.timestep_spacing == "leading":
        ts = (np.arange(0, n) * (T // n)).round()[::-1].copy().astype(np.int64) + cfg.steps_offset
    else:
        ts = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    if ts.min() < 0 or ts.max() >= T:
        raise ValueError(
            f"DDIM: {n} steps with steps_offset={cfg.steps_offset} give timesteps up to {ts.max()}, outside 0..{T - 1}; "
            "use fewer steps (diffusers would fail indexing alphas_cumprod)."
        )
    return ts


@struct.dataclass
class DDIMSchedule:
    """The arrays a DDIM step reads (a pytree: can be a `jax.jit` argument); build with `ddim_schedule(cfg)`."""

    alphas_cumprod: jax.Array  # float32 (T,)
    final_alpha_cumprod: jax.Array  # float32 scalar: the "previous" alpha of the last step
    prediction_type: str = struct.field(pytree_node=False, default="epsilon")
    clip_sample_range: float | None = struct.field(pytree_node=False, default=None)


def ddim_schedule(cfg: DDIMConfig) -> DDIMSchedule:
    ac = _alphas_cumprod(cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end, cfg.beta_schedule, cfg.trained_betas)
    return DDIMSchedule(
        alphas_cumprod=jnp.asarray(ac),
        final_alpha_cumprod=jnp.asarray(np.float32(1.0) if cfg.set_alpha_to_one else ac[0]),
        prediction_type=cfg.prediction_type,
        clip_sample_range=cfg.clip_sample_range if cfg.clip_sample else None,
    )


def ddim_step(
    schedule: DDIMSchedule, eps: jax.Array, t, t_prev, x: jax.Array, eta: float = 0.0, noise: jax.Array | None = None
) -> jax.Array:
    """One DDIM update, `DDIMScheduler.step(eps, t, x, eta, variance_noise=noise).prev_sample`.

    Args:
      schedule: from `ddim_schedule(cfg)`.
      eps: the model output (noise prediction, or v for v_prediction), shaped like x.
      t: current timestep (int, may be traced); t_prev: the next-lower one, t - T // N as diffusers computes it
        (negative -> `final_alpha_cumprod`).
      x: current latent, any float dtype (the update runs in float32 and casts back).
      eta: 0 = deterministic DDIM; > 0 adds `eta * sigma_t * noise`.
      noise: standard-normal variance noise shaped like x, required when eta > 0. diffusers draws it with
        `randn_tensor(generator)` inside `step`; here it is an argument so the step stays pure. A pipeline
        should derive it as `jax.random.normal(jax.random.fold_in(key, i), x.shape, jnp.float32)` for step i of
        a per-generation key (never reuse a key across steps).

    Returns:
      x_prev, shaped and typed like x.
    """
    if noise is None and isinstance(eta, (int, float)) and eta > 0:
        raise ValueError(f"ddim_step: eta={eta} > 0 needs `noise` (standard normal, shaped like x); see the docstring.")
    f32 = jnp.float32
    ac = schedule.alphas_cumprod
    t, t_prev = jnp.asarray(t), jnp.asarray(t_prev)
    a_t = ac[t]
    a_prev = jnp.where(t_prev >= 0, ac[jnp.maximum(t_prev, 0)], schedule.final_alpha_cumprod)
    b_t = 1 - a_t
    sample, out = jnp.asarray(x).astype(f32), jnp.asarray(eps).astype(f32)
    if schedule.prediction_type == "epsilon":
        x0 = (sample - jnp.sqrt(b_t) * out) / jnp.sqrt(a_t)
        pred_eps = out
    else:  # v_prediction
        x0 = jnp.sqrt(a_t) * sample - jnp.sqrt(b_t) * out
        pred_eps = jnp.sqrt(a_t) * out + jnp.sqrt(b_t) * sample
    if schedule.clip_sample_range is not None:
        x0 = jnp.clip(x0, -schedule.clip_sample_range, schedule.clip_sample_range)
    variance = ((1 - a_prev) / b_t) * (1 - a_t / a_prev)
    std = jnp.asarray(eta, f32) * jnp.sqrt(variance)
    prev = jnp.sqrt(a_prev) * x0 + jnp.sqrt(1 - a_prev - std**2) * pred_eps
    if noise is not None:
        prev = prev + std * jnp.asarray(noise).astype(f32)
    return prev.astype(jnp.asarray(x).dtype)


# ---------------------------------------------------------------------------------------------- DPM-Solver++


def dpm_timesteps_and_sigmas(cfg: DPMSolverConfig, num_inference_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(int64 (N,) timesteps, float32 (N+1,) sigmas) exactly as `DPMSolverMultistepScheduler.set_timesteps`.

    Sigmas may differ from torch's by 1 ulp: torch's float32 sqrt is not always correctly rounded.
    """
    n = _check_steps(num_inference_steps, cfg.num_train_timesteps)
    T = cfg.num_train_timesteps
    ac = _alphas_cumprod(T, cfg.beta_start, cfg.beta_end, cfg.beta_schedule, cfg.trained_betas)
    lambdas = np.log(np.sqrt(ac)) - np.log(np.sqrt(np.float32(1) - ac))
    clipped = int(np.searchsorted(lambdas[::-1], np.float32(cfg.lambda_min_clipped)))
    last = T - clipped
    if cfg.timestep_spacing == "linspace":
        ts = np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
    elif cfg.timestep_spacing == "leading":
        ts = (np.arange(0, n + 1) * (last // (n + 1))).round()[::-1][:-1].copy().astype(np.int64) + cfg.steps_offset
    else:
        ts = np.arange(last, 0, -T / n).round().copy().astype(np.int64) - 1
    # (like diffusers, "trailing" with lambda_min_clipped may give fewer than n steps: N = len(timesteps))
    if len(ts) == 0 or np.any(np.diff(ts) >= 0) or ts.min() < 0 or ts.max() >= T:
        raise ValueError(
            f"DPM-Solver: {n} steps with timestep_spacing={cfg.timestep_spacing!r} give timesteps {ts.tolist()[:8]}..., "
            "which are not distinct and in range; use fewer steps or another spacing."
        )
    all_sigmas = np.sqrt((np.float32(1) - ac) / ac)
    sigmas = np.interp(ts, np.arange(T), all_sigmas)
    sigma_last = all_sigmas[0] if cfg.final_sigmas_type == "sigma_min" else 0.0
    return ts, np.concatenate([sigmas, [sigma_last]]).astype(np.float32)


@struct.dataclass
class DPMSchedule:
    """Per-step float32 coefficients of DPM-Solver++ (pytree), computed on the host by `dpm_schedule`.

    Step i: x0 = (x - sigma_i * eps) / alpha_i;  D1 = inv_r0_i * (x0 - x0_prev);
            x_next = ratio_i * x - coef_i * x0 - coef_d1_i * D1   (coef_d1_i = inv_r0_i = 0 on first-order steps).
    """

    alpha: jax.Array  # (N,) alpha of the current sigma, converts eps -> x0
    sigma: jax.Array  # (N,)
    ratio: jax.Array  # (N,) sigma_{i+1} / sigma_i
    coef: jax.Array  # (N,) alpha_{i+1} (exp(-h) - 1)
    coef_d1: jax.Array  # (N,)
    inv_r0: jax.Array  # (N,) 1 / r0 = h / h_0
    prediction_type: str = struct.field(pytree_node=False, default="epsilon")


def dpm_schedule(cfg: DPMSolverConfig, num_inference_steps: int) -> tuple[np.ndarray, DPMSchedule]:
    """(timesteps, DPMSchedule): diffusers' float32 arithmetic in its operation order, one row per step."""
    ts, sigmas = dpm_timesteps_and_sigmas(cfg, num_inference_steps)
    n = len(ts)
    f = np.float32

    def alpha_sigma(s):
        alpha = f(1) / np.sqrt(f(s * s) + f(1))
        return alpha, s * alpha

    rows = []
    with np.errstate(divide="ignore"):  # the last sigma may be 0: lambda = inf, exp(-h) = 0, as in torch
        for i in range(n):
            a_t, s_t = alpha_sigma(sigmas[i + 1])
            a_s0, s_s0 = alpha_sigma(sigmas[i])
            lam_t, lam_s0 = np.log(a_t) - np.log(s_t), np.log(a_s0) - np.log(s_s0)
            h = f(lam_t - lam_s0)
            coef = f(a_t * (np.exp(-h) - f(1)))
            last = i == n - 1
            first_order = (
                cfg.solver_order == 1 or i == 0
                or (last and (cfg.euler_at_final or (cfg.lower_order_final and n < 15) or cfg.final_sigmas_type == "zero"))
            )
            if first_order:
                inv_r0 = coef_d1 = f(0)
            else:
                a_s1, s_s1 = alpha_sigma(sigmas[i - 1])
                h_0 = f(lam_s0 - (np.log(a_s1) - np.log(s_s1)))
                inv_r0 = f(f(1) / f(h_0 / h))
                if cfg.solver_type == "midpoint":
                    coef_d1 = f(f(0.5) * coef)
                else:  # heun: "+ alpha_t ((exp(-h) - 1) / h + 1) D1"
                    coef_d1 = f(-(a_t * ((np.exp(-h) - f(1)) / h + f(1))))
            rows.append((a_s0, s_s0, f(s_t / s_s0), coef, coef_d1, inv_r0))
    cols = [jnp.asarray(np.array(c, np.float32)) for c in zip(*rows)]
    return ts, DPMSchedule(*cols, prediction_type=cfg.prediction_type)


def dpm_step(schedule: DPMSchedule, prev_x0: jax.Array, eps: jax.Array, i, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One DPM-Solver++ step: `DPMSolverMultistepScheduler.step(eps, timesteps[i], x)`.

    Args:
      schedule: from `dpm_schedule`.
      prev_x0: float32, shaped like x: the previous step's x0 prediction (the solver's state; anything finite
        on step 0, e.g. zeros, as it is multiplied by 0 there).
      eps: model output shaped like x; i: step index (may be traced); x: current latent.

    Returns:
      (x0 prediction of this step = the next state, x_next typed like x).
    """
    f32 = jnp.float32
    sample, out = jnp.asarray(x).astype(f32), jnp.asarray(eps).astype(f32)
    alpha, sigma = schedule.alpha[i], schedule.sigma[i]
    if schedule.prediction_type == "epsilon":
        x0 = (sample - sigma * out) / alpha
    else:  # v_prediction
        x0 = alpha * sample - sigma * out
    d1 = schedule.inv_r0[i] * (x0 - prev_x0)
    x_next = schedule.ratio[i] * sample - schedule.coef[i] * x0 - schedule.coef_d1[i] * d1
    return x0, x_next.astype(jnp.asarray(x).dtype)


# ---------------------------------------------------------------------------------------------- common interface


def scale_model_input(x: jax.Array, timestep=None) -> jax.Array:
    """The identity: neither DDIM nor DPM-Solver++ scales the UNet input."""
    return x


class Scheduler(NamedTuple):
    """What a sampling loop needs (see the module docstring).

    timesteps: int32 (N,) UNet timesteps, high to low.
    init_state: `init_state(x) -> state` (DDIM: (); DPM: float32 zeros shaped like x, the previous x0).
    step: `step(state, eps, i, x, noise=None) -> (state, x_prev)`, pure, traceable in `lax.scan`; `noise` is
      DDIM's variance noise (needed iff eta > 0, ignored otherwise).
    init_noise_sigma: multiply the initial Gaussian latent by this (1.0 for both).
    """

    timesteps: jax.Array
    init_state: Callable[[jax.Array], Any]
    step: Callable[..., tuple[Any, jax.Array]]
    init_noise_sigma: float


SCHEDULERS = ("ddim", "dpmsolver++")


def make_scheduler(name: str, scheduler_config: Mapping[str, Any], num_inference_steps: int, *, eta: float = 0.0) -> Scheduler:
    """Build a sampler from a diffusers scheduler config dict.

    Args:
      name: "ddim" (needs a DDIMScheduler config: what cvssp snapshots ship) or "dpmsolver++" (from a DDIM config,
        as `DPMSolverMultistepScheduler.from_config`, or from a DPMSolverMultistepScheduler config).
      scheduler_config: the parsed `scheduler/scheduler_config.json`.
      num_inference_steps: N.
      eta: DDIM noise weight (0 = deterministic, the AudioLDM2 pipeline default); DPM-Solver++ takes no eta.
    """
    if name == "ddim":
        cfg = DDIMConfig.from_diffusers(scheduler_config)
        ts = ddim_timesteps(cfg, num_inference_steps)
        schedule = ddim_schedule(cfg)
        ts_j = jnp.asarray(ts, jnp.int32)
        gap = cfg.num_train_timesteps // len(ts)
        eta = float(eta)
        if eta < 0:
            raise ValueError(f"eta={eta} must be >= 0.")

        def ddim(state, eps, i, x, noise=None):
            t = ts_j[i]
            return state, ddim_step(schedule, eps, t, t - gap, x, eta, noise if eta > 0 else None)

        return Scheduler(ts_j, lambda x: (), ddim, 1.0)
    if name == "dpmsolver++":
        if eta:
            raise ValueError("eta applies to DDIM only; DPM-Solver++ (dpmsolver++) is deterministic: pass eta=0.")
        cfg = DPMSolverConfig.from_diffusers(scheduler_config)
        ts, schedule = dpm_schedule(cfg, num_inference_steps)

        def dpm(state, eps, i, x, noise=None):
            return dpm_step(schedule, state, eps, i, x)

        return Scheduler(jnp.asarray(ts, jnp.int32), lambda x: jnp.zeros(jnp.shape(x), jnp.float32), dpm, 1.0)
    raise ValueError(f"unknown scheduler {name!r}; choose one of {SCHEDULERS}.")
