"""The CLAP audio branch (transformers `ClapAudioModel`: HTSAT, a Swin transformer over log-mel images) in Flax NNX.

Only the unfused model (`enable_fusion=False`, cvssp/audioldm2 and laion/clap-htsat-unfused) is ported; the fused
variant (laion/clap-htsat-fused) is refused with a clear error. Forward of `ClapAudioEncoder` (EVALUATION.md §A.2-A.4):

  input_features (B, Cin, T, F) log-mel dB as `ClapFeatureExtractor` returns it (cvssp: (B, 1, 1001, 64))
  -> BatchNorm over the F mel bins (running statistics)
  -> time resized to spec_size * freq_ratio frames (bicubic, align_corners=True: a fixed (T', T) matrix)
  -> "mel to image": the T' frames cut in freq_ratio chunks stacked along frequency, (B, Cin, S, S)
  -> channels-last from here on: (B, S, S, Cin) -> patch embed conv + LayerNorm -> tokens (B, G*G, C)
  -> stages of Swin blocks (window attention with relative position bias; odd blocks shifted by window//2
     with the -100 cross-region mask), patch merging between stages -> final LayerNorm -> tokens (B, g*g, C_L)
  -> pooled = mean over the tokens (B, C_L).

Attribute names mirror transformers' module tree, so `audio_model.audio_encoder.layers.1.blocks.0.attention.self.query
.weight` is the NNX path ('audio_model', 'audio_encoder', 'layers', 1, 'blocks', 0, 'attention', 'self', 'query',
'kernel'); BatchNorm's `running_mean` / `running_var` are `mean` / `var`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from litefocus_jax.models.layers import conv2d, kernel_init, layer_norm, linear, ones_init, zeros_init
from litefocus_jax.models.modeling_clap import ACTIVATIONS, activation_name

WHAT = "CLAP audio encoder"
LAYER_NORM_EPS = 1e-5  # the patch-embed, patch-merging and final LayerNorms (torch default); blocks use the config's
BATCH_NORM_EPS = 1e-5
SHIFT_MASK = -100.0  # additive score bias between tokens of different shifted-window regions (not -inf)


def _pair(value, key: str) -> int:
    """A square size given as an int or a 2-list of equal ints."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"CLAP audio config: {key}={list(value)} is not square; only square sizes are supported.")
        value = value[0]
    return int(value)


