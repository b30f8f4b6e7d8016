"""ResnetBlock2D, Downsample2D and Upsample2D (diffusers `models/resnet.py`, `downsampling.py`, `upsampling.py`).

All tensors are channels-last: (B, T, F, C) with T = latent time (torch H) and F = latent frequency (torch W).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from litefocus_jax.models.layers import conv2d, group_norm, linear


class ResnetBlock2D(nnx.Module):
    """GN -> SiLU -> conv1 -> + time projection -> GN -> SiLU -> conv2, plus a (1x1) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, *, groups: int, eps: float, dtype, rngs):
        self.norm1 = group_norm(in_channels, groups, eps, dtype=dtype, rngs=rngs)
        self.conv1 = conv2d(in_channels, out_channels, 3, dtype=dtype, rngs=rngs)
        self.time_emb_proj = linear(temb_channels, out_channels, dtype=dtype, rngs=rngs)
        self.norm2 = group_norm(out_channels, groups, eps, dtype=dtype, rngs=rngs)
        self.conv2 = conv2d(out_channels, out_channels, 3, dtype=dtype, rngs=rngs)
        self.conv_shortcut = conv2d(in_channels, out_channels, 1, dtype=dtype, rngs=rngs) if in_channels != out_channels else None

    def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
        """x (B, T, F, C_in), temb (B, temb_channels) -> (B, T, F, C_out)."""
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = h + self.time_emb_proj(jax.nn.silu(temb))[:, None, None, :]
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return shortcut + h


class Downsample2D(nnx.Module):
    """3x3 stride-2 convolution; padding 0 means torch's asymmetric (0, 1) pad first (VAE encoder)."""

    def __init__(self, channels: int, *, padding: int = 1, dtype, rngs):
        self.padding = padding
        self.conv = conv2d(channels, channels, 3, stride=2, padding=padding, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.padding == 0:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return self.conv(x)


def torch_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source indices of torch `F.interpolate(mode="nearest")`: floor(i * float32(in/out)), clipped.

    `jax.image.resize(..., "nearest")` uses half-pixel centres and picks other rows when out != 2 * in.
    """
    if out_size == 2 * in_size:
        return np.arange(out_size) // 2
    scale = np.float32(in_size) / np.float32(out_size)
    idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, in_size - 1)


def upsample_nearest(x: jax.Array, size: tuple[int, int] | None = None) -> jax.Array:
    """Nearest upsampling of (B, T, F, C) by 2, or to `size` = (T_out, F_out) with torch's index rule."""
    t_out, f_out = size if size is not None else (2 * x.shape[1], 2 * x.shape[2])
    if (t_out, f_out) == (2 * x.shape[1], 2 * x.shape[2]):
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    x = jnp.take(x, torch_nearest_indices(x.shape[1], t_out), axis=1)
    return jnp.take(x, torch_nearest_indices(x.shape[2], f_out), axis=2)


class Upsample2D(nnx.Module):
    """Nearest x2 (or to the skip's size) then 3x3 convolution."""

    def __init__(self, channels: int, *, dtype, rngs):
        self.conv = conv2d(channels, channels, 3, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, size: tuple[int, int] | None = None) -> jax.Array:
        return self.conv(upsample_nearest(x, size))
