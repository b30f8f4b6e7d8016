"""AutoencoderKL (the AudioLDM2 mel VAE) in Flax NNX (diffusers `models/autoencoders/{autoencoder_kl,vae}.py`).

Channels-last throughout: a mel image is (B, T, F, 1) with T = frames (torch H) and F = mel bins (torch W);
latents are (B, T/4, F/4, latent_channels). Attribute names mirror the diffusers module tree
(`encoder.down_blocks.{i}.resnets.{j}`, `decoder.mid_block.attentions.0.to_q`, `post_quant_conv`, ...), so
checkpoint keys map one to one.

Scaling is the caller's job, as in diffusers: the pipeline decodes `latents / config.scaling_factor`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from litefocus_jax.kernels.attention import dot_product_attention
from litefocus_jax.models.layers import conv2d, functional, group_norm, linear
from litefocus_jax.models.resnet import Downsample2D, Upsample2D
from litefocus_jax.weights.state import (
    Path_,
    abstract_params,
    map_converted_state,
    map_torch_state,
    read_config,
)

CLASS_NAME = "AutoencoderKL"
WHAT = "AutoencoderKL (VAE)"
# diffusers hard-codes these inside Encoder/Decoder (not config keys): every GroupNorm eps and the encoder's
# asymmetric (0, 1) pad before each stride-2 conv.
GN_EPS = 1e-6
DOWNSAMPLE_PADDING = 0
# DiagonalGaussianDistribution clamps logvar to this range before anything else reads it.
LOGVAR_RANGE = (-30.0, 20.0)
# The mid-block attention is single-head over all T*F latent tokens (32 000 at 80 s): a one-shot score matrix
# would be 4 GB. It goes through the kernels' entry point, which never forms it; ATTENTION_CHUNK = None lets the
# block-wise path size its query blocks from its memory budget.
ATTENTION_CHUNK = None

_FIXED = {"act_fn": ("silu", "swish")}
# Read by the pipeline or by diffusers' tiling/upcasting, never by the network: force_upcast is ignored by
# AudioLDM2Pipeline (pitfall 14); shift_factor/latents_mean/latents_std are not used by AudioLDM2.
_IGNORED = {"sample_size", "force_upcast", "shift_factor", "latents_mean", "latents_std"}


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """The AutoencoderKL geometry, built from a diffusers `vae/config.json` dict by `from_diffusers`.

    Attributes:
      in_channels / out_channels: image channels (1 = one log-mel channel).
      latent_channels: 8 for AudioLDM2.
      block_out_channels: channels per level, e.g. (128, 256, 512); len - 1 = number of 2x resamplings.
      layers_per_block: resnets per encoder level (decoder levels have one more).
      norm_num_groups: GroupNorm groups (eps is always 1e-6).
      scaling_factor: the latent scale; the pipeline decodes `latents / scaling_factor` (0.4110932946205139 for
        cvssp/audioldm2; read large/music from their own config).
      use_quant_conv / use_post_quant_conv: the 1x1 convs around the latent (True for AudioLDM2).
      mid_block_add_attention: the single-head attention between the two mid resnets.
    """

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> VAEConfig:
        """Validate a diffusers AutoencoderKL config dict; errors name the key and the fix."""
        name = config.get("_class_name", CLASS_NAME)
        if name != CLASS_NAME:
            raise ValueError(f"VAE config: _class_name is {name!r}, expected {CLASS_NAME!r}: this is not an AutoencoderKL.")
        for key, allowed in _FIXED.items():
            if key in config and config[key] not in allowed:
                raise ValueError(f"VAE config: {key}={config[key]!r} is not supported (AudioLDM2 uses {allowed[0]!r}).")
        known = set(_FIXED) | _IGNORED | {f.name for f in dataclasses.fields(cls)} | {"down_block_types", "up_block_types"}
        unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
        if unknown:
            warnings.warn(f"VAE config: ignoring unknown keys {unknown}.", stacklevel=2)
        channels = tuple(int(c) for c in config.get("block_out_channels", cls.block_out_channels))
        for key, want in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
            types = tuple(config.get(key, (want,)))
            for i, t in enumerate(types):
                if t != want:
                    raise ValueError(f"VAE config: {key}[{i}] = {t!r} is not supported; AudioLDM2's VAE uses {want!r} only.")
            if len(types) != len(channels):
                raise ValueError(
                    f"VAE config: {key} has {len(types)} entries but block_out_channels {channels} has {len(channels)}."
                )
        cfg = cls(
            in_channels=int(config.get("in_channels", cls.in_channels)),
            out_channels=int(config.get("out_channels", cls.out_channels)),
            latent_channels=int(config.get("latent_channels", cls.latent_channels)),
            block_out_channels=channels,
            layers_per_block=int(config.get("layers_per_block", cls.layers_per_block)),
            norm_num_groups=int(config.get("norm_num_groups", cls.norm_num_groups)),
            scaling_factor=float(config.get("scaling_factor", cls.scaling_factor)),
            use_quant_conv=bool(config.get("use_quant_conv", True)),
            use_post_quant_conv=bool(config.get("use_post_quant_conv", True)),
            mid_block_add_attention=bool(config.get("mid_block_add_attention", True)),
        )
        cfg._check()
        return cfg

    def _check(self):
        if not self.block_out_channels:
            raise ValueError("VAE config: block_out_channels must be non-empty.")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(
                    f"VAE config: block_out_channels {c} is not divisible by norm_num_groups {self.norm_num_groups}."
                )
        if self.layers_per_block < 1:
            raise ValueError(f"VAE config: layers_per_block must be >= 1, got {self.layers_per_block}.")

    @property
    def scale_factor(self) -> int:
        """Spatial down-sampling factor between mel and latent (4 for AudioLDM2): 2**(levels - 1)."""
        return 2 ** (len(self.block_out_channels) - 1)


class VAEResnetBlock2D(nnx.Module):
    """ResnetBlock2D without time embedding: GN -> SiLU -> conv1 -> GN -> SiLU -> conv2, plus a 1x1 shortcut."""

    def __init__(self, in_channels: int, out_channels: int, *, groups: int, dtype, rngs):
        self.norm1 = group_norm(in_channels, groups, GN_EPS, dtype=dtype, rngs=rngs)
        self.conv1 = conv2d(in_channels, out_channels, 3, dtype=dtype, rngs=rngs)
        self.norm2 = group_norm(out_channels, groups, GN_EPS, dtype=dtype, rngs=rngs)
        self.conv2 = conv2d(out_channels, out_channels, 3, dtype=dtype, rngs=rngs)
        self.conv_shortcut = conv2d(in_channels, out_channels, 1, dtype=dtype, rngs=rngs) if in_channels != out_channels else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """x (B, T, F, C_in) -> (B, T, F, C_out)."""
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return shortcut + h


class VAEAttention(nnx.Module):
    """diffusers `Attention(_from_deprecated_attn_block=True)` of the mid block: GN -> single-head self-attention
    over all T*F positions (token t*F + f, as torch's (C, H*W) flattening) -> to_out.0 -> + residual.

    `rescale_output_factor` is 1 (the Encoder/Decoder pass output_scale_factor=1), so no division.
    """

    def __init__(self, channels: int, *, groups: int, chunk: int | None, implementation=None, dtype, rngs):
        self.chunk = chunk
        self.implementation = implementation
        self.group_norm = group_norm(channels, groups, GN_EPS, dtype=dtype, rngs=rngs)
        self.to_q = linear(channels, channels, dtype=dtype, rngs=rngs)
        self.to_k = linear(channels, channels, dtype=dtype, rngs=rngs)
        self.to_v = linear(channels, channels, dtype=dtype, rngs=rngs)
        self.to_out = nnx.List([linear(channels, channels, dtype=dtype, rngs=rngs)])

    def __call__(self, x: jax.Array) -> jax.Array:
        """x (B, T, F, C) -> (B, T, F, C)."""
        b, t, f, c = x.shape
        h = self.group_norm(x).reshape(b, t * f, 1, c)  # one head of width C: scale C**-0.5
        out = dot_product_attention(
            self.to_q(h), self.to_k(h), self.to_v(h), implementation=self.implementation, query_chunk=self.chunk
        )
        return x + self.to_out[0](out.reshape(b, t, f, c))


class UNetMidBlock2D(nnx.Module):
    """resnets[0] -> attentions[0] -> resnets[1] (no time embedding)."""

    def __init__(self, channels: int, *, groups: int, add_attention: bool, chunk: int | None, implementation=None, dtype, rngs):
        kw = dict(groups=groups, dtype=dtype, rngs=rngs)
        attn = VAEAttention(channels, chunk=chunk, implementation=implementation, **kw)
        self.attentions = nnx.List([attn] if add_attention else [])
        self.resnets = nnx.List([VAEResnetBlock2D(channels, channels, **kw) for _ in range(2)])

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class DownEncoderBlock2D(nnx.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, *, add_downsample: bool, groups: int, dtype, rngs):
        self.resnets = nnx.List(
            [
                VAEResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups=groups, dtype=dtype, rngs=rngs)
                for i in range(num_layers)
            ]
        )
        self.downsamplers = (
            nnx.List([Downsample2D(out_channels, padding=DOWNSAMPLE_PADDING, dtype=dtype, rngs=rngs)]) if add_downsample else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for resnet in self.resnets:
            x = resnet(x)
        for down in self.downsamplers or ():
            x = down(x)
        return x


class UpDecoderBlock2D(nnx.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, *, add_upsample: bool, groups: int, dtype, rngs):
        self.resnets = nnx.List(
            [
                VAEResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups=groups, dtype=dtype, rngs=rngs)
                for i in range(num_layers)
            ]
        )
        self.upsamplers = nnx.List([Upsample2D(out_channels, dtype=dtype, rngs=rngs)]) if add_upsample else None

    def __call__(self, x: jax.Array) -> jax.Array:
        for resnet in self.resnets:
            x = resnet(x)
        for up in self.upsamplers or ():
            x = up(x)
        return x


class Encoder(nnx.Module):
    """conv_in -> down blocks (stride-2 with asymmetric pad) -> mid block -> GN -> SiLU -> conv_out (2*latent)."""

    def __init__(self, cfg: VAEConfig, *, chunk: int | None, implementation=None, dtype, rngs):
        c, g = cfg.block_out_channels, cfg.norm_num_groups
        kw = dict(dtype=dtype, rngs=rngs)
        self.conv_in = conv2d(cfg.in_channels, c[0], 3, **kw)
        self.down_blocks = nnx.List(
            [
                DownEncoderBlock2D(c[max(i - 1, 0)], c[i], cfg.layers_per_block, add_downsample=i < len(c) - 1, groups=g, **kw)
                for i in range(len(c))
            ]
        )
        self.mid_block = UNetMidBlock2D(
            c[-1], groups=g, add_attention=cfg.mid_block_add_attention, chunk=chunk, implementation=implementation, **kw
        )
        self.conv_norm_out = group_norm(c[-1], g, GN_EPS, **kw)
        self.conv_out = conv2d(c[-1], 2 * cfg.latent_channels, 3, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv_in(x)
        for block in self.down_blocks:
            h = block(h)
        h = self.mid_block(h)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(h)))


class Decoder(nnx.Module):
    """conv_in -> mid block -> up blocks (nearest x2 + conv) -> GN -> SiLU -> conv_out."""

    def __init__(self, cfg: VAEConfig, *, chunk: int | None, implementation=None, dtype, rngs):
        c, g = cfg.block_out_channels, cfg.norm_num_groups
        rc = tuple(reversed(c))
        kw = dict(dtype=dtype, rngs=rngs)
        self.conv_in = conv2d(cfg.latent_channels, c[-1], 3, **kw)
        self.mid_block = UNetMidBlock2D(
            c[-1], groups=g, add_attention=cfg.mid_block_add_attention, chunk=chunk, implementation=implementation, **kw
        )
        self.up_blocks = nnx.List(
            [
                UpDecoderBlock2D(rc[max(i - 1, 0)], rc[i], cfg.layers_per_block + 1, add_upsample=i < len(c) - 1, groups=g, **kw)
                for i in range(len(c))
            ]
        )
        self.conv_norm_out = group_norm(c[0], g, GN_EPS, **kw)
        self.conv_out = conv2d(c[0], cfg.out_channels, 3, **kw)

    def __call__(self, z: jax.Array) -> jax.Array:
        h = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            h = block(h)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(h)))


class DiagonalGaussian(NamedTuple):
    """The encoder's posterior: unpacks as `(mean, logvar)`; logvar is already clamped to [-30, 20]."""

    mean: jax.Array
    logvar: jax.Array

    @property
    def std(self) -> jax.Array:
        return jnp.exp(0.5 * self.logvar)

    def mode(self) -> jax.Array:
        return self.mean

    def sample(self, key: jax.Array) -> jax.Array:
        """mean + std * N(0, 1) drawn from `key` (a jax.random key; not torch-generator compatible)."""
        return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)


