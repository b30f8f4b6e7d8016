"""Configs of the public AudioLDM2 checkpoints (diffusers `config.json` of unet, vae, vocoder), for random-weight use.

Loading real weights reads the snapshot's own config.json; these exist so that benchmarks and the demo
can build the real geometry without any download. Sources: AUDIOLDM2.md §2.1 ([C] = the public
cvssp/audioldm2 config; large and music are derived there).
"""

from __future__ import annotations

import copy

_BASE = {
    "_class_name": "AudioLDM2UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [128, 256, 384, 640],
    "class_embed_type": None,
    "cross_attention_dim": [[None, 768, 1024]] * 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 8,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 8,
    "resnet_time_scale_shift": "default",
    "sample_size": 256,
    "time_cond_proj_dim": None,
    "transformer_layers_per_block": 1,
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": False,
    "use_linear_projection": False,
}

UNET_CONFIGS = {
    "audioldm2": _BASE,
    "audioldm2-music": _BASE,
    "audioldm2-large": dict(_BASE, cross_attention_dim=[[None, 768, 1024, None]] * 4, transformer_layers_per_block=2),
    "audioldm2-tts": dict(_BASE, cross_attention_dim=[[None, 768]] * 4),
}


def unet_config(name: str = "audioldm2") -> dict:
    """A fresh copy of a named UNet config dict (see UNET_CONFIGS)."""
    if name not in UNET_CONFIGS:
        raise ValueError(f"unknown UNet preset {name!r}; choose one of {sorted(UNET_CONFIGS)}.")
    return copy.deepcopy(UNET_CONFIGS[name])


# cvssp/audioldm2 vae/config.json and vocoder/config.json (AUDIOLDM2.md §3.3-3.4), for random-weight use.
AUDIOLDM2_VAE = dict(
    _class_name="AutoencoderKL",
    in_channels=1,
    out_channels=1,
    latent_channels=8,
    block_out_channels=[128, 256, 512],
    down_block_types=["DownEncoderBlock2D"] * 3,
    up_block_types=["UpDecoderBlock2D"] * 3,
    layers_per_block=2,
    norm_num_groups=32,
    act_fn="silu",
    sample_size=1024,
    scaling_factor=0.4110932946205139,
)
AUDIOLDM2_VOCODER = dict(
    model_in_dim=64,
    sampling_rate=16000,
    upsample_initial_channel=1024,
    upsample_rates=[5, 4, 2, 2, 2],
    upsample_kernel_sizes=[16, 16, 8, 4, 4],
    resblock_kernel_sizes=[3, 7, 11],
    resblock_dilation_sizes=[[1, 3, 5]] * 3,
    leaky_relu_slope=0.1,
    normalize_before=False,
)
# The tiny random-weight VAE and vocoder of `litefocus_jax.pipelines.audioldm2.tiny.build_tiny_pipeline` and `bench --quick`
# (the vocoder keeps the real 160-sample hop: 25 latent frames per second at 16 kHz).
TINY_VAE = dict(AUDIOLDM2_VAE, block_out_channels=[16, 32, 32], layers_per_block=1, norm_num_groups=8)
TINY_VOCODER = dict(
    model_type="speecht5_hifigan",
    model_in_dim=64,
    sampling_rate=16000,
    upsample_initial_channel=16,
    upsample_rates=[5, 4, 8],
    upsample_kernel_sizes=[16, 8, 16],
    resblock_kernel_sizes=[3, 7],
    resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
    normalize_before=False,
)
