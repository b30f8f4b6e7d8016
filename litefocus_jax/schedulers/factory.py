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

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from litefocus_jax.schedulers.scheduling_ddim import (
    DDIMConfig,
    ddim_schedule,
    ddim_step,
    ddim_timesteps,
)
from litefocus_jax.schedulers.scheduling_dpmsolver_multistep import (
    DPMSolverConfig,
    dpm_schedule,
    dpm_step,
)
from litefocus_jax.schedulers.scheduling_utils import SCHEDULERS, Scheduler


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