class AutoencoderKL(nnx.Module):
    """The KL autoencoder. `decode(z)` for text-to-audio; `encode(mel)` (needs the encoder) for audio-to-latent."""

    def __init__(
        self,
        config: VAEConfig,
        *,
        dtype=jnp.float32,
        with_encoder: bool = True,
        attention_chunk: int | None = ATTENTION_CHUNK,
        attention_implementation: str | None = None,
        rngs: nnx.Rngs,
    ):
        """`with_encoder=False` builds the decoder side only (text-to-audio needs nothing else)."""
        self.config = config
        self.dtype = dtype
        kw = dict(chunk=attention_chunk, implementation=attention_implementation, dtype=dtype, rngs=rngs)
        lc = config.latent_channels
        self.encoder = Encoder(config, **kw) if with_encoder else None
        self.quant_conv = conv2d(2 * lc, 2 * lc, 1, dtype=dtype, rngs=rngs) if with_encoder and config.use_quant_conv else None
        self.decoder = Decoder(config, **kw)
        self.post_quant_conv = conv2d(lc, lc, 1, dtype=dtype, rngs=rngs) if config.use_post_quant_conv else None

    def _check(self, x, channels: int, name: str, hint: str) -> jax.Array:
        x = jnp.asarray(x)
        if x.ndim != 4 or x.shape[-1] != channels:
            raise ValueError(f"VAE.{name}: input must be channels-last (B, T, F, {channels}), got shape {tuple(x.shape)}; {hint}")
        return x.astype(self.dtype)

    def decode(self, z: jax.Array) -> jax.Array:
        """Latents (B, T, F, latent_channels), already divided by `config.scaling_factor` -> mel
        (B, s*T, s*F, out_channels) in the module dtype, s = `config.scale_factor` (4)."""
        z = self._check(
            z, self.config.latent_channels, "decode", "transpose a torch (B, C, T, F) latent with .transpose(0, 2, 3, 1)."
        )
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def encode(self, x: jax.Array) -> DiagonalGaussian:
        """Mel (B, T, F, in_channels) -> posterior `(mean, logvar)`, each (B, ~T/s, ~F/s, latent_channels).

        Odd sizes follow torch (pad (0, 1) then a 3x3 stride-2 conv): each level maps n -> n // 2.
        Multiply a sample/mode by `config.scaling_factor` to get diffusion latents.
        """
        if self.encoder is None:
            raise ValueError("VAE.encode: this VAE was built without its encoder; load it with with_encoder=True.")
        x = self._check(
            x, self.config.in_channels, "encode", "a torch (B, 1, T, F) mel becomes (B, T, F, 1) via .transpose(0, 2, 3, 1)."
        )
        h = self.encoder(x)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        mean, logvar = jnp.split(h, 2, axis=-1)
        return DiagonalGaussian(mean, jnp.clip(logvar, *LOGVAR_RANGE))

    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """Reconstruct: decode(encode(x).sample(key)), or the posterior mode when key is None."""
        posterior = self.encode(x)
        return self.decode(posterior.mode() if key is None else posterior.sample(key))

    def functional(self, method: str = "decode") -> tuple[Callable[..., Any], dict]:
        """A pure face for `jax.jit`: `(apply, params)` with `apply(params, *args)` calling `method`
        ("decode", "encode" or "__call__")."""
        if method not in ("decode", "encode", "__call__"):
            raise ValueError(f"VAE.functional: method must be 'decode', 'encode' or '__call__', got {method!r}.")
        return functional(self, method)


