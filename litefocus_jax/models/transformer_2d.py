"""Transformer2DModel and BasicTransformerBlock (diffusers `transformers/transformer_2d.py`, `attention.py`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from litefocus_jax.models.attention_processor import Attention, LiteFocusCalls
from litefocus_jax.models.layers import conv2d, group_norm, layer_norm, linear


class GEGLU(nnx.Module):
    """proj: dim -> 2*inner, split into (value, gate), value * GELU_exact(gate)."""

    def __init__(self, dim: int, inner: int, *, dtype, rngs):
        self.proj = linear(dim, 2 * inner, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        value, gate = jnp.split(self.proj(x), 2, axis=-1)
        return value * jax.nn.gelu(gate, approximate=False)


class FeedForward(nnx.Module):
    """net = [GEGLU, Dropout (no params), Linear(inner, dim)], as diffusers numbers it."""

    def __init__(self, dim: int, *, mult: int = 4, dtype, rngs):
        self.net = nnx.List(
            [GEGLU(dim, dim * mult, dtype=dtype, rngs=rngs), None, linear(dim * mult, dim, dtype=dtype, rngs=rngs)]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nnx.Module):
    """x += attn1(LN x); x += attn2(LN x, context); x += ff(LN x). LayerNorm eps 1e-5.

    With `double_self_attention` (cross_attention_dim None) attn2 is a second self-attention.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int | None, *, dtype, rngs, implementation=None):
        kw = dict(dtype=dtype, rngs=rngs, implementation=implementation)
        self.double_self_attention = cross_attention_dim is None
        self.norm1 = layer_norm(dim, 1e-5, dtype=dtype, rngs=rngs)
        self.attn1 = Attention(dim, heads, dim_head, **kw)
        self.norm2 = layer_norm(dim, 1e-5, dtype=dtype, rngs=rngs)
        self.attn2 = Attention(dim, heads, dim_head, cross_attention_dim, **kw)
        self.norm3 = layer_norm(dim, 1e-5, dtype=dtype, rngs=rngs)
        self.ff = FeedForward(dim, dtype=dtype, rngs=rngs)

    def __call__(self, x, context=None, bias=None, *, grid=None, sparse: LiteFocusCalls | None = None):
        """x (B, T*F, C) on `grid` = (T, F); context (B, M, C_ctx) or None; bias additive (B, 1, 1, M)."""
        x = x + self.attn1(self.norm1(x), grid=grid, sparse=sparse)
        if self.double_self_attention:
            x = x + self.attn2(self.norm2(x), grid=grid, sparse=sparse)
        else:
            x = x + self.attn2(self.norm2(x), context, bias)
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nnx.Module):
    """GroupNorm(eps 1e-6) -> proj_in -> tokens t*F + f -> blocks -> proj_out -> + residual."""

    def __init__(
        self,
        heads: int,
        dim_head: int,
        in_channels: int,
        *,
        num_layers: int,
        cross_attention_dim: int | None,
        groups: int,
        use_linear_projection: bool = False,
        dtype,
        rngs,
        implementation=None,
    ):
        inner = heads * dim_head
        self.use_linear_projection = use_linear_projection
        self.norm = group_norm(in_channels, groups, 1e-6, dtype=dtype, rngs=rngs)
        if use_linear_projection:
            self.proj_in = linear(in_channels, inner, dtype=dtype, rngs=rngs)
            self.proj_out = linear(inner, in_channels, dtype=dtype, rngs=rngs)
        else:
            self.proj_in = conv2d(in_channels, inner, 1, dtype=dtype, rngs=rngs)
            self.proj_out = conv2d(inner, in_channels, 1, dtype=dtype, rngs=rngs)
        self.transformer_blocks = nnx.List(
            [
                BasicTransformerBlock(
                    inner, heads, dim_head, cross_attention_dim, dtype=dtype, rngs=rngs, implementation=implementation
                )
                for _ in range(num_layers)
            ]
        )

    def __call__(self, x, context=None, bias=None, sparse: LiteFocusCalls | None = None):
        """x (B, T, F, C) -> (B, T, F, C). Token order t*F + f, as torch's (B, C, T, F) flattening."""
        b, t, f, _ = x.shape
        h = self.norm(x)
        if self.use_linear_projection:
            h = self.proj_in(h.reshape(b, t * f, -1))
        else:
            h = self.proj_in(h).reshape(b, t * f, -1)
        for block in self.transformer_blocks:
            h = block(h, context, bias, grid=(t, f), sparse=sparse)
        if self.use_linear_projection:
            h = self.proj_out(h).reshape(b, t, f, -1)
        else:
            h = self.proj_out(h.reshape(b, t, f, -1))
        return h + x
