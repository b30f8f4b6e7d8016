"""DDIM (diffusers `DDIMScheduler` 0.42.1) as pure functions for one `lax.scan`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from litefocus_jax.schedulers.scheduling_utils import (
    DDIM_CLASS,
    _alphas_cumprod,
    _check_class,
    _check_steps,
    _common_fields,
)


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
