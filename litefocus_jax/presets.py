"""UNet configs of the public AudioLDM2 checkpoints (diffusers `unet/config.json`), for random-weight use.

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
