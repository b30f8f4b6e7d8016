"""LiteFocus: which self-attentions go sparse (the plan) and the compensation indices, drawn up front as data."""

from litefocus_jax.litefocus.plan import (
    AUDIOLDM2_LATENT_FRAME_SECONDS,
    Level,
    LevelPlan,
    LiteFocusConfig,
    LiteFocusPlan,
    indices_for_step,
    make_comp_indices,
    make_plan,
)

__all__ = [
    "AUDIOLDM2_LATENT_FRAME_SECONDS",
    "Level",
    "LevelPlan",
    "LiteFocusConfig",
    "LiteFocusPlan",
    "indices_for_step",
    "make_comp_indices",
    "make_plan",
]
