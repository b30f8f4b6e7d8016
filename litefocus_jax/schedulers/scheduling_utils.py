"""Shared scheduler pieces: noise schedules in torch's float32 arithmetic, config parsing, the `Scheduler` interface."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

DDIM_CLASS = "DDIMScheduler"
DPM_CLASS = "DPMSolverMultistepScheduler"
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
_SPACINGS = ("leading", "trailing", "linspace")
_PREDICTIONS = ("epsilon", "v_prediction")


# ---------------------------------------------------------------------------------------------- noise schedule

# the cvssp/audioldm2 DDIM scheduler config (scheduler/scheduler_config.json)
CVSSP_DDIM = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.0015,
    "beta_end": 0.0195,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "trained_betas": None,
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


def _check_steps(num_inference_steps, num_train_timesteps: int) -> int:
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise ValueError(f"num_inference_steps must be an int, got {num_inference_steps!r}.")
    n = int(num_inference_steps)
    if not 1 <= n <= num_train_timesteps:
        raise ValueError(f"num_inference_steps={n} must be between 1 and num_train_timesteps={num_train_timesteps}.")
    return n


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
