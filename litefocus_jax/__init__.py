"""litefocus-jax: AudioLDM2 long-audio generation in JAX/Flax NNX with LiteFocus dual sparse attention."""

from litefocus_jax.litefocus import LiteFocusConfig, LiteFocusPlan, indices_for_step, make_comp_indices, make_plan
from litefocus_jax.loading import init_unet, load_unet
from litefocus_jax.pipeline_audioldm2 import AudioLDM2Pipeline, AudioLDM2PipelineOutput, save_wav
from litefocus_jax.models.unet_audioldm2 import AudioLDM2UNet2DConditionModel, UNetConfig
from litefocus_jax.weights import ConversionError

__version__ = "0.1.0"

__all__ = [
    "AudioLDM2Pipeline",
    "AudioLDM2PipelineOutput",
    "AudioLDM2UNet2DConditionModel",
    "ConversionError",
    "LiteFocusConfig",
    "LiteFocusPlan",
    "UNetConfig",
    "init_unet",
    "load_unet",
    "indices_for_step",
    "make_comp_indices",
    "make_plan",
    "save_wav",
]
