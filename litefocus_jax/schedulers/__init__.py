"""Samplers as pure functions for one `lax.scan`: DDIM and DPM-Solver++ 2M, equal to diffusers 0.42.1 at fp32."""

from litefocus_jax.schedulers.factory import SCHEDULERS, make_scheduler
from litefocus_jax.schedulers.scheduling_ddim import (
    DDIMConfig,
    DDIMSchedule,
    ddim_schedule,
    ddim_step,
    ddim_timesteps,
)
from litefocus_jax.schedulers.scheduling_dpmsolver_multistep import (
    DPMSchedule,
    DPMSolverConfig,
    dpm_schedule,
    dpm_step,
    dpm_timesteps_and_sigmas,
)
from litefocus_jax.schedulers.scheduling_utils import (
    CVSSP_DDIM,
    Scheduler,
    scale_model_input,
)

__all__ = [
    "CVSSP_DDIM",
    "DDIMConfig",
    "DDIMSchedule",
    "DPMSchedule",
    "DPMSolverConfig",
    "SCHEDULERS",
    "Scheduler",
    "ddim_schedule",
    "ddim_step",
    "ddim_timesteps",
    "dpm_schedule",
    "dpm_step",
    "dpm_timesteps_and_sigmas",
    "make_scheduler",
    "scale_model_input",
]