@dataclasses.dataclass(frozen=True)
class ClapAudioConfig:
    """The HTSAT geometry (transformers `ClapAudioConfig`), built by `from_hf` from a ClapModel config.

    Attributes:
      spec_size: side S of the square mel image (256); `freq_ratio = spec_size // num_mel_bins` time chunks are
        stacked along frequency, so the model takes at most S * freq_ratio frames.
      num_mel_bins: mel bins F of the input (64); S must be a multiple of it.
      window_size: Swin window side w (8); w*w-token windows, odd blocks shifted by w // 2.
      patch_size / patch_stride: patch-embed conv kernel and stride (4 / 4); padding (size - stride) // 2.
      patch_embed_input_channels: input channels Cin (1).
      patch_embeds_hidden_size: stage-0 width C0 (96; cvssp 128); stage i has width C0 * 2**i.
      hidden_size: width after the last stage, must equal C0 * 2**(stages - 1) (768; cvssp 1024).
      depths / num_attention_heads: blocks and heads per stage ((2, 2, 6, 2) / (4, 8, 16, 32); cvssp depths (2, 2, 12, 2)).
      mlp_ratio: block MLP width factor (4.0).
      hidden_act: block MLP activation ("gelu" = exact erf GELU).
      qkv_bias: biases on query/key/value (True).
      layer_norm_eps: eps of the two LayerNorms in every block (1e-5).
      enable_patch_layer_norm: LayerNorm after the patch-embed conv (True).
      projection_dim / projection_hidden_act: `audio_projection` width and inner activation (512, "relu"), taken
        from the top-level ClapModel keys as transformers does.
    """

    spec_size: int = 256
    num_mel_bins: int = 64
    window_size: int = 8
    patch_size: int = 4
    patch_stride: int = 4
    patch_embed_input_channels: int = 1
    patch_embeds_hidden_size: int = 96
    hidden_size: int = 768
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_attention_heads: tuple[int, ...] = (4, 8, 16, 32)
    mlp_ratio: float = 4.0
    hidden_act: str = "gelu"
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-5
    enable_patch_layer_norm: bool = True
    projection_dim: int = 512
    projection_hidden_act: str = "relu"

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> ClapAudioConfig:
        """Validate the `audio_config` of a transformers ClapModel `config.json` dict; absent keys take transformers'
        defaults. Dropouts, drop-path, the classifier size and the initialiser do not change inference and are ignored."""
        audio = config.get("audio_config") or {}
        if not isinstance(audio, Mapping):
            raise ValueError(f"CLAP config: audio_config must be a dict, got {type(audio).__name__}.")
        if audio.get("enable_fusion", False):
            raise ValueError(
                "CLAP config: audio_config.enable_fusion=True (the fused CLAP variant, e.g. laion/clap-htsat-fused, with "
                f"fusion_type={audio.get('fusion_type')!r}) is not supported; AudioLDM2 uses the unfused model."
            )
        if not audio.get("flatten_patch_embeds", True):
            raise ValueError("CLAP config: audio_config.flatten_patch_embeds=False is not supported (CLAP flattens them).")
        d = cls()
        get = lambda key: audio.get(key, getattr(d, key))  # noqa: E731
        if isinstance(get("spec_size"), (list, tuple)):
            raise ValueError(f"CLAP config: audio_config.spec_size={get('spec_size')} must be one int (a square image).")
        cfg = cls(
            spec_size=int(get("spec_size")),
            num_mel_bins=int(get("num_mel_bins")),
            window_size=int(get("window_size")),
            patch_size=_pair(get("patch_size"), "patch_size"),
            patch_stride=_pair(get("patch_stride"), "patch_stride"),
            patch_embed_input_channels=int(get("patch_embed_input_channels")),
            patch_embeds_hidden_size=int(get("patch_embeds_hidden_size")),
            hidden_size=int(get("hidden_size")),
            depths=tuple(int(x) for x in get("depths")),
            num_attention_heads=tuple(int(x) for x in get("num_attention_heads")),
            mlp_ratio=float(get("mlp_ratio")),
            hidden_act=activation_name(get("hidden_act"), "audio_config.hidden_act"),
            qkv_bias=bool(get("qkv_bias")),
            layer_norm_eps=float(get("layer_norm_eps")),
            enable_patch_layer_norm=bool(get("enable_patch_layer_norm")),
            projection_dim=int(config.get("projection_dim", d.projection_dim)),
            projection_hidden_act=activation_name(
                config.get("projection_hidden_act", d.projection_hidden_act), "projection_hidden_act"
            ),
        )
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        bad = lambda why: ValueError(f"CLAP audio config: {why}")  # noqa: E731
        if len(self.depths) != len(self.num_attention_heads) or not self.depths:
            raise bad(f"depths {self.depths} and num_attention_heads {self.num_attention_heads} need one entry per stage.")
        if self.spec_size % self.num_mel_bins:
            raise bad(f"spec_size {self.spec_size} is not a multiple of num_mel_bins {self.num_mel_bins}.")
        if self.hidden_size != self.width(len(self.depths) - 1):
            raise bad(
                f"hidden_size {self.hidden_size} must equal patch_embeds_hidden_size * 2**(stages - 1) = "
                f"{self.width(len(self.depths) - 1)} (the input of audio_projection)."
            )
        pad = (self.patch_size - self.patch_stride) // 2
        conv_out = (self.spec_size + 2 * pad - self.patch_size) // self.patch_stride + 1
        if conv_out != self.grid or self.spec_size % self.patch_stride:
            raise bad(f"patch_size {self.patch_size} / patch_stride {self.patch_stride} do not tile spec_size {self.spec_size}.")
        for i, heads in enumerate(self.num_attention_heads):
            res, width = self.resolution(i), self.width(i)
            if width % heads:
                raise bad(f"stage {i} width {width} is not divisible by its {heads} attention heads.")
            if (i < len(self.depths) - 1 and res % 2) or res < self.window_size or res % self.window_size:
                raise bad(
                    f"stage {i} is a {res}x{res} token grid, which window_size {self.window_size} does not tile (and "
                    "patch merging needs even sides); transformers pads such grids, which this port does not support."
                )

    @property
    def freq_ratio(self) -> int:
        return self.spec_size // self.num_mel_bins

    @property
    def max_frames(self) -> int:
        """Longest input in frames (spec_size * freq_ratio); shorter inputs are stretched to it."""
        return self.spec_size * self.freq_ratio

    @property
    def grid(self) -> int:
        return self.spec_size // self.patch_stride

    def resolution(self, stage: int) -> int:
        return self.grid // 2**stage

    def width(self, stage: int) -> int:
        return self.patch_embeds_hidden_size * 2**stage


