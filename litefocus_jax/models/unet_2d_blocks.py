"""The AudioLDM2 UNet blocks (diffusers `pipelines/audioldm2/modeling_audioldm2.py`, `unet_2d_blocks.py`).

Each resnet of a cross-attention block is followed by one Transformer2DModel per entry of
`cross_attention_dim`; entry idx is fed: None -> nothing (a double self-attention block), idx <= 1 ->
`encoder_hidden_states` (GPT2), idx > 1 -> `encoder_hidden_states_1` (T5). Attentions are numbered
`resnet_index * len(cross_attention_dim) + idx`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from litefocus_jax.models.attention_processor import LiteFocusCalls
from litefocus_jax.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from litefocus_jax.models.transformer_2d import Transformer2DModel


class Conditioning(NamedTuple):
    """Encoder states (B, M, C) and their additive biases (B, 1, 1, M) or None."""

    states: jax.Array | None
    bias: jax.Array | None
    states_1: jax.Array | None
    bias_1: jax.Array | None

    def route(self, idx: int, dim: int | None):
        if dim is None:
            return None, None
        return (self.states, self.bias) if idx <= 1 else (self.states_1, self.bias_1)


def _transformers(channels, heads, dims, n_resnets, cfg, dtype, rngs, implementation):
    return nnx.List(
        [
            Transformer2DModel(
                heads,
                channels // heads,
                channels,
                num_layers=cfg.transformer_layers,
                cross_attention_dim=dim,
                groups=cfg.groups,
                use_linear_projection=cfg.use_linear_projection,
                dtype=dtype,
                rngs=rngs,
                implementation=implementation,
            )
            for _ in range(n_resnets)
            for dim in dims
        ]
    )


class BlockConfig(NamedTuple):
    """What every block of one UNet level needs."""

    groups: int
    eps: float
    transformer_layers: int
    use_linear_projection: bool


def _attend_all(attentions, dims, i, h, cond: Conditioning, sparse):
    for idx, dim in enumerate(dims):
        context, bias = cond.route(idx, dim)
        h = attentions[i * len(dims) + idx](h, context, bias, sparse=sparse)
    return h


class DownBlock2D(nnx.Module):
    def __init__(self, c_in, c_out, temb, *, num_layers, add_downsample, downsample_padding, cfg: BlockConfig, dtype, rngs):
        self.resnets = nnx.List(
            [
                ResnetBlock2D(c_in if i == 0 else c_out, c_out, temb, groups=cfg.groups, eps=cfg.eps, dtype=dtype, rngs=rngs)
                for i in range(num_layers)
            ]
        )
        self.downsamplers = (
            nnx.List([Downsample2D(c_out, padding=downsample_padding, dtype=dtype, rngs=rngs)]) if add_downsample else None
        )

    def __call__(self, h, temb, cond=None, sparse=None):
        """h (B, T, F, C_in) -> (h', skips): every resnet output, then the downsampled output."""
        skips = []
        for resnet in self.resnets:
            h = resnet(h, temb)
            skips.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
            skips.append(h)
        return h, skips


class CrossAttnDownBlock2D(DownBlock2D):
    def __init__(
        self,
        c_in,
        c_out,
        temb,
        *,
        num_layers,
        add_downsample,
        downsample_padding,
        cfg,
        heads,
        cross_attention_dims,
        dtype,
        rngs,
        implementation=None,
    ):
        super().__init__(
            c_in,
            c_out,
            temb,
            num_layers=num_layers,
            add_downsample=add_downsample,
            downsample_padding=downsample_padding,
            cfg=cfg,
            dtype=dtype,
            rngs=rngs,
        )
        self.cross_attention_dims = tuple(cross_attention_dims)
        self.attentions = _transformers(c_out, heads, self.cross_attention_dims, num_layers, cfg, dtype, rngs, implementation)

    def __call__(self, h, temb, cond: Conditioning, sparse: LiteFocusCalls | None = None):
        skips = []
        for i, resnet in enumerate(self.resnets):
            h = _attend_all(self.attentions, self.cross_attention_dims, i, resnet(h, temb), cond, sparse)
            skips.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
            skips.append(h)
        return h, skips


class UNetMidBlock2DCrossAttn(nnx.Module):
    """resnet, then one Transformer2D group, then resnet."""

    def __init__(self, channels, temb, *, cfg, heads, cross_attention_dims, dtype, rngs, implementation=None):
        self.cross_attention_dims = tuple(cross_attention_dims)
        self.resnets = nnx.List(
            [ResnetBlock2D(channels, channels, temb, groups=cfg.groups, eps=cfg.eps, dtype=dtype, rngs=rngs) for _ in range(2)]
        )
        self.attentions = _transformers(channels, heads, self.cross_attention_dims, 1, cfg, dtype, rngs, implementation)

    def __call__(self, h, temb, cond: Conditioning, sparse: LiteFocusCalls | None = None):
        h = self.resnets[0](h, temb)
        h = _attend_all(self.attentions, self.cross_attention_dims, 0, h, cond, sparse)
        return self.resnets[1](h, temb)


class UpBlock2D(nnx.Module):
    def __init__(self, c_in, c_out, c_prev, temb, *, num_layers, add_upsample, cfg: BlockConfig, dtype, rngs):
        self.resnets = nnx.List(
            [
                ResnetBlock2D(
                    (c_prev if i == 0 else c_out) + (c_in if i == num_layers - 1 else c_out),
                    c_out,
                    temb,
                    groups=cfg.groups,
                    eps=cfg.eps,
                    dtype=dtype,
                    rngs=rngs,
                )
                for i in range(num_layers)
            ]
        )
        self.upsamplers = nnx.List([Upsample2D(c_out, dtype=dtype, rngs=rngs)]) if add_upsample else None

    def _upsample(self, h, size):
        return h if self.upsamplers is None else self.upsamplers[0](h, size)

    def __call__(self, h, skips, temb, cond=None, sparse=None, upsample_size=None):
        """h (B, T, F, C_prev); skips consumed last-first, each concatenated after h on channels."""
        for resnet in self.resnets:
            h = resnet(jnp.concatenate([h, skips.pop()], axis=-1), temb)
        return self._upsample(h, upsample_size)


class CrossAttnUpBlock2D(UpBlock2D):
    def __init__(
        self,
        c_in,
        c_out,
        c_prev,
        temb,
        *,
        num_layers,
        add_upsample,
        cfg,
        heads,
        cross_attention_dims,
        dtype,
        rngs,
        implementation=None,
    ):
        super().__init__(
            c_in, c_out, c_prev, temb, num_layers=num_layers, add_upsample=add_upsample, cfg=cfg, dtype=dtype, rngs=rngs
        )
        self.cross_attention_dims = tuple(cross_attention_dims)
        self.attentions = _transformers(c_out, heads, self.cross_attention_dims, num_layers, cfg, dtype, rngs, implementation)

    def __call__(self, h, skips, temb, cond: Conditioning, sparse: LiteFocusCalls | None = None, upsample_size=None):
        for i, resnet in enumerate(self.resnets):
            h = resnet(jnp.concatenate([h, skips.pop()], axis=-1), temb)
            h = _attend_all(self.attentions, self.cross_attention_dims, i, h, cond, sparse)
        return self._upsample(h, upsample_size)