# ---------------------------------------------------------------------------------------------- weights

# Checkpoint tensors the full model deliberately does not use: none.
VAE_IGNORE: tuple[str, ...] = ()
# With with_encoder=False the encoder side of the checkpoint is dropped on purpose (text-to-audio decodes only).
VAE_ENCODER_KEYS: tuple[str, ...] = (r"encoder\..*", r"quant_conv\..*")
# Very old checkpoints name the mid-block attention query/key/value/proj_attn (diffusers renames them on load).
_ATTN = r"^((?:en|de)coder\.mid_block\.attentions\.\d+)\."
VAE_RENAME: tuple[tuple[str, str], ...] = (
    (_ATTN + r"query\.", r"\1.to_q."),
    (_ATTN + r"key\.", r"\1.to_k."),
    (_ATTN + r"value\.", r"\1.to_v."),
    (_ATTN + r"proj_attn\.", r"\1.to_out.0."),
)


def _attn_linear(w: np.ndarray) -> np.ndarray:
    # Linear (out, in) -> (in, out); a leftover 1x1-conv form (out, in, 1, 1) of LDM-era checkpoints too.
    return (w[:, :, 0, 0] if w.ndim == 4 else w).T


VAE_LAYOUTS = {
    r"(?:en|de)coder\.mid_block\.attentions\.\d+\.(?:to_q|to_k|to_v|to_out\.0|query|key|value|proj_attn)\.weight": _attn_linear
}


