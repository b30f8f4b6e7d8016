"""Timestep embeddings (diffusers `models/embeddings.py`: `get_timestep_embedding`, `TimestepEmbedding`)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from litefocus_jax.models.layers import linear


def timestep_embedding(
    timesteps: jax.Array, dim: int, flip_sin_to_cos: bool = True, shift: float = 0.0, max_period: float = 10000.0
) -> jax.Array:
    """Sinusoidal embedding (B,) -> (B, dim), always float32 like diffusers' `Timesteps`."""
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - shift)
    args = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nnx.Module):
    """linear_1 -> SiLU -> linear_2."""

    def __init__(self, in_dim: int, embed_dim: int, *, dtype, rngs: nnx.Rngs):
        # the library's `linear`: host-drawn initial weights, equal in every dtype (flax's default initialiser
        # draws different numbers for bf16 and fp32, so random-weight models differed by dtype)
        self.linear_1 = linear(in_dim, embed_dim, dtype=dtype, rngs=rngs)
        self.linear_2 = linear(embed_dim, embed_dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear_2(jax.nn.silu(self.linear_1(x)))