# ---------------------------------------------------------------------------------------------- static geometry


@functools.lru_cache(maxsize=32)
def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 M with `M @ x` = torch `interpolate(x, n_out, mode="bicubic", align_corners=True)` along one
    axis: source position i * (n_in - 1) / (n_out - 1), Keys kernel a = -0.75, taps clamped to the edges."""
    a = -0.75
    near = lambda d: ((a + 2) * d - (a + 3)) * d * d + 1  # noqa: E731  |d| <= 1
    far = lambda d: ((a * d - 5 * a) * d + 8 * a) * d - 4 * a  # noqa: E731  1 < |d| < 2
    src = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    x0 = np.floor(src).astype(np.int64)
    t = src - x0
    m = np.zeros((n_out, n_in))
    for offset, weight in ((-1, far(t + 1)), (0, near(t)), (1, near(1 - t)), (2, far(2 - t))):
        np.add.at(m, (np.arange(n_out), np.clip(x0 + offset, 0, n_in - 1)), weight)
    return m


@functools.lru_cache(maxsize=32)
def relative_position_index(window: int) -> np.ndarray:
    """(w*w, w*w) int: row of the bias table for query (yi, xi) and key (yj, xj), tokens in row-major order."""
    y, x = np.divmod(np.arange(window * window), window)
    return (y[:, None] - y[None, :] + window - 1) * (2 * window - 1) + (x[:, None] - x[None, :] + window - 1)


@functools.lru_cache(maxsize=32)
def shift_mask(res: int, window: int, shift: int) -> np.ndarray:
    """(nW, w*w, w*w) float32 additive mask of a shifted block on a res x res grid: -100 between tokens that came
    from different regions before the cyclic shift, 0 within one (windows in row-major window-grid order)."""
    idx = np.arange(res)
    region = (idx >= res - window).astype(np.int64) + (idx >= res - shift)
    labels = region[:, None] * 3 + region[None, :]
    labels = partition(labels[None, :, :, None], window)[0, ..., 0]  # (nW, w*w)
    return np.where(labels[:, None, :] != labels[:, :, None], SHIFT_MASK, 0.0).astype(np.float32)


def partition(x, window: int):
    """(B, H, W, C) -> (B, nW, w*w, C): windows in row-major window-grid order, tokens row-major inside."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // window) * (w // window), window * window, c)


def unpartition(x, window: int, res: int):
    """Inverse of `partition` for a res x res grid: (B, nW, w*w, C) -> (B, res, res, C)."""
    b, _, _, c = x.shape
    n = res // window
    x = x.reshape(b, n, n, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, res, res, c)