def _rules(with_encoder: bool) -> dict:
    return dict(rename=VAE_RENAME, ignore=VAE_IGNORE + (() if with_encoder else VAE_ENCODER_KEYS), layouts=VAE_LAYOUTS)


def _builder(
    cfg: VAEConfig,
    dtype,
    *,
    with_encoder: bool = True,
    attention_chunk=ATTENTION_CHUNK,
    attention_implementation=None,
    seed: int = 0,
):
    return lambda: AutoencoderKL(
        cfg,
        dtype=dtype,
        with_encoder=with_encoder,
        attention_chunk=attention_chunk,
        attention_implementation=attention_implementation,
        rngs=nnx.Rngs(seed),
    )


def _drop_encoder(source: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    pats = [re.compile(p) for p in VAE_ENCODER_KEYS]
    return {k: v for k, v in source.items() if not any(p.fullmatch(k) for p in pats)}


def convert_vae_state(
    source: Mapping[str, np.ndarray], config: Mapping, *, converted: bool = False, with_encoder: bool = True
) -> dict[Path_, np.ndarray]:
    """Diffusers AutoencoderKL state dict (or a converted one) -> flat {NNX path: numpy}, strictly validated.

    With `with_encoder=False` the `encoder.*`/`quant_conv.*` tensors are dropped (decoder-only model).
    """
    cfg = VAEConfig.from_diffusers(config)
    _, targets = abstract_params(_builder(cfg, jnp.float32, with_encoder=with_encoder))
    if converted:
        return map_converted_state(source if with_encoder else _drop_encoder(source), targets, WHAT)
    return map_torch_state(source, targets, what=WHAT, **_rules(with_encoder))


def load_vae(
    path: str | os.PathLike,
    *,
    dtype=jnp.float32,
    with_encoder: bool = True,
    attention_chunk: int | None = ATTENTION_CHUNK,
    attention_implementation: str | None = None,
) -> AutoencoderKL:
    """Load the AudioLDM2 VAE.

    Args:
      path: a diffusers `vae/` folder (config.json + diffusion_pytorch_model.safetensors), a snapshot root holding
        one, or the converted form.
      dtype: parameter and compute dtype (jnp.float32 or jnp.bfloat16).
      with_encoder: False loads the decoder side only (the encoder's tensors are skipped on purpose).
      attention_chunk: queries per block when the mid-block attention runs block-wise (None: from the kernel's
        memory budget); see `litefocus_jax.kernels.attention.dot_product_attention`.
      attention_implementation: the mid-block attention's kernel (None: the platform's choice).

    Returns:
      The module: `vae.decode(latents / vae.config.scaling_factor)` -> mel (B, 4T, 4F, 1);
      `vae.encode(mel)` -> DiagonalGaussian(mean, logvar).
    """
    from litefocus_jax.weights.loading import load_module, resolve_component

    folder = resolve_component(path, "vae")
    cfg = VAEConfig.from_diffusers(read_config(folder))
    build = _builder(
        cfg, dtype, with_encoder=with_encoder, attention_chunk=attention_chunk, attention_implementation=attention_implementation
    )

    def prepare(source, converted):
        return _drop_encoder(source) if converted and not with_encoder else source

    return load_module(folder, build, dtype=dtype, what=WHAT, prepare=prepare, **_rules(with_encoder))


def init_vae(
    config: Mapping,
    *,
    seed: int = 0,
    dtype=jnp.float32,
    with_encoder: bool = True,
    attention_chunk: int | None = ATTENTION_CHUNK,
    attention_implementation: str | None = None,
) -> AutoencoderKL:
    """The same module with random weights, from a diffusers VAE config dict (benchmarks, tests)."""
    cfg = VAEConfig.from_diffusers(config)
    return _builder(
        cfg,
        dtype,
        with_encoder=with_encoder,
        attention_chunk=attention_chunk,
        attention_implementation=attention_implementation,
        seed=seed,
    )()
