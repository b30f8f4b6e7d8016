"""DPM-Solver++ 2M (diffusers `DPMSolverMultistepScheduler` 0.42.1) as pure functions for one `lax.scan`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from litefocus_jax.schedulers.scheduling_utils import (
    DDIM_CLASS,
    DPM_CLASS,
    _alphas_cumprod,
    _check_class,
    _check_steps,
    _common_fields,
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
            config = {
                k: config[k]
                for k in (
                    "num_train_timesteps",
                    "beta_start",
                    "beta_end",
                    "beta_schedule",
                    "trained_betas",
                    "prediction_type",
                    "thresholding",
                    "timestep_spacing",
                    "steps_offset",
                    "rescale_betas_zero_snr",
                )
                if k in config
            }
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
                cfg.solver_order == 1
                or i == 0
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
