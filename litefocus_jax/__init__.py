"""litefocus-jax: AudioLDM2 long-audio generation in JAX/Flax NNX with LiteFocus dual sparse attention.

Layers, each importing only from those below it (ARCHITECTURE.md):
  utils -> kernels -> litefocus, weights, features -> models, schedulers -> pipelines -> tools, research -> commands
"""

from litefocus_jax import _legacy
from litefocus_jax.litefocus import (
    LiteFocusConfig,
    LiteFocusPlan,
    indices_for_step,
    make_comp_indices,
    make_plan,
)
from litefocus_jax.models.modeling_clap_model import load_clap
from litefocus_jax.models.modeling_vits import load_vits_text_encoder
from litefocus_jax.models.unet_audioldm2 import (
    AudioLDM2UNet2DConditionModel,
    UNetConfig,
    init_unet,
    load_unet,
)
from litefocus_jax.pipelines.audioldm2.pipeline_audioldm2 import (
    AudioLDM2Pipeline,
    AudioLDM2PipelineOutput,
)
from litefocus_jax.pipelines.audioldm2.speech import SPEECH_MAX_NEW_TOKENS
from litefocus_jax.utils.io import save_wav
from litefocus_jax.weights import ConversionError

__version__ = "0.2.0.dev0"

_legacy.install()

__all__ = [
    "AudioLDM2Pipeline",
    "AudioLDM2PipelineOutput",
    "AudioLDM2UNet2DConditionModel",
    "ConversionError",
    "LiteFocusConfig",
    "LiteFocusPlan",
    "SPEECH_MAX_NEW_TOKENS",
    "UNetConfig",
    "init_unet",
    "load_clap",
    "load_vits_text_encoder",
    "load_unet",
    "indices_for_step",
    "make_comp_indices",
    "make_plan",
    "save_wav",
]
