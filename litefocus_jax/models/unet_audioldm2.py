"""AudioLDM2UNet2DConditionModel in Flax NNX (diffusers `pipelines/audioldm2/modeling_audioldm2.py`).

Channels-last throughout: sample (B, T, F, C) with T = latent time (torch H) and F = latent frequency
(torch W), so the attention token order t*F + f equals torch's flattening of (B, C, T, F).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from litefocus_jax.litefocus.plan import (
    AUDIOLDM2_LATENT_FRAME_SECONDS,
    LiteFocusConfig,
    make_comp_indices,
    make_plan,
)
from litefocus_jax.models.attention_processor import LiteFocusCalls
from litefocus_jax.models.embeddings import TimestepEmbedding, timestep_embedding
from litefocus_jax.models.layers import conv2d, functional, group_norm
from litefocus_jax.models.unet_2d_blocks import (
    BlockConfig,
    Conditioning,
    CrossAttnDownBlock2D,
    CrossAttnUpBlock2D,
    DownBlock2D,
    UNetMidBlock2DCrossAttn,
    UpBlock2D,
)
from litefocus_jax.weights.loading import convert_state, load_module, resolve_component
from litefocus_jax.weights.state import Path_, read_config

CLASS_NAME = "AudioLDM2UNet2DConditionModel"
DOWN_TYPES = ("DownBlock2D", "CrossAttnDownBlock2D")
UP_TYPES = ("UpBlock2D", "CrossAttnUpBlock2D")
# diffusers options this port implements only at the value every AudioLDM2 checkpoint uses.
_FIXED = {
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "only_cross_attention": False,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "num_attention_heads": None,
    "class_embed_type": None,
    "num_class_embeds": None,
    "resnet_time_scale_shift": "default",
    "time_embedding_type": "positional",
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "class_embeddings_concat": False,
}
_IGNORED = {"upcast_attention", "projection_class_embeddings_input_dim", "sample_size", "dropout"}


def _per_block(value, n: int, name: str) -> tuple:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"UNet config: {name} has {len(value)} entries but there are {n} down blocks.")
        return tuple(value)
    return (value,) * n


def _cross_dims(value) -> tuple:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,)


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """The AudioLDM2 UNet geometry, built from a diffusers `unet/config.json` dict by `from_diffusers`.

    Attributes:
      in_channels / out_channels: latent channels (8 for every cvssp checkpoint).
      block_out_channels: channels per level, e.g. (128, 256, 384, 640).
      down_block_types / up_block_types: "DownBlock2D"/"CrossAttnDownBlock2D", "CrossAttnUpBlock2D"/"UpBlock2D".
      layers_per_block: resnets per down block (up blocks have one more), per level.
      transformer_layers_per_block: BasicTransformerBlocks per Transformer2DModel, per level.
      heads: attention heads per level (diffusers' `attention_head_dim` means the head count).
      cross_attention_dims: per level, one entry per Transformer2DModel after each resnet (None = self only).
      norm_num_groups / norm_eps: ResNet and output GroupNorm.
      flip_sin_to_cos / freq_shift: sinusoidal time embedding.
      time_embedding_dim: None = 4 * block_out_channels[0].
      downsample_padding: 1 for AudioLDM2.
      use_linear_projection: Transformer2D proj_in/out as Linear instead of 1x1 conv.
      conv_in_kernel / conv_out_kernel: 3.
      sample_size: the training latent length (256 = 10.24 s).
    """

    in_channels: int
    out_channels: int
    block_out_channels: tuple[int, ...]
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    layers_per_block: tuple[int, ...]
    transformer_layers_per_block: tuple[int, ...]
    heads: tuple[int, ...]
    cross_attention_dims: tuple[tuple[int | None, ...], ...]
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: float = 0
    time_embedding_dim: int | None = None
    downsample_padding: int = 1
    use_linear_projection: bool = False
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    sample_size: int | None = None

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> UNetConfig:
        """Validate a diffusers AudioLDM2 UNet config dict; errors name the key and the fix."""
        name = config.get("_class_name", CLASS_NAME)
        if name != CLASS_NAME:
            raise ValueError(f"UNet config: _class_name is {name!r}, expected {CLASS_NAME!r}: this is not an AudioLDM2 UNet.")
        for key, want in _FIXED.items():
            if key in config and config[key] != want and not (key == "mid_block_scale_factor" and config[key] == 1.0):
                raise ValueError(f"UNet config: {key}={config[key]!r} is not supported (AudioLDM2 uses {want!r}).")
        known = set(_FIXED) | _IGNORED | {f.name for f in dataclasses.fields(cls)} | {"attention_head_dim", "cross_attention_dim"}
        unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
        if unknown:
            warnings.warn(f"UNet config: ignoring unknown keys {unknown}.", stacklevel=2)
        down = tuple(config.get("down_block_types", ()))
        up = tuple(config.get("up_block_types", ()))
        channels = tuple(int(c) for c in config.get("block_out_channels", ()))
        for kind, types, allowed in (("down_block_types", down, DOWN_TYPES), ("up_block_types", up, UP_TYPES)):
            for i, t in enumerate(types):
                if t not in allowed:
                    raise ValueError(f"UNet config: {kind}[{i}] = {t!r} is unknown; AudioLDM2 blocks are {allowed}.")
        if not channels or len(down) != len(channels) or len(up) != len(channels):
            raise ValueError(
                f"UNet config: block_out_channels {channels}, down_block_types {down} and up_block_types {up} "
                "must be non-empty and of equal length."
            )
        n = len(channels)
        cross = _per_block(config.get("cross_attention_dim", 1280), n, "cross_attention_dim")
        cfg = cls(
            in_channels=int(config.get("in_channels", 4)),
            out_channels=int(config.get("out_channels", 4)),
            block_out_channels=channels,
            down_block_types=down,
            up_block_types=up,
            layers_per_block=tuple(int(v) for v in _per_block(config.get("layers_per_block", 2), n, "layers_per_block")),
            transformer_layers_per_block=tuple(
                int(v) for v in _per_block(config.get("transformer_layers_per_block", 1), n, "transformer_layers_per_block")
            ),
            heads=tuple(int(v) for v in _per_block(config.get("attention_head_dim", 8), n, "attention_head_dim")),
            cross_attention_dims=tuple(_cross_dims(c) for c in cross),
            norm_num_groups=int(config.get("norm_num_groups", 32)),
            norm_eps=float(config.get("norm_eps", 1e-5)),
            flip_sin_to_cos=bool(config.get("flip_sin_to_cos", True)),
            freq_shift=config.get("freq_shift", 0),
            time_embedding_dim=config.get("time_embedding_dim"),
            downsample_padding=int(config.get("downsample_padding", 1)),
            use_linear_projection=bool(config.get("use_linear_projection", False)),
            conv_in_kernel=int(config.get("conv_in_kernel", 3)),
            conv_out_kernel=int(config.get("conv_out_kernel", 3)),
            sample_size=config.get("sample_size"),
        )
        cfg._check()
        return cfg

    def _check(self):
        for i, (kind, dims) in enumerate(zip(self.down_block_types, self.cross_attention_dims)):
            up_kind = self.up_block_types[len(self.up_block_types) - 1 - i]
            if (kind == "CrossAttnDownBlock2D" or up_kind == "CrossAttnUpBlock2D") and not 1 <= len(dims) <= 4:
                raise ValueError(f"UNet config: cross_attention_dim[{i}] = {dims} must hold 1 to 4 entries.")
            if self.block_out_channels[i] % self.heads[i]:
                raise ValueError(
                    f"UNet config: block_out_channels[{i}] = {self.block_out_channels[i]} is not divisible by "
                    f"attention_head_dim[{i}] = {self.heads[i]} heads."
                )
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(
                    f"UNet config: block_out_channels {c} is not divisible by norm_num_groups {self.norm_num_groups}."
                )

    @property
    def num_upsamplers(self) -> int:
        return len(self.block_out_channels) - 1

    def self_attention_calls(self) -> dict:
        """{level: self-attention calls per UNet call}, for every level that has attention."""
        n = len(self.block_out_channels)

        def per_group(dims, layers):
            return sum(layers * (2 if d is None else 1) for d in dims)

        calls = {}
        for level in range(n):
            count = 0
            if self.down_block_types[level] == "CrossAttnDownBlock2D":
                count += self.layers_per_block[level] * per_group(
                    self.cross_attention_dims[level], self.transformer_layers_per_block[level]
                )
            if self.up_block_types[n - 1 - level] == "CrossAttnUpBlock2D":
                count += (self.layers_per_block[level] + 1) * per_group(
                    self.cross_attention_dims[level], self.transformer_layers_per_block[level]
                )
            if count:
                calls[level] = count
        calls["mid"] = per_group(self.cross_attention_dims[-1], self.transformer_layers_per_block[-1])
        return calls

    def encoder_dims(self) -> tuple[set, set]:
        """Widths expected of encoder_hidden_states (idx <= 1) and encoder_hidden_states_1 (idx > 1)."""
        first, second = set(), set()
        for dims in self.cross_attention_dims:
            for idx, d in enumerate(dims):
                if d is not None:
                    (first if idx <= 1 else second).add(d)
        return first, second


def mask_to_bias(mask: jax.Array | None, dtype) -> jax.Array | None:
    """(B, M) 0/1 keep-mask -> additive bias (B, 1, 1, M) = (1 - m) * -10000, as diffusers."""
    if mask is None:
        return None
    return ((1 - jnp.asarray(mask).astype(dtype)) * -10000.0)[:, None, None, :]


_MODULE_LITEFOCUS = object()


class AudioLDM2UNet2DConditionModel(nnx.Module):
    """The AudioLDM2 eps-prediction UNet. Build with `init_unet`/`load_unet`, or directly from a `UNetConfig`."""

    def __init__(
        self,
        config: UNetConfig,
        *,
        dtype=jnp.float32,
        litefocus: LiteFocusConfig | None = None,
        rngs: nnx.Rngs,
        attention_implementation: str | None = None,
    ):
        self.config = config
        self.dtype = dtype
        self.litefocus = litefocus
        self.latent_frame_seconds = AUDIOLDM2_LATENT_FRAME_SECONDS
        c, n = config.block_out_channels, len(config.block_out_channels)
        kw = dict(dtype=dtype, rngs=rngs)
        akw = dict(kw, implementation=attention_implementation)
        temb = config.time_embedding_dim or 4 * c[0]
        self.conv_in = conv2d(config.in_channels, c[0], config.conv_in_kernel, **kw)
        self.time_embedding = TimestepEmbedding(c[0], temb, **kw)

        def bcfg(level):
            return BlockConfig(
                config.norm_num_groups, config.norm_eps, config.transformer_layers_per_block[level], config.use_linear_projection
            )

        down = []
        for i, kind in enumerate(config.down_block_types):
            args = (c[max(i - 1, 0)], c[i], temb)
            common = dict(
                num_layers=config.layers_per_block[i],
                add_downsample=i < n - 1,
                downsample_padding=config.downsample_padding,
                cfg=bcfg(i),
            )
            if kind == "CrossAttnDownBlock2D":
                down.append(
                    CrossAttnDownBlock2D(
                        *args, **common, heads=config.heads[i], cross_attention_dims=config.cross_attention_dims[i], **akw
                    )
                )
            else:
                down.append(DownBlock2D(*args, **common, **kw))
        self.down_blocks = nnx.List(down)
        self.mid_block = UNetMidBlock2DCrossAttn(
            c[-1], temb, cfg=bcfg(n - 1), heads=config.heads[-1], cross_attention_dims=config.cross_attention_dims[-1], **akw
        )
        up = []
        for i, kind in enumerate(config.up_block_types):
            level = n - 1 - i
            args = (c[max(level - 1, 0)], c[level], c[min(level + 1, n - 1)], temb)
            common = dict(num_layers=config.layers_per_block[level] + 1, add_upsample=i < n - 1, cfg=bcfg(level))
            if kind == "CrossAttnUpBlock2D":
                up.append(
                    CrossAttnUpBlock2D(
                        *args, **common, heads=config.heads[level], cross_attention_dims=config.cross_attention_dims[level], **akw
                    )
                )
            else:
                up.append(UpBlock2D(*args, **common, **kw))
        self.up_blocks = nnx.List(up)
        self.conv_norm_out = group_norm(c[0], config.norm_num_groups, config.norm_eps, **kw)
        self.conv_out = conv2d(c[0], config.out_channels, config.conv_out_kernel, **kw)

    def _check_inputs(self, sample, states, states_1, mask, mask_1):
        cfg = self.config
        if sample.ndim != 4 or sample.shape[-1] != cfg.in_channels:
            raise ValueError(
                f"UNet: sample must be channels-last (B, T, F, {cfg.in_channels}), got shape {tuple(sample.shape)}; "
                "transpose a torch (B, C, T, F) latent with .transpose(0, 2, 3, 1)."
            )
        first, second = cfg.encoder_dims()
        for name, x, want in (("encoder_hidden_states", states, first), ("encoder_hidden_states_1", states_1, second)):
            if x is None:
                continue
            if x.ndim != 3 or x.shape[0] != sample.shape[0]:
                raise ValueError(f"UNet: {name} must be (B={sample.shape[0]}, M, D), got {tuple(x.shape)}.")
            if want and x.shape[-1] not in want:
                raise ValueError(f"UNet: {name} has width {x.shape[-1]} but this UNet's cross-attention expects {sorted(want)}.")
        if states is None and (first or second):
            raise ValueError("UNet: encoder_hidden_states is required by this UNet's cross-attention layers.")
        for name, m, x in (
            ("encoder_attention_mask", mask, states),
            ("encoder_attention_mask_1", mask_1, states_1 if states_1 is not None else states),
        ):
            if m is not None and (x is None or tuple(m.shape) != tuple(x.shape[:2])):
                raise ValueError(f"UNet: {name} must be (B, M) matching its encoder states, got {tuple(m.shape)}.")

    def _litefocus_calls(self, litefocus, sample_shape, comp_indices) -> dict:
        plan = make_plan(self.config, litefocus, sample_shape, self.latent_frame_seconds)
        if plan is None or not plan.active:
            return {}
        if comp_indices is None:
            comp_indices = {k: v[0] for k, v in make_comp_indices(plan, 1).items()}
        calls = {}
        for lp in plan.levels:
            idx = comp_indices.get(lp.key) if litefocus.cross_frequency else None
            if litefocus.cross_frequency:
                want = (lp.calls, lp.comp_tokens)
                if idx is None or tuple(idx.shape) != want:
                    got = None if idx is None else tuple(idx.shape)
                    raise ValueError(
                        f"UNet: comp_indices[{lp.key!r}] must be int32 {want} (calls, K) for this sample, got {got}; "
                        "build them with litefocus_jax.make_comp_indices(make_plan(...))."
                    )
            calls[lp.level] = LiteFocusCalls(litefocus, lp, idx)
        return calls

    def __call__(
        self,
        sample: jax.Array,
        timestep,
        encoder_hidden_states: jax.Array | None,
        encoder_hidden_states_1: jax.Array | None = None,
        encoder_attention_mask: jax.Array | None = None,
        encoder_attention_mask_1: jax.Array | None = None,
        *,
        comp_indices: Mapping[str, jax.Array] | None = None,
        litefocus: Any = _MODULE_LITEFOCUS,
    ) -> jax.Array:
        """Predict the noise.

        Args:
          sample: (B, T, F, C_in) noisy latent, channels-last.
          timestep: scalar or (B,) diffusion timestep.
          encoder_hidden_states: (B, M, D) GPT2-generated states (cross-attention idx <= 1).
          encoder_hidden_states_1: (B, L, D1) T5 states (idx > 1); falls back to encoder_hidden_states.
          encoder_attention_mask / encoder_attention_mask_1: (B, M) / (B, L) 0/1 keep-masks.
          comp_indices: {level key: int32 (calls, K)} LiteFocus compensation indices of this call (see
            `make_plan`/`make_comp_indices`); None draws them from the LiteFocus seed.
          litefocus: overrides the module's LiteFocusConfig for this call (None = dense).

        Returns:
          eps (B, T, F, C_out) in the module dtype.
        """
        litefocus = self.litefocus if litefocus is _MODULE_LITEFOCUS else litefocus
        sample = jnp.asarray(sample)
        self._check_inputs(
            sample, encoder_hidden_states, encoder_hidden_states_1, encoder_attention_mask, encoder_attention_mask_1
        )
        dtype, cfg = self.dtype, self.config
        batch = sample.shape[0]
        states_1 = encoder_hidden_states_1 if encoder_hidden_states_1 is not None else encoder_hidden_states
        cond = Conditioning(
            None if encoder_hidden_states is None else jnp.asarray(encoder_hidden_states, dtype),
            mask_to_bias(encoder_attention_mask, dtype),
            None if states_1 is None else jnp.asarray(states_1, dtype),
            mask_to_bias(encoder_attention_mask_1, dtype),
        )
        sparse = self._litefocus_calls(litefocus, sample.shape, comp_indices)

        t = jnp.broadcast_to(jnp.reshape(jnp.asarray(timestep), (-1,)), (batch,))
        emb = self.time_embedding(
            timestep_embedding(t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift).astype(dtype)
        )

        h = self.conv_in(sample.astype(dtype))
        skips = [h]
        for level, block in enumerate(self.down_blocks):
            h, res = block(h, emb, cond, sparse.get(level))
            skips += res
        h = self.mid_block(h, emb, cond, sparse.get("mid"))

        factor = 2**cfg.num_upsamplers
        forward_size = any(s % factor for s in sample.shape[1:3])
        n = len(self.up_blocks)
        for i, block in enumerate(self.up_blocks):
            k = len(block.resnets)
            res, skips = skips[-k:], skips[:-k]
            size = tuple(skips[-1].shape[1:3]) if (i < n - 1 and forward_size) else None
            h = block(h, res, emb, cond, sparse.get(n - 1 - i), upsample_size=size)
        for calls in sparse.values():
            assert calls.cursor == calls.plan.calls, "LiteFocus plan and UNet disagree on the sparse call count"
        return self.conv_out(jax.nn.silu(self.conv_norm_out(h)))

    def functional(self) -> tuple[Callable[..., jax.Array], dict]:
        """A pure face for `jax.jit`/`lax.scan`: returns `(apply, params)`.

        `apply(params, sample, timestep, encoder_hidden_states, encoder_hidden_states_1=None,
        encoder_attention_mask=None, encoder_attention_mask_1=None, *, comp_indices=None, litefocus=...)`
        -> eps; params is a nested dict of arrays (the module's state). The graph is closed over, and
        `nnx.merge` runs inside whatever transformation traces `apply`.
        """
        return functional(self)


# ------------------------------------------------------------------------------------------------ loading

# Tensors of a diffusers UNet checkpoint that the model deliberately does not use: none.
UNET_IGNORE: tuple[str, ...] = ()


def _unet_builder(cfg: UNetConfig, dtype, litefocus, seed=0, attention_implementation=None):
    return lambda: AudioLDM2UNet2DConditionModel(
        cfg, dtype=dtype, litefocus=litefocus, rngs=nnx.Rngs(seed), attention_implementation=attention_implementation
    )


def convert_unet_state(source: Mapping[str, np.ndarray], config: Mapping, *, converted: bool = False) -> dict[Path_, np.ndarray]:
    """Diffusers UNet state dict (or a converted one) -> flat {NNX path: numpy}, strictly validated."""
    cfg = UNetConfig.from_diffusers(config)
    return convert_state(
        source, _unet_builder(cfg, jnp.float32, None), what="AudioLDM2 UNet", converted=converted, ignore=UNET_IGNORE
    )


def load_unet(
    path: str | os.PathLike,
    *,
    dtype=jnp.float32,
    litefocus: LiteFocusConfig | None = None,
    attention_implementation: str | None = None,
) -> AudioLDM2UNet2DConditionModel:
    """Load the AudioLDM2 UNet.

    Args:
      path: a diffusers `unet/` folder (config.json + diffusion_pytorch_model.safetensors), a snapshot root
        holding one, or the converted form written by `convert/convert_audioldm2.py`.
      dtype: parameter and compute dtype (jnp.float32 or jnp.bfloat16).
      litefocus: LiteFocusConfig to make the chosen self-attentions sparse; None = dense.
      attention_implementation: passed to `jax.nn.dot_product_attention` (None, "xla", "cudnn").

    Returns:
      The module: `unet(sample (B,T,F,C), timestep, encoder_hidden_states, encoder_hidden_states_1=None,
      encoder_attention_mask=None, encoder_attention_mask_1=None)` -> eps (B,T,F,C).
    """
    folder = resolve_component(path, "unet")
    cfg = UNetConfig.from_diffusers(read_config(folder))
    build = _unet_builder(cfg, dtype, litefocus, 0, attention_implementation)
    return load_module(folder, build, dtype=dtype, what="AudioLDM2 UNet", ignore=UNET_IGNORE)


def init_unet(
    config: Mapping,
    *,
    seed: int = 0,
    dtype=jnp.float32,
    litefocus: LiteFocusConfig | None = None,
    attention_implementation: str | None = None,
) -> AudioLDM2UNet2DConditionModel:
    """The same module with random weights, from a diffusers UNet config dict (benchmarks, tests)."""
    cfg = UNetConfig.from_diffusers(config)
    return _unet_builder(cfg, dtype, litefocus, seed, attention_implementation)()
