"""Tiny random-weight PyTorch reference models (AUDIOLDM2.md §4), built with a fixed seed."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AudioLDM2UNet2DConditionModel

_COMMON = dict(
    sample_size=64,
    in_channels=8,
    out_channels=8,
    block_out_channels=(16, 32, 48, 64),
    layers_per_block=2,
    down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
    up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
    attention_head_dim=2,
    norm_num_groups=8,
)

# Same nesting as the real checkpoints (AUDIOLDM2.md §2.1) at tiny widths: GPT2 width 16, T5 width 24.
TINY_UNET_CONFIGS = {
    "base": dict(_COMMON, cross_attention_dim=([None, 16, 24],) * 4, transformer_layers_per_block=1),
    "large": dict(_COMMON, cross_attention_dim=([None, 16, 24, None],) * 4, transformer_layers_per_block=2),
    "tts": dict(_COMMON, cross_attention_dim=([None, 16],) * 4, transformer_layers_per_block=1, layers_per_block=1),
}


def perturb(module: torch.nn.Module, scale: float) -> torch.nn.Module:
    """Add scale * N(0, 1) to every parameter: default inits zero biases, set norms to identity and leave some
    layers (e.g. proj_out) near zero, which would hide layout mistakes."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def build_tiny_unet(name: str, seed: int = 0) -> AudioLDM2UNet2DConditionModel:
    torch.manual_seed(seed)
    return perturb(AudioLDM2UNet2DConditionModel(**TINY_UNET_CONFIGS[name]).eval(), 0.05)


def save_tiny_unet(name: str, folder: Path, seed: int = 0) -> Path:
    build_tiny_unet(name, seed).save_pretrained(folder)
    return Path(folder)
