"""Tiny random-weight PyTorch reference models (AUDIOLDM2.md §4), built with a fixed seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import AudioLDM2UNet2DConditionModel, AutoencoderKL

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


TINY_VAE_CONFIG = dict(
    in_channels=1,
    out_channels=1,
    latent_channels=8,
    block_out_channels=(16, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    layers_per_block=1,
    norm_num_groups=8,
    scaling_factor=0.4110932946205139,
)


def build_tiny_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    vae = AutoencoderKL(**TINY_VAE_CONFIG).eval()
    # Perturb every tensor (the default init zeroes biases and sets GroupNorm to identity) so every path counts.
    perturb(vae, 0.05)
    return vae


def make_inputs(name, batch=2, time=13, freq=16, seed=0, mask_zeros=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 8, time, freq)).astype(np.float32)
    gpt2 = rng.standard_normal((batch, 8, 16)).astype(np.float32)
    t5 = None if name == "tts" else rng.standard_normal((batch, 5, 24)).astype(np.float32)
    mask = None
    if t5 is not None:
        mask = np.ones((batch, 5), np.int64)
        if mask_zeros:
            mask[0, 3:] = 0
    return x, gpt2, t5, mask


def torch_unet_out(unet, x, timestep, gpt2, t5, mask):
    as_t = lambda a: None if a is None else torch.from_numpy(a)  # noqa: E731
    with torch.no_grad():
        out = unet(
            as_t(x),
            timestep,
            encoder_hidden_states=as_t(gpt2),
            encoder_hidden_states_1=as_t(t5),
            encoder_attention_mask_1=as_t(mask),
        )
    return out.sample.numpy()


def jax_unet_out(unet, x, timestep, gpt2, t5, mask, **kwargs):
    out = unet(x.transpose(0, 2, 3, 1), timestep, gpt2, t5, None, mask, **kwargs)
    return np.asarray(out, np.float32).transpose(0, 3, 1, 2)