# ---------------------------------------------------------------------------------------------- modules


class ClapAudioPatchEmbed(nnx.Module):
    """Conv (kernel patch_size, stride patch_stride) + LayerNorm: image (B, S, S, Cin) -> tokens (B, G*G, C0)."""

    def __init__(self, cfg: ClapAudioConfig, *, dtype, rngs: nnx.Rngs):
        pad = (cfg.patch_size - cfg.patch_stride) // 2
        c = cfg.patch_embeds_hidden_size
        self.proj = conv2d(
            cfg.patch_embed_input_channels, c, cfg.patch_size, stride=cfg.patch_stride, padding=pad, dtype=dtype, rngs=rngs
        )
        self.norm = layer_norm(c, LAYER_NORM_EPS, dtype=dtype, rngs=rngs) if cfg.enable_patch_layer_norm else None

    def __call__(self, image: jax.Array) -> jax.Array:
        h = self.proj(image)
        h = h.reshape(h.shape[0], -1, h.shape[-1])  # row-major over the patch grid, as torch's flatten(2)
        return h if self.norm is None else self.norm(h)


class ClapAudioSelfAttention(nnx.Module):
    """Multi-head attention inside each window, plus the learned relative position bias (and the shift mask)."""

    def __init__(self, dim: int, heads: int, window: int, qkv_bias: bool, *, dtype, rngs: nnx.Rngs):
        self.heads, self.window = heads, window
        table = ((2 * window - 1) ** 2, heads)
        self.relative_position_bias_table = nnx.Param(kernel_init(rngs.params(), table, dtype))
        self.query = linear(dim, dim, use_bias=qkv_bias, dtype=dtype, rngs=rngs)
        self.key = linear(dim, dim, use_bias=qkv_bias, dtype=dtype, rngs=rngs)
        self.value = linear(dim, dim, use_bias=qkv_bias, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, mask: np.ndarray | None) -> jax.Array:
        """x (B, nW, N, C) windows of N = w*w tokens; mask (nW, N, N) or None -> (B, nW, N, C)."""
        b, nw, n, c = x.shape
        split = lambda t: t.reshape(b, nw, n, self.heads, c // self.heads)  # noqa: E731  contiguous head chunks
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = jnp.einsum("bwqhd,bwkhd->bwhqk", q, k) / jnp.asarray(math.sqrt(c // self.heads), q.dtype)
        index = relative_position_index(self.window).reshape(-1)
        bias = self.relative_position_bias_table[...][index].reshape(n, n, self.heads).transpose(2, 0, 1)
        scores = scores.astype(jnp.float32) + bias.astype(jnp.float32)
        if mask is not None:
            scores = scores + jnp.asarray(mask)[None, :, None]
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        return jnp.einsum("bwhqk,bwkhd->bwqhd", probs, v).reshape(b, nw, n, c)


class ClapAudioSelfOutput(nnx.Module):
    def __init__(self, dim: int, *, dtype, rngs: nnx.Rngs):
        self.dense = linear(dim, dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.dense(x)


class ClapAudioAttention(nnx.Module):
    def __init__(self, dim: int, heads: int, window: int, qkv_bias: bool, *, dtype, rngs: nnx.Rngs):
        self.self = ClapAudioSelfAttention(dim, heads, window, qkv_bias, dtype=dtype, rngs=rngs)
        self.output = ClapAudioSelfOutput(dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, mask: np.ndarray | None) -> jax.Array:
        return self.output(self.self(x, mask))


class ClapAudioIntermediate(nnx.Module):
    def __init__(self, dim: int, cfg: ClapAudioConfig, *, dtype, rngs: nnx.Rngs):
        self.act = cfg.hidden_act
        self.dense = linear(dim, int(cfg.mlp_ratio * dim), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return ACTIVATIONS[self.act](self.dense(x))


class ClapAudioOutput(nnx.Module):
    def __init__(self, dim: int, cfg: ClapAudioConfig, *, dtype, rngs: nnx.Rngs):
        self.dense = linear(int(cfg.mlp_ratio * dim), dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.dense(x)


class ClapAudioLayer(nnx.Module):
    """One Swin block on a res x res token grid (pre-LN): x + WindowAttention(LN(x)), then + MLP(LN(.)).

    A grid no larger than the window is one window, never shifted (transformers' `set_shift_and_window_size`).
    """

    def __init__(self, dim: int, heads: int, res: int, shift: int, cfg: ClapAudioConfig, *, dtype, rngs: nnx.Rngs):
        self.res = res
        self.window = min(cfg.window_size, res)
        self.shift = 0 if res <= cfg.window_size else shift
        self.layernorm_before = layer_norm(dim, cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.attention = ClapAudioAttention(dim, heads, self.window, cfg.qkv_bias, dtype=dtype, rngs=rngs)
        self.layernorm_after = layer_norm(dim, cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.intermediate = ClapAudioIntermediate(dim, cfg, dtype=dtype, rngs=rngs)
        self.output = ClapAudioOutput(dim, cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x (B, res*res, C) -> same."""
        b, _, c = x.shape
        s, w = self.shift, self.window
        h = self.layernorm_before(x).reshape(b, self.res, self.res, c)
        if s:
            h = jnp.roll(h, (-s, -s), axis=(1, 2))
        mask = shift_mask(self.res, w, s) if s else None
        h = unpartition(self.attention(partition(h, w), mask), w, self.res)
        if s:
            h = jnp.roll(h, (s, s), axis=(1, 2))
        x = x + h.reshape(b, -1, c)
        return x + self.output(self.intermediate(self.layernorm_after(x)))


class ClapAudioPatchMerging(nnx.Module):
    """2x2 neighbours -> one token: (B, H*W, C) -> (B, H*W/4, 2C), concatenation order (0,0), (1,0), (0,1), (1,1)."""

    def __init__(self, dim: int, res: int, *, dtype, rngs: nnx.Rngs):
        self.res = res
        self.norm = layer_norm(4 * dim, LAYER_NORM_EPS, dtype=dtype, rngs=rngs)
        self.reduction = linear(4 * dim, 2 * dim, use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, _, c = x.shape
        h = x.reshape(b, self.res, self.res, c)
        h = jnp.concatenate([h[:, row::2, col::2] for col in range(2) for row in range(2)], axis=-1)
        return self.reduction(self.norm(h.reshape(b, -1, 4 * c)))


class ClapAudioStage(nnx.Module):
    def __init__(self, stage: int, cfg: ClapAudioConfig, *, dtype, rngs: nnx.Rngs):
        dim, res, heads = cfg.width(stage), cfg.resolution(stage), cfg.num_attention_heads[stage]
        self.blocks = nnx.List(
            [
                ClapAudioLayer(dim, heads, res, 0 if i % 2 == 0 else cfg.window_size // 2, cfg, dtype=dtype, rngs=rngs)
                for i in range(cfg.depths[stage])
            ]
        )
        last = stage == len(cfg.depths) - 1
        self.downsample = None if last else ClapAudioPatchMerging(dim, res, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class ClapAudioEncoder(nnx.Module):
    """HTSAT: log-mel (B, Cin, T, F) -> (final tokens (B, g*g, C_L) after the last LayerNorm, pooled (B, C_L))."""

    def __init__(self, cfg: ClapAudioConfig, *, dtype, rngs: nnx.Rngs):
        self.config = cfg
        self.patch_embed = ClapAudioPatchEmbed(cfg, dtype=dtype, rngs=rngs)
        self.layers = nnx.List([ClapAudioStage(i, cfg, dtype=dtype, rngs=rngs) for i in range(len(cfg.depths))])
        # transformers applies BatchNorm2d(num_mel_bins) to the input transposed so that mel bins are channels
        self.batch_norm = nnx.BatchNorm(
            cfg.num_mel_bins,
            use_running_average=True,
            epsilon=BATCH_NORM_EPS,
            dtype=dtype,
            param_dtype=dtype,
            scale_init=ones_init,
            bias_init=zeros_init,
            rngs=rngs,
        )
        self.norm = layer_norm(cfg.hidden_size, LAYER_NORM_EPS, dtype=dtype, rngs=rngs)

    def mel_to_image(self, x: jax.Array) -> jax.Array:
        """Normalised log-mel (B, Cin, T, F) -> channels-last image (B, S, S, Cin) (transformers `reshape_mel2img`).

        T < S * freq_ratio frames are first stretched to it (bicubic, align_corners=True); image row = F * k + f for
        time chunk k and mel bin f, column = frame within the chunk.
        """
        cfg = self.config
        b, cin, t, f = x.shape
        if t < cfg.max_frames:
            resize = jnp.asarray(bicubic_matrix(t, cfg.max_frames), jnp.float32)
            x = jnp.einsum("it,bctf->bcif", resize, x.astype(jnp.float32)).astype(x.dtype)
        r = cfg.freq_ratio
        x = x.reshape(b, cin * r, cfg.max_frames // r, f).transpose(0, 1, 3, 2)
        return x.reshape(b, cin, f * r, cfg.max_frames // r).transpose(0, 2, 3, 1)

    def __call__(self, input_features: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = self.batch_norm(input_features)  # F is the last axis: per-mel-bin statistics
        h = self.patch_embed(self.mel_to_image(x))
        for stage in self.layers:
            h = stage(h)
        h = self.norm(h)
        return h, jnp.mean(h.astype(jnp.float32), axis=1).astype(h.dtype)

    def last_hidden_state(self, tokens: jax.Array) -> jax.Array:
        """Final tokens (B, g*g, C) -> transformers' `last_hidden_state` layout (B, C, c_freq_bin, g*g / c_freq_bin)."""
        b, _, c = tokens.shape
        g = self.config.resolution(len(self.config.depths) - 1)
        bins = g // self.config.freq_ratio
        h = tokens.reshape(b, g, g, c).transpose(0, 3, 1, 2)
        return h.reshape(b, c, g // bins, bins, g).transpose(0, 1, 3, 2, 4).reshape(b, c, bins, -1)


class ClapAudioModel(nnx.Module):
    def __init__(self, cfg: ClapAudioConfig, *, dtype, rngs: nnx.Rngs):
        self.audio_encoder = ClapAudioEncoder(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, input_features: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.audio_encoder(input_features)


def check_audio_features(input_features, cfg: ClapAudioConfig) -> None:
    """Shape checks with errors that say what the model wants (static: fine under jit)."""
    shape = tuple(input_features.shape)
    want = f"(B, {cfg.patch_embed_input_channels}, T <= {cfg.max_frames}, {cfg.num_mel_bins})"
    if len(shape) != 4:
        raise ValueError(f"{WHAT}: input_features must be {want} log-mel frames (ClapFeatureExtractor layout), got {shape}.")
    if shape[1] != cfg.patch_embed_input_channels:
        fused = " (4 channels is the fused CLAP's input, which this unfused model does not take)" if shape[1] == 4 else ""
        raise ValueError(f"{WHAT}: input_features has {shape[1]} channel(s), the model takes {want}{fused}.")
    if shape[3] != cfg.num_mel_bins:
        raise ValueError(f"{WHAT}: input_features has {shape[3]} mel bins, the model takes {want}; check the feature extractor.")
    if not 1 <= shape[2] <= cfg.max_frames:
        raise ValueError(f"{WHAT}: input_features has {shape[2]} frames, the model takes {want}.")
    if not jnp.issubdtype(input_features.dtype, jnp.floating):
        raise ValueError(f"{WHAT}: input_features must be floating point log-mel values, got {input_features.dtype}.")
